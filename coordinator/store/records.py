"""Plain records the store takes and returns besides the shared domain types.

The coordinator's service and dashboard build :class:`HeartbeatRecord` and :class:`LedgerDraft`
and read :class:`TokenRecord` and :class:`Contribution`; a job's runner writes :class:`SwarmPeer`
rows (:mod:`essaim.coordinator.swarm_view`) that the dashboard reads. None of them is an ORM object.
"""

from __future__ import annotations

from dataclasses import dataclass

from essaim.protocol.types import Hardware, Role


@dataclass(slots=True, frozen=True)
class TokenRecord:
    """A stored bearer token (the store only ever sees its hash)."""

    role: Role
    subject: str  # a volunteer id, or a user name for admins and researchers
    label: str
    created_at: float
    expires_at: float | None
    revoked: bool
    id: int = 0  # the store's row id: how admins name a token (never the token itself)

    def usable(self, now: float) -> bool:
        """True when the token is neither revoked nor expired at ``now``."""
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


@dataclass(slots=True, frozen=True)
class HeartbeatRecord:
    """One heartbeat, as the server buffers it before :meth:`Store.record_heartbeats`.

    ``hardware=None`` and ``client_version=""`` keep what the store already has; ``current_job_id=""``
    means the volunteer trains nothing now.
    """

    volunteer_id: str
    at: float
    state: str = ""
    reason: str = ""
    hardware: Hardware | None = None
    client_version: str = ""
    current_job_id: str = ""
    samples_per_second: float = 0.0
    name: str | None = None  # a new pseudonym (and team), when the volunteer changed them
    team: str = ""


@dataclass(slots=True, frozen=True)
class LedgerDraft:
    """A ledger row before the store numbers and chains it. ``created_at=None`` means now."""

    job_id: str
    volunteer_id: str
    epoch: int
    samples: int
    compute_seconds: float
    note: str = ""
    created_at: float | None = None
    claimed_samples: int | None = None  # before caps and refusals; samples/compute are granted
    claimed_compute_seconds: float | None = None


@dataclass(slots=True, frozen=True)
class Contribution:
    """What one volunteer gave, summed over the ledger (one job's rows, or all of them).

    ``epochs`` counts distinct (job, epoch) pairs the volunteer contributed to.
    """

    volunteer_id: str
    volunteer_name: str
    samples: int
    compute_seconds: float
    epochs: int


@dataclass(slots=True, frozen=True)
class SwarmPeer:
    """How one volunteer takes part in one job's swarm, as the job's runner last saw it.

    ``reachability`` is ``"public"`` (a full peer others can dial), ``"nat"`` (behind a NAT: it
    averages through the coordinator's averaging peer) or ``"unknown"``; ``observed`` is the IP the
    coordinator's peer saw it connect from (private: only admins may see it).
    ``last_round_epoch`` is the epoch of the job's newest averaging round (None before the first),
    and ``averaged_in_last_round`` whether that round averaged this volunteer's update.
    """

    job_id: str
    volunteer_id: str
    reachability: str = "unknown"
    observed: str = ""
    last_round_epoch: int | None = None
    averaged_in_last_round: bool = False
    updated_at: float = 0.0
