"""Helpers for the volunteer app's tests and benches: run the app as its own process, a fake trainer,
fake sensor readings, an Xvfb display, CPU measurements. Loaded by path from tests/e2e and bench/ too."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
from essaim.client import control
from essaim.client.config import Paths
from essaim.client.errors import AppNotRunning, ControlError

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
SAFE_FLAGS = (
    "--other-cpu-pause-percent",
    "0",
    "--min-free-ram-mb",
    "0",
    "--cpu-temp-high-c",
    "0",
    "--gpu-temp-high-c",
    "0",
)
"""The test machine is shared: other programs' CPU, its memory and sensors must not pause the app."""


def fake_trainer_command() -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_TRAINER))}"


def app_paths(root: Path) -> Paths:
    """The app's folders under ``root``, as a fresh HOME would give."""
    return Paths(config_file=root / "config.toml", data_dir=root / "data", runtime_dir=root / "run",
                 log_dir=root / "logs")


class FakeIdle:
    """An idle source whose user is away (``idle`` seconds without input) until a test says otherwise."""

    name = "fake"

    def __init__(self, idle: float = 3600.0) -> None:
        self.idle = idle

    def idle_seconds(self) -> float:
        return self.idle

    def close(self) -> None:
        pass


@contextlib.contextmanager
def supervisor_running(sup: Any) -> Iterator[Any]:
    """``sup`` (an in-process essaim.client.supervisor.Supervisor) running on a thread of its own;
    stopped, and its trainer with it, when the block ends."""
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sup
    finally:
        stop.set()
        sup.wake()
        thread.join(30)
        assert not thread.is_alive()


