"""The pipe between the volunteer app and its trainer process: JSON lines both ways.

    app -> trainer (stdin):   {"cmd": "pause"}  {"cmd": "resume"}  {"cmd": "stop"}  {"cmd": "finish"}
                              {"cmd": "throttle", "threads": 1, "duty_cycle": 0.25}
                              {"cmd": "token", "token": "essaim-swarm-v1...."}   (a refreshed swarm token)
    trainer -> app (stdout):  {"event": "started", ...}  {"event": "joined", ...}  {"event": "progress", ...}
                              {"event": "epoch", ...}  {"event": "paused"}  {"event": "resumed"}
                              {"event": "stopped", "reason": ...}  {"event": "error", "message": ...}

Unknown fields are ignored both ways, so an app and a trainer of different versions still talk;
an unknown command or event kind is reported, not fatal. The trainer's job description is a
:class:`TrainerAssignment` JSON file (``--assignment``). This module is light (pydantic only): the
app imports it without torch or hivemind.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Any, Literal

from essaim.protocol.types import Assignment
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- commands (app -> trainer) ----
class StopCommand(_Message):
    """Stop within about a second; the current epoch's samples may not be averaged in."""

    cmd: Literal["stop"] = "stop"


class FinishCommand(_Message):
    """Finish the current epoch (its averaging round included), then stop."""

    cmd: Literal["finish"] = "finish"


class PauseCommand(_Message):
    """Stop using the CPU/GPU within about a second; keep the DHT and the model in memory."""

    cmd: Literal["pause"] = "pause"


class ResumeCommand(_Message):
    cmd: Literal["resume"] = "resume"


class ThrottleCommand(_Message):
    """Use at most ``threads`` CPU threads, and compute only ``duty_cycle`` of the wall time."""

    cmd: Literal["throttle"] = "throttle"
    threads: int | None = Field(default=None, ge=1, le=1024)
    duty_cycle: float | None = Field(default=None, gt=0.0, le=1.0)


class TokenCommand(_Message):
    """A fresh swarm token for the same job (the app got it from GetAssignment)."""

    cmd: Literal["token"] = "token"
    token: str = Field(min_length=1, max_length=16384)


Command = Annotated[
    StopCommand | FinishCommand | PauseCommand | ResumeCommand | ThrottleCommand | TokenCommand,
    Field(discriminator="cmd"),
]
_COMMANDS: TypeAdapter[Any] = TypeAdapter(Command)


class ProtocolError(ValueError):
    """A line that is not a valid message; the text says what is wrong."""


def parse_command(line: str | bytes) -> Any:
    """The command in one JSON line; raises ProtocolError when it is not one."""
    try:
        return _COMMANDS.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"not a trainer command: {exc.errors(include_url=False)[0]['msg']}") from None


# ---- events (trainer -> app) ----
class _Event(_Message):
    time: float = Field(default_factory=time.time)


class StartedEvent(_Event):
    event: Literal["started"] = "started"
    job_id: str
    volunteer_id: str = ""
    peer_id: str = ""
    maddrs: list[str] = Field(default_factory=list)
    mode: str = ""
    device: str = ""
    pid: int = 0
    client_mode: bool = False  # outgoing connections only: it averages through full peers
    reachability: str = ""  # public | upnp | nat | unknown (checked with the coordinator), "" when set by hand
    observed: str = ""  # the address the coordinator saw this machine's connection come from
    reachability_reason: str = ""


class JoinedEvent(_Event):
    """The trainer joined the swarm; ``source`` of its state: "peers", "local" (its state file) or "none"."""

    event: Literal["joined"] = "joined"
    epoch: int = 0
    source: str = "none"


class _ProgressFields(_Event):
    epoch: int = 0
    samples: int = 0
    loss: float | None = None
    samples_per_second: float = 0.0
    compute_seconds: float = 0.0
    peers: int = 0
    bytes_sent: int = 0  # the swarm traffic since the trainer started (essaim.client.netlimit.TrafficMeter)
    bytes_received: int = 0
    round_epoch: int | None = None  # the last averaging round this peer took part in (the epoch it closed)
    round_peers: int | None = None  # the other volunteers it averaged with in that round
    round_error: str = ""  # why that round averaged with nobody ("" when it averaged)


class ProgressEvent(_ProgressFields):
    event: Literal["progress"] = "progress"


class EpochEvent(_ProgressFields):
    """The swarm moved to ``epoch`` (this peer's samples of the previous one were averaged in)."""

    event: Literal["epoch"] = "epoch"


class PausedEvent(_Event):
    event: Literal["paused"] = "paused"
    epoch: int = 0


class ResumedEvent(_Event):
    event: Literal["resumed"] = "resumed"
    epoch: int = 0


STATE_FILES = ("swarm_state.pt", "cache")
"""In a trainer's work dir, what a completed job no longer needs: its resumable state
(essaim.swarm.peer.STATE_FILE) and the job file cache of versions before the shared one. Its
counters (what it reported) and its log stay."""

