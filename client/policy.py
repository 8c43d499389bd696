"""The volunteer's rules, as one pure function: what the machine looks like -> what the trainer may do.

    decision = decide(obs, cfg, state, now)       # evaluated every second by the supervisor
    decision.action     # "train" | "throttle" | "pause" | "stop" | "finish"
    decision.reason     # "waiting: user active (idle 0:42 of 3:00)"
    state = decision.new_state                    # latches (temperature hysteresis), snooze, holds
    temperature_watch(obs, cfg).note              # "temperature rule inactive: no temperature sensor ..."

No clock, no I/O: ``now`` and the :class:`Observations` are given, so every rule is tested with
plain values. Rules are checked in this order and the first that applies wins: finish, manual
pause (and snooze), battery, schedule, daily network limit, memory, temperature, other GPU users,
other CPU users, user activity; then training at the chosen intensity. ``pause`` keeps the trainer
(it stops computing at once), ``stop`` ends it (long waits, or to give memory back).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from essaim.client.schedule import Schedule, describe

Action = Literal["train", "throttle", "pause", "stop", "finish"]
MB = 1024 * 1024
_INTENSITY = {"light": (0.0, 0.25), "medium": (0.5, 0.75), "full": (1.0, 1.0)}
"""intensity -> (share of the allowed cores, at least one thread; share of the time)"""


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """The rules' settings (see :mod:`essaim.client.settings` for each one's meaning and default)."""

    idle_minutes: float = 3.0
    only_when_idle: bool = True
    in_use_threads: int = 1
    in_use_duty_cycle: float = 0.25
    intensity: str = "full"
    headless_counts_as_idle: bool = True
    cpu_max_cores: int = 0
    cpu_max_percent: int = 100
    other_cpu_pause_percent: int = 50
    use_gpu: bool = True
    gpu_max_vram_mb: int = 0
    max_ram_mb: int = 0  # the trainer's own cap on RAM (its micro-batches fit under it on the CPU)
    pause_on_other_gpu: bool = True
    train_on_battery: bool = False
    battery_min_percent: int = 50
    cpu_temp_high_c: float = 85.0
    cpu_temp_low_c: float = 75.0
    gpu_temp_high_c: float = 83.0
    gpu_temp_low_c: float = 73.0
    min_free_ram_mb: int = 1024
    resume_delay_seconds: float = 10.0
    daily_mb: int = 0
    schedule: Schedule = field(default_factory=Schedule)

    @classmethod
    def from_settings(cls, values: dict[str, Any]) -> PolicyConfig:
        """From the flat ``{"policy.idle_minutes": 3.0, ...}`` map of :class:`essaim.client.config.Settings`."""
        own = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("policy.")}
        known = {f for f in cls.__dataclass_fields__ if f not in ("schedule", "daily_mb")}
        return cls(
            **{k: v for k, v in own.items() if k in known},
            daily_mb=int(values.get("limits.daily_mb", 0)),
            schedule=Schedule.from_settings(values),
        )


@dataclass(frozen=True, slots=True)
class Observations:
    """One look at the machine. None means "not known here" (no sensor, no session)."""

    user_idle_seconds: float | None = None  # None: no user session (a headless server)
    on_battery: bool = False
    battery_percent: float | None = None
    cpu_temp_c: float | None = None
    gpu_temp_c: float | None = None
    other_cpu_percent: float = 0.0  # of all CPUs together, excluding the app and the trainer
    available_ram_bytes: int | None = None
    gpu_present: bool = False
    other_gpu_processes: int = 0  # compute processes on the GPU that are not the trainer
    network_today_bytes: int = 0
    trainer_running: bool = False
    cpu_count: int = 1


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between evaluations."""

    manual: Literal["", "paused", "finish"] = ""
    pause_until: float | None = None  # unix seconds; with manual == "paused", a snooze
    cpu_hot: bool = False
    gpu_hot: bool = False
    busy_until: float = 0.0  # other programs' CPU/GPU use: hold the pause until then
    memory_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str
    state: str  # for the icon: "training", "waiting", "paused", "finishing"
    new_state: PolicyState
    threads: int = 0
    duty_cycle: float = 0.0
    use_gpu: bool = False


@dataclass(frozen=True, slots=True)
class TemperatureWatch:
    """Whether the temperature rule can act on this machine, for ``essaim status``.

    ``cpu`` and ``gpu`` are "on" (a reading is watched), "off" (set to 0, or the GPU is not used) or
    "no sensor" (nothing is read here); ``note`` is "" while every rule that is set has a reading."""

    cpu: str
    gpu: str
    note: str


