"""Where the CLI's remote commands find the coordinator, and with which token.

Precedence, first found wins:

1. the ``--coordinator HOST:PORT`` and ``--token T`` flags,
2. the environment: ``ESSAIM_COORDINATOR`` and ``ESSAIM_TOKEN``,
3. the user config file (``platformdirs.user_config_dir("essaim")/config.toml``, or the path in
   ``ESSAIM_CONFIG``), its ``[coordinator]`` table, keys ``address`` and ``token``. The volunteer
   app shares this file and owns its other tables; the CLI only reads it.
4. the default address ``127.0.0.1:50051`` (there is no default token).

A coordinator that is not on this machine is reached over TLS and its certificate verified with
the system's CAs, or with the CA of ``ESSAIM_CA_FILE`` (or ``ca_file`` in the ``[coordinator]``
table); an address written ``http://HOST:PORT`` is reached in plain text (essaim.protocol.tls).
``ESSAIM_TIMEOUT`` (seconds per call) and ``ESSAIM_RETRIES`` tune the client. Every remote command
of :mod:`essaim.job` and :mod:`essaim.admin` builds its client with :func:`client_from_options`.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import platformdirs
import typer
from essaim.protocol.errors import InvalidArgument, Unauthenticated

if TYPE_CHECKING:
    from essaim.protocol.client import CoordinatorClient

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3

ENV_ADDRESS = "ESSAIM_COORDINATOR"
ENV_TOKEN = "ESSAIM_TOKEN"
ENV_CONFIG = "ESSAIM_CONFIG"
ENV_TIMEOUT = "ESSAIM_TIMEOUT"
ENV_RETRIES = "ESSAIM_RETRIES"
ENV_CA_FILE = "ESSAIM_CA_FILE"  # essaim.protocol.tls.ENV_CA_FILE (not imported: it is light, this is lighter)

CoordinatorOption = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        "-c",
        metavar="HOST:PORT",
        show_default=False,
        help=f"Coordinator gRPC address (else env {ENV_ADDRESS}, the config file, or {DEFAULT_ADDRESS}).",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        show_default=False,
        help=f"Bearer token (else env {ENV_TOKEN} or the config file; prefer those: "
        "flags are visible to other users of the machine).",
    ),
]


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    """The resolved address and token, and where each came from (flag, env, config, default)."""

    address: str
    token: str | None
    address_source: str
    token_source: str | None
    config_path: Path
    ca_file: str | None = None  # the CA to verify the coordinator with (else ESSAIM_CA_FILE, else the system's)

    def __repr__(self) -> str:  # never show the token itself
        token = "set" if self.token else "unset"
        return f"RemoteSettings(address={self.address!r}, token={token}, from={self.address_source})"


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The user config file shared with the volunteer app (it may not exist)."""
    env = os.environ if env is None else env
    override = env.get(ENV_CONFIG)
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir("essaim")) / "config.toml"


def read_coordinator_table(path: Path) -> dict[str, Any]:
    """The ``[coordinator]`` table of the config file; empty when the file does not exist."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read the config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(
            f"the config file {path} is not valid TOML ({exc}); fix it, or point {ENV_CONFIG} elsewhere"
        ) from None
    table = data.get("coordinator", {})
    if not isinstance(table, dict):
        raise InvalidArgument(f"the config file {path}: [coordinator] must be a table")
    for key in ("address", "token", "ca_file"):
        if key in table and not isinstance(table[key], str):
            raise InvalidArgument(f"the config file {path}: coordinator.{key} must be a string")
    return table


def normalize_address(address: str, *, source: str = "--coordinator") -> str:
    """``HOST:PORT`` checked; a bare host gets the default port. ``[v6]:port`` is accepted, and
    ``https://`` (TLS) or ``http://`` (plain text) in front is kept (see :mod:`essaim.protocol.tls`)."""
    text = address.strip()
    scheme = ""
    for prefix, kept in (("grpc://", ""), ("grpcs://", "https://"), ("https://", "https://"), ("http://", "http://")):
        if text.lower().startswith(prefix):
            text, scheme = text[len(prefix):], kept
            break
    text = text.rstrip("/")
    if not text:
        raise InvalidArgument(f"{source}: empty coordinator address; expected HOST:PORT")
    if text.startswith("["):
        host, sep, rest = text.partition("]")
        host += "]"
        port = rest.removeprefix(":") if sep else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif ":" in text:
        raise InvalidArgument(f"{source}: {address!r}; write IPv6 addresses as [ADDR]:PORT")
    else:
        host, port = text, ""
    if not host or host == "[]":
        raise InvalidArgument(f"{source}: {address!r} has no host; expected HOST:PORT")
    if not port:
        return f"{scheme}{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"{source}: {address!r} has a bad port; expected HOST:PORT with PORT in 1-65535")
    return f"{scheme}{host}:{int(port)}"


