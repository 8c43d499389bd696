"""The trainer's life as the supervisor sees it: the current assignment, one trainer process at a time,
pause / suspend / resume, graceful stops, crash restarts with backoff, and the progress it reports.

    worker = Worker(work_root=data_dir / "jobs", command=[...], env=lambda: {...})
    worker.assign(assignment_json)            # dict written to <work_root>/<job id>/assignment.json
    worker.apply("train", threads=4, duty_cycle=1.0, now=t)     # start / resume / throttle
    worker.apply("pause", now=t)              # "pause", then SIGSTOP if not confirmed in grace seconds
    worker.poll(now=t)                        # events -> progress, exits -> restart later
    worker.shutdown()

Only :mod:`essaim.client.supervisor` uses it, from its loop thread.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from essaim.client.errors import TrainerError
from essaim.client.netlimit import NETWORK_LIMIT, TrainerTraffic
from essaim.client.trainer_handle import EXIT_EVENT, TrainerHandle
from essaim.protocol.types import JobProgress

logger = logging.getLogger(__name__)
STABLE_SECONDS = 600.0
"""A trainer that ran this long before crashing resets the restart backoff."""
COMPLETED = "completed"
"""The reason a trainer gives (its "stopped" event) when its swarm reached the job's last epoch."""
COMPLETED_MEMORY_S = 600.0
"""How long an offer of a job this app saw complete is declined (its runner may still be publishing)."""


@dataclass(slots=True)
class Contribution:
    samples: int = 0
    compute_seconds: float = 0.0
    jobs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "compute_seconds": round(self.compute_seconds, 1),
            "jobs": list(self.jobs),
        }


