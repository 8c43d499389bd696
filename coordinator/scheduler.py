"""Which job a volunteer trains, and which shard slots it takes: pure functions, no I/O.

    needs = JobNeeds.of(recipe)
    job = pick_job([Candidate(job, needs), ...], hardware)      # None: nothing fits
    slots = assign_slots(volunteer_id, active_volunteer_ids)

A job fits a machine when its RAM, GPU and VRAM needs are met. Among the fitting jobs the highest
priority wins; at equal priority a running job (its swarm already has peers to learn from) beats a
queued one, then the oldest. Slots spread ``range(SHARD_SLOTS)`` round-robin over the job's active
volunteers, ordered by id, so every volunteer computes the same split. Used by the service's
GetAssignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from essaim.protocol.recipe import Recipe
from essaim.protocol.types import Hardware, Job, JobStatus, slots_for

GIB = 1024**3
ASSIGNABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class JobNeeds:
    """A job's hardware needs, from its recipe's ``hardware`` section."""

    min_ram_gb: float = 0.0
    gpu: Literal["none", "optional", "required"] = "optional"
    min_vram_gb: float = 0.0

    @classmethod
    def of(cls, recipe: Recipe) -> JobNeeds:
        hw = recipe.hardware
        return cls(min_ram_gb=hw.min_ram_gb, gpu=hw.gpu, min_vram_gb=hw.min_vram_gb)


@dataclass(frozen=True, slots=True)
class Candidate:
    job: Job
    needs: JobNeeds


def unfit_reason(hardware: Hardware, needs: JobNeeds) -> str | None:
    """Why a machine cannot run a job, or None when it can."""
    if hardware.ram_bytes < needs.min_ram_gb * GIB:
        return f"needs {needs.min_ram_gb:g} GB of RAM, this machine has {hardware.ram_bytes / GIB:.1f}"
    if needs.gpu == "required" and not hardware.has_gpu:
        return "needs a GPU"
    if needs.min_vram_gb > 0:
        if not hardware.has_gpu:
            return f"needs a GPU with {needs.min_vram_gb:g} GB of memory"
        if hardware.gpu_vram_bytes < needs.min_vram_gb * GIB:
            return f"needs {needs.min_vram_gb:g} GB of GPU memory, this GPU has {hardware.gpu_vram_bytes / GIB:.1f}"
    return None


def _rank(c: Candidate) -> tuple[int, int, float, str]:
    running_first = 0 if c.job.status == JobStatus.RUNNING else 1
    return (-c.job.priority, running_first, c.job.created_at, c.job.id)


def pick_job(candidates: Iterable[Candidate], hardware: Hardware) -> Job | None:
    """The best assignable job that fits ``hardware``, or None."""
    fitting = [
        c for c in candidates if c.job.status in ASSIGNABLE and unfit_reason(hardware, c.needs) is None
    ]
    if not fitting:
        return None
    return min(fitting, key=_rank).job


def assign_slots(volunteer_id: str, active: Sequence[str] | Iterable[str]) -> list[int]:
    """The shard slots of ``volunteer_id`` among the job's active volunteers (it included)."""
    members = sorted({*active, volunteer_id})
    return slots_for(members.index(volunteer_id), len(members))
