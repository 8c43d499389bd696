"""How a client reaches a coordinator: TLS unless the address says otherwise, and whom it trusts.

    endpoint = resolve("coordinator.example.org:50051")          # TLS, the system's CAs
    endpoint = resolve("10.0.0.5:50051", ca_file="team-ca.pem")  # TLS, only this CA (a private coordinator)
    endpoint = resolve("127.0.0.1:50051")                        # plain text: loopback
    endpoint = resolve("http://10.0.0.5:50051")                  # plain text, asked for explicitly

Bearer tokens, swarm tokens and registrations cross the internet with every call, so a client
speaks TLS to any coordinator that is not on this machine, and verifies its certificate: against
the system's certificate authorities, or against the one CA of ``ca_file`` (``ESSAIM_CA_FILE``)
for a coordinator with a certificate of its own. Plain text is used only for a loopback address
or an address written ``http://HOST:PORT`` (a coordinator behind a TLS-terminating proxy on the
same host, or a test network): never by default. ``https://HOST:PORT`` asks for TLS even on
loopback.

Used by :class:`essaim.protocol.client.CoordinatorClient`, :class:`essaim.protocol.lite_client.LiteClient`
and the CLI; the coordinator's own side is ``--tls-cert``/``--tls-key`` (essaim.coordinator.server).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from essaim.protocol.errors import InvalidArgument

ENV_CA_FILE = "ESSAIM_CA_FILE"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A coordinator's address as a client dials it."""

    host: str
    port: int
    tls: bool
    ca_file: Path | None = None  # None: the system's certificate authorities

    @property
    def target(self) -> str:
        """``HOST:PORT`` as gRPC takes it (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def root_certificates(self) -> bytes | None:
        """The pinned CA's PEM, or None for the system's."""
        if self.ca_file is None:
            return None
        try:
            return self.ca_file.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read the CA file {self.ca_file}: {exc.strerror}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the coordinator's certificate and its name, speaking h2."""
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"cannot use the CA file {self.ca_file}: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["h2"])
        return context


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve(address: str, *, ca_file: str | Path | None = None) -> Endpoint:
    """The endpoint of ``address`` (``[http://|https://]HOST:PORT``, also ``dns:///HOST:PORT``);
    ``ca_file`` (default ``$ESSAIM_CA_FILE``) pins the CA and implies TLS. InvalidArgument when the
    address cannot be read, or asks for plain text with a CA."""
    text = address.strip()
    scheme = ""
    for prefix in ("https://", "http://", "grpcs://", "grpc://"):
        if text.lower().startswith(prefix):
            scheme, text = prefix[:-3], text[len(prefix):]
            break
    text = text.removeprefix("dns:///").rstrip("/")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"coordinator address {address!r} is not HOST:PORT; set it like "
                              "coordinator.example.org:50051 (or 127.0.0.1:50051 on this machine)")
    pinned = ca_file if ca_file is not None else os.environ.get(ENV_CA_FILE) or None
    if scheme in ("http", "grpc"):
        if ca_file is not None:
            raise InvalidArgument(f"coordinator address {address!r} asks for plain text, but a CA file was given "
                                  "for TLS; write the address as HOST:PORT or https://HOST:PORT")
        return Endpoint(host, int(port), tls=False)
    tls = scheme in ("https", "grpcs") or pinned is not None or not is_loopback(host)
    return Endpoint(host, int(port), tls=tls, ca_file=Path(pinned).expanduser() if tls and pinned else None)
