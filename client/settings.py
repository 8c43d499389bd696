"""Every setting of the volunteer app, in one table: its config key, type, default, CLI flag and help.

    SETTINGS["policy.idle_minutes"].parse("5")        # 5.0, or ConfigError naming the key
    setting.flag                                      # "--idle-minutes"
    setting.env                                       # "ESSAIM_POLICY_IDLE_MINUTES"

The config file (:mod:`essaim.client.config`), the environment, the flags of ``essaim run``
(:mod:`essaim.client.cli`) and the tray's Settings menu (:mod:`essaim.client.tray`) are all built
from this table, so every rule has a key, a flag and a control. Keys are ``table.name``; the
``[coordinator]`` table is shared with the researcher CLI, which also keeps its ``token`` there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from essaim.client.errors import ConfigError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
INTENSITIES = ("light", "medium", "full")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting. ``kind`` is bool, int, float or str; ``choices`` limits a str."""

    key: str
    kind: type
    default: Any
    help: str
    flag_name: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def table(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name.replace("_", "-"))

    @property
    def env(self) -> str:
        return "ESSAIM_" + self.key.replace(".", "_").upper()

    def parse(self, raw: Any) -> Any:
        """``raw`` (a TOML value, or a string from the environment, a flag or the CLI) as this setting's type."""
        try:
            value = self._coerce(raw)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self.key} must be {self._kind_words()}, not {raw!r} (e.g. `essaim config set {self.key} "
                f"{self._example()}`)"
            ) from None
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.key} must be one of {', '.join(self.choices)}, not {raw!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{self.key} must be at least {self.minimum:g}, not {value!r}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{self.key} must be at most {self.maximum:g}, not {value!r}")
        if self.table == "schedule":
            from essaim.client.schedule import parse_ranges

            parse_ranges(value, key=self.key)
        return value

    def _coerce(self, raw: Any) -> Any:
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(raw)
        if isinstance(raw, bool):
            raise TypeError(raw)
        if self.kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if self.kind is float:
            return float(raw)
        if not isinstance(raw, str):
            raise TypeError(raw)
        return raw.strip()

    def _kind_words(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}[self.kind]

    def _example(self) -> str:
        if self.choices:
            return self.choices[0]
        return {bool: "true", int: "2", float: "2.5", str: "VALUE"}[self.kind]


def _s(key: str, kind: type, default: Any, help: str, **kw: Any) -> Setting:
    return Setting(key=key, kind=kind, default=default, help=help, **kw)


_TABLE: list[Setting] = [
    _s(
        "coordinator.address",
        str,
        "",
        "the coordinator's HOST:PORT, reached over TLS unless on this machine or written http://HOST:PORT "
        "(empty: none; see volunteer.job_file)",
        flag_name="coordinator",
    ),
    _s(
        "coordinator.ca_file",
        str,
        "",
        "a CA certificate (PEM) to verify the coordinator with, for one with a certificate of its own "
        "(empty: the system's CAs)",
    ),
    _s("volunteer.name", str, "", "public pseudonym on the leaderboard (empty: made from the peer id)"),
    _s("volunteer.team", str, "", "team shown on the leaderboard"),
    _s(
        "volunteer.dashboard_url",
        str,
        "",
        "web dashboard opened by the tray (empty: http://<coordinator host>:8080)",
    ),
    _s(
        "volunteer.job_file",
        str,
        "",
        "train this local assignment JSON without a coordinator (testing, air-gapped)",
    ),
    _s(
        "volunteer.trainer_command",
        str,
        "",
        "command that runs the trainer (empty: this Python's `-m essaim.client.trainer`); may wrap it",
    ),
    _s(
        "volunteer.release_after_minutes",
        float,
        10.0,
        "stop a trainer that has been paused this long, to give its memory back",
        minimum=0,
    ),
    _s("policy.idle_minutes", float, 3.0, "train only after the user has been idle this long", minimum=0),
    _s("policy.only_when_idle", bool, True, "false: train lightly while the machine is in use (in_use_*)"),
    _s("policy.in_use_threads", int, 1, "threads while the machine is in use", minimum=1),
    _s(
        "policy.in_use_duty_cycle",
        float,
        0.25,
        "share of time spent computing while in use",
        minimum=0.01,
        maximum=1,
    ),
    _s(
        "policy.intensity",
        str,
        "full",
        "how hard to train when idle: light, medium or full",
        choices=INTENSITIES,
    ),
    _s(
        "policy.headless_counts_as_idle",
        bool,
        True,
        "with no user session (a server), count the machine as idle",
    ),
    _s("policy.cpu_max_cores", int, 0, "at most this many CPU threads (0: all cores)", minimum=0),
    _s(
        "policy.cpu_max_percent",
        int,
        100,
        "at most this % of the time computing (duty cycle)",
        minimum=1,
        maximum=100,
    ),
    _s(
        "policy.other_cpu_pause_percent",
        int,
        50,
        "pause while other programs use more than this % of all CPUs (0: never)",
        minimum=0,
        maximum=100,
    ),
    _s("policy.use_gpu", bool, True, "train on the GPU when there is one"),
    _s("policy.gpu_max_vram_mb", int, 0, "at most this much GPU memory for training (0: no cap)", minimum=0),
    _s("policy.max_ram_mb", int, 0, "on the CPU, at most this much RAM for the trainer's computation (0: what "
       "policy.min_free_ram_mb leaves)", minimum=0),
    _s("policy.pause_on_other_gpu", bool, True, "pause while another program computes on the GPU"),
    _s("policy.train_on_battery", bool, False, "train on battery power (only above battery_min_percent)"),
    _s(
        "policy.battery_min_percent",
        int,
        50,
        "on battery, train only above this charge",
        minimum=0,
        maximum=100,
    ),
    _s("policy.cpu_temp_high_c", float, 85.0, "pause when the CPU is hotter than this (0: never)", minimum=0),
    _s("policy.cpu_temp_low_c", float, 75.0, "after a CPU temperature pause, resume below this", minimum=0),
    _s("policy.gpu_temp_high_c", float, 83.0, "pause when the GPU is hotter than this (0: never)", minimum=0),
    _s("policy.gpu_temp_low_c", float, 73.0, "after a GPU temperature pause, resume below this", minimum=0),
    _s(
        "policy.min_free_ram_mb",
        int,
        1024,
        "stop training when less RAM than this is available (0: never)",
        minimum=0,
    ),
    _s(
        "policy.resume_delay_seconds",
        float,
        10.0,
        "after another program's CPU/GPU use or low memory paused training, wait this long before resuming",
        minimum=0,
    ),
    _s(
        "policy.yield_grace_seconds",
        float,
        0.5,
        "if the trainer has not confirmed a pause within this time, it is suspended (SIGSTOP)",
        minimum=0.05,
        maximum=5,
    ),
    _s(
        "network.listen_port",
        int,
        0,
        "TCP port the swarm listens on (0: any); set it to a port your router forwards to this machine",
        minimum=0,
        maximum=65535,
    ),
    _s(
        "network.client_mode",
        str,
        "auto",
        "auto: ask the coordinator whether this machine can be dialed; on: never accept connections; "
        "off: always (a public server)",
        choices=("auto", "on", "off"),
    ),
    _s("limits.upload_kbps", int, 0, "cap on training upload, kilobytes per second (0: none)", minimum=0),
    _s("limits.download_kbps", int, 0, "cap on training download, kilobytes per second (0: none)", minimum=0),
    _s(
        "limits.daily_mb",
        int,
        0,
        "stop training for the day after this much traffic, MB (0: none)",
        minimum=0,
    ),
    _s("limits.cache_gb", float, 20.0, "disk for job files kept between jobs (models, data), GB; the oldest go "
       "first (0: no cap)", minimum=0),
    *(
        _s(
            f"schedule.{day}",
            str,
            "all",
            f"hours allowed on {day}: 'all', 'none' or ranges like '09:00-12:00,22:00-06:00'",
            flag_name=f"schedule-{day}",
        )
        for day in WEEKDAYS
    ),
]

SETTINGS: dict[str, Setting] = {s.key: s for s in _TABLE}
TABLES = tuple(dict.fromkeys(s.table for s in _TABLE))


def setting(key: str) -> Setting:
    """The setting called ``key``; ConfigError listing close keys when there is none."""
    try:
        return SETTINGS[key]
    except KeyError:
        tail = key.rsplit(".", 1)[-1]
        close = [k for k in SETTINGS if tail and (tail in k or k.endswith(tail))]
        hint = (
            f"; did you mean {', '.join(close[:3])}?" if close else "; see `essaim config show` for the keys"
        )
        raise ConfigError(f"unknown setting {key!r}{hint}") from None


def defaults() -> dict[str, Any]:
    return {s.key: s.default for s in _TABLE}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """``"90"``, ``"30s"``, ``"15m"``, ``"1h"``, ``"2d"`` -> seconds (a bare number is seconds)."""
    match = _DURATION.match(text or "")
    if not match:
        raise ConfigError(f"cannot read the duration {text!r}; write e.g. 30m, 1h or 2h")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
