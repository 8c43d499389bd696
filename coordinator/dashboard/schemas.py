"""The JSON API's response and request models (they make up the dashboard's part of /openapi.json).

:mod:`.queries` builds these from the store's dataclasses; :mod:`.api` returns them and
:mod:`.pages` renders the same objects into HTML, so a page never shows a number the API does not.
Times are unix seconds; compute time is seconds (``compute_hours`` is given for convenience).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class HardwareOut(_Out):
    os: str
    arch: str
    cpu_cores: int
    ram_bytes: int
    accelerator: str = Field(description='"cuda", "mps", "rocm" or "cpu"')
    gpu_name: str
    gpu_vram_bytes: int
    gpu_count: int
    summary: str = Field(description="one human line, as the dashboard shows it")


class VolunteerOut(_Out):
    id: str
    name: str = Field(description="the pseudonym the volunteer chose (a stand-in when it chose none)")
    team: str
    status: str = Field(description="online, offline or banned")
    state: str = Field(description="what the app reported: training, idle, paused, ...")
    reason: str = Field(description="why it is in that state (or why it was banned)")
    hardware: HardwareOut = Field(description="as the volunteer declared it (bounded to what one machine can hold)")
    samples_per_second: float = Field(description="the throughput the volunteer reports now (a claim)")
    measured_samples_per_second: float = Field(
        description="accepted samples over accepted compute time in the ledger: the throughput the swarm measured")
    last_seen: float
    registered_at: float
    client_version: str
    current_job_id: str
    samples: int = Field(description="accepted samples in the ledger, all jobs")
    compute_seconds: float = Field(description="accepted compute time in the ledger, all jobs")
    private: bool = Field(
        default=False,
        description="true when state, reason, hardware, reported speed, client and current job are withheld: "
        "they are for the volunteer itself and admins")


class VolunteerList(_Out):
    total: int = Field(description="volunteers matching the filter, all pages")
    items: list[VolunteerOut]


class OnlinePoint(_Out):
    at: float
    online: int
    samples_per_second: float = Field(description="summed throughput of the running jobs")


class OnlineSeries(_Out):
    interval_seconds: float = Field(description="how often the coordinator samples the swarm")
    points: list[OnlinePoint]


class JobMetricsOut(_Out):
    """A job's figures now; a job that ended shows no throughput and no peers."""

    epoch: int
    target_epochs: int
    samples: int
    samples_per_second: float
    loss: float | None = Field(description="null until a volunteer reported one")
    eval_metric: float
    eval_metric_name: str
    live_peers: int
    eta_seconds: float = Field(description="0 when unknown")


class JobFileOut(_Out):
    path: str
    sha256: str
    size: int


class JobOut(_Out):
    id: str
    name: str
    description: str
    status: str
    status_reason: str
    owner: str
    priority: int
    created_at: float
    updated_at: float
    metrics: JobMetricsOut
    volunteers_online: int = Field(description="online volunteers training this job now")
    has_artifact: bool


class JobList(_Out):
    items: list[JobOut]


class ContributionOut(_Out):
    rank: int
    volunteer_id: str
    volunteer_name: str
    team: str
    samples: int
    compute_seconds: float
    compute_hours: float
    epochs: int = Field(description="distinct (job, epoch) pairs the volunteer contributed to")


class TeamOut(_Out):
    rank: int
    team: str
    members: int
    samples: int
    compute_seconds: float
    compute_hours: float


class Leaderboard(_Out):
    job_id: str | None = Field(description="the job these totals are for; null for all jobs")
    total_samples: int
    total_compute_hours: float
    volunteers: list[ContributionOut]
    teams: list[TeamOut]


class JobDetail(JobOut):
    recipe_yaml: str
    recipe: dict[str, Any] | None = Field(description="the parsed recipe; null if it no longer validates")
    files: list[JobFileOut] = Field(description="the job's dataset and eval files with their sha256")
    volunteers: list[VolunteerOut] = Field(description="volunteers training this job now")
    contributors: list[ContributionOut]
    has_provenance: bool
    has_model_card: bool


class SwarmPeerOut(_Out):
    """How one volunteer takes part in one job's swarm (admins, and the volunteer itself)."""

    job_id: str
    job_name: str
    volunteer_id: str
    volunteer_name: str = Field(description="the volunteer's pseudonym")
    reachability: str = Field(
        description='"public" (a full peer others can dial), "upnp" (a full peer through a port its router '
        'mapped), "nat" (behind a NAT: it averages through the coordinator\'s averaging peer) or "unknown"'
    )
    reachability_text: str = Field(description="the reachability as the dashboard shows it")
    observed: str | None = Field(
        description="the IP address the coordinator's peer saw it connect from: admins only, null for anyone else"
    )
    last_round_epoch: int | None = Field(description="epoch of the job's newest averaging round; null before the first")
    averaged_in_last_round: bool = Field(description="whether that round averaged this volunteer's update")
    last_round_text: str = Field(description='"averaged in epoch N" or "not in the last round (epoch N)"')
    updated_at: float = Field(description="when the job's runner last wrote this")


class SwarmPeerList(_Out):
    items: list[SwarmPeerOut]


class ProgressPoint(_Out):
    at: float
    epoch: int
    samples: int
    samples_per_second: float
    loss: float | None = Field(description="null where no loss was reported")
    eval_metric: float | None = Field(description="null where no evaluation was reported")
    live_peers: int


class ProgressOut(_Out):
    job_id: str
    eval_metric_name: str
    points: list[ProgressPoint]


class LedgerEntryOut(_Out):
    seq: int
    job_id: str
    volunteer_id: str
    epoch: int
    samples: int = Field(description="samples granted")
    compute_seconds: float = Field(description="compute time granted")
    created_at: float
    note: str = Field(description="why granted differs from claimed: caps, refusals (bans, failed validation)")
    prev_hash: str
    hash: str
    claimed_samples: int | None = Field(None, description="samples the volunteer's records claimed for this row "
                                                           "(null on rows written before claims were kept)")
    claimed_compute_seconds: float | None = None


class LedgerPage(_Out):
    items: list[LedgerEntryOut]
    next_after_seq: int | None = Field(description="pass as after_seq for the next page; null at the end")


class LedgerVerificationOut(_Out):
    ok: bool
    checked: int = Field(description="rows found good before the first bad one (all when ok)")
    first_bad_seq: int | None
    message: str
    head_seq: int = Field(description="seq of the last row (0 for an empty ledger)")
    head_hash: str = Field(description="hash of the last row; publish it to detect truncation later")
    signed_head: SignedHeadOut | None = Field(
        default=None, description="the head as the coordinator signs it (GET /api/v1/ledger/head); none without its key")


class SignedHeadOut(_Out):
    """The ledger's head signed with the coordinator's swarm key (essaim.coordinator.store.ledger).
    Save it: `essaim coordinator ledger verify --head FILE` then finds rows cut off or a rewritten chain."""

    type: str
    version: int
    seq: int
    hash: str
    signed_at: float
    signature: str = Field(description="RSASSA-PSS (SHA-256) over the head's canonical JSON, base64")
    public_key: str = Field(description="the coordinator's swarm public key, DER SubjectPublicKeyInfo, base64")


class ReasonIn(BaseModel):
    reason: str = Field(default="", max_length=500)


class BanIn(ReasonIn):
    undo: bool = Field(default=False, description="also take each running job back to its last checkpoint "
                       "from before the volunteer's first averaged round")


class PriorityIn(BaseModel):
    priority: int = Field(ge=-1000, le=1000)
