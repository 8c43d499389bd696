"""The app's side of the trainer process: spawn it, talk JSON lines to it, suspend or kill it.

    handle = TrainerHandle(command=default_trainer_command(), assignment_file=f, work_dir=d,
                           coordinator="host:50051", token="essaim_...", env=caps.to_env())
    handle.start()
    handle.send({"cmd": "pause"});  handle.events()      # [{"event": "paused"}, ...]
    handle.suspend() / handle.unsuspend()                # SIGSTOP/SIGCONT the trainer's processes
    handle.stop(timeout=10)                              # "stop", then terminate, then kill

The trainer (``python -m essaim.client.trainer``) reads commands on stdin and writes events on
stdout, one JSON object per line (see :mod:`essaim.client.trainer_protocol`); its stderr goes to
``trainer-stderr.log`` in the work dir (tracebacks from before its own logging starts). It runs at
the lowest CPU priority, in its own process group, and a thread turns its stdout into a queue the
supervisor drains every tick. Only the supervisor uses it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil
from essaim.client.errors import TrainerError

logger = logging.getLogger(__name__)
TOKEN_ENV = "ESSAIM_TRAINER_TOKEN"  # the volunteer's bearer token, handed to the trainer
EXIT_EVENT = "_exit"
"""Event the reader thread adds when the trainer's stdout closes: {"event": "_exit", "returncode": N}."""


def default_trainer_command() -> list[str]:
    return [sys.executable, "-m", "essaim.client.trainer"]