TEMPERATURE_SOURCES = (
    "CPU sensors are read on Linux only, and not in most virtual machines nor in WSL2; "
    "GPU temperatures only on NVIDIA GPUs, through NVML"
)


def temperature_watch(obs: Observations, cfg: PolicyConfig) -> TemperatureWatch:
    """Which temperature readings the rule has here; pure, like :func:`decide`."""
    cpu = "off" if cfg.cpu_temp_high_c <= 0 else "no sensor" if obs.cpu_temp_c is None else "on"
    if cfg.gpu_temp_high_c <= 0 or not cfg.use_gpu:
        gpu = "off"
    else:
        gpu = "no sensor" if obs.gpu_temp_c is None else "on"
    note = ""
    if "on" not in (cpu, gpu) and "no sensor" in (cpu, gpu):
        note = (
            "temperature rule inactive: no temperature sensor is read here, so heat never pauses training "
            f"({TEMPERATURE_SOURCES})"
        )
    elif cpu == "no sensor":
        note = "CPU temperature rule inactive: no CPU temperature sensor is read here (the GPU's is)"
    return TemperatureWatch(cpu=cpu, gpu=gpu, note=note)


def fmt_minutes(seconds: float) -> str:
    """``42`` -> ``"0:42"``, ``3725`` -> ``"1:02:05"``."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _gb(n: float) -> str:
    return f"{n / 1024**3:.1f} GB"


def _latch(hot: bool, temp: float | None, high: float, low: float) -> bool:
    """Temperature hysteresis: hot above ``high``, cool again only below ``low``."""
    if temp is None or high <= 0:
        return False
    if temp > high:
        return True
    return hot and temp >= min(low, high)


def _update(obs: Observations, cfg: PolicyConfig, state: PolicyState, ts: float) -> PolicyState:
    """Latches and holds, updated from this observation whatever rule ends up deciding."""
    new = replace(
        state,
        cpu_hot=_latch(state.cpu_hot, obs.cpu_temp_c, cfg.cpu_temp_high_c, cfg.cpu_temp_low_c),
        gpu_hot=_latch(state.gpu_hot, obs.gpu_temp_c, cfg.gpu_temp_high_c, cfg.gpu_temp_low_c),
    )
    if new.manual == "paused" and new.pause_until is not None and ts >= new.pause_until:
        new = replace(new, manual="", pause_until=None)  # the snooze is over
    others_busy = cfg.other_cpu_pause_percent > 0 and obs.other_cpu_percent > cfg.other_cpu_pause_percent
    gpu_busy = _gpu_in_use(obs, cfg) and cfg.pause_on_other_gpu and obs.other_gpu_processes > 0
    if others_busy or gpu_busy:
        new = replace(new, busy_until=ts + cfg.resume_delay_seconds)
    if _memory_low(obs, cfg):
        new = replace(new, memory_until=ts + cfg.resume_delay_seconds)
    return new


def _gpu_in_use(obs: Observations, cfg: PolicyConfig) -> bool:
    return cfg.use_gpu and obs.gpu_present


def _memory_low(obs: Observations, cfg: PolicyConfig) -> bool:
    return (
        cfg.min_free_ram_mb > 0
        and obs.available_ram_bytes is not None
        and (obs.available_ram_bytes < cfg.min_free_ram_mb * MB)
    )


def _cores(obs: Observations, cfg: PolicyConfig) -> int:
    cores = max(obs.cpu_count, 1)
    return min(cores, cfg.cpu_max_cores) if cfg.cpu_max_cores > 0 else cores


def decide(obs: Observations, cfg: PolicyConfig, state: PolicyState, now: datetime) -> Decision:
    """What the trainer may do now. Pure: same inputs, same decision."""
    ts = now.timestamp()
    new = _update(obs, cfg, state, ts)
    use_gpu = _gpu_in_use(obs, cfg)

    def halt(action: Action, label: str, reason: str) -> Decision:
        return Decision(action=action, reason=reason, state=label, new_state=new, use_gpu=use_gpu)

    if new.manual == "finish":
        if obs.trainer_running:
            return halt("finish", "finishing", "finishing: completing this epoch's averaging, then stopping")
        return halt("finish", "paused", "finished: not taking new work (resume to start again)")
    if new.manual == "paused":
        if new.pause_until is not None:
            until = datetime.fromtimestamp(new.pause_until, tz=now.tzinfo)
            left = fmt_minutes(new.pause_until - ts)
            return halt("pause", "paused", f"paused by you until {describe(until, now)} ({left} left)")
        return halt("pause", "paused", "paused by you (resume to train again)")
    if obs.on_battery:
        if not cfg.train_on_battery:
            return halt("pause", "paused", "paused: on battery")
        if obs.battery_percent is not None and obs.battery_percent < cfg.battery_min_percent:
            return halt(
                "pause",
                "paused",
                f"paused: battery at {obs.battery_percent:.0f}% (minimum {cfg.battery_min_percent}%)",
            )
    if not cfg.schedule.allows(now):
        nxt = cfg.schedule.next_start(now)
        when = f"next: {describe(nxt, now)}" if nxt else "no hours allowed; see [schedule]"
        return halt("stop", "waiting", f"waiting: outside the allowed hours ({when})")
    if cfg.daily_mb > 0 and obs.network_today_bytes >= cfg.daily_mb * MB:
        used = obs.network_today_bytes / MB
        return halt(
            "stop",
            "paused",
            f"paused: daily network limit reached ({used:.0f} of {cfg.daily_mb} MB; resets at midnight)",
        )
    if _memory_low(obs, cfg) and obs.available_ram_bytes is not None:
        return halt(
            "stop",
            "paused",
            f"paused: low memory ({_gb(obs.available_ram_bytes)} free, minimum {_gb(cfg.min_free_ram_mb * MB)})",
        )
    if new.memory_until > ts:
        return halt(
            "stop", "paused", f"paused: low memory a moment ago (resuming in {new.memory_until - ts:.0f}s)"
        )
    if new.cpu_hot:
        return halt(
            "pause",
            "paused",
            f"paused: CPU too hot ({obs.cpu_temp_c:.0f}°C; resumes below {cfg.cpu_temp_low_c:.0f}°C)",
        )
    if new.gpu_hot and use_gpu:
        return halt(
            "pause",
            "paused",
            f"paused: GPU too hot ({obs.gpu_temp_c:.0f}°C; resumes below {cfg.gpu_temp_low_c:.0f}°C)",
        )
    if use_gpu and cfg.pause_on_other_gpu and obs.other_gpu_processes > 0:
        return halt(
            "pause", "waiting", f"waiting: {obs.other_gpu_processes} other program(s) computing on the GPU"
        )
    if cfg.other_cpu_pause_percent > 0 and obs.other_cpu_percent > cfg.other_cpu_pause_percent:
        return halt(
            "pause",
            "waiting",
            f"waiting: other programs use {obs.other_cpu_percent:.0f}% CPU (limit {cfg.other_cpu_pause_percent}%)",
        )
    if new.busy_until > ts:
        return halt(
            "pause", "waiting", f"waiting: other programs were busy (resuming in {new.busy_until - ts:.0f}s)"
        )

    cores = _cores(obs, cfg)
    max_duty = cfg.cpu_max_percent / 100
    idle = obs.user_idle_seconds
    threshold = cfg.idle_minutes * 60
    if idle is None and not cfg.headless_counts_as_idle:
        return halt(
            "pause",
            "waiting",
            "waiting: no user session to measure idle time (policy.headless_counts_as_idle)",
        )
    if idle is not None and idle < threshold:
        if cfg.only_when_idle:
            return halt(
                "pause",
                "waiting",
                f"waiting: user active (idle {fmt_minutes(idle)} of {fmt_minutes(threshold)})",
            )
        threads, duty = min(cfg.in_use_threads, cores), min(cfg.in_use_duty_cycle, max_duty)
        return Decision(
            action="throttle",
            state="training",
            new_state=new,
            threads=threads,
            duty_cycle=duty,
            use_gpu=use_gpu,
            reason=f"training lightly: user active ({threads} thread(s), {duty:.0%} of the time)",
        )
    share, duty_cap = _INTENSITY.get(cfg.intensity, _INTENSITY["full"])
    threads = max(1, int(cores * share))
    duty = min(duty_cap, max_duty)
    where = "machine idle" if idle is not None else "no user session"
    return Decision(
        action="train",
        state="training",
        new_state=new,
        threads=threads,
        duty_cycle=duty,
        use_gpu=use_gpu,
        reason=f"training: {where} ({cfg.intensity}: {threads} thread(s), {duty:.0%} of the time)",
    )
