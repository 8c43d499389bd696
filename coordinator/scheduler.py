"""Which job a volunteer trains, and which shard slots it takes: pure functions, no I/O.

    needs = JobNeeds.of(recipe)
    job = pick_job([Candidate(job, needs), ...], hardware)      # None: nothing fits
    slots = assign_slots(volunteer_id, active_volunteer_ids)

A job fits a machine when its RAM, GPU and VRAM needs are met; the RAM it needs is what its recipe
declares or what its shipped model weighs (:class:`ModelSize`), the larger. Among the fitting jobs the highest
priority wins; at equal priority a running job (its swarm already has peers to learn from) beats a
queued one, then the oldest. Slots spread ``range(SHARD_SLOTS)`` round-robin over the job's active
volunteers, ordered by id, so every volunteer computes the same split. Used by the service's
GetAssignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Any, Literal

from essaim.protocol.recipe import Recipe, normalize_path
from essaim.protocol.types import Hardware, Job, JobStatus, slots_for

GIB = 1024**3
ASSIGNABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


RUNTIME_GIB = 1.5
"""What a trainer holds beside its model's weights: Python, torch, hivemind's forked helpers and its
``p2pd``, the data, and one row of activations (bench/real_model.py: 2.1 GB in all for a 135M model
trained on the CPU one row at a time, 0.54 GB of it the float32 weights)."""
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True, slots=True)
class ModelSize:
    """What a job's model weighs, from the files it ships (hub models are not weighed)."""

    parameters: int  # estimated from the weight files' bytes and their stored dtype
    stored_bytes: int
    full: bool  # a full fine-tune: gradients and Adam's two moments beside the weights

    def ram_gb(self, hardware: Hardware) -> float:
        """The least RAM a machine needs to train it: on a GPU the weights pass through RAM as stored;
        on the CPU they are held in float32 (and, for a full fine-tune, 3 more copies: gradients and
        Adam's moments); plus ``RUNTIME_GIB``. Micro-batches are computed a row at a time when the
        RAM is short (essaim.swarm.peer.MicroBatches), so that is what one row needs."""
        weights = self.stored_bytes if hardware.has_gpu else self.parameters * 4 * (4 if self.full else 1)
        return weights / GIB + RUNTIME_GIB

    @classmethod
    def of(cls, recipe: Recipe, files: Sequence[tuple[str, int]], config: dict[str, object] | None) -> ModelSize | None:
        """From the job's files (recipe path, size) and the shipped config.json, or None when the
        recipe names a hub model or ships no weights."""
        prefix = normalize_path(recipe.model.name_or_path) + "/"
        stored = sum(size for path, size in files
                     if normalize_path(path).startswith(prefix) and path.endswith(_WEIGHT_SUFFIXES))
        if not stored:
            return None
        dtype = str((config or {}).get("torch_dtype") or (config or {}).get("dtype") or "float32")
        return cls(parameters=stored // _DTYPE_BYTES.get(dtype, 4), stored_bytes=stored,
                   full=recipe.adapter.type == "full")


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True, slots=True)
class JobNeeds:
    """A job's hardware needs: its recipe's ``hardware`` section, and the RAM its model takes when
    the coordinator can weigh it (``model``): the larger of the two is needed."""

    min_ram_gb: float = 0.0
    gpu: Literal["none", "optional", "required"] = "optional"
    min_vram_gb: float = 0.0
    model: ModelSize | None = None

    @classmethod
    def of(cls, recipe: Recipe, model: ModelSize | None = None) -> JobNeeds:
        hw = recipe.hardware
        return cls(min_ram_gb=hw.min_ram_gb, gpu=hw.gpu, min_vram_gb=hw.min_vram_gb, model=model)

    def ram_gb(self, hardware: Hardware) -> float:
        return max(self.min_ram_gb, self.model.ram_gb(hardware) if self.model is not None else 0.0)


@dataclass(frozen=True, slots=True)
class Candidate:
    job: Job
    needs: JobNeeds


