"""The volunteer app's connection to its coordinator, on its own thread.

    link = CoordinatorLink(address="host:50051", identity=key_file, registration_file=f,
                           name="ada", team="", hardware=observer.hardware)
    link.start()
    link.report(state="training", reason="...", progress=[JobProgress(...)])
    link.want_assignment(True);  link.take_assignment()     # an Assignment with a job, once
    link.snapshot()                                         # connected, volunteer id, last error...
    link.stop()

It registers (once per coordinator: the volunteer id and token are kept in ``registration.json``),
heartbeats every interval the coordinator asks for (a little early at random, so that volunteers
told one interval together spread out), and fetches an assignment when the supervisor
wants one. While the coordinator is unreachable it waits with exponential backoff and full jitter
(:class:`essaim.protocol.retry.RetryPolicy`) and keeps the last state to report, so the app's
1-second loop never waits on the network and training goes on through an outage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from essaim.client import keys
from essaim.client.errors import ClientError
from essaim.protocol.errors import EssaimError, PermissionDenied, Unauthenticated, Unavailable
from essaim.protocol.retry import RetryPolicy
from essaim.protocol.types import Assignment, Hardware, JobProgress
from essaim.protocol.version import __version__

HEARTBEAT_JITTER = 0.15  # a heartbeat comes up to this share of the interval early, at random

logger = logging.getLogger(__name__)
ClientFactory = Callable[..., Any]
"""``factory(address, token=...)`` -> an object with CoordinatorClient's register/heartbeat/get_assignment."""


def default_client_factory(address: str, *, token: str | None = None) -> Any:
    """The app's client: :class:`LiteClient` (HTTP/2 in Python), so the app never loads grpcio."""
    from essaim.protocol.lite_client import LiteClient  # imported only when a coordinator is set

    return LiteClient(address, token=token, timeout=10.0)


def erase_account(*, address: str, registration_file: Path, identity_file: Path,
                  client_factory: ClientFactory = default_client_factory) -> str:
    """Erase this machine's volunteer account on the coordinator at ``address`` (its tokens stop;
    its pseudonym, team, hardware and state are forgotten there; its id and ledger rows remain),
    then forget it here: the saved registration, and the identity key when no other coordinator
    knows it (joining again makes a new volunteer). Returns the erased volunteer id."""
    try:
        saved = json.loads(registration_file.read_text())
    except (OSError, ValueError):
        saved = {}
    saved = saved if isinstance(saved, dict) else {}
    entry = saved.get(address)
    if not isinstance(entry, dict) or not entry.get("token") or not entry.get("volunteer_id"):
        raise ClientError(f"this machine has no volunteer account on {address} (nothing saved in {registration_file})")
    volunteer_id = str(entry["volunteer_id"])
    client = client_factory(address, token=str(entry["token"]))
    try:
        client.erase_account(volunteer_id)
    finally:
        client.close()
    del saved[address]
    tmp = registration_file.with_name(registration_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(saved, f)
    os.replace(tmp, registration_file)
    if not saved:
        identity_file.unlink(missing_ok=True)
    logger.info("erased volunteer %s on %s", volunteer_id, address)
    return volunteer_id


@dataclass(slots=True)
class LinkStatus:
    address: str
    connected: bool = False
    volunteer_id: str = ""
    last_error: str = ""
    retry_at: float = 0.0  # unix seconds of the next attempt after a failure
    banned: bool = False
    next_assignment_at: float = 0.0
    stop_job_ids: set[str] = field(default_factory=set)
    no_job_reason: str = ""  # the coordinator's last "no job": why the job waiting cannot run here

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "connected": self.connected,
            "volunteer_id": self.volunteer_id,
            "error": self.last_error,
            "retry_in_seconds": max(round(self.retry_at - time.time()), 0) if self.last_error else 0,
            "banned": self.banned,
        }


