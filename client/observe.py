"""What the machine is doing, measured cheaply enough to ask every second.

    observer = Observer()
    observer.hardware()                          # Hardware(cpu_cores=8, gpu_name="NVIDIA ...", ...)
    sample = observer.sample(trainer_pids={1234}) # SystemSample: other programs' CPU, RAM, battery, temps, GPU

CPU use of *other* programs is the whole machine's busy time (``/proc/stat`` via psutil) minus the
trainer's processes, this app's own and every other essaim process on the machine (another
volunteer's app and trainer, a coordinator's job runner, and their children such as hivemind's
``p2pd``), so it costs a few file reads a second; the scan that finds essaim's processes runs
every few seconds. Sensors that are slow to read (temperatures, battery) are sampled every few seconds and
cached. NVIDIA GPUs are read through NVML (``pip install 'essaim[gpu]'``, module ``pynvml``) when
present; "another program uses the GPU" means another *compute* process, since the desktop itself
always draws on the GPU. Used by the supervisor, which turns a sample into policy Observations.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import psutil
from essaim.protocol.types import Hardware

logger = logging.getLogger(__name__)
_CPU_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal", "acpitz")


@dataclass(frozen=True, slots=True)
class SystemSample:
    other_cpu_percent: float
    available_ram_bytes: int
    on_battery: bool
    battery_percent: float | None
    cpu_temp_c: float | None
    gpu_temp_c: float | None
    gpu_present: bool
    other_gpu_processes: int
    trainer_cpu_percent: float  # of one core, summed over the trainer's processes
    trainer_gpu_bytes: int


class Gpu:
    """NVML, opened once; every method answers "nothing" when NVML is missing or fails."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
            logger.debug("no NVIDIA GPU through NVML: %s", exc)

    @property
    def present(self) -> bool:
        return bool(self._handles)

    def describe(self) -> tuple[str, int, int]:
        """(name of the first GPU, its memory in bytes, number of GPUs)."""
        if not self._handles:
            return "", 0, 0
        try:
            name = self._nvml.nvmlDeviceGetName(self._handles[0])
            name = name.decode() if isinstance(name, bytes) else str(name)
            total = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handles[0]).total)
        except Exception as exc:
            logger.debug("NVML: %s", exc)
            return "", 0, len(self._handles)
        return name, total, len(self._handles)

    def temperature(self) -> float | None:
        temps = []
        for handle in self._handles:
            try:
                temps.append(
                    float(self._nvml.nvmlDeviceGetTemperature(handle, self._nvml.NVML_TEMPERATURE_GPU))
                )
            except Exception:
                continue
        return max(temps) if temps else None

    def compute_processes(self) -> dict[int, int]:
        """pid -> GPU memory in bytes, for every compute process on every GPU."""
        out: dict[int, int] = {}
        for handle in self._handles:
            try:
                for proc in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = proc.usedGpuMemory if isinstance(proc.usedGpuMemory, int) else 0
                    out[proc.pid] = out.get(proc.pid, 0) + used
            except Exception:
                continue
        return out


