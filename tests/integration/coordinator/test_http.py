"""The coordinator's HTTP side: health, Prometheus metrics, JSON status; and a clean SIGTERM stop."""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest

pytestmark = pytest.mark.timeout(120)


def _get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("content-type", ""), resp.read().decode()


def test_healthz_metrics_and_status(launch_coordinator, tmp_path, kit) -> None:
    coord = launch_coordinator(tmp_path / "c")
    with coord.client() as anon:
        reg = kit.Identity().register(anon, "metric")
    with coord.client(reg.token) as client:
        for _ in range(3):
            client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    with coord.client(coord.admin_token) as admin:
        admin.submit_job(kit.hub_recipe("metrics"))

    status, _, body = _get(f"{coord.http_url}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"

    status, ctype, text = _get(f"{coord.http_url}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'essaim_volunteers{status="online"} 1' in text
    assert 'essaim_jobs{status="queued"} 1' in text
    assert "essaim_heartbeat_latency_seconds_count 3" in text
    assert 'essaim_heartbeat_latency_seconds_bucket{le="+Inf"} 3' in text
    assert "essaim_store_errors_total 0" in text
    assert "# TYPE essaim_job_samples_per_second gauge" in text

    status, _, body = _get(f"{coord.http_url}/api/v1/status")
    data = json.loads(body)
    assert data["volunteers"]["online"] == 1 and data["jobs"]["queued"] == 1

    assert coord.stop(signal.SIGTERM) == 0
    assert "Traceback" not in coord.log()


def test_ports_in_use_and_bad_flags_are_clear_errors(launch_coordinator, tmp_path, kit) -> None:
    coord = launch_coordinator(tmp_path / "a")
    port = coord.http_address.rsplit(":", 1)[1]
    proc = kit.cli(
        "serve", "--data-dir", str(tmp_path / "b"), "--grpc-port", "0", "--http-port", port, check=False
    )
    assert (
        proc.returncode == 2 and "pick another --http-port" in proc.stderr and "Traceback" not in proc.stderr
    )
    proc = kit.cli("serve", "--data-dir", str(tmp_path / "b"), "--grpc-port", "99999", check=False)
    assert proc.returncode == 2 and "grpc_port" in proc.stderr
