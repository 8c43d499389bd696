"""The coordinator's domain logic: volunteers, jobs and files, with no transport in sight.

The gRPC servicer decodes a request, authenticates its caller and calls one method here; the HTTP
app reads :meth:`CoordinatorService.status`. Methods are synchronous (the servicer runs the ones
that touch the store in a worker thread) except :meth:`heartbeat`, which only touches memory and
runs on the event loop. Jobs and ledger rows are committed before a method returns; heartbeats
are buffered (:mod:`essaim.coordinator.heartbeats`).

The swarm side (DHT bootstrap peers, swarm tokens) is injected as a :class:`SwarmGateway` so this
process never imports torch or hivemind; without one, assignments carry no peers and no token.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from essaim.coordinator import scheduler
from essaim.coordinator.auth import (
    Authenticator,
    Principal,
    check_own_volunteer,
    create_token,
    ensure_admin_token,
)
from essaim.coordinator.blobs import BlobStore, check_sha256
from essaim.coordinator.errors import (
    BannedVolunteer,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from essaim.coordinator.heartbeats import HeartbeatBuffer, HeartbeatPacer
from essaim.coordinator.keys import verify_registration
from essaim.coordinator.settings import MAX_PRIORITY, CoordinatorSettings
from essaim.coordinator.signup import Challenges, bounded_hardware, finite_rate, registration_digest
from essaim.coordinator.store import HeartbeatRecord
from essaim.protocol.auth_metadata import REGISTRATION_MAX_SKEW_SECONDS
from essaim.protocol.client import safe_relative_path
from essaim.protocol.recipe import Recipe, load_recipe, normalize_path, paths_named, under_allowed_dir
from essaim.protocol.types import (
    FINAL_JOB_STATUSES,
    Assignment,
    FileKind,
    Hardware,
    HeartbeatReply,
    HeartbeatReport,
    Job,
    JobFile,
    JobMetrics,
    JobStatus,
    Registration,
    RegistrationRequest,
    Role,
    Volunteer,
    VolunteerStatus,
)

logger = logging.getLogger(__name__)

LIVE_STATUSES = tuple(s for s in JobStatus if s not in FINAL_JOB_STATUSES)
DEFAULT_JOB_LIMIT, MAX_JOB_LIMIT = 100, 1000
DEFAULT_VOLUNTEER_LIMIT, MAX_VOLUNTEER_LIMIT = 1000, 10_000
MAX_NAME_CHARS = 64


def checked_name(name: str) -> str:
    """A volunteer's pseudonym as given at registration or changed since: 1-64 printable characters."""
    stripped = name.strip()
    if not stripped or len(stripped) > MAX_NAME_CHARS or not stripped.isprintable():
        raise InvalidArgument(f"name: expected 1-{MAX_NAME_CHARS} printable characters; got {name!r}")
    return stripped


def checked_team(team: str) -> str:
    """A volunteer's team: empty, or printable characters (cut to 64)."""
    stripped = team.strip()
    if not stripped.isprintable():
        raise InvalidArgument(f"team: expected printable characters; got {team!r}")
    return stripped[:MAX_NAME_CHARS]

class SwarmGateway(Protocol):
    """What the coordinator needs from the swarm services of its jobs.

    The server also calls ``resume(jobs)``, ``check(jobs)`` and ``close()`` when a gateway has them
    (see :mod:`essaim.coordinator.server`).
    """

    def start_job(self, job: Job) -> None: ...
    def stop_job(self, job_id: str) -> None: ...
    def initial_peers(self, job_id: str) -> list[str]: ...
    def issue_swarm_token(self, volunteer: Volunteer, job: Job) -> tuple[str, float]: ...
    def public_key(self) -> bytes: ...


def check_priority(priority: int) -> None:
    if not -MAX_PRIORITY <= int(priority) <= MAX_PRIORITY:
        raise InvalidArgument(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}; got {priority}")


def _limit(value: int, default: int, cap: int) -> int:
    return default if value <= 0 else min(value, cap)