StopReason = Literal["stopped", "finished", "completed", "signal", "error", "stdin-closed", "network-limit"]
"""Why a trainer stopped; "network-limit" (essaim.client.netlimit.NETWORK_LIMIT): its own traffic
reached what was left of the volunteer's daily network limit when it started."""


class StoppedEvent(_ProgressFields):
    """The last event of a trainer: why it ended and its final totals."""

    event: Literal["stopped"] = "stopped"
    reason: str = "stopped"


class ErrorEvent(_Event):
    """Something went wrong; ``fatal`` errors are followed by ``stopped`` (reason "error")."""

    event: Literal["error"] = "error"
    message: str
    kind: str = ""
    fatal: bool = True


Event = Annotated[
    StartedEvent | JoinedEvent | ProgressEvent | EpochEvent | PausedEvent | ResumedEvent | StoppedEvent | ErrorEvent,
    Field(discriminator="event"),
]
_EVENTS: TypeAdapter[Any] = TypeAdapter(Event)


def parse_event(line: str | bytes) -> Any:
    """The event in one JSON line from the trainer; raises ProtocolError when it is not one."""
    try:
        return _EVENTS.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"not a trainer event: {exc.errors(include_url=False)[0]['msg']}") from None


def encode(message: BaseModel) -> str:
    """One JSON line (with its newline) for a command or an event."""
    return json.dumps(message.model_dump(mode="json"), separators=(",", ":")) + "\n"


# ---- the job description (--assignment FILE) ----
class JobFileEntry(_Message):
    path: str
    sha256: str = ""
    size: int = 0


class TrainerAssignment(_Message):
    """Everything a trainer needs to train one job, written by the app (or a test) as JSON.

    ``local_files`` (recipe path -> local file) or ``base_dir`` (where recipe paths resolve) let a
    headless trainer run without a coordinator; otherwise ``job_files`` are downloaded from the
    coordinator into the content cache. ``coordinator_public_key`` is base64 of the key bytes (or
    the PEM/OpenSSH text itself).
    """

    job_id: str = Field(min_length=1)
    recipe_yaml: str = Field(min_length=1)
    job_files: list[JobFileEntry] = Field(default_factory=list)
    local_files: dict[str, str] = Field(default_factory=dict)
    base_dir: str | None = None
    initial_peers: list[str] = Field(default_factory=list)
    reducers: list[str] = Field(
        default_factory=list,
        description="peer ids of the coordinator's averaging peers: under robust aggregation only they "
        "reduce this trainer's rounds (empty: any full peer)",
    )
    swarm_token: str = Field(min_length=1)
    coordinator_public_key: str = Field(min_length=1)
    shard_ids: list[int] = Field(default_factory=list, description="shard slots (Assignment.shard_ids)")
    volunteer_id: str = Field(min_length=1)
    identity_key_path: str = Field(min_length=1, description="the volunteer's RSA key (PEM), made if missing")
    p2p_identity_path: str | None = Field(default=None, description="default: the key path with .p2p")
    host_maddrs: list[str] = Field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce_maddrs: list[str] = Field(default_factory=list)
    client_mode: Literal["auto", "on", "off"] = "auto"
    device: str | None = None
    threads: int | None = Field(default=None, ge=1)
    duty_cycle: float = Field(default=1.0, gt=0.0, le=1.0)
    paused: bool = Field(default=False, description="join the swarm, then wait for a resume command")
    allow_remote_code: bool = False

    def coordinator_key_bytes(self) -> bytes:
        text = self.coordinator_public_key.strip()
        if text.startswith(("ssh-rsa", "-----BEGIN")):
            return text.encode()
        return base64.b64decode(text)


def peer_ids(maddrs: list[str]) -> list[str]:
    """The peer ids (base58) of the multiaddresses that name one (``.../p2p/<id>``)."""
    return [m.rsplit("/p2p/", 1)[1] for m in maddrs if "/p2p/" in m]


def assignment_for_trainer(
    assignment: Assignment,
    *,
    volunteer_id: str,
    identity_key_path: str,
    p2p_identity_path: str | None = None,
    **options: Any,
) -> TrainerAssignment:
    """The trainer's job description from a coordinator Assignment (which must hold a job)."""
    job = assignment.job
    if job is None:
        raise ValueError("the assignment holds no job")
    return TrainerAssignment(
        job_id=job.id,
        recipe_yaml=job.recipe_yaml,
        job_files=[JobFileEntry(path=f.path, sha256=f.sha256, size=f.size) for f in job.files],
        initial_peers=list(assignment.initial_peers),
        # the coordinator hands out the addresses of its averaging peers, and only those
        reducers=peer_ids(assignment.initial_peers),
        swarm_token=assignment.swarm_token,
        coordinator_public_key=base64.b64encode(assignment.coordinator_public_key).decode(),
        shard_ids=list(assignment.shard_ids),
        volunteer_id=volunteer_id,
        identity_key_path=identity_key_path,
        p2p_identity_path=p2p_identity_path,
        **options,
    )