class Worker:
    def __init__(
        self,
        *,
        work_root: Path,
        command: Callable[[], list[str]],
        env: Callable[[], dict[str, str]],
        coordinator: Callable[[], tuple[str, str]] = lambda: ("", ""),
        backoff_base: float = 5.0,
        backoff_cap: float = 300.0,
        on_traffic: Callable[[int, int], None] | None = None,
        on_contribution: Callable[[int, float, str], None] | None = None,
        cache_dir: Path | None = None,
        cache_max_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        self.work_root = Path(work_root)
        # the job files of every job, by sha256 (essaim.swarm.cache), trimmed to cache_max_bytes (0: no cap)
        # before a trainer starts
        self.cache_dir = cache_dir
        self._cache_max_bytes = cache_max_bytes
        self._command, self._env, self._coordinator = command, env, coordinator
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self._on_traffic = on_traffic  # (sent, received) of all this app's trainers so far
        self._traffic = TrainerTraffic()
        self._on_contribution = on_contribution
        self.assignment: dict[str, Any] | None = None
        self.job_id = ""
        self.job_name = ""
        self.handle: TrainerHandle | None = None
        self.trainer_state = "none"  # none, starting, running, pausing, paused, suspended, stopping
        self.throttle: tuple[int, float] | None = None
        self.pause_sent_at: float | None = None
        self.paused_since: float | None = None
        self.stop_sent_at: float | None = None
        self.finishing = False
        self.finished = False
        self.crashes = 0
        self.restart_at = 0.0
        self.last_error = ""
        self.stop_reason = ""  # the running trainer's, from its "stopped" event
        # jobs this app's trainers saw complete, newest last: the coordinator may offer one again
        # until its runner has published the result, and a trainer started for it would load the
        # whole model only to find the job done
        self.completed: dict[str, float] = {}  # job id -> when (the caller's clock)
        self.progress: JobProgress | None = None
        self.swarm: dict[str, Any] = {}  # reachability and the last averaging round (see swarm_line)
        self.token_expires_at = 0.0
        self._samples_seen = 0
        self._compute_seen = 0.0

    # ---- assignment ----

    def assign(self, assignment: dict[str, Any], *, name: str = "", expires_at: float = 0.0) -> None:
        """A trainer job description (:class:`essaim.client.trainer_protocol.TrainerAssignment` as JSON)."""
        raw_job = assignment.get("job")
        job: dict[str, Any] = raw_job if isinstance(raw_job, dict) else {}
        self.assignment = assignment
        self.job_id = str(assignment.get("job_id") or job.get("id") or "job")
        self.job_name = name or str(job.get("name") or self.job_id)
        self.token_expires_at = expires_at
        self.crashes, self.restart_at, self.last_error = 0, 0.0, ""
        self.finished = False
        self.progress = JobProgress(job_id=self.job_id)

    def saw_complete(self, job_id: str, now: float) -> bool:
        """Whether a trainer of this app saw ``job_id`` complete in the last ``COMPLETED_MEMORY_S``."""
        return now - self.completed.get(job_id, -COMPLETED_MEMORY_S) < COMPLETED_MEMORY_S

    def drop_assignment(self) -> None:
        self.assignment = None
        self.job_id = self.job_name = ""
        self.progress = None

    @property
    def work_dir(self) -> Path:
        return self.work_root / _safe(self.job_id)

    @property
    def running(self) -> bool:
        return self.handle is not None and self.handle.alive

    @property
    def computing(self) -> bool:
        return self.running and self.trainer_state in ("starting", "running")

    # ---- commands ----

    def start(self, now: float) -> None:
        if self.assignment is None or self.running or now < self.restart_at:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / "assignment.json"
        path.write_text(json.dumps(self.assignment, indent=1))
        address, token = self._coordinator()
        self._trim_cache()
        self.handle = TrainerHandle(
            command=self._command(),
            assignment_file=path,
            work_dir=self.work_dir,
            coordinator=address,
            token=token,
            env=self._env(),
            cache_dir=self.cache_dir,
        )
        try:
            self.handle.start()
        except TrainerError as exc:
            self.handle = None
            self._crashed(now, str(exc))
            return
        self._traffic.new_trainer()
        self.trainer_state = "starting"
        self.stop_reason = ""
        self.throttle = None
        self.pause_sent_at = self.paused_since = self.stop_sent_at = None
        self.finishing = False
        self._samples_seen, self._compute_seen = 0, 0.0

    def _trim_cache(self) -> None:
        """Make room in the shared cache, keeping the files of the job about to start."""
        cap = self._cache_max_bytes()
        if self.cache_dir is None or not cap:
            return
        from essaim.swarm.cache import ContentCache  # the app stays light until a trainer is due

        entries = (self.assignment or {}).get("job_files") or []
        keep = [str(e.get("sha256", "")) for e in entries if isinstance(e, dict)]
        try:
            ContentCache(self.cache_dir).trim(cap, keep=keep)
        except OSError as exc:
            logger.warning("could not trim the job file cache %s: %s", self.cache_dir, exc)

    def run(self, threads: int, duty_cycle: float, now: float) -> None:
        """Train (or train lightly) at this pace: start, resume or re-throttle as needed."""
        if not self.running:
            self.start(now)
            if not self.running:
                return
        assert self.handle is not None
        if self.trainer_state == "stopping":
            return  # wait for it to exit; the next tick starts a new one
        if self.trainer_state in ("pausing", "paused", "suspended"):
            self.handle.unsuspend()
            self.handle.send({"cmd": "resume"})
            self.trainer_state = "running"
            self.pause_sent_at = self.paused_since = None
        if self.throttle != (threads, duty_cycle):
            self.handle.send({"cmd": "throttle", "threads": threads, "duty_cycle": round(duty_cycle, 3)})
            self.throttle = (threads, duty_cycle)

    def pause(self, now: float) -> None:
        if not self.running or self.trainer_state in ("pausing", "paused", "suspended", "stopping"):
            return
        assert self.handle is not None
        self.handle.send({"cmd": "pause"})
        self.trainer_state = "pausing"
        self.pause_sent_at = self.paused_since = now

    def enforce_pause(self, now: float, grace: float) -> None:
        """Suspend a trainer that has not confirmed its pause within ``grace`` seconds."""
        if (
            self.trainer_state == "pausing"
            and self.pause_sent_at is not None
            and now - self.pause_sent_at >= grace
        ):
            assert self.handle is not None
            logger.info("trainer did not confirm the pause within %.1fs; suspending it", grace)
            self.handle.suspend()
            self.trainer_state = "suspended"

    def refresh_token(self, token: str, expires_at: float) -> None:
        """Hand a running trainer the fresh swarm token of its job."""
        if self.assignment is not None:
            self.assignment["swarm_token"] = token
        self.token_expires_at = expires_at
        if self.handle is not None:
            self.handle.send({"cmd": "token", "token": token})

    def finish(self) -> None:
        if self.running and not self.finishing:
            assert self.handle is not None
            if self.trainer_state in ("pausing", "paused", "suspended"):
                self.handle.unsuspend()
                self.handle.send({"cmd": "resume"})
            self.handle.send({"cmd": "finish"})
            self.finishing = True
            self.trainer_state = "running"

    def request_stop(self, now: float) -> None:
        """Ask the trainer to stop; :meth:`poll` kills it if it has not exited ``stop_timeout`` later."""
        if self.running and self.trainer_state != "stopping":
            assert self.handle is not None
            self.handle.unsuspend()
            self.handle.send({"cmd": "stop"})
            self.trainer_state = "stopping"
            self.stop_sent_at = now

    def shutdown(self, timeout: float = 10.0) -> None:
        if self.handle is not None:
            self.handle.stop(timeout=timeout)
            self.handle = None
        self.trainer_state = "none"

    # ---- events ----

    def poll(self, now: float, *, stop_timeout: float = 15.0) -> list[dict[str, Any]]:
        if self.handle is None:
            return []
        events = self.handle.events()
        for event in events:
            self._on_event(event, now)
        stopping_since = self.stop_sent_at if self.trainer_state == "stopping" else None
        if self.handle is not None and stopping_since is not None and now - stopping_since > stop_timeout:
            logger.warning("trainer did not stop within %.0fs; killing it", stop_timeout)
            self.handle.kill()
        return events

    def _on_event(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("event")
        if kind == "started":
            if self.trainer_state == "starting":
                self.trainer_state = "running"
            self.swarm = {k: event.get(k) for k in ("client_mode", "reachability", "observed", "reachability_reason")}
        elif kind in ("progress", "epoch"):
            self._progress(event)
        elif kind == "paused":
            if self.trainer_state == "pausing":
                self.trainer_state = "paused"
        elif kind == "resumed":
            if self.trainer_state in ("starting", "paused"):
                self.trainer_state = "running"
        elif kind == "error":
            self.last_error = str(event.get("message", "unknown error"))
            logger.warning("trainer error: %s", self.last_error)
        elif kind == "stopped":
            self.stop_reason = str(event.get("reason", ""))
            logger.info("trainer stopped: %s", self.stop_reason)
            self._count_traffic(event)  # what it moved since its last progress report
        elif kind == EXIT_EVENT:
            self._exited(int(event.get("returncode", -1)), now)

    def _progress(self, event: dict[str, Any]) -> None:
        if event.get("round_epoch") is not None:
            self.swarm.update({k: event.get(k) for k in ("round_epoch", "round_peers", "round_error")})
        samples = int(event.get("samples", 0) or 0)
        compute = float(event.get("compute_seconds", 0.0) or 0.0)
        self.progress = JobProgress(
            job_id=self.job_id,
            epoch=int(event.get("epoch", 0) or 0),
            samples=samples,
            compute_seconds=compute,
            samples_per_second=float(event.get("samples_per_second", 0.0) or 0.0),
            loss=float(event.get("loss", 0.0) or 0.0),
        )
        if self._on_contribution is not None:
            self._on_contribution(
                max(samples - self._samples_seen, 0), max(compute - self._compute_seen, 0.0), self.job_id
            )
        self._samples_seen, self._compute_seen = (
            max(samples, self._samples_seen),
            max(compute, self._compute_seen),
        )
        self._count_traffic(event)

    def _count_traffic(self, event: dict[str, Any]) -> None:
        if self._on_traffic is not None and ("bytes_sent" in event or "bytes_received" in event):
            sent, received = self._traffic.report(
                sent=int(event.get("bytes_sent", 0) or 0), received=int(event.get("bytes_received", 0) or 0)
            )
            self._on_traffic(sent, received)

    def _exited(self, returncode: int, now: float) -> None:
        assert self.handle is not None
        ran = time.monotonic() - self.handle.started_at
        at_limit = self.stop_reason == NETWORK_LIMIT  # it stopped itself; the policy keeps it stopped
        completed = self.stop_reason == COMPLETED and returncode == 0
        wanted = self.trainer_state == "stopping" or self.finishing or at_limit
        self.handle.kill()  # reaps leftovers of its process group
        self.handle = None
        state, self.trainer_state = self.trainer_state, "none"
        if completed:  # the swarm reached the job's last epoch: nothing to restart
            logger.info("job %s (%s) completed; this volunteer's trainer has left its swarm", self.job_name,
                        self.job_id)
            self.completed = {j: t for j, t in self.completed.items() if now - t < COMPLETED_MEMORY_S}
            self.completed[self.job_id] = now
            self.crashes, self.last_error = 0, ""
            self._forget_state()
            self.drop_assignment()
        elif self.finishing and returncode == 0:
            self.finished = True
            logger.info("trainer finished its epoch and stopped")
        elif at_limit and returncode == 0:
            logger.info("trainer stopped: it reached what was left of the daily network limit")
        elif wanted and returncode in (0, -15, -9):
            logger.info("trainer stopped (exit %d)", returncode)
        else:
            if ran > STABLE_SECONDS:
                self.crashes = 0
            why = self.last_error or f"exit code {returncode}"
            self._crashed(now, f"the trainer stopped unexpectedly ({why}) while {state}")
        self.throttle = None

    def _forget_state(self) -> None:
        """A completed job's resumable state and files go: its log stays in the work dir."""
        from essaim.client.trainer_protocol import STATE_FILES

        for name in STATE_FILES:
            target = self.work_dir / name
            try:
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("could not remove %s: %s", target, exc)

    def _crashed(self, now: float, message: str) -> None:
        self.crashes += 1
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (self.crashes - 1))
        delay = random.uniform(delay / 2, delay)
        self.restart_at = now + delay
        self.last_error = message
        logger.warning("%s; restarting it in %.0fs (crash %d)", message, delay, self.crashes)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "job"


def swarm_line(swarm: dict[str, Any]) -> str:
    """How this volunteer takes part in its swarm, in one line for `essaim status` and the tray:
    "NAT-ed: averages through the coordinator's peer; epoch 4 averaged with 2 other volunteers"."""
    if not swarm:
        return ""
    reach = swarm.get("reachability") or ""
    if swarm.get("client_mode"):
        how = {"nat": "NAT-ed: averages through the coordinator's peer", "": "NAT-ed: averages through the coordinator's peer",
               "upnp": "reachable through the router's port mapping (UPnP/NAT-PMP): averages through the "
                       "coordinator's peer"}.get(reach, f"reachability {reach}: averages through the coordinator's peer")
    else:
        how = "reachable: a full peer of the swarm" if reach in ("public", "") else f"reachability {reach}: full peer"
    if swarm.get("observed"):
        how += f" (seen as {swarm['observed']})"
    epoch = swarm.get("round_epoch")
    if epoch is None:
        return f"{how}; no averaging round yet"
    if swarm.get("round_error"):
        return f"{how}; epoch {epoch} averaged with nobody: {swarm['round_error']}"
    n = int(swarm.get("round_peers") or 0)
    return f"{how}; epoch {epoch} averaged with {n} other volunteer{'s' if n != 1 else ''}"


def round_note(status: dict[str, Any]) -> str:
    """The tray tooltip's second line, from the app's status: "NAT-ed; epoch 4: averaged with 2 others"."""
    swarm = status.get("swarm") or {}
    if swarm.get("round_epoch") is None:
        return ""
    where = "NAT-ed; " if swarm.get("client_mode") else ""
    if swarm.get("round_error"):
        return f"{where}epoch {swarm['round_epoch']}: averaged with nobody"
    n = int(swarm.get("round_peers") or 0)
    return f"{where}epoch {swarm['round_epoch']}: averaged with {n} other{'s' if n != 1 else ''}"
