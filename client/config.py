"""The volunteer app's settings: a TOML file in the user config dir, the environment, and flags.

    paths = Paths.default()                         # config file, data, runtime and log dirs
    settings = load_settings(paths, flags={"policy.idle_minutes": 1.0})
    settings["policy.idle_minutes"], settings.source("policy.idle_minutes")   # 1.0, "flag"
    save_value(paths.config_file, "policy.intensity", "light")

Precedence: flags > environment (``ESSAIM_POLICY_IDLE_MINUTES``...) > file > defaults. The file
is ``platformdirs.user_config_dir("essaim")/config.toml`` (``ESSAIM_CONFIG`` overrides the path);
its ``[coordinator]`` table is shared with the researcher CLI and every key this module does not
know is kept as it is when it writes. A file that is not valid TOML is moved aside to
``config.toml.bad-<timestamp>`` (never lost) and defaults are used; a bad value for one key is
reported and that key alone falls back to its default.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w
from essaim.client.errors import ConfigError
from essaim.client.settings import SETTINGS, defaults, setting

logger = logging.getLogger(__name__)
APP = "essaim"


@dataclass(frozen=True, slots=True)
class Paths:
    """Where the app keeps things. ``ESSAIM_CONFIG`` and ``ESSAIM_DATA_DIR`` override two of them; with
    ``ESSAIM_DATA_DIR`` set, the logs and the control endpoint live in it too, so several volunteers
    can run on one machine, each with its own pair (``ESSAIM_RUNTIME_DIR`` moves the endpoint)."""

    config_file: Path
    data_dir: Path
    runtime_dir: Path
    log_dir: Path

    @classmethod
    def default(cls, env: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if env is None else env
        config = env.get("ESSAIM_CONFIG") or os.path.join(platformdirs.user_config_dir(APP), "config.toml")
        data = Path(env.get("ESSAIM_DATA_DIR") or platformdirs.user_data_dir(APP))
        if env.get("ESSAIM_RUNTIME_DIR"):
            runtime = Path(env["ESSAIM_RUNTIME_DIR"])
        else:  # another data dir is another volunteer: not the default one's control socket
            runtime = data / "run" if env.get("ESSAIM_DATA_DIR") else _runtime_dir(data)
        logs = data / "logs" if env.get("ESSAIM_DATA_DIR") else Path(platformdirs.user_log_dir(APP))
        return cls(config_file=Path(config), data_dir=data, runtime_dir=runtime, log_dir=logs)

    @property
    def identity_file(self) -> Path:
        return self.data_dir / "identity.pem"

    @property
    def control_address(self) -> Path:
        """The unix socket (POSIX) or the port-and-token file (Windows) of the local control endpoint."""
        return self.runtime_dir / ("control.json" if sys.platform == "win32" else "control.sock")

    def ensure(self) -> None:
        for d in (self.data_dir, self.runtime_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)


def _runtime_dir(data: Path) -> Path:
    if sys.platform.startswith("linux") and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(platformdirs.user_runtime_dir(APP))
    return data / "run"  # no per-user runtime dir: keep the socket with the data, never in a shared /tmp


@dataclass(slots=True)
class Settings:
    """The effective value of every setting, where each came from, and what was wrong in the file."""

    values: dict[str, Any]
    sources: dict[str, str]
    problems: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")


def read_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The raw TOML tables of ``path`` ({} when missing) and problems; moves an unreadable file aside."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [_move_aside(path, f"cannot be read ({exc})")]
    try:
        return tomllib.loads(text), []
    except tomllib.TOMLDecodeError as exc:
        return {}, [_move_aside(path, f"is not valid TOML ({exc})")]


def _move_aside(path: Path, why: str) -> str:
    backup = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    try:
        path.replace(backup)
    except OSError as exc:
        message = (
            f"config file {path} {why}; could not move it aside ({exc}); using defaults and leaving it as is"
        )
    else:
        message = (
            f"config file {path} {why}; it was kept as {backup} and defaults are used: "
            f"fix the backup and copy it back, or set values again with `essaim config set`"
        )
    logger.error(message)
    return message


def _from_file(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for table, content in raw.items():
        if not isinstance(content, dict):
            continue
        for name, value in content.items():
            key = f"{table}.{name}"
            spec = SETTINGS.get(key)
            if spec is None:
                continue  # another component's key (coordinator.token) or a newer version's: kept, ignored
            try:
                values[key] = spec.parse(value)
            except ConfigError as exc:
                problems.append(f"{exc}; using the default {spec.default!r}")
    return values, problems


def _from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in SETTINGS.values():
        if spec.env in env:
            try:
                values[spec.key] = spec.parse(env[spec.env])
            except ConfigError as exc:
                problems.append(f"{spec.env}: {exc}; ignoring it")
    return values, problems


def load_settings(
    paths: Paths, *, flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Defaults < file < environment < ``flags`` (already parsed values, keyed by setting key)."""
    raw, problems = read_file(paths.config_file)
    file_values, file_problems = _from_file(raw)
    env_values, env_problems = _from_env(os.environ if env is None else env)
    values = defaults()
    sources = dict.fromkeys(values, "default")
    for source, layer in (("file", file_values), ("env", env_values), ("flag", dict(flags or {}))):
        for key, value in layer.items():
            values[key] = setting(key).parse(value)
            sources[key] = source
    return Settings(values=values, sources=sources, problems=[*problems, *file_problems, *env_problems])


def save_value(path: Path, key: str, value: Any) -> Any:
    """Parse ``value`` for ``key`` and write it into the file, keeping every other table and key."""
    spec = setting(key)
    parsed = spec.parse(value)
    raw, _problems = read_file(path)
    raw.setdefault(spec.table, {})
    if not isinstance(raw[spec.table], dict):
        raw[spec.table] = {}
    raw[spec.table][spec.name] = parsed
    write_file(path, raw)
    return parsed


def write_file(path: Path, raw: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``raw`` as TOML, readable by the owner only (it may hold a token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(raw, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render(settings: Settings) -> str:
    """``essaim config show``: per key, what it does (a comment line), then its value and where the
    value came from (file, env, flag; nothing when it is the default)."""
    lines = []
    for key, spec in SETTINGS.items():
        shown = tomli_w.dumps({"v": settings[key]}).split("=", 1)[1].strip()
        origin = settings.source(key)
        lines.append(f"# {spec.help}")
        lines.append(f"{key} = {shown}" + (f"    # {origin}" if origin != "default" else ""))
    return "\n".join(lines)
