"""The dashboard's read side: store dataclasses -> the response models of :mod:`.schemas`.

Both the JSON API (:mod:`.api`) and the pages (:mod:`.pages`) call :class:`DashboardQueries`, so
they always agree. Only the store's public methods are used; artifacts (model card, provenance)
are read from ``data_dir/artifacts/<job_id>/`` and may be absent until a job completes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from essaim.coordinator.dashboard import formatting as fmt
from essaim.coordinator.dashboard.schemas import (
    ContributionOut,
    HardwareOut,
    JobDetail,
    JobFileOut,
    JobMetricsOut,
    JobOut,
    Leaderboard,
    LedgerEntryOut,
    LedgerVerificationOut,
    ProgressOut,
    ProgressPoint,
    SignedHeadOut,
    SwarmPeerOut,
    TeamOut,
    VolunteerOut,
)
from essaim.coordinator.store import SwarmPeer
from essaim.coordinator.store.ledger import GENESIS_HASH, sign_head
from essaim.protocol.errors import NotFound, RecipeError
from essaim.protocol.recipe import Recipe, load_recipe
from essaim.protocol.types import Job, JobStatus, LedgerEntry, Volunteer, VolunteerStatus

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
MODEL_CARD = Path("artifact") / "README.md"
HISTORY_POINTS = 240  # a volunteer's credit curve: at most this many points
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
ALL_VOLUNTEERS = 100_000


def volunteer_out(v: Volunteer) -> VolunteerOut:
    hw = v.hardware
    return VolunteerOut(
        id=v.id,
        name=fmt.display_name(v.name, v.id),
        team=v.team,
        status=str(v.status),
        state=v.state,
        reason=v.reason,
        hardware=HardwareOut(
            os=hw.os,
            arch=hw.arch,
            cpu_cores=hw.cpu_cores,
            ram_bytes=hw.ram_bytes,
            accelerator=hw.accelerator,
            gpu_name=hw.gpu_name,
            gpu_vram_bytes=hw.gpu_vram_bytes,
            gpu_count=hw.gpu_count,
            summary=fmt.hardware_summary(hw),
        ),
        samples_per_second=v.samples_per_second,
        last_seen=v.last_seen,
        registered_at=v.registered_at,
        client_version=v.client_version,
        current_job_id=v.current_job_id,
        samples=v.samples,
        compute_seconds=v.compute_seconds,
        measured_samples_per_second=v.samples / v.compute_seconds if v.compute_seconds > 0 else 0.0,
    )


NO_HARDWARE = HardwareOut(os="", arch="", cpu_cores=0, ram_bytes=0, accelerator="", gpu_name="", gpu_vram_bytes=0,
                          gpu_count=0, summary="")


def withheld(v: VolunteerOut) -> VolunteerOut:
    """``v`` as anyone may see it: its pseudonym, team, status and accepted contribution. What tells
    when a person is at their computer and what it is (state, reason, hardware, reported speed,
    client, current job) is for the volunteer itself and admins."""
    return v.model_copy(update={
        "state": "", "reason": v.reason if v.status == "banned" else "", "hardware": NO_HARDWARE,
        "samples_per_second": 0.0, "client_version": "", "current_job_id": "", "private": True,
    })


def swarm_peer_out(p: SwarmPeer, *, volunteer_name: str, job_name: str, with_observed: bool) -> SwarmPeerOut:
    """A volunteer's part in a job's swarm; ``with_observed`` only for admins (the IP is private)."""
    return SwarmPeerOut(
        job_id=p.job_id,
        job_name=job_name,
        volunteer_id=p.volunteer_id,
        volunteer_name=volunteer_name,
        reachability=p.reachability,
        reachability_text=fmt.reachability_text(p.reachability),
        observed=p.observed if with_observed else None,
        last_round_epoch=p.last_round_epoch,
        averaged_in_last_round=p.averaged_in_last_round,
        last_round_text=fmt.last_round_text(p.last_round_epoch, p.averaged_in_last_round),
        updated_at=p.updated_at,
    )


def ledger_entry_out(e: LedgerEntry) -> LedgerEntryOut:
    return LedgerEntryOut(
        seq=e.seq,
        job_id=e.job_id,
        volunteer_id=e.volunteer_id,
        epoch=e.epoch,
        samples=e.samples,
        compute_seconds=e.compute_seconds,
        created_at=e.created_at,
        note=e.note,
        prev_hash=e.prev_hash,
        hash=e.hash,
        claimed_samples=e.claimed_samples,
        claimed_compute_seconds=e.claimed_compute_seconds,
    )


def parse_recipe(job: Job) -> Recipe | None:
    try:
        return load_recipe(job.recipe_yaml, source=f"job {job.id}")
    except RecipeError:
        return None


def eta_seconds(job: Job, recipe: Recipe | None) -> float:
    """The monitor's ETA, else remaining epochs * samples per epoch / current throughput."""
    m = job.metrics
    if m.eta_seconds > 0:
        return m.eta_seconds
    if job.status != JobStatus.RUNNING or recipe is None or m.samples_per_second <= 0:
        return 0.0
    target = m.target_epochs or recipe.training.epochs
    remaining = max(0, target - m.epoch) * recipe.training.target_batch_size
    return remaining / m.samples_per_second


