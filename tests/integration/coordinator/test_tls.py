"""TLS at the coordinator's edge, with a real coordinator and certificates from `essaim coordinator
tls init` (a private CA, as a coordinator without a public certificate uses): both ports
speak TLS only, every client (grpcio's, the app's HTTP/2 one, the CLI, a browser's urllib) verifies
the certificate against the pinned CA and refuses a server whose certificate another CA signed, and
a coordinator on a public address will not serve plain text unless told ``--insecure``."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from essaim.coordinator.certs import issue
from essaim.protocol.client import CoordinatorClient
from essaim.protocol.errors import Unavailable
from essaim.protocol.lite_client import LiteClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tls(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory, kit: Any) -> Any:
    root = tmp_path_factory.mktemp("tls")
    made = kit.cli("tls", "init", "--name", "localhost", "--name", "127.0.0.1", "--out", str(root / "ours")).stdout
    assert "--tls-cert" in made
    other = issue(root / "theirs", ["127.0.0.1"])  # the same names, another CA
    coord = module_launcher(root / "data", "--tls-cert", str(root / "ours" / "server.pem"),
                            "--tls-key", str(root / "ours" / "server.key"), "--no-swarm")
    coord.ca, coord.other_ca = root / "ours" / "ca.pem", other.ca_cert
    assert oct((root / "ours" / "server.key").stat().st_mode & 0o777) == "0o600"
    return coord


def test_the_coordinator_announces_tls_addresses(tls: Any) -> None:
    assert tls.grpc_address.startswith("https://127.0.0.1:") and tls.http_address.startswith("https://127.0.0.1:")


def test_grpc_clients_verify_the_certificate(tls: Any) -> None:
    with CoordinatorClient(tls.grpc_address, token=tls.admin_token, ca_file=tls.ca, retries=0) as admin:
        assert admin.list_jobs() == []
    with CoordinatorClient(tls.grpc_address, token=tls.admin_token, ca_file=tls.other_ca, retries=0,
                           timeout=5) as wrong, pytest.raises(Unavailable):
        wrong.list_jobs()
    plain = tls.grpc_address.replace("https://", "http://")
    with CoordinatorClient(plain, token=tls.admin_token, retries=0, timeout=5) as clear, pytest.raises(Unavailable):
        clear.list_jobs()  # the coordinator speaks no plain text


def test_the_apps_http2_client_verifies_the_certificate(tls: Any, kit: Any) -> None:
    me = kit.Identity()
    with LiteClient(tls.grpc_address, ca_file=tls.ca) as client:
        reg = me.register(client, "tls-volunteer")
        assert reg.token.startswith("essaim_")
        assert me.register(client, "tls-volunteer").volunteer_id == reg.volunteer_id  # the same TLS connection
    with LiteClient(tls.grpc_address, ca_file=tls.other_ca, timeout=5) as wrong, pytest.raises(Unavailable):
        me.register(wrong, "tls-volunteer")


def test_the_dashboard_is_served_over_tls_only(tls: Any) -> None:
    trusted = ssl.create_default_context(cafile=str(tls.ca))
    with urllib.request.urlopen(f"{tls.http_url}/healthz", context=trusted, timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"{tls.http_url}/healthz", context=ssl.create_default_context(cafile=str(tls.other_ca)),
                               timeout=10)


def test_the_cli_trusts_the_ca_it_is_given(tls: Any, tmp_path: Path) -> None:
    env = {**os.environ, "ESSAIM_COORDINATOR": tls.grpc_address, "ESSAIM_TOKEN": tls.admin_token,
           "ESSAIM_CA_FILE": str(tls.ca), "ESSAIM_CONFIG": str(tmp_path / "none.toml"), "ESSAIM_RETRIES": "0"}
    essaim = str(Path(sys.executable).with_name("essaim"))
    ok = subprocess.run([essaim, "job", "list", "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout) == [], ok.stderr
    refused = subprocess.run([essaim, "job", "list"], capture_output=True, text=True, timeout=60,
                             env={**env, "ESSAIM_CA_FILE": str(tls.other_ca)})
    assert refused.returncode == 5, refused.stderr  # unreachable: the certificate is not the CA's


def test_no_plain_text_on_a_public_address_unless_asked(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "essaim.coordinator", "serve", "--host", "0.0.0.0", "--grpc-port", "0",
           "--http-port", "0", "--no-swarm", "--data-dir", str(tmp_path / "data")]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refusing to serve plain text" in refused.stderr, refused.stderr
