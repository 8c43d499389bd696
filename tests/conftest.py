"""Fixtures every test package shares.

- ``_reap_children`` (session, autouse): at the end of the run, terminate then kill any child
  process a test left behind, so a failing test never leaks servers or trainers.
- ``launch_coordinator`` (function), ``module_launcher`` and ``shared_coordinator`` (module): start the real
  ``python -m essaim.coordinator serve`` on ports 0 with a temporary data dir, wait for its ready
  line and read the first admin token from ``data_dir/admin-token``; stopped after the test.

    def test_x(launch_coordinator, tmp_path):
        coord = launch_coordinator(tmp_path / "c", "--require-approval")
        with coord.client(coord.admin_token) as client:
            client.list_jobs()
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

READY_PREFIX = "essaim coordinator ready "


@dataclass
class CoordinatorProcess:
    """A coordinator running as a subprocess of the test."""

    proc: subprocess.Popen[str]
    data_dir: Path
    grpc_address: str
    http_address: str
    admin_token: str
    log_path: Path
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return self.http_address if "://" in self.http_address else f"http://{self.http_address}"

    def client(self, token: str | None = None, **kwargs: Any) -> Any:
        from essaim.protocol.client import CoordinatorClient

        kwargs.setdefault("timeout", 10.0)
        return CoordinatorClient(self.grpc_address, token=token, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait; escalates to SIGKILL after ``timeout``. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.stop(signal.SIGKILL, timeout=5)


def start_coordinator(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0,
    prefix: Sequence[str] = (), public_host: str | None = None,
) -> CoordinatorProcess:
    """Start ``python -m essaim.coordinator serve`` on free ports and wait for its ready line.

    ``prefix`` goes before the command (``ip netns exec NS``: a coordinator on a test host);
    ``public_host`` replaces the listening host in the addresses clients are given."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "coordinator.log"
    cmd = [sys.executable, "-m", "essaim.coordinator", "serve", "--data-dir", str(data_dir)]
    if "--grpc-port" not in args:
        cmd += ["--grpc-port", "0"]
    if "--http-port" not in args:
        cmd += ["--http-port", "0"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*prefix, *cmd, *args], stdout=subprocess.PIPE, stderr=log, text=True, env=full_env,
            start_new_session=True,
        )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    ready = None
    while ready is None:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.01))
        except queue.Empty:
            line = None
            remaining = -1
        if line is None:
            proc.kill()
            proc.wait(5)
            raise RuntimeError(
                f"the coordinator did not become ready (exit {proc.returncode}); stdout: {seen}; "
                f"log:\n{log_path.read_text(errors='replace')[-4000:]}"
            )
        if line.startswith(READY_PREFIX):
            ready = line
    parts = dict(p.split("=", 1) for p in ready[len(READY_PREFIX) :].split())
    if public_host is not None:  # the scheme (http:// on a public address) is kept
        parts = {k: f"{v.split('://')[0] + '://' if '://' in v else ''}{public_host}:{v.rsplit(':', 1)[1]}"
                 for k, v in parts.items()}
    admin_token = (data_dir / "admin-token").read_text().strip()
    return CoordinatorProcess(
        proc=proc,
        data_dir=data_dir,
        grpc_address=parts["grpc"],
        http_address=parts["http"],
        admin_token=admin_token,
        log_path=log_path,
        stdout_lines=seen,
    )


class CoordinatorLauncher:
    """Starts coordinators and stops every one of them on close."""

    def __init__(self) -> None:
        self.started: list[CoordinatorProcess] = []

    def __call__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None, **kwargs: Any
                 ) -> CoordinatorProcess:
        coord = start_coordinator(data_dir, *args, env=env, **kwargs)
        self.started.append(coord)
        return coord

    def close(self) -> None:
        for coord in self.started:
            coord.stop()


@pytest.fixture
def launch_coordinator() -> Iterator[CoordinatorLauncher]:
    launcher = CoordinatorLauncher()
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def module_launcher() -> Iterator[CoordinatorLauncher]:
    """A launcher whose coordinators live for a whole test module (starting one takes ~1 s)."""
    launcher = CoordinatorLauncher()
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def shared_coordinator(
    module_launcher: CoordinatorLauncher, tmp_path_factory: pytest.TempPathFactory
) -> CoordinatorProcess:
    """One default coordinator for a whole test module."""
    return module_launcher(tmp_path_factory.mktemp("coordinator"))


NAT_TESTS = Path(__file__).parent / "integration" / "nat"


@pytest.hookimpl(tryfirst=True)  # before pytest selects by marker (-m)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the swarms' tests ``swarm``: those marked slow, and the NAT lab's. ``./dev.sh test`` runs
    them (``-m swarm``) one after another beside the rest (``-m "not swarm"``), two pytest sessions."""
    for item in items:
        if item.get_closest_marker("slow") is not None or NAT_TESTS in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.swarm)


def _ours(proc: psutil.Process) -> bool:
    """A process a test started; torch's shared-memory manager exits by itself once unused."""
    with contextlib.suppress(psutil.Error):
        return proc.name() != "torch_shm_manager"
    return False


@pytest.fixture(scope="session", autouse=True)
def _reap_children() -> Iterator[None]:
    """Terminate, then kill, every child process still alive when the test session ends."""
    yield
    me = psutil.Process()
    children = [c for c in me.children(recursive=True) if _ours(c)]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
