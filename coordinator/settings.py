"""The coordinator's one settings object.

Precedence: command-line flags (passed as keyword arguments) > environment variables
``ESSAIM_COORDINATOR_<NAME>`` > defaults. ``essaim coordinator serve`` builds it; every other
coordinator module receives it.

    settings = CoordinatorSettings(grpc_port=0, data_dir=tmp)   # flags win over the environment
    settings.resolved_db_url()                                    # sqlite file in data_dir by default
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ADMIN_TOKEN_FILE = "admin-token"

MAX_PRIORITY = 1000  # a job's priority is within +-MAX_PRIORITY (higher runs first)


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("essaim")) / "coordinator"


class CoordinatorSettings(BaseSettings):
    """Everything an admin may tune. Each docstring says which symptom means "change this"."""

    model_config = SettingsConfigDict(env_prefix="ESSAIM_COORDINATOR_", extra="ignore", validate_default=True)

    host: str = "127.0.0.1"
    """Address both servers listen on. Volunteers on other machines get "cannot reach the
    coordinator": set 0.0.0.0 (and put TLS in front)."""

    tls_cert: Path | None = None
    """The coordinator's certificate chain (PEM) for gRPC and HTTP: with ``tls_key``, both ports speak
    TLS only. Any CA will do (Let's Encrypt's, or your own given to volunteers as ESSAIM_CA_FILE)."""

    tls_key: Path | None = None
    """The certificate's private key (PEM). Keep it readable by the coordinator's user only."""

    insecure: bool = False
    """Serve plain text on an address other than loopback. Only behind a TLS-terminating proxy on
    the same host, or on a closed test network: tokens cross in clear otherwise. Without it, a
    coordinator on a public address refuses to start with no certificate."""

    grpc_port: int = Field(default=50051, ge=0, le=65535)
    """gRPC API port; 0 picks a free one (printed on the ready line). "address already in use"
    at start: pick another."""

    http_port: int = Field(default=8080, ge=0, le=65535)
    """Dashboard, JSON API and /metrics port; 0 picks a free one."""

    data_dir: Path = Field(default_factory=default_data_dir)
    """Holds the SQLite store, uploaded blobs, artifacts and the admin token file. Disk full
    errors on upload: move it to a bigger disk."""

    db_url: str | None = None
    """SQLAlchemy URL of the store; default a SQLite file in data_dir. "database is locked" or
    heartbeat flushes falling behind under many volunteers: use postgresql+psycopg://..."""

    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    """How often volunteers are told to heartbeat while the coordinator is not loaded; under load
    it tells them to wait longer, up to heartbeat_interval_max_s (essaim_heartbeat_interval_seconds
    on /metrics). Heartbeat latency climbing with more volunteers even so: raise it."""

    heartbeat_interval_max_s: float = Field(default=300.0, gt=0)
    """The longest interval the coordinator tells volunteers under load. A volunteer's online
    state and its job's stop orders are that late at worst: lower it for fresher state, raise
    it (or add API processes) when heartbeats still time out at the longest."""

    heartbeat_busy_target: float = Field(default=0.75, gt=0)
    """The share of one core the API process may spend before volunteers are told a longer
    heartbeat interval (essaim_load on /metrics is the load against it). Heartbeat p99 high while
    essaim_load stays under 1: lower it."""

    heartbeat_timeout_s: float = Field(default=90.0, gt=0)
    """A volunteer silent this long is marked offline (as many times longer while volunteers are
    told a longer interval). Volunteers flapping online/offline on slow networks: raise it (keep
    it a few intervals long)."""

    require_approval: bool = False
    """New jobs wait in awaiting_approval until an admin approves them. Unknown researchers
    submitting jobs you did not expect: turn it on."""

    allow_remote_code: bool = False
    """Accept recipes with model.trust_remote_code: true (their model code runs on volunteers'
    machines). Researchers get "trust_remote_code is refused": turn on only if you vet jobs."""

    max_researcher_priority: int = Field(default=0, ge=0, le=MAX_PRIORITY)
    """The highest priority a researcher may ask for at submission (an admin sets any, up to
    1000, then or later). 0: researchers' jobs queue in order; raise it to let them rank their own."""

    model_dirs: list[Path] = Field(default_factory=list)
    """Directories of the coordinator's disk that recipes may name, by absolute path, as their
    model, tokenizer or dataset (for volunteers that see the same path: a cluster's shared disk).
    Any other path is refused at submission ("names a path on the coordinator's disk"): add its
    directory here only if you trust every researcher with its contents."""

    max_averaging_peers: int = Field(default=4, ge=1, le=64)
    """The most averaging peers (processes of this host, each reducing a share of every round) a job
    gets: a recipe's ``training.averaging_peers``, or one per 256 MB of its trainable parameters. A
    job's rounds time out while this host's CPU or uplink is saturated: raise it (on more cores), or
    lower it on a small host."""

    reachability_second_address: str | None = None
    """A second IP address of this host, one volunteers are never given, from which the jobs' peers
    also test a volunteer that they could dial back: without one, a volunteer behind a router that
    lets in any address its home has contacted (and only those) is taken for reachable, joins as a
    full peer, and other volunteers cannot dial it. Add an address to the host (a second IPv4 on the
    same interface does) and name it here."""

    public_pages: bool = True
    """Serve the dashboard and JSON status to anyone; off keeps only /healthz and /metrics."""

    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    """Largest single gRPC message accepted; larger ones get RESOURCE_EXHAUSTED. Researchers
    with huge inline recipes hit it: raise it (file uploads are chunked and are not limited)."""

    max_upload_bytes: int = Field(default=50 * 1024**3, ge=0)
    """Largest file accepted by UploadFile. Uploads refused with "larger than the coordinator
    accepts": raise it, or serve the dataset from a hub instead."""

    upload_quota_bytes: int = Field(default=200 * 1024**3, ge=0)
    """Bytes each researcher may upload in all (files it uploaded first; admins have no quota; 0:
    no quota). Researchers get "over this coordinator's quota": raise it, or clean up old jobs."""

    max_pending_rpcs: int = Field(default=10_000, ge=100)
    """Calls allowed to wait for the server's attention before gRPC cancels new ones. Volunteers
    see CANCELLED during heartbeat bursts: raise it; memory grows under overload: lower it."""

    open_registration: bool = True
    """Anyone may register as a volunteer. Unwanted registrations: turn it off and hand out
    volunteer tokens (``essaim coordinator token create --role volunteer``)."""

    signups_per_minute_per_source: int = Field(default=10, ge=0)
    """Registrations without a token a minute from one address (an IPv6 /64), in bursts of as
    many (0: no limit). Behind a reverse proxy every volunteer has the proxy's address: raise it
    there. Volunteers see "too many registrations from this address" and try again later.
    Registration challenges are limited to four times as many."""

    signups_per_minute: int = Field(default=600, ge=0)
    """Registrations without a token a minute from everyone together (0: no limit). A launch
    that brings more volunteers at once: raise it."""

    heartbeat_flush_interval_s: float = Field(default=0.2, gt=0)
    """How often buffered heartbeats are written to the store in one batch. Store CPU high
    under load: raise it (fewer, bigger batches); a crash loses at most this much."""

    @field_validator("data_dir", mode="before")
    @classmethod
    def _expand(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str | Path) else value

    @field_validator("reachability_second_address")
    @classmethod
    def _an_ip(cls, value: str | None) -> str | None:
        if value:
            ipaddress.ip_address(value)  # ValueError: pydantic reports "not a valid IP address"
        return value or None

    def resolved_db_url(self) -> str:
        """The store URL: db_url, or the SQLite file ``data_dir/coordinator.db``."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}"

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / ADMIN_TOKEN_FILE
