"""A volunteer behind a home router with UPnP on is a full peer: found out, not guessed.

Most home routers map a port when a program on the LAN asks (UPnP IGD, NAT-PMP). The lab builds
two homes on a public "internet" (``NetLab(public_internet=True)``: a router maps no port on a
private WAN address): one router runs miniupnpd, the other is a plain NAT that keeps every
connection from outside out. Each volunteer runs essaim's reachability check against a
coordinator's peer on the internet (``essaim.swarm.reachability``, as the trainer does before it
joins). The one behind the UPnP router must learn that it can be dialed through the port its
router mapped, and a NAT-ed volunteer of another home must then reach a full peer there directly,
as the swarm's client-mode volunteers do when they average with it; the other must learn that
nobody can dial it. Processes: ``upnp_peer.py`` in the lab's namespaces.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow
PEER = str(Path(__file__).with_name("upnp_peer.py"))


def _first_line(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The JSON line ``proc`` prints first (stdout), or fail with its stderr."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].strip():
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"{proc.args[-2:]} printed nothing in {timeout} s: {err[-2000:]}")
    return json.loads(line[0])


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ends a long-lived role: its stdin closed, then killed if it lingers."""
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _run(host: Any, *args: str, timeout: float = 90) -> dict[str, Any]:
    proc = host.run([sys.executable, PEER, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lab(netlab_module: ModuleType) -> Iterator[Any]:
    if shutil.which("miniupnpd") is None or shutil.which("iptables-legacy") is None:
        pytest.skip("a UPnP router needs miniupnpd and iptables-legacy (Debian package miniupnpd-iptables)")
    lab = netlab_module.NetLab(public_internet=True)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def coordinator(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    host = lab.add_host("coord")
    record = tmp_path_factory.mktemp("upnp") / "reachability.json"
    proc = host.popen([sys.executable, PEER, "coordinator", str(record)], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = _first_line(proc, 60)
        host.maddrs, host.record = started["maddrs"], record
        assert host.maddrs and all(f"/{host.address}/" in m for m in host.maddrs), started
        yield host
    finally:
        _stop(proc)


@pytest.mark.timeout(300)
def test_a_volunteer_behind_a_upnp_router_is_reachable_through_its_mapping(lab: Any, coordinator: Any) -> None:
    home = lab.add_home("upnp", upnp=True)
    seen = _run(home, "check", *coordinator.maddrs)
    internal = int(seen["host_maddrs"][0].split("/")[4])
    assert seen["reachable"] is True and seen["via"] == "upnp" and seen["reachability"] == "upnp", seen
    # the coordinator saw the router, and dialed it back on the port the router mapped
    assert seen["observed"] == home.public_address, seen
    host, port = seen["address"].split("/")[2], int(seen["address"].split("/")[4])
    assert host == home.public_address and port != internal, seen
    # the coordinator's side recorded it so, for the dashboard
    recorded = json.loads(coordinator.record.read_text())
    assert [c["reachability"] for c in recorded.values() if c["observed"] == home.public_address] == ["upnp"], recorded


@pytest.mark.timeout(300)
def test_a_volunteer_behind_a_plain_nat_learns_nobody_can_dial_it(lab: Any, coordinator: Any) -> None:
    home = lab.add_home("plain")
    seen = _run(home, "check", *coordinator.maddrs)
    assert seen["reachable"] is False and seen["reachability"] == "nat" and seen["via"] == "", seen
    assert seen["observed"] == home.public_address, seen
    assert "dial back" in seen["reason"], seen


@pytest.mark.timeout(300)
def test_a_nated_volunteer_dials_a_full_peer_behind_a_upnp_router(lab: Any) -> None:
    """What a full peer's DHT announces behind a UPnP router (essaim's start_dht, as a trainer that
    found itself reachable through a mapping starts it: its daemon maps a port of its own) is an
    address others reach through two NATs: theirs, outgoing, and the mapping."""
    full, client = lab.add_home("full", upnp=True), lab.add_home("client")
    proc = full.popen([sys.executable, PEER, "listen"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    try:
        listening = _first_line(proc, 60)
        assert listening["mapped"] and all(f"/{full.public_address}/" in m for m in listening["mapped"]), listening
        dialed = _run(client, "dial", listening["peer_id"], *listening["mapped"])
        assert dialed["connected"] is True, dialed
        assert set(dialed["via"]) & set(listening["mapped"]), dialed
        # without the mapping, the same peer is out of reach: the port it listens on, at its router
        lan_port = listening["lan"][0].split("/")[4]
        if all(m.split("/")[4] != lan_port for m in listening["mapped"]):  # the router picks the outside port
            blocked = _run(client, "dial", listening["peer_id"], f"/ip4/{full.public_address}/tcp/{lan_port}")
            assert blocked["connected"] is False, blocked
    finally:
        _stop(proc)