class CoordinatorLink:
    """Register, heartbeat and fetch assignments; every public method is thread-safe and non-blocking."""

    def __init__(
        self,
        *,
        address: str,
        identity_file: Path,
        registration_file: Path,
        name: str,
        team: str = "",
        hardware: Callable[[], Hardware],
        client_factory: ClientFactory = default_client_factory,
        backoff: RetryPolicy | None = None,
        ca_file: str = "",
    ) -> None:
        self.address = address
        self.ca_file = ca_file  # the clients take it from ESSAIM_CA_FILE, which the supervisor sets
        self.identity_file = identity_file
        self.registration_file = registration_file
        self.name = name
        self.team = team
        self._hardware_fn = hardware
        self._factory = client_factory
        self._backoff_policy = backoff or RetryPolicy(attempts=10**6, base=1.0, cap=60.0)
        self._backoff: Iterator[float] = self._backoff_policy.delays()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._status = LinkStatus(address=address)
        self._token = ""
        self._interval = 30.0
        self._next_heartbeat = 0.0
        self._state, self._reason = "starting", ""
        self._progress: list[JobProgress] = []
        self._want = False
        self._assignment: Assignment | None = None
        self._hardware: Hardware | None = None
        self._hardware_sent: Hardware | None = None
        self._client: Any = None

    # ---- the supervisor's side ----

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="coordinator-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    def report(self, *, state: str, reason: str, progress: list[JobProgress]) -> None:
        with self._lock:
            changed = state != self._state
            self._state, self._reason, self._progress = state, reason, list(progress)
        if changed:  # a new state is worth a heartbeat now, not at the next interval
            self._next_heartbeat = 0.0
            self._wake.set()

    def want_assignment(self, want: bool) -> None:
        with self._lock:
            wake = want and not self._want
            self._want = want
        if wake:
            self._wake.set()

    def take_assignment(self) -> Assignment | None:
        with self._lock:
            assignment, self._assignment = self._assignment, None
            return assignment

    def defer_assignment(self, seconds: float) -> None:
        """Ask for the next assignment no sooner than ``seconds`` from now (the last one was unusable)."""
        with self._lock:
            self._status.next_assignment_at = time.time() + seconds

    def take_stop_job_ids(self) -> set[str]:
        with self._lock:
            ids, self._status.stop_job_ids = self._status.stop_job_ids, set()
            return ids

    def snapshot(self) -> LinkStatus:
        with self._lock:
            s = self._status
            return LinkStatus(**{f: getattr(s, f) for f in s.__dataclass_fields__})

    @property
    def token(self) -> str:
        return self._token

    # ---- the link's thread ----

    def _run(self) -> None:
        self._load_registration()
        while not self._stop.is_set():
            try:
                self._step()
                self._ok()
                wait = self._next_wait()
            except Unavailable as exc:
                wait = self._failed(str(exc))
            except Unauthenticated as exc:
                logger.warning("the coordinator no longer knows this volunteer (%s); registering again", exc)
                self._forget_registration()
                wait = self._failed(str(exc))
            except PermissionDenied as exc:
                with self._lock:
                    self._status.banned = True
                wait = self._failed(f"refused by the coordinator: {exc}")
            except EssaimError as exc:
                wait = self._failed(str(exc))
            except Exception as exc:  # keep the thread alive whatever a bug or a library raises
                logger.exception("coordinator link error")
                wait = self._failed(f"{type(exc).__name__}: {exc}")
            self._wake.wait(wait)
            self._wake.clear()

    def _step(self) -> None:
        if self._hardware is None:
            self._hardware = self._hardware_fn()
        if not self._token:
            self._register()
        now = time.time()
        if now >= self._next_heartbeat:
            self._heartbeat()
        with self._lock:
            want = self._want and self._assignment is None
            due = now >= self._status.next_assignment_at
        if want and due:
            self._fetch_assignment()

    def _client_for(self, token: str | None) -> Any:
        if self._client is not None:
            self._client.close()
        self._client = self._factory(self.address, token=token)
        return self._client

    def _register(self) -> None:
        key = keys.load_or_create_private_key(self.identity_file)
        peer_id = keys.peer_id_for(key)
        profile = name, team = self._profile(peer_id)
        client = self._client_for(None)
        reg = client.register_with_key(
            sign=partial(keys.sign, key),
            public_key=keys.public_key_der(key),
            peer_id=peer_id,
            name=name,
            hardware=self._hardware or Hardware(),
            team=team,
        )
        self._token = reg.token
        self._profile_sent = profile
        self._interval = float(reg.heartbeat_interval_seconds or 30)
        self._hardware_sent = self._hardware
        with self._lock:
            self._status.banned = False  # registered: not banned (any more)
            self._status.volunteer_id = reg.volunteer_id
        self._client_for(self._token)
        self._save_registration(reg.volunteer_id)
        logger.info("registered with %s as %s (%s)", self.address, name, reg.volunteer_id)

    def _heartbeat(self) -> None:
        if self._client is None:
            self._client_for(self._token)
        with self._lock:
            state, reason, progress = self._state, self._reason, list(self._progress)
            volunteer_id = self._status.volunteer_id
        hardware = self._hardware if self._hardware != self._hardware_sent else None
        profile = self._profile()
        reply = self._client.heartbeat(
            volunteer_id=volunteer_id,
            state=state,
            reason=reason,
            hardware=hardware,
            progress=progress,
            client_version=__version__,
            profile=profile if profile != self._profile_sent else None,
        )
        self._hardware_sent = self._hardware
        self._profile_sent = profile
        self._interval = float(reply.heartbeat_interval_seconds or self._interval)
        # a little early, by chance: volunteers told one interval together (a restart, the
        # coordinator backing off under load) spread out instead of arriving in one burst
        self._next_heartbeat = time.time() + self._interval * random.uniform(1 - HEARTBEAT_JITTER, 1.0)
        with self._lock:
            self._status.stop_job_ids |= set(reply.stop_job_ids)
            self._status.banned = bool(reply.banned)

    _profile_sent: tuple[str, str] | None = None  # what the coordinator was last told (None: since this start)
    _peer_id = ""

    def _profile(self, peer_id: str = "") -> tuple[str, str]:
        """(pseudonym, team) as set now: ``volunteer.name``, or one made from the peer id."""
        if self.name:
            return self.name, self.team
        if peer_id:
            self._peer_id = peer_id
        elif not self._peer_id:
            self._peer_id = keys.peer_id_for(keys.load_or_create_private_key(self.identity_file))
        return f"volunteer-{self._peer_id[-6:]}", self.team

    def set_profile(self, name: str, team: str) -> None:
        """A new pseudonym or team (``config set volunteer.name``): sent with the next heartbeat."""
        self.name, self.team = name, team

    def _fetch_assignment(self) -> None:
        with self._lock:
            volunteer_id = self._status.volunteer_id
        assignment = self._client.get_assignment(volunteer_id, self._hardware or Hardware())
        with self._lock:
            self._status.no_job_reason = "" if assignment.has_job else _printable(assignment.no_job_reason)
            if assignment.has_job:
                self._assignment = assignment
                self._status.next_assignment_at = time.time() + 2.0
            else:
                self._status.next_assignment_at = time.time() + max(assignment.retry_after_seconds, 5)

    def _next_wait(self) -> float:
        now = time.time()
        waits = [self._next_heartbeat - now]
        with self._lock:
            if self._want and self._assignment is None:
                waits.append(self._status.next_assignment_at - now)
        return min(max(min(waits), 0.05), 60.0)

    def _ok(self) -> None:
        with self._lock:
            if self._status.last_error:
                logger.info("coordinator %s reachable again", self.address)
            self._status.connected = True
            self._status.last_error = ""
        self._backoff = self._backoff_policy.delays()

    def _failed(self, message: str) -> float:
        delay = max(next(self._backoff, self._backoff_policy.cap), 0.5)
        with self._lock:
            if self._status.connected or not self._status.last_error:
                logger.warning("coordinator %s: %s; retrying in %.0fs", self.address, message, delay)
            self._status.connected = False
            self._status.last_error = message
            self._status.retry_at = time.time() + delay
        return delay

    # ---- the saved registration ----

    def _load_registration(self) -> None:
        try:
            data = json.loads(self.registration_file.read_text())
        except (OSError, ValueError):
            return
        entry = data.get(self.address) if isinstance(data, dict) else None
        if isinstance(entry, dict) and entry.get("token") and entry.get("volunteer_id"):
            self._token = str(entry["token"])
            with self._lock:
                self._status.volunteer_id = str(entry["volunteer_id"])

    def _save_registration(self, volunteer_id: str) -> None:
        try:
            data = json.loads(self.registration_file.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[self.address] = {"volunteer_id": volunteer_id, "token": self._token}
        self.registration_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.registration_file.with_name(self.registration_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.registration_file)

    def _forget_registration(self) -> None:
        self._token = ""
        self._client = None


def _printable(text: str, limit: int = 300) -> str:
    """A coordinator's text as the tray and `essaim status` show it: printable characters only
    (no terminal escapes), at most ``limit`` of them."""
    return "".join(c for c in text if c.isprintable())[:limit]