def resolve(
    coordinator: str | None = None,
    token: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> RemoteSettings:
    """Apply the precedence flags > env > config file > default to the address and the token."""
    env = os.environ if env is None else env
    path = config_path(env)
    file_table: dict[str, Any] | None = None

    def from_file(key: str) -> str | None:
        nonlocal file_table
        if file_table is None:
            file_table = read_coordinator_table(path)
        value = file_table.get(key)
        return (value.strip() or None) if isinstance(value, str) else None

    if coordinator:
        address, address_source = normalize_address(coordinator), "flag"
    elif env.get(ENV_ADDRESS):
        address, address_source = normalize_address(env[ENV_ADDRESS], source=ENV_ADDRESS), "env"
    elif (value := from_file("address")) is not None:
        address, address_source = normalize_address(value, source=f"{path}: coordinator.address"), "config"
    else:
        address, address_source = DEFAULT_ADDRESS, "default"

    chosen: str | None
    if token:
        chosen, token_source = token.strip(), "flag"
    elif env.get(ENV_TOKEN):
        chosen, token_source = env[ENV_TOKEN].strip(), "env"
    elif (value := from_file("token")) is not None:
        chosen, token_source = value, "config"
    else:
        chosen, token_source = None, None
    return RemoteSettings(
        address=address,
        token=chosen or None,
        address_source=address_source,
        token_source=token_source if chosen else None,
        config_path=path,
        # the table's ca_file pins the CA of the table's coordinator; any other comes with ESSAIM_CA_FILE
        ca_file=env.get(ENV_CA_FILE) or (from_file("ca_file") if address_source == "config" else None),
    )


def missing_token_message(settings: RemoteSettings) -> str:
    return (
        f"no token for the coordinator at {settings.address}: pass --token TOKEN, set {ENV_TOKEN}, "
        f'or add token = "..." under [coordinator] in {settings.config_path}. '
        "A coordinator admin creates one with `essaim coordinator token create --role researcher`."
    )


def _env_number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(f"{name}={raw!r}: expected a number") from None
    if value < minimum:
        raise InvalidArgument(f"{name}={raw!r}: expected at least {minimum:g}")
    return value


def client_from_options(
    coordinator: str | None,
    token: str | None,
    *,
    require_token: bool = True,
    env: Mapping[str, str] | None = None,
) -> CoordinatorClient:
    """A :class:`CoordinatorClient` for the resolved address and token (use it as a context manager).

    Raises Unauthenticated, with how to pass a token, when ``require_token`` and none is found.
    """
    env = os.environ if env is None else env
    settings = resolve(coordinator, token, env=env)
    if require_token and not settings.token:
        raise Unauthenticated(missing_token_message(settings))
    timeout = _env_number(env, ENV_TIMEOUT, DEFAULT_TIMEOUT, minimum=0.1)
    retries = int(_env_number(env, ENV_RETRIES, DEFAULT_RETRIES, minimum=0))
    log.debug("coordinator %s (from %s), token from %s", settings.address, settings.address_source,
              settings.token_source)
    from essaim.protocol.client import CoordinatorClient

    return CoordinatorClient(settings.address, token=settings.token, timeout=timeout, retries=retries,
                             ca_file=settings.ca_file)