class Observer:
    """Samples the machine; keeps the counters it needs to turn totals into rates."""

    def __init__(self, *, sensor_interval: float = 5.0, gpu: Gpu | None = None) -> None:
        self.sensor_interval = sensor_interval
        self.gpu = gpu if gpu is not None else Gpu()
        self._me = psutil.Process()
        self._cpus = psutil.cpu_count() or 1
        self._last: tuple[float, float, float, dict[int, float]] | None = None
        self._sensors_at = 0.0
        self._sensors: tuple[bool, float | None, float | None, float | None] = (False, None, None, None)
        self._kin: frozenset[int] = frozenset()  # other essaim processes (essaim_processes), rescanned
        self._kin_at = 0.0

    def hardware(self) -> Hardware:
        name, vram, count = self.gpu.describe()
        return Hardware(
            os=f"{platform.system()} {platform.release()}".strip(),
            arch=platform.machine(),
            cpu_cores=self._cpus,
            ram_bytes=int(psutil.virtual_memory().total),
            accelerator="cuda" if count else "cpu",
            gpu_name=name,
            gpu_vram_bytes=vram,
            gpu_count=count,
        )

    @property
    def cpu_count(self) -> int:
        return self._cpus

    def _busy(self) -> float:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)

    @staticmethod
    def _cpu_of(pids: set[int]) -> dict[int, float]:
        out = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    def _essaim_pids(self, now: float) -> frozenset[int]:
        if not self._kin_at or now - self._kin_at >= self.sensor_interval:
            self._kin_at = now
            self._kin = essaim_processes(exclude=os.getpid())
        return self._kin

    def sample(self, trainer_pids: set[int] | frozenset[int] = frozenset()) -> SystemSample:
        now = time.monotonic()
        busy = self._busy()
        own = sum(self._me.cpu_times()[:2])
        ours = set(trainer_pids) | self._essaim_pids(now)  # not "other programs"
        trainer = self._cpu_of(ours)
        other_pct = trainer_pct = 0.0
        if self._last is not None:
            t0, busy0, own0, trainer0 = self._last
            elapsed = max(now - t0, 1e-3)
            delta = {pid: max(v - trainer0.get(pid, v), 0.0) for pid, v in trainer.items()}
            other = max(busy - busy0 - (own - own0) - sum(delta.values()), 0.0)
            other_pct = min(100.0 * other / (elapsed * self._cpus), 100.0)
            trainer_pct = 100.0 * sum(d for pid, d in delta.items() if pid in trainer_pids) / elapsed
        self._last = (now, busy, own, trainer)
        on_battery, battery, cpu_temp, gpu_temp = self._slow_sensors(now)
        gpu_procs = self.gpu.compute_processes() if self.gpu.present else {}
        others = [pid for pid in gpu_procs if pid not in ours and pid != os.getpid()]
        return SystemSample(
            other_cpu_percent=other_pct,
            available_ram_bytes=int(psutil.virtual_memory().available),
            on_battery=on_battery,
            battery_percent=battery,
            cpu_temp_c=cpu_temp,
            gpu_temp_c=gpu_temp,
            gpu_present=self.gpu.present,
            other_gpu_processes=len(others),
            trainer_cpu_percent=trainer_pct,
            trainer_gpu_bytes=sum(v for pid, v in gpu_procs.items() if pid in trainer_pids),
        )

    def _slow_sensors(self, now: float) -> tuple[bool, float | None, float | None, float | None]:
        if now - self._sensors_at < self.sensor_interval and self._sensors_at:
            return self._sensors
        self._sensors_at = now
        on_battery, percent = False, None
        try:
            battery = psutil.sensors_battery()
        except (OSError, AttributeError, NotImplementedError):  # not on every platform
            battery = None
        if battery is not None:
            # power_plugged is None where psutil cannot tell (some laptops, VMs): that is not "on battery"
            on_battery = battery.power_plugged is False
            percent = None if battery.percent is None else float(battery.percent)
        self._sensors = (on_battery, percent, cpu_temperature(), self.gpu.temperature())
        return self._sensors


def is_essaim_command(cmdline: list[str]) -> bool:
    """Whether a command line runs essaim: the ``essaim`` command (the app, another volunteer's app on
    the same machine, a coordinator), an interpreter running it, or ``python -m essaim...`` (the
    trainer, a coordinator's job runners)."""
    if not cmdline:
        return False
    if _program(cmdline[0]) in _ESSAIM_PROGRAMS:
        return True
    for i, arg in enumerate(cmdline[1:], start=1):  # the interpreter's options, then what it runs
        if arg == "-m":
            return i + 1 < len(cmdline) and cmdline[i + 1].split(".")[0] == "essaim"
        if arg == "-c":
            return False
        if not arg.startswith("-"):
            return _program(arg) in _ESSAIM_PROGRAMS
    return False


_ESSAIM_PROGRAMS = ("essaim", "essaim.exe", "essaim-script.py")


def _program(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1].lower()  # a Windows path too


def essaim_processes(*, exclude: int | None = None) -> frozenset[int]:
    """Every process on this machine that is essaim's (:func:`is_essaim_command`), with all their
    descendants (hivemind's ``p2pd`` daemons and helpers), and the descendants of ``exclude`` (this
    app), except ``exclude`` itself. Processes this
    user may not read are not essaim's; a scan of every process, so call it every few seconds at most."""
    roots: set[int] = set()
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        info = proc.info
        pid, ppid = info.get("pid"), info.get("ppid")
        if pid is None:
            continue
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
        cmdline = info.get("cmdline")
        if pid == exclude or (isinstance(cmdline, list) and is_essaim_command(cmdline)):
            roots.add(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return frozenset(found - {exclude})


def cpu_temperature() -> float | None:
    """The hottest CPU package/core sensor, in °C; None where there is none (VMs, macOS, Windows)."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    for name in _CPU_SENSORS:
        readings = [t.current for t in sensors.get(name, ()) if t.current and t.current > 0]
        if readings:
            return float(max(readings))
    return None