def unfit_reason(hardware: Hardware, needs: JobNeeds, *, own: bool = True) -> str | None:
    """Why a machine cannot run a job, or None when it can. ``own`` False: the reason as told to
    someone other than the machine's volunteer (a researcher), without the machine's figures."""
    ram = needs.ram_gb(hardware)
    if hardware.ram_bytes < ram * GIB:
        if not own:
            return f"needs {ram:.1f} GB of RAM"
        why = "" if ram == needs.min_ram_gb or needs.model is None else (
            f" (its model: about {needs.model.parameters / 1e6:,.0f}M parameters, "
            f"{'on a GPU' if hardware.has_gpu else 'trained on the CPU in float32'})")
        return f"needs {ram:.1f} GB of RAM{why}, this machine has {hardware.ram_bytes / GIB:.1f}"
    if needs.gpu == "required" and not hardware.has_gpu:
        return "needs a GPU"
    if needs.min_vram_gb > 0:
        if not hardware.has_gpu:
            return f"needs a GPU with {needs.min_vram_gb:g} GB of memory"
        if hardware.gpu_vram_bytes < needs.min_vram_gb * GIB:
            return f"needs {needs.min_vram_gb:g} GB of GPU memory" + (
                f", this GPU has {hardware.gpu_vram_bytes / GIB:.1f}" if own else "")
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


def why_none(candidates: Iterable[Candidate], hardware: Hardware) -> str:
    """When no job fits ``hardware``: why the first-ranked assignable job does not ("" when no job
    is waiting), as a volunteer reads it: "job 1a2b3c4d (name) needs 2.0 GB of RAM ..."."""
    waiting = [c for c in candidates if c.job.status in ASSIGNABLE]
    if not waiting:
        return ""
    first = min(waiting, key=_rank)
    reason = unfit_reason(hardware, first.needs)
    return f"job {first.job.id[:8]} ({first.job.name}) {reason}" if reason else ""


def waiting_reason(job_id: str, candidates: Sequence[Candidate], online: Sequence[tuple[Hardware, str]]) -> str:
    """Why the queued job ``job_id`` has no volunteer yet, as its researcher reads it (no volunteer's
    own figures). ``online``: each online volunteer's hardware and the job it is on ("" when free).
    A volunteer on a job stays on it; a free one takes, when it next asks for work, the best job
    that fits it (:func:`pick_job`). Machines alike are weighed once (a swarm has few kinds)."""
    mine = next((c for c in candidates if c.job.id == job_id), None)
    if mine is None:
        return ""
    if not online:
        return "waiting for volunteers: none is online"
    able = 0
    free: list[tuple[Hardware, int]] = []  # a machine of each kind that can run it, and how many are free
    unfit = ""  # why the first kind online cannot
    for hardware, count, free_count in _kinds(online):
        why = unfit_reason(hardware, mine.needs, own=False)
        if why is None:
            able += count
            if free_count:
                free.append((hardware, free_count))
        elif not unfit:
            unfit = why
    if not able:
        return f"none of the {len(online)} volunteer(s) online can run it: it {unfit}"
    takers = sum(n for hardware, n in free if (picked := pick_job(candidates, hardware)) is not None
                 and picked.id == job_id)
    if takers:
        return (f"{takers} free volunteer(s) online can take it: it starts when one asks for work "
                "(volunteers ask while their owners are away)")
    if free:
        ahead = pick_job(candidates, free[0][0])
        assert ahead is not None  # the machine fits this job at least
        return (f"the {sum(n for _, n in free)} free volunteer(s) that can run it go to job {ahead.id[:8]} "
                f"({ahead.name}) first: {_ahead_because(ahead, mine.job)}")
    return f"the {able} volunteer(s) online that can run it are on other jobs until those end"


def _kinds(online: Sequence[tuple[Hardware, str]]) -> list[tuple[Hardware, int, int]]:
    """The kinds of machine online, in order of first appearance: one of each, how many, how many free."""
    kinds: dict[tuple[object, ...], list[Any]] = {}
    for hardware, on in online:
        kind = kinds.setdefault(astuple(hardware), [hardware, 0, 0])
        kind[1] += 1
        kind[2] += 0 if on else 1
    return [(hardware, count, free_count) for hardware, count, free_count in kinds.values()]


def _ahead_because(ahead: Job, job: Job) -> str:
    if ahead.priority > job.priority:
        return f"its priority is higher ({ahead.priority} against {job.priority})"
    if ahead.status == JobStatus.RUNNING:
        return "at the same priority a running job comes first"
    return "it was submitted earlier"


def assign_slots(volunteer_id: str, active: Sequence[str] | Iterable[str]) -> list[int]:
    """The shard slots of ``volunteer_id`` among the job's active volunteers (it included)."""
    members = sorted({*active, volunteer_id})
    return slots_for(members.index(volunteer_id), len(members))
