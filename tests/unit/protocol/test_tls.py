"""How a client chooses TLS or plain text for a coordinator's address (essaim.protocol.tls)."""

from __future__ import annotations

from pathlib import Path

import pytest
from essaim.protocol.errors import InvalidArgument
from essaim.protocol.tls import ENV_CA_FILE, resolve
from essaim.remote import normalize_address


@pytest.fixture(autouse=True)
def _no_ca_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CA_FILE, raising=False)


@pytest.mark.parametrize(
    ("address", "target", "tls"),
    [
        ("coordinator.example.org:50051", "coordinator.example.org:50051", True),  # the internet: TLS
        ("10.0.0.5:50051", "10.0.0.5:50051", True),
        ("[2001:db8::1]:50051", "[2001:db8::1]:50051", True),
        ("127.0.0.1:50051", "127.0.0.1:50051", False),  # this machine
        ("localhost:50051", "localhost:50051", False),
        ("[::1]:50051", "[::1]:50051", False),
        ("https://127.0.0.1:50051", "127.0.0.1:50051", True),  # asked for
        ("http://10.0.0.5:50051", "10.0.0.5:50051", False),  # plain text, written out
        ("grpcs://example.org:443/", "example.org:443", True),
        ("dns:///example.org:50051", "example.org:50051", True),
    ],
)
def test_tls_unless_loopback_or_written_http(address: str, target: str, tls: bool) -> None:
    endpoint = resolve(address)
    assert (endpoint.target, endpoint.tls, endpoint.ca_file) == (target, tls, None)


def test_a_pinned_ca_means_tls_even_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    assert resolve("127.0.0.1:1", ca_file=ca).tls and resolve("127.0.0.1:1", ca_file=ca).ca_file == ca
    monkeypatch.setenv(ENV_CA_FILE, str(ca))
    assert resolve("127.0.0.1:1").ca_file == ca
    assert resolve("http://127.0.0.1:1").tls is False  # written http: the environment's CA is not for it
    with pytest.raises(InvalidArgument, match="plain text, but a CA file"):
        resolve("http://127.0.0.1:1", ca_file=ca)


@pytest.mark.parametrize("address", ["", "host", "host:", "host:0", "host:70000", "https://:5"])
def test_malformed_addresses_are_refused(address: str) -> None:
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        resolve(address)


def test_the_cli_keeps_the_scheme_it_is_given() -> None:
    assert normalize_address("https://example.org") == "https://example.org:50051"
    assert normalize_address("http://10.0.0.5:9") == "http://10.0.0.5:9"
    assert normalize_address("grpc://example.org:9/") == "example.org:9"