class CoordinatorService:
    """One coordinator's behaviour over its store, blob directory and optional swarm gateway."""

    def __init__(
        self,
        store: Any,
        settings: CoordinatorSettings,
        *,
        gateway: SwarmGateway | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.gateway = gateway
        # cached tokens must outlive a heartbeat interval (the longest, under load), or every
        # heartbeat would read the store
        self.auth = Authenticator(store, cache_ttl=max(600.0, 4 * settings.heartbeat_interval_max_s))
        self.blobs = blobs or BlobStore(
            settings.blobs_dir, settings.artifacts_dir, max_bytes=settings.max_upload_bytes
        )
        self.heartbeats = HeartbeatBuffer(store, flush_interval=settings.heartbeat_flush_interval_s)
        self.pacer = HeartbeatPacer(settings.heartbeat_interval_s, longest=settings.heartbeat_interval_max_s,
                                    busy_target=settings.heartbeat_busy_target)
        self._lock = threading.Lock()
        self._live_jobs: dict[str, JobStatus] = {}  # every job not in a final status
        self._recent: dict[str, tuple[int, JobStatus]] = {}  # local changes not yet seen by a refresh
        self._seq = 0
        self._needs: dict[str, scheduler.JobNeeds] = {}
        self._members: dict[str, dict[str, float]] = {}  # job id -> volunteer id -> last seen

    # ---- life ----

    def startup(self) -> str | None:
        """Load bans and live jobs; create the first admin token. Returns that token (print it once)."""
        banned = self.store.list_volunteers(status=VolunteerStatus.BANNED, limit=1_000_000)
        self.auth.load_banned({v.id: v.reason for v in banned})
        self.refresh_jobs()
        return ensure_admin_token(self.store, self.settings.admin_token_path)

    def refresh_jobs(self) -> None:
        """Re-read the live jobs (others, such as the swarm monitor, may finish them).

        Changes this process made while the store was being read are applied on top, so a job
        submitted or started meanwhile is not forgotten until the next refresh.
        """
        with self._lock:
            seen = self._seq
        live = {j.id: j.status for j in self.store.list_jobs(statuses=LIVE_STATUSES, limit=100_000)}
        with self._lock:
            for job_id, (seq, status) in self._recent.items():
                if seq > seen:
                    self._apply_live(live, job_id, status)
            self._recent = {k: v for k, v in self._recent.items() if v[0] > seen}
            self._live_jobs = live

    @staticmethod
    def _apply_live(live: dict[str, JobStatus], job_id: str, status: JobStatus) -> None:
        if status in FINAL_JOB_STATUSES:
            live.pop(job_id, None)
        else:
            live[job_id] = status

    def _set_live(self, job: Job) -> Job:
        with self._lock:
            self._seq += 1
            self._recent[job.id] = (self._seq, job.status)
            self._apply_live(self._live_jobs, job.id, job.status)
            if job.status in FINAL_JOB_STATUSES:
                self._members.pop(job.id, None)
        return job

    # ---- volunteers ----

    @functools.cached_property
    def challenges(self) -> Challenges:
        return Challenges.from_store(self.store)

    def registration_challenge(self) -> tuple[bytes, float]:
        """A fresh registration nonce and when it expires (essaim.coordinator.signup)."""
        return self.challenges.issue()

    def register(
        self, req: RegistrationRequest, principal: Principal | None, *, client_version: str = ""
    ) -> Registration:
        name = checked_name(req.name)
        if not req.peer_id or len(req.peer_id) > 128:
            raise InvalidArgument("peer_id: expected the volunteer's libp2p peer id (1-128 characters)")
        expires_at = self.challenges.check(req.nonce)
        verify_registration(
            public_key=req.public_key,
            peer_id=req.peer_id,
            name=req.name,
            timestamp=req.timestamp,
            signature=req.signature,
            nonce=req.nonce,
        )
        digest = registration_digest(b"challenge", req.nonce)
        if not self.store.use_once(digest, max(expires_at, req.timestamp + REGISTRATION_MAX_SKEW_SECONDS)):
            raise Unauthenticated(
                "this registration's challenge was used already (a replayed request?): ask for a new one"
            )
        existing = self.store.find_volunteer_by_public_key(req.public_key)
        if existing is not None and (
            existing.status == VolunteerStatus.BANNED or self.auth.is_banned(existing.id)
        ):
            raise BannedVolunteer(existing.id, existing.reason)
        volunteer = self.store.upsert_volunteer(
            Volunteer(
                id="",
                name=name,
                peer_id=req.peer_id,
                public_key=req.public_key,
                hardware=bounded_hardware(req.hardware),
                team=checked_team(req.team),
                client_version=client_version,
            )
        )
        token = create_token(self.store, role=Role.VOLUNTEER, subject=volunteer.id, label=name)
        logger.info("volunteer %s (%s) registered", volunteer.id, name)
        return Registration(
            volunteer_id=volunteer.id,
            token=token,
            heartbeat_interval_seconds=self.pacer.seconds(),
        )

    def offline_timeout(self) -> float:
        """Seconds of silence after which a volunteer is offline: ``heartbeat_timeout_s``, longer
        while volunteers may be heeding a longer interval (:meth:`HeartbeatPacer.timeout`)."""
        return self.pacer.timeout(self.settings.heartbeat_timeout_s)

    def heartbeat(self, report: HeartbeatReport, principal: Principal | None) -> HeartbeatReply:
        """Buffer a heartbeat (memory only: safe to call on the event loop)."""
        check_own_volunteer(principal, report.volunteer_id)
        name = checked_name(report.name) if report.name is not None else None
        team = checked_team(report.team) if report.name is not None else ""
        now = time.time()
        job_ids = [p.job_id for p in report.progress if p.job_id]
        self.heartbeats.add(
            HeartbeatRecord(
                volunteer_id=report.volunteer_id,
                at=now,
                state=report.state[:64],
                reason=report.reason[:256],
                hardware=None if report.hardware is None else bounded_hardware(report.hardware),
                client_version=report.client_version[:64],
                current_job_id=job_ids[0] if job_ids else "",
                samples_per_second=sum(finite_rate(p.samples_per_second) for p in report.progress),
                name=name,
                team=team,
            )
        )
        stop = []
        with self._lock:
            for job_id in job_ids:
                status = self._live_jobs.get(job_id)
                if status is None or status in (JobStatus.AWAITING_APPROVAL, JobStatus.QUEUED, JobStatus.PAUSED):
                    stop.append(job_id)
                else:
                    self._members.setdefault(job_id, {})[report.volunteer_id] = now
        return HeartbeatReply(
            heartbeat_interval_seconds=self.pacer.seconds(), stop_job_ids=stop
        )

    def get_assignment(
        self, volunteer_id: str, hardware: Hardware, principal: Principal | None
    ) -> Assignment:
        check_own_volunteer(principal, volunteer_id)
        retry = self.pacer.seconds()
        candidates = [
            scheduler.Candidate(job, self._needs_of(job))
            for job in self.store.list_jobs(statuses=scheduler.ASSIGNABLE, limit=MAX_JOB_LIMIT)
        ]
        job = scheduler.pick_job(candidates, hardware)
        if job is None:
            return Assignment(job=None, retry_after_seconds=retry, no_job_reason=scheduler.why_none(candidates, hardware))
        if job.status == JobStatus.QUEUED:
            job = self._start(job)
        now = time.time()
        silent = self.offline_timeout()
        with self._lock:
            members = self._members.setdefault(job.id, {})
            for vid, seen in list(members.items()):
                if now - seen > silent:
                    del members[vid]
            staying = volunteer_id in members
            members[volunteer_id] = now
            slots = scheduler.assign_slots(volunteer_id, members)
        # a volunteer still on the job (asking again for a fresh swarm token) keeps the slots its
        # trainer trains on; the store holds them: its updates are checked on that data
        kept = self.store.assigned_slots(job.id, volunteer_id=volunteer_id).get(volunteer_id) if staying else None
        if kept:
            slots = kept
        else:
            self.store.record_assignment(job.id, volunteer_id, slots)
        token, expires_at, peers, public_key = "", 0.0, [], b""
        if self.gateway is not None:
            volunteer = self.store.get_volunteer(volunteer_id)
            token, expires_at = self.gateway.issue_swarm_token(volunteer, job)
            peers = list(self.gateway.initial_peers(job.id))
            public_key = self.gateway.public_key()
        return Assignment(
            job=job,
            initial_peers=peers,
            swarm_token=token,
            swarm_token_expires_at=expires_at,
            shard_ids=slots,
            coordinator_public_key=public_key,
        )

    def _needs_of(self, job: Job) -> scheduler.JobNeeds:
        needs = self._needs.get(job.id)
        if needs is None:
            recipe = load_recipe(job.recipe_yaml, source=f"job {job.id}")
            needs = scheduler.JobNeeds.of(recipe, scheduler.ModelSize.of(
                recipe, [(f.path, f.size) for f in job.files], self._model_config(recipe, job)))
            self._needs[job.id] = needs
        return needs

    def _model_config(self, recipe: Recipe, job: Job) -> dict[str, Any] | None:
        """The config.json of the model a job ships (at most 1 MB), or None."""
        path = normalize_path(recipe.model.name_or_path) + "/config.json"
        entry = next((f for f in job.files if normalize_path(f.path) == path and f.size <= 2**20), None)
        if entry is None:
            return None
        try:
            config = json.loads(self.blobs.path(entry.sha256).read_text())
        except (OSError, ValueError):
            return None
        return config if isinstance(config, dict) else None

    def _start(self, job: Job) -> Job:
        try:
            job = self.store.update_job_status(
                job.id, JobStatus.RUNNING, "volunteers joined", expect=[JobStatus.QUEUED]
            )
        except FailedPrecondition:
            return self._set_live(self.store.get_job(job.id))  # another request started it first
        if self.gateway is not None:
            self.gateway.start_job(job)
        logger.info("job %s is running", job.id)
        return self._set_live(job)

    def list_volunteers(self, *, online_only: bool = False, limit: int = 0) -> list[Volunteer]:
        status = VolunteerStatus.ONLINE if online_only else None
        limit = _limit(limit, DEFAULT_VOLUNTEER_LIMIT, MAX_VOLUNTEER_LIMIT)
        return self.store.list_volunteers(status=status, limit=limit)

    def ban_volunteer(self, volunteer_id: str, reason: str = "", *, undo: bool = False) -> Volunteer:
        """Ban a volunteer; with ``undo`` each running job's runner also takes the job back to its
        last checkpoint from before the volunteer's first averaged round (:data:`UNDO_REQUESTS`)."""
        self.store.get_volunteer(volunteer_id)  # NotFound first
        if undo:
            self.store.add_undo_request(volunteer_id)
        self.store.set_volunteer_status(volunteer_id, VolunteerStatus.BANNED, reason or "banned by an admin")
        self.store.revoke_tokens(volunteer_id)
        self.auth.mark_banned(volunteer_id, reason)
        with self._lock:
            for members in self._members.values():
                members.pop(volunteer_id, None)
        logger.warning("volunteer %s banned: %s", volunteer_id, reason or "(no reason given)")
        return self.store.get_volunteer(volunteer_id)

    def unban_volunteer(self, volunteer_id: str, reason: str = "") -> Volunteer:
        """Lift a ban: the volunteer may register again (its tokens stay revoked; its app registers
        by itself) and its later contributions count. What the ban refused stays refused, and the
        job runners take its key off the swarm's revocation list at their next look."""
        volunteer = self.store.get_volunteer(volunteer_id)  # NotFound first
        if volunteer.status != VolunteerStatus.BANNED:
            raise FailedPrecondition(f"volunteer {volunteer_id} is {volunteer.status.value}, not banned")
        self.store.set_volunteer_status(volunteer_id, VolunteerStatus.OFFLINE, reason or "ban lifted by an admin")
        self.auth.unmark_banned(volunteer_id)
        logger.warning("volunteer %s unbanned: %s", volunteer_id, reason or "(no reason given)")
        return self.store.get_volunteer(volunteer_id)

    def erase_volunteer(self, volunteer_id: str, principal: Principal | None) -> Volunteer:
        """A volunteer erases its own account (an admin, anyone's): its tokens stop at once and
        what it told about itself is forgotten (:meth:`Store.erase_volunteer`); its ledger rows
        stay, under its pseudonymous id, so the ledger still verifies."""
        if principal is None or not principal.is_admin:
            check_own_volunteer(principal, volunteer_id)
        self.store.get_volunteer(volunteer_id)  # NotFound first
        self.store.revoke_tokens(volunteer_id)
        self.auth.forget_subject(volunteer_id)
        self.heartbeats.discard(volunteer_id)
        with self._lock:
            for members in self._members.values():
                members.pop(volunteer_id, None)
        erased = self.store.erase_volunteer(volunteer_id)
        logger.info("volunteer %s erased its account%s", volunteer_id,
                    "" if principal is None or principal.role == Role.VOLUNTEER else f" (by {principal.subject})")
        return erased

    # ---- jobs ----

    def submit_job(
        self, recipe_yaml: str, *, priority: int = 0, files: Sequence[JobFile] = (), principal: Principal
    ) -> Job:
        check_priority(priority)
        cap = self.settings.max_researcher_priority
        if not principal.is_admin and priority > cap:
            raise PermissionDenied(
                f"priority {priority}: researchers may ask for at most {cap} on this coordinator; "
                "submit with a lower one, or ask an admin to raise the job's priority"
            )
        recipe = load_recipe(recipe_yaml, source="recipe")
        if recipe.model.trust_remote_code and not self.settings.allow_remote_code:
            raise InvalidArgument(
                "model.trust_remote_code: this coordinator does not run code from model repositories; "
                "set it to false, or ask the admin to start the coordinator with --allow-remote-code"
            )
        checked = self._check_files(
            recipe.referenced_files(), [recipe.model.name_or_path, recipe.model.tokenizer], files
        )
        for field, name in paths_named(recipe, [f.path for f in checked]):
            if not under_allowed_dir(name, self.settings.model_dirs):
                raise InvalidArgument(
                    f"{field}: {name!r} names a path on the coordinator's disk, which a job may not load; "
                    "ship the files with the job (`essaim job submit` uploads a directory the recipe names "
                    "next to it) or name a hub id (org/name)"
                    + ("" if not self.settings.model_dirs else
                       f"; the admin allows paths under {', '.join(str(d) for d in self.settings.model_dirs)}")
                )
        status = JobStatus.AWAITING_APPROVAL if self.settings.require_approval else JobStatus.QUEUED
        job = self.store.create_job(
            Job(
                id="",
                name=recipe.name,
                status=status,
                recipe_yaml=recipe_yaml,
                owner=principal.subject,
                priority=priority,
                metrics=JobMetrics(target_epochs=recipe.training.epochs),
                files=checked,
            )
        )
        logger.info("job %s (%s) submitted by %s: %s", job.id, job.name, principal.subject, job.status)
        return self._set_live(job)

    def _check_files(
        self, referenced: list[str], model_dirs: Iterable[str | None], files: Sequence[JobFile]
    ) -> list[JobFile]:
        by_path: dict[str, JobFile] = {}
        prefixes = tuple(f"{d.rstrip('/')}/" for d in model_dirs if d)
        for f in files:
            safe_relative_path(f.path, what="file")
            check_sha256(f.sha256)
            if f.path in by_path and by_path[f.path].sha256 != f.sha256:
                raise InvalidArgument(f"file {f.path!r} is listed twice with different contents")
            if f.path not in referenced and not f.path.startswith(prefixes):
                raise InvalidArgument(
                    f"file {f.path!r} is not named by the recipe (dataset.files, eval.files or a model directory)"
                )
            by_path[f.path] = f
        for name in referenced:
            if name not in by_path:
                raise InvalidArgument(
                    f"the recipe names {name!r} but it was not uploaded; `essaim job submit` uploads every "
                    "file the recipe names, or upload it and list it in SubmitJob.files"
                )
        for f in by_path.values():
            if not (self.store.has_blob(f.sha256) and self.blobs.has(f.sha256)):
                raise InvalidArgument(
                    f"file {f.path!r} (sha256 {f.sha256[:12]}...) was not uploaded to this coordinator; "
                    "upload it first (UploadFile), then submit again"
                )
        return list(by_path.values())

    def list_jobs(self, statuses: Iterable[JobStatus] = (), limit: int = 0) -> list[Job]:
        wanted = list(statuses) or None
        return self.explain_queued(
            self.store.list_jobs(statuses=wanted, limit=_limit(limit, DEFAULT_JOB_LIMIT, MAX_JOB_LIMIT)))

    def get_job(self, job_id: str) -> Job:
        return self.explain_queued([self.store.find_job(job_id)])[0]

    def explain_queued(self, jobs: list[Job], online: Sequence[Volunteer] | None = None) -> list[Job]:
        """``jobs``, each queued one with why it has no volunteer yet as its status reason
        (:func:`scheduler.waiting_reason`: none online, none that can run it, a job ahead of it).
        ``online``: the online volunteers, when the caller has listed them already."""
        if not any(j.status == JobStatus.QUEUED for j in jobs):
            return jobs
        candidates = [scheduler.Candidate(j, self._needs_of(j))
                      for j in self.store.list_jobs(statuses=scheduler.ASSIGNABLE, limit=MAX_JOB_LIMIT)]
        if online is None:
            online = self.store.list_volunteers(status=VolunteerStatus.ONLINE, limit=MAX_VOLUNTEER_LIMIT)
        machines = [(v.hardware, v.current_job_id) for v in online]
        return [dataclasses.replace(j, status_reason=scheduler.waiting_reason(j.id, candidates, machines)
                                    or j.status_reason)
                if j.status == JobStatus.QUEUED else j for j in jobs]

    def cancel_job(self, job_id: str, reason: str, principal: Principal) -> Job:
        job = self.store.find_job(job_id)
        job_id = job.id
        if not principal.is_admin and job.owner != principal.subject:
            raise PermissionDenied(
                f"job {job_id} belongs to {job.owner}; only its owner or an admin may cancel it"
            )
        if job.status in FINAL_JOB_STATUSES:
            raise FailedPrecondition(f"job {job_id} is already {job.status}; there is nothing to cancel")
        job = self.store.update_job_status(
            job_id, JobStatus.CANCELLED, reason or f"cancelled by {principal.subject}", expect=LIVE_STATUSES
        )
        if self.gateway is not None:
            self.gateway.stop_job(job_id)
        logger.info("job %s cancelled by %s", job_id, principal.subject)
        return self._set_live(job)

    def approve_job(self, job_id: str, *, reject: bool = False, reason: str = "") -> Job:
        job = self.store.find_job(job_id)
        job_id = job.id
        if job.status != JobStatus.AWAITING_APPROVAL:
            raise FailedPrecondition(
                f"job {job_id} is {job.status}, not awaiting approval; only jobs awaiting approval can be "
                f"{'rejected' if reject else 'approved'}"
            )
        target = JobStatus.REJECTED if reject else JobStatus.QUEUED
        job = self.store.update_job_status(job_id, target, reason, expect=[JobStatus.AWAITING_APPROVAL])
        return self._set_live(job)

    def set_job_priority(self, job_id: str, priority: int) -> Job:
        check_priority(priority)
        return self.store.set_job_priority(self.store.find_job(job_id).id, priority)

    # ---- files ----

    def record_upload(self, sha256: str, size: int, uploaded_by: str | None = None) -> bool:
        """Note a finished upload in the store; True when the store knew it already."""
        return not self.store.add_blob(sha256, size, uploaded_by)

    def check_upload_quota(self, principal: Principal | None, size: int) -> None:
        """ResourceExhausted when ``size`` more bytes would take a researcher past its upload quota."""
        quota = self.settings.upload_quota_bytes
        if not quota or principal is None or principal.is_admin:
            return
        used = self.store.uploaded_bytes(principal.subject)
        if used + size > quota:
            raise ResourceExhausted(
                f"this upload ({size} bytes) would take {principal.subject} to {used + size} bytes uploaded, "
                f"over this coordinator's quota of {quota}; ask its admin to raise upload_quota_bytes"
            )

    def download_sources(
        self, job_id: str, kind: FileKind, path: str, principal: Principal
    ) -> list[tuple[str, Path, str | None]]:
        """(name, file, sha256 or None) of each file a Download sends, in order."""
        job = self.store.find_job(job_id)
        job_id = job.id
        if principal.role == Role.VOLUNTEER:
            if kind != FileKind.JOB_FILE:
                raise PermissionDenied("volunteer tokens may download job files only")
            if job.status != JobStatus.RUNNING:
                raise PermissionDenied(
                    f"job {job_id} is {job.status}; volunteers fetch files of running jobs only"
                )
        if kind == FileKind.JOB_FILE:
            files = [f for f in job.files if not path or f.path == path]
            if path and not files:
                known = ", ".join(f.path for f in job.files) or "none"
                raise NotFound(f"job {job_id} has no file {path!r}; its files are: {known}")
            return [(f.path, self.blobs.path(f.sha256), f.sha256) for f in files]
        if kind == FileKind.ARTIFACT:
            return [(name, p, None) for name, p in self.blobs.artifact_files(job_id)]
        return [(self.blobs.provenance_file(job_id).name, self.blobs.provenance_file(job_id), None)]

    # ---- status ----

    def status(self) -> dict[str, Any]:
        """Counts for /api/v1/status and /metrics."""
        volunteers = {s.value: self.store.count_volunteers(s) for s in VolunteerStatus}
        jobs: dict[str, int] = {s.value: 0 for s in JobStatus}
        running = []
        for job in self.store.list_jobs(limit=MAX_JOB_LIMIT):
            jobs[job.status.value] += 1
            if job.status == JobStatus.RUNNING:
                running.append(
                    {"id": job.id, "name": job.name, "samples_per_second": job.metrics.samples_per_second}
                )
        return {
            "volunteers": volunteers,
            "jobs": jobs,
            "running_jobs": running,
            "pending_heartbeats": len(self.heartbeats),
            "heartbeat_interval_s": self.pacer.seconds(),
            "load": round(self.pacer.load, 3),
            "time": time.time(),
        }