class TrainerHandle:
    """One trainer process. Not thread-safe: the supervisor's loop is its only user."""

    def __init__(
        self,
        *,
        command: list[str],
        assignment_file: Path,
        work_dir: Path,
        coordinator: str = "",
        token: str = "",
        env: dict[str, str] | None = None,
        low_priority: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.cache_dir = cache_dir  # job files by sha256, shared by the jobs of one app (default: the work dir's)
        self.assignment_file = Path(assignment_file)
        self.work_dir = Path(work_dir)
        self.coordinator = coordinator
        self.token = token
        self.extra_env = dict(env or {})
        self.low_priority = low_priority
        self.proc: subprocess.Popen[str] | None = None
        self.suspended = False
        self.started_at = 0.0
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._log: IO[bytes] | None = None
        self._tree: set[int] = set()
        self._tree_at = 0.0

    # ---- life ----

    def argv(self) -> list[str]:
        argv = [*self.command, "--assignment", str(self.assignment_file), "--work-dir", str(self.work_dir)]
        if self.coordinator:
            argv += ["--coordinator", self.coordinator]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        return argv  # the token goes in the environment (ESSAIM_TRAINER_TOKEN): a command line is public

    def start(self) -> int:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.work_dir / "trainer-stderr.log", "ab")  # noqa: SIM115 - closed in _reap
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        env.pop(TOKEN_ENV, None)
        if self.token:  # other users of the machine read command lines (ps), not other processes' environments
            env[TOKEN_ENV] = self.token
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
                bufsize=1,
                env=env,
                cwd=self.work_dir,
                **kwargs,
            )
        except OSError as exc:
            self._log.close()
            raise TrainerError(
                f"cannot start the trainer ({' '.join(self.command)}): {exc}; "
                "check volunteer.trainer_command with `essaim config show`"
            ) from None
        self.started_at = time.monotonic()
        self.suspended = False
        if self.low_priority:
            _lower_priority(self.proc.pid)
        self._reader = threading.Thread(target=self._read, name="trainer-stdout", daemon=True)
        self._reader.start()
        logger.info("trainer started (pid %d): %s", self.proc.pid, " ".join(self.argv()[:4]))
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                logger.info("trainer: %s", line[:500])
                continue
            if isinstance(event, dict):
                if "event" not in event and "type" in event:
                    event["event"] = event["type"]
                self._events.put(event)
        self._events.put({"event": EXIT_EVENT, "returncode": self.proc.wait()})

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def send(self, message: dict[str, Any]) -> bool:
        """Write one command line; False when the trainer is gone (its stdin is closed)."""
        if not self.alive or self.proc is None or self.proc.stdin is None:
            return False
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True

    # ---- the process tree ----

    def pids(self, *, refresh: float = 5.0) -> set[int]:
        """The trainer and its descendants (hivemind's p2pd...), re-listed every ``refresh`` seconds."""
        if not self.alive or self.proc is None:
            return set()
        now = time.monotonic()
        if now - self._tree_at >= refresh:
            self._tree_at = now
            try:
                root = psutil.Process(self.proc.pid)
                self._tree = {self.proc.pid, *(c.pid for c in root.children(recursive=True))}
            except psutil.Error:
                self._tree = {self.proc.pid}
        return set(self._tree)

    def _each(self, action: str) -> None:
        for pid in sorted(self.pids(refresh=0.0)):
            try:
                getattr(psutil.Process(pid), action)()
            except psutil.Error:
                continue

    def suspend(self) -> None:
        """Stop every process of the trainer at once (SIGSTOP; thread suspension on Windows)."""
        if self.alive and not self.suspended:
            self._each("suspend")
            self.suspended = True
            logger.info("trainer suspended (pid %s)", self.pid)

    def unsuspend(self) -> None:
        if self.alive and self.suspended:
            self._each("resume")
        self.suspended = False

    def limit_cores(self, cores: int) -> None:
        """Pin the trainer's processes to the first ``cores`` of the CPUs the app may use (0: all of
        them), where the OS allows it; the processes they start later inherit it."""
        if not self.alive or self.proc is None or not hasattr(psutil.Process, "cpu_affinity"):
            return
        wanted = allowed_cores(cores)
        for pid in self.pids():
            with contextlib.suppress(psutil.Error, OSError, ValueError):
                psutil.Process(pid).cpu_affinity(wanted)

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """Ask the trainer to stop, wait ``timeout`` seconds, then terminate and kill its process group."""
        if self.proc is None:
            return None
        if self.alive:
            self.unsuspend()
            self.send({"cmd": "stop"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        if self.alive:
            logger.warning(
                "trainer (pid %d) did not stop within %.0fs; terminating it", self.proc.pid, timeout
            )
            self._signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=3)
        if self.alive:
            self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=3)
        self._reap()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive:
            self._signal(signal.SIGKILL if hasattr(signal, "SIGKILL") else signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert self.proc is not None
                self.proc.wait(timeout=3)
        self._reap()

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.suspended:
            self.unsuspend()
        try:
            if os.name == "posix":
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            if os.name == "posix":  # leftover children of the group (hivemind's p2pd)
                with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            for stream in (self.proc.stdin, self.proc.stdout):
                with contextlib.suppress(OSError, ValueError):
                    if stream is not None and stream is not self.proc.stdout:
                        stream.close()
        if self._log is not None:
            self._log.close()
            self._log = None


def allowed_cores(cores: int) -> list[int]:
    """The first ``cores`` (0: all) of the CPUs this process may run on: in a container or under
    ``taskset`` those are not always CPUs 0, 1, ..."""
    try:
        cpus = sorted(psutil.Process().cpu_affinity() or [])
    except (psutil.Error, OSError, AttributeError):
        cpus = []
    cpus = cpus or list(range(psutil.cpu_count() or 1))
    return cpus[: cores or len(cpus)] or cpus


def _lower_priority(pid: int) -> None:
    """Lowest CPU priority (nice 19 / IDLE_PRIORITY_CLASS) and idle I/O class, best effort."""
    try:
        proc = psutil.Process(pid)
        if os.name == "posix":
            proc.nice(19)
        else:
            proc.nice(psutil.IDLE_PRIORITY_CLASS)  # type: ignore[attr-defined]
        if hasattr(proc, "ionice") and hasattr(psutil, "IOPRIO_CLASS_IDLE"):
            proc.ionice(psutil.IOPRIO_CLASS_IDLE)
    except (psutil.Error, OSError) as exc:
        logger.debug("cannot lower the trainer's priority: %s", exc)