class DashboardQueries:
    """Read-only views over one coordinator's store and artifact directory."""

    def __init__(self, store: Any, artifacts_dir: Path, *, directory_ttl: float = 5.0, signer: Any = None,
                 jobs_dir: Path | None = None,
                 explain: Callable[[list[Job], list[Volunteer]], list[Job]] | None = None) -> None:
        self.store = store
        # the service's explain_queued: a queued job's reason is why it has no volunteer yet
        self.explain = explain or (lambda jobs, online: jobs)
        self.jobs_dir = Path(jobs_dir) if jobs_dir is not None else Path(artifacts_dir).parent / "jobs"
        self.signer = signer  # the coordinator's swarm key: it signs the ledger's head
        self._signed: tuple[tuple[int, str], Any] | None = None
        self.artifacts_dir = Path(artifacts_dir)
        self.directory_ttl = directory_ttl
        self._directory: tuple[float, dict[str, tuple[str, str]]] = (0.0, {})
        self._directory_lock = threading.Lock()

    def directory(self) -> dict[str, tuple[str, str]]:
        """volunteer id -> (display name, team) for every volunteer, cached a few seconds: pages
        that name many volunteers (ledger, leaderboards) then cost one scan, not one per view."""
        with self._directory_lock:
            at, cached = self._directory
            if time.monotonic() - at < self.directory_ttl:
                return cached
        fresh = {
            v.id: (fmt.display_name(v.name, v.id), v.team)
            for v in self.store.list_volunteers(limit=ALL_VOLUNTEERS)
        }
        with self._directory_lock:
            self._directory = (time.monotonic(), fresh)
        return fresh

    def names(self) -> dict[str, str]:
        return {vid: name for vid, (name, _) in self.directory().items()}

    # ---- volunteers ----

    def volunteers(self, *, status: VolunteerStatus | None = None, limit: int = 1000, offset: int = 0) -> list[VolunteerOut]:
        return [volunteer_out(v) for v in self.store.list_volunteers(status=status, limit=limit, offset=offset)]

    def count_volunteers(self, status: VolunteerStatus | None = None) -> int:
        return int(self.store.count_volunteers(status))

    def volunteer(self, volunteer_id: str) -> VolunteerOut:
        return volunteer_out(self.store.get_volunteer(volunteer_id))

    def volunteer_history(self, volunteer_id: str, *, points: int = HISTORY_POINTS) -> list[tuple[float, float]]:
        """The samples a volunteer was granted, summed over time from its ledger rows: (time,
        total so far), at most ``points`` of them (the last of each span of rows when there are
        more, so the curve ends at its total)."""
        total, out = 0, []
        rows = self.store.list_ledger(volunteer_id=volunteer_id)
        step = max(1, math.ceil(len(rows) / points))
        for i, row in enumerate(rows):
            total += row.samples
            if (i + 1) % step == 0 or i == len(rows) - 1:
                out.append((row.created_at, float(total)))
        return out

    def volunteer_jobs(self, volunteer_id: str) -> list[tuple[JobOut, ContributionOut]]:
        """(job, this volunteer's contribution to it) for every job it gave samples to."""
        out = []
        for job in self.store.list_jobs(limit=1000):
            for rank, c in enumerate(self.store.contributions(job_id=job.id), start=1):
                if c.volunteer_id == volunteer_id:
                    out.append((self._job_out(job), self._contribution(rank, c, {})))
                    break
        return out

    # ---- jobs ----

    def jobs(self, *, statuses: list[JobStatus] | None = None, limit: int = 200) -> list[JobOut]:
        online = self._online()
        jobs = self.explain(self.store.list_jobs(statuses=statuses, limit=limit), online)
        counts: dict[str, int] = {}
        for v in online:
            if v.current_job_id:
                counts[v.current_job_id] = counts.get(v.current_job_id, 0) + 1
        return [self._job_out(j, counts.get(j.id, 0)) for j in jobs]

    def _online(self) -> list[Volunteer]:
        return self.store.list_volunteers(status=VolunteerStatus.ONLINE, limit=ALL_VOLUNTEERS)

    def _job_out(self, job: Job, volunteers_online: int = 0, recipe: Recipe | None = None) -> JobOut:
        recipe = recipe or parse_recipe(job)
        return JobOut(**self._job_fields(job, volunteers_online, recipe))

    def _job_fields(self, job: Job, volunteers_online: int, recipe: Recipe | None) -> dict[str, Any]:
        m = job.metrics
        eval_name = m.eval_metric_name or (recipe.eval.metric if recipe and recipe.eval else "")
        ended = job.status.is_final  # its last throughput and peers are history, not the present
        return {
            "id": job.id,
            "name": job.name,
            "description": recipe.description if recipe else "",
            "status": str(job.status),
            "status_reason": job.status_reason,
            "owner": job.owner,
            "priority": job.priority,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "metrics": JobMetricsOut(
                epoch=m.epoch,
                target_epochs=m.target_epochs or (recipe.training.epochs if recipe else 0),
                samples=m.samples,
                samples_per_second=0.0 if ended else m.samples_per_second,
                loss=m.loss,
                eval_metric=m.eval_metric,
                eval_metric_name=eval_name,
                live_peers=0 if ended else m.live_peers,
                eta_seconds=eta_seconds(job, recipe),
            ),
            "volunteers_online": volunteers_online,
            "has_artifact": job.has_artifact,
        }

    def job(self, job_id: str) -> JobDetail:
        online = self._online()
        job = self.explain([self.store.get_job(job_id)], online)[0]
        recipe = parse_recipe(job)
        on_job = [volunteer_out(v) for v in online if v.current_job_id == job.id]
        teams = self._teams_by_volunteer()
        contributors = [
            self._contribution(rank, c, teams)
            for rank, c in enumerate(self.store.contributions(job_id=job.id), start=1)
        ]
        return JobDetail(
            **self._job_fields(job, len(on_job), recipe),
            recipe_yaml=job.recipe_yaml,
            recipe=recipe.model_dump(mode="json") if recipe else None,
            files=[JobFileOut(path=f.path, sha256=f.sha256, size=f.size) for f in job.files],
            volunteers=on_job,
            contributors=contributors,
            has_provenance=self._artifact_path(job.id, PROVENANCE_FILE).is_file(),
            has_model_card=self._artifact_path(job.id, MODEL_CARD).is_file(),
        )

    def progress(self, job_id: str) -> ProgressOut:
        job = self.store.get_job(job_id)
        recipe = parse_recipe(job)
        points = []
        for at, m in self.store.list_progress(job_id):
            points.append(
                ProgressPoint(
                    at=at,
                    epoch=m.epoch,
                    samples=m.samples,
                    samples_per_second=m.samples_per_second,
                    loss=m.loss,
                    eval_metric=m.eval_metric if m.eval_metric else None,
                    live_peers=m.live_peers,
                )
            )
        name = job.metrics.eval_metric_name or (recipe.eval.metric if recipe and recipe.eval else "eval")
        return ProgressOut(job_id=job.id, eval_metric_name=name, points=points)

    # ---- how volunteers take part in the swarm (admins, and each volunteer for itself) ----

    def swarm_peers(
        self, *, job_id: str | None = None, volunteer_id: str | None = None, with_observed: bool
    ) -> list[SwarmPeerOut]:
        """The rows of one job, or of one volunteer's jobs (NotFound for an unknown one). The
        caller decides who may see them; ``with_observed`` (the IP) is for admins only."""
        if job_id is not None:
            self.store.get_job(job_id)
        if volunteer_id is not None:
            self.store.get_volunteer(volunteer_id)
        return self._swarm_peers_out(self.store.list_swarm_peers(job_id=job_id, volunteer_id=volunteer_id), with_observed)

    def current_swarm_peers(self, volunteers: list[VolunteerOut], *, with_observed: bool) -> dict[str, SwarmPeerOut]:
        """volunteer id -> its row in the job it trains (or last trained), for the swarm page."""
        wanted = {v.id: v.current_job_id for v in volunteers if v.current_job_id}
        rows = [
            p
            for job_id in sorted(set(wanted.values()))
            for p in self.store.list_swarm_peers(job_id=job_id)
            if wanted.get(p.volunteer_id) == job_id
        ]
        return {p.volunteer_id: p for p in self._swarm_peers_out(rows, with_observed)}

    def _swarm_peers_out(self, rows: list[SwarmPeer], with_observed: bool) -> list[SwarmPeerOut]:
        names = self.names()
        job_names: dict[str, str] = {}
        for job_id in {p.job_id for p in rows}:
            try:
                job_names[job_id] = self.store.get_job(job_id).name
            except NotFound:
                job_names[job_id] = ""
        return [
            swarm_peer_out(
                p,
                volunteer_name=names.get(p.volunteer_id) or fmt.display_name("", p.volunteer_id),
                job_name=job_names[p.job_id],
                with_observed=with_observed,
            )
            for p in rows
        ]

    # ---- artifacts ----

    def _artifact_path(self, job_id: str, relative: str | Path) -> Path:
        root = self.artifacts_dir.resolve()
        path = (root / job_id / relative).resolve()
        if not path.is_relative_to(root / job_id) or "/" in job_id or job_id in ("", ".", ".."):
            return root / "__missing__"
        return path

    def _read_document(self, job_id: str, relative: str | Path) -> str | None:
        self.store.get_job(job_id)  # NotFound for an unknown job
        path = self._artifact_path(job_id, relative)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_DOCUMENT_BYTES + 1)
        except OSError:
            return None
        if len(data) > MAX_DOCUMENT_BYTES:
            log.warning("%s is larger than %d bytes; the dashboard shows its start only", path, MAX_DOCUMENT_BYTES)
            data = data[:MAX_DOCUMENT_BYTES]
        return data.decode("utf-8", "replace")

    def samples(self, job_id: str) -> dict[str, Any] | None:
        """The recipe's sample prompts continued by the base model and the adopted checkpoint
        (``samples.json`` of the job's runner: {epoch, samples: [{prompt, before, after}]}), or None."""
        self.store.get_job(job_id)  # NotFound for an unknown job
        root = self.jobs_dir.resolve()
        path = (root / job_id / "samples.json").resolve()
        if not path.is_relative_to(root / job_id) or "/" in job_id or job_id in ("", ".", ".."):
            return None
        try:
            with path.open("rb") as f:
                data = json.loads(f.read(MAX_DOCUMENT_BYTES))
        except (OSError, ValueError):
            return None
        rows = data.get("samples") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            return None
        return {"epoch": data.get("epoch"), "samples": [
            {k: str(r.get(k) or "") for k in ("prompt", "before", "after")} for r in rows if isinstance(r, dict)]}

    def model_card(self, job_id: str) -> str | None:
        """The artifact's README.md (its model card), or None before the job completes."""
        return self._read_document(job_id, MODEL_CARD)

    def provenance(self, job_id: str) -> dict[str, Any] | None:
        """The job's provenance report, or None before it is written (or when it is not JSON)."""
        text = self._read_document(job_id, PROVENANCE_FILE)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            log.warning("provenance of job %s is not valid JSON", job_id)
            return None
        return data if isinstance(data, dict) else {"provenance": data}

    # ---- contributions ----

    def _teams_by_volunteer(self) -> dict[str, str]:
        return {vid: team for vid, (_, team) in self.directory().items()}

    def _contribution(self, rank: int, c: Any, teams: dict[str, str]) -> ContributionOut:
        return ContributionOut(
            rank=rank,
            volunteer_id=c.volunteer_id,
            volunteer_name=fmt.display_name(c.volunteer_name, c.volunteer_id),
            team=teams.get(c.volunteer_id, ""),
            samples=c.samples,
            compute_seconds=c.compute_seconds,
            compute_hours=c.compute_seconds / 3600,
            epochs=c.epochs,
        )

    def leaderboard(self, *, job_id: str | None = None, order: str = "samples") -> Leaderboard:
        """Volunteers and teams ranked by samples (or by compute time with ``order="compute"``)."""
        if job_id is not None:
            self.store.get_job(job_id)
        raw = list(self.store.contributions(job_id=job_id))
        if order == "compute":
            raw.sort(key=lambda c: (-c.compute_seconds, -c.samples, c.volunteer_id))
        teams = self._teams_by_volunteer()
        volunteers = [self._contribution(rank, c, teams) for rank, c in enumerate(raw, start=1)]
        per_team: dict[str, list[ContributionOut]] = {}
        for c in volunteers:
            if c.team:
                per_team.setdefault(c.team, []).append(c)
        totals = [
            (team, len(members), sum(m.samples for m in members), sum(m.compute_seconds for m in members))
            for team, members in per_team.items()
        ]
        key = (lambda t: (-t[3], -t[2], t[0])) if order == "compute" else (lambda t: (-t[2], -t[3], t[0]))
        totals.sort(key=key)
        return Leaderboard(
            job_id=job_id,
            total_samples=sum(c.samples for c in volunteers),
            total_compute_hours=sum(c.compute_seconds for c in volunteers) / 3600,
            volunteers=volunteers,
            teams=[
                TeamOut(rank=i, team=t, members=n, samples=s, compute_seconds=cs, compute_hours=cs / 3600)
                for i, (t, n, s, cs) in enumerate(totals, start=1)
            ],
        )

    def team_members(self, team: str) -> list[VolunteerOut]:
        members = [v for v in self.store.list_volunteers(limit=ALL_VOLUNTEERS) if v.team == team]
        members.sort(key=lambda v: (-v.samples, v.id))
        return [volunteer_out(v) for v in members]

    # ---- ledger ----

    def ledger(self, *, job_id: str | None = None, after_seq: int = 0, limit: int = 500) -> list[LedgerEntryOut]:
        return [
            ledger_entry_out(e)
            for e in self.store.list_ledger(job_id=job_id, after_seq=after_seq, limit=limit)
        ]

    def last_ledger_rows(self, *, job_id: str | None = None, count: int = 200) -> list[LedgerEntryOut]:
        """The newest ``count`` rows (of one job, or all), oldest first."""
        rows = self.store.list_ledger(job_id=job_id)
        return [ledger_entry_out(e) for e in rows[-count:]]

    def verify_ledger(self) -> LedgerVerificationOut:
        result = self.store.verify_ledger()
        head = self.store.ledger_head()
        return LedgerVerificationOut(
            ok=result.ok,
            checked=result.checked,
            first_bad_seq=result.first_bad_seq,
            message=result.message,
            head_seq=head.seq if head else 0,
            head_hash=head.hash if head else "",
            signed_head=self.signed_head(),
        )

    def signed_head(self) -> SignedHeadOut | None:
        """The ledger's head, signed (once per head row) with the coordinator's swarm key."""
        if self.signer is None:
            return None
        head = self.store.ledger_head()
        at = (head.seq, head.hash) if head else (0, GENESIS_HASH)
        cached = self._signed
        if cached is None or cached[0] != at:
            cached = (at, sign_head(self.signer, at[0], at[1], time.time()))
            self._signed = cached
        return SignedHeadOut(**cached[1].to_dict())