def wait_status(sup: Any, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0) -> dict:
    """The supervisor's first status that ``predicate`` accepts, polled every 0.05 s for ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = sup.status()
        if predicate(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {json.dumps(sup.status(), indent=1, default=str)}")


def training(st: dict[str, Any]) -> bool:
    """A status of an app whose trainer runs."""
    return st["state"] == "training" and st["trainer"]["state"] == "running"


def write_job_file(path: Path, job_id: str = "local-1") -> Path:
    """A trainer job description (TrainerAssignment's fields) for running without a coordinator."""
    path.write_text(
        json.dumps(
            {
                "job_id": job_id,
                "recipe_yaml": "version: 1\n",
                "swarm_token": "t",
                "coordinator_public_key": "k",
                "volunteer_id": "local",
                "identity_key_path": str(path.with_name("identity.pem")),
            }
        )
    )
    return path


def local_job_flags(root: Path) -> dict[str, str]:
    """The app's settings for a local job (no coordinator) run by the fake trainer."""
    return {"volunteer.job_file": str(write_job_file(root / "job.json")),
            "volunteer.trainer_command": fake_trainer_command()}


def app_env(root: Path, *, display: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ESSAIM_") and k not in ("DISPLAY", "WAYLAND_DISPLAY")
    }
    env.update(
        {
            "ESSAIM_CONFIG": str(root / "config" / "config.toml"),
            "ESSAIM_DATA_DIR": str(root / "data"),
            "ESSAIM_RUNTIME_DIR": str(root / "run"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",
            "GRPC_VERBOSITY": "ERROR",
        }
    )
    if display:
        env["DISPLAY"] = display
    env.update(extra or {})
    return env


@dataclass
class App:
    """The volunteer app running as ``python -m essaim.client.cli run ...``."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    root: Path

    @property
    def paths(self) -> Paths:
        return Paths.default(self.env)

    def status(self) -> dict[str, Any]:
        return control.request(self.paths.control_address, {"cmd": "status"}, timeout=5)["status"]

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        return control.request(self.paths.control_address, message, timeout=10)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "essaim.client.cli", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"essaim {' '.join(args)} exited {proc.returncode}: {proc.stdout}{proc.stderr}"
            )
        return proc

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the app exited ({self.proc.returncode}) waiting for {what}:\n{self.log()}"
                )
            with contextlib.suppress(AppNotRunning, ControlError):
                last = self.status()
                if predicate(last):
                    return last
            time.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}; last status: {json.dumps(last, indent=1)}\n{self.log()}"
        )

    def log(self) -> str:
        path = self.root / "app.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):  # PYTHONFAULTHANDLER: its threads go to app.out
                    self.proc.send_signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def start_app(
    root: Path,
    *flags: str,
    display: str | None = None,
    headless: bool = True,
    extra_env: dict[str, str] | None = None,
    trainer: bool = True,
) -> App:
    root.mkdir(parents=True, exist_ok=True)
    env = app_env(root, display=display, extra=extra_env)
    cmd = [sys.executable, "-m", "essaim.client.cli", "run", *SAFE_FLAGS]
    if headless:
        cmd.append("--headless")
    if trainer:
        cmd += ["--trainer-command", fake_trainer_command()]
    cmd += list(flags)
    out = open(root / "app.out", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    app = App(proc=proc, env=env, root=root)
    app.wait(lambda s: True, "the control endpoint", timeout=60)
    return app


class FakeMachine:
    """What this machine cannot produce (heat, a battery, an NVIDIA GPU, memory pressure, a busy machine),
    read by :mod:`essaim.client.observe` in place of psutil's machine-wide figures and of NVML.

    ``install(monkeypatch)`` swaps the observe module's ``psutil`` for a stand-in that answers from these
    attributes (processes, the app's and the trainer's, are still read for real) and puts this NVML in
    ``sys.modules["pynvml"]`` (``gpu=False``: no NVML at all). Change the attributes while the app runs.
    """

    def __init__(self) -> None:
        self.cpu_temp_c: float | None = None  # None: no CPU temperature sensor
        self.gpu_temp_c: float | None = None  # None: NVML does not give the GPU's temperature
        self.available_ram_bytes = 8 * 1024**3
        self.others_busy = False  # other programs keep every core busy
        self.battery: tuple[bool | None, float | None] | None = (
            None  # (power_plugged, percent); None: no battery
        )
        self.other_gpu_pids: list[int] = []
        self._busy_seconds = 0.0
        self._busy_at = time.monotonic()

    def install(self, monkeypatch: Any, *, gpu: bool = True) -> None:
        monkeypatch.setattr("essaim.client.observe.psutil", _FakePsutil(self))
        monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(self) if gpu else None)

    def cpu_times(self) -> Any:
        """Busy time of the whole machine: while ``others_busy``, twice what its cores can give."""
        now = time.monotonic()
        if self.others_busy:
            self._busy_seconds += 2 * (now - self._busy_at) * (psutil.cpu_count() or 1)
        self._busy_at = now
        return _CpuTimes(user=self._busy_seconds, system=0.0, idle=0.0)


@dataclass(frozen=True)
class _CpuTimes:
    user: float
    system: float
    idle: float

    def __iter__(self) -> Iterator[float]:
        return iter((self.user, self.system, self.idle))


@dataclass(frozen=True)
class _Battery:
    percent: float | None
    secsleft: int
    power_plugged: bool | None


@dataclass(frozen=True)
class _Temperature:
    label: str
    current: float
    high: float
    critical: float


class _FakePsutil:
    """psutil as observe.py uses it: machine-wide readings from a FakeMachine, the rest the real module's."""

    def __init__(self, machine: FakeMachine) -> None:
        self._machine = machine

    def __getattr__(self, name: str) -> Any:
        return getattr(psutil, name)

    def cpu_times(self) -> Any:
        return self._machine.cpu_times()

    def virtual_memory(self) -> Any:
        return psutil.virtual_memory()._replace(available=self._machine.available_ram_bytes)

    def sensors_battery(self) -> _Battery | None:
        if self._machine.battery is None:
            return None
        plugged, percent = self._machine.battery
        return _Battery(percent=percent, secsleft=-1, power_plugged=plugged)

    def sensors_temperatures(self) -> dict[str, list[_Temperature]]:
        if self._machine.cpu_temp_c is None:
            return {}
        return {"coretemp": [_Temperature("Package id 0", self._machine.cpu_temp_c, 100.0, 105.0)]}


class _FakeNvml:
    """The part of NVML (``pynvml``) that observe.py calls: one 8 GB GPU."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, machine: FakeMachine) -> None:
        self._machine = machine

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=8 * 1024**3)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> float:
        if self._machine.gpu_temp_c is None:
            raise RuntimeError("NVML: not supported")
        return self._machine.gpu_temp_c

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=1024**3) for pid in self._machine.other_gpu_pids]


def tree_cpu_percent(pid: int, interval: float = 0.5) -> float:
    """CPU use of ``pid`` and its children over ``interval``, in % of one core."""
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0.0
    before = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            before[p.pid] = sum(p.cpu_times()[:2])
    time.sleep(interval)
    used = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            used += sum(p.cpu_times()[:2]) - before.get(p.pid, 0.0)
    return 100.0 * used / interval


def wait_cpu(
    pid: int, *, above: float | None = None, below: float | None = None, timeout: float = 10.0
) -> float:
    """Measure ``pid``'s CPU (% of one core, 0.5 s windows) until it is above/below a level; the last figure.

    The machine may be busy with other work, so one window is not proof either way."""
    deadline = time.monotonic() + timeout
    while True:
        used = tree_cpu_percent(pid, 0.5)
        if (above is None or used > above) and (below is None or used < below):
            return used
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} used {used:.0f}% of a core; wanted above={above} below={below}")


@contextlib.contextmanager
def xvfb(size: str = "800x600x24") -> Iterator[str]:
    """A fresh Xvfb server; yields its DISPLAY (``:N``). Needs Debian's xvfb."""
    if not shutil.which("Xvfb"):
        raise FileNotFoundError("Xvfb")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", size, "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            raise RuntimeError("Xvfb did not start")
        yield f":{number}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def xdotool(display: str, *args: str) -> str:
    return subprocess.run(
        ["xdotool", *args],
        env={**os.environ, "DISPLAY": display},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
