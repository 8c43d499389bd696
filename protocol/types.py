"""Domain types shared by the coordinator, the volunteer app and the CLI.

These are plain dataclasses: the store returns them, the service works on them, and
:mod:`essaim.protocol.serde` is the only place that turns them into protobuf messages and back.
Times are unix seconds (float).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class JobStatus(enum.StrEnum):
    """Life of a job: awaiting_approval -> queued -> running -> completed | failed | cancelled."""

    AWAITING_APPROVAL = "awaiting_approval"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATUSES


FINAL_JOB_STATUSES = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.REJECTED}
)


class VolunteerStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    BANNED = "banned"
    ERASED = "erased"  # the volunteer erased its account: only its id and ledger rows remain


class Role(enum.StrEnum):
    """Bearer-token roles; an admin may do everything a researcher may."""

    ADMIN = "admin"
    RESEARCHER = "researcher"
    VOLUNTEER = "volunteer"


class FileKind(enum.StrEnum):
    JOB_FILE = "job_file"
    ARTIFACT = "artifact"
    PROVENANCE = "provenance"


@dataclass(slots=True)
class Hardware:
    os: str = ""
    arch: str = ""
    cpu_cores: int = 0
    ram_bytes: int = 0
    accelerator: str = "cpu"  # "cuda", "mps", "rocm" or "cpu"
    gpu_name: str = ""
    gpu_vram_bytes: int = 0
    gpu_count: int = 0

    @property
    def has_gpu(self) -> bool:
        return self.accelerator != "cpu" and self.gpu_count > 0


@dataclass(slots=True)
class JobProgress:
    """What a volunteer reports of its own work on one job in a heartbeat."""

    job_id: str
    epoch: int = 0
    samples: int = 0
    compute_seconds: float = 0.0
    samples_per_second: float = 0.0
    loss: float = 0.0


@dataclass(slots=True)
class Volunteer:
    id: str
    name: str
    peer_id: str
    public_key: bytes = b""
    status: VolunteerStatus = VolunteerStatus.ONLINE
    state: str = ""
    reason: str = ""
    hardware: Hardware = field(default_factory=Hardware)
    last_seen: float = 0.0
    registered_at: float = 0.0
    client_version: str = ""
    team: str = ""
    samples: int = 0
    compute_seconds: float = 0.0
    samples_per_second: float = 0.0
    current_job_id: str = ""


@dataclass(slots=True)
class JobMetrics:
    epoch: int = 0
    target_epochs: int = 0
    samples: int = 0
    samples_per_second: float = 0.0
    loss: float | None = None  # None until a volunteer reported one
    eval_metric: float = 0.0
    eval_metric_name: str = ""
    live_peers: int = 0
    eta_seconds: float = 0.0


@dataclass(slots=True, frozen=True)
class JobFile:
    """A file a recipe references, content-addressed by its sha256."""

    path: str
    sha256: str
    size: int


@dataclass(slots=True)
class Job:
    id: str
    name: str
    status: JobStatus
    recipe_yaml: str
    owner: str = ""
    priority: int = 0
    status_reason: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    metrics: JobMetrics = field(default_factory=JobMetrics)
    has_artifact: bool = False
    files: list[JobFile] = field(default_factory=list)


@dataclass(slots=True)
class Assignment:
    """What a volunteer gets from GetAssignment: a job to train, or when to ask again."""

    job: Job | None
    initial_peers: list[str] = field(default_factory=list)
    swarm_token: str = ""
    swarm_token_expires_at: float = 0.0
    shard_ids: list[int] = field(default_factory=list)
    retry_after_seconds: int = 0
    coordinator_public_key: bytes = b""
    no_job_reason: str = ""  # no job: why the first job waiting cannot run on this machine ("" when none waits)

    @property
    def has_job(self) -> bool:
        return self.job is not None


@dataclass(slots=True)
class Registration:
    volunteer_id: str
    token: str
    heartbeat_interval_seconds: int


@dataclass(slots=True)
class HeartbeatReply:
    heartbeat_interval_seconds: int
    stop_job_ids: list[str] = field(default_factory=list)
    banned: bool = False


@dataclass(slots=True)
class FileChunk:
    path: str
    offset: int
    data: bytes
    size: int
    sha256: str
    last: bool


@dataclass(slots=True)
class LedgerEntry:
    """One append-only row of the contributions ledger, chained to the previous by ``prev_hash``."""

    seq: int
    job_id: str
    volunteer_id: str
    epoch: int
    samples: int
    compute_seconds: float
    created_at: float
    prev_hash: str
    hash: str
    note: str = ""
    # what the volunteer's records claimed for this row before caps and refusals (None on rows
    # written before claims were kept); ``samples`` and ``compute_seconds`` are what was granted
    claimed_samples: int | None = None
    claimed_compute_seconds: float | None = None


SHARD_SLOTS = 64
"""A job's data is split into shards by the trainer; the coordinator hands out *slots* in
``range(SHARD_SLOTS)`` (Assignment.shard_ids), spreading them over the job's volunteers.
:func:`shards_for_slots` maps a volunteer's slots onto the real shards, the same way on every peer."""


def slots_for(index: int, count: int) -> list[int]:
    """The slots of the ``index``-th of ``count`` volunteers on a job (round-robin, never empty)."""
    if count <= 0 or not 0 <= index < count:
        raise ValueError(f"volunteer index {index} out of range for {count} volunteers")
    if count > SHARD_SLOTS:
        return [index % SHARD_SLOTS]
    return [s for s in range(SHARD_SLOTS) if s % count == index]


def shards_for_slots(slots: list[int], num_shards: int) -> list[int]:
    """The real shards a volunteer trains on, given its slots and the dataset's shard count.

    Shard ``r`` belongs to slot ``r % SHARD_SLOTS``. With fewer shards than slots each slot maps
    to shard ``slot % num_shards``. An empty slot list means every shard.
    """
    if num_shards <= 0:
        return []
    if not slots:
        return list(range(num_shards))
    wanted = {s % SHARD_SLOTS for s in slots}
    own = [r for r in range(num_shards) if r % SHARD_SLOTS in wanted]
    return own or sorted({s % num_shards for s in wanted})


@dataclass(slots=True)
class RegistrationRequest:
    """A volunteer asking to join: its identity, proved by a signature (see auth_metadata)."""

    public_key: bytes
    peer_id: str
    name: str
    timestamp: float
    signature: bytes
    hardware: Hardware = field(default_factory=Hardware)
    team: str = ""
    nonce: bytes = b""  # the coordinator's RegistrationChallenge, signed into the message


@dataclass(slots=True)
class HeartbeatReport:
    """What a volunteer's app sends every heartbeat interval. ``hardware`` is None when unchanged;
    ``name`` (with ``team``) is None unless the volunteer changed its pseudonym or team."""

    volunteer_id: str
    state: str = ""
    reason: str = ""
    hardware: Hardware | None = None
    progress: list[JobProgress] = field(default_factory=list)
    client_version: str = ""
    name: str | None = None
    team: str = ""
