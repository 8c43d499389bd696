"""Reachability checks against a real coordinator peer: an honest volunteer on this machine is
found reachable, and hostile requests (a port it does not listen on, hundreds of ports, an oversized
or garbled request, a flood from one peer) get a bounded answer and never make the coordinator dial
anything but the address the request came from."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


@pytest.fixture(scope="module")
def coordinator_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    record = tmp_path_factory.mktemp("reach") / "reachability.json"
    proc = subprocess.Popen([sys.executable, str(HERE / "reachability_peer.py"), "--record", str(record)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the coordinator peer did not start"
        yield {"maddr": json.loads(line)["maddrs"][0], "record": record, "proc": proc}
    finally:
        proc.kill()
        proc.wait(10)


def _client(peer: dict[str, Any], mode: str, *, tries: int = 2) -> list[dict[str, Any]]:
    """The replies a fresh client process got. A reply lost on the way (the stream closed with no
    line: once, beside two busy processes, for an answer the peer had recorded) is asked again by
    a new client, once; a volunteer's own check asks again the same way (CHECK_ATTEMPTS)."""
    replies: list[dict[str, Any]] = []
    for _ in range(tries):
        done = subprocess.run([sys.executable, str(HERE / "reachability_client.py"), "--peer", peer["maddr"],
                               "--mode", mode], capture_output=True, text=True, timeout=120, cwd=ROOT)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert lines, done.stderr[-3000:]
        replies = json.loads(lines[-1])["replies"]
        if all(set(r) - {"seconds"} for r in replies):
            break
    return replies


@pytest.mark.timeout(120)
def test_a_volunteer_that_can_be_dialed_is_told_so(coordinator_peer: dict[str, Any]) -> None:
    from essaim.swarm.reachability import read_checks

    [reply] = _client(coordinator_peer, "honest")
    assert reply["reachable"] is True and reply["observed"] == "127.0.0.1", reply
    assert reply["address"].startswith("/ip4/127.0.0.1/tcp/")
    seen = read_checks(coordinator_peer["record"])
    assert any(v["reachability"] == "public" for v in seen.values()), seen


@pytest.mark.timeout(120)
def test_a_port_nobody_listens_on_is_not_reachable(coordinator_peer: dict[str, Any]) -> None:
    [reply] = _client(coordinator_peer, "closed-port")
    assert reply["reachable"] is False and "dial back" in reply["reason"], reply


@pytest.mark.timeout(300)
def test_hostile_requests_get_bounded_answers(coordinator_peer: dict[str, Any]) -> None:
    [many] = _client(coordinator_peer, "many-ports")
    # at most MAX_PORTS dials of 127.0.0.1 (the address the request came from), each bounded
    assert many["reachable"] is False and many["observed"] == "127.0.0.1", many
    assert many["reason"].count(",") <= 3 and many["seconds"] < 60, many
    # an oversized or garbled request gets "unknown" or the stream closed, never a dial
    [oversized] = _client(coordinator_peer, "oversized")
    assert oversized.get("reachable") is None and "address" not in oversized, oversized
    [garbage] = _client(coordinator_peer, "garbage")
    assert garbage.get("reachable") is None and "address" not in garbage, garbage
    first, second = _client(coordinator_peer, "twice")
    assert first["reachable"] is True and second["reachable"] is None and "too often" in second["reason"]
    [honest] = _client(coordinator_peer, "honest")  # still answering
    assert honest["reachable"] is True, honest


@pytest.mark.timeout(60)
def test_the_coordinator_peer_relays_nobody(coordinator_peer: dict[str, Any]) -> None:
    """Its libp2p daemons (the DHT's and the reachability prober's) run with circuit relay off: on
    a public address, hivemind's default would relay any stranger's connections through it
    (essaim.swarm.dht.P2P_OPTIONS)."""
    import psutil

    daemons = [p for p in psutil.Process(coordinator_peer["proc"].pid).children(recursive=True)
               if p.name() == "p2pd"]
    assert len(daemons) == 2, [p.cmdline() for p in daemons]  # the DHT's and the prober's
    for daemon in daemons:
        assert "-relay=0" in daemon.cmdline(), daemon.cmdline()
