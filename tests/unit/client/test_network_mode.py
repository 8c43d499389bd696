"""How a trainer joins the swarm, from what the coordinator's dial-back found (client/trainer.py)."""

from __future__ import annotations

from typing import Any

import pytest
from essaim.client import trainer
from essaim.client.trainer_protocol import TrainerAssignment
from essaim.swarm import reachability
from essaim.swarm.reachability import MAPPED, Reachability

COORDINATOR = "/ip4/203.0.113.1/tcp/31337/p2p/12D3KooWAtWfXZSgjUPCnB7xBAFFqWFCzBTsjr4GD5d4rDpJVFGN"


def _mode(monkeypatch: pytest.MonkeyPatch, seen: Reachability, **assignment: Any) -> tuple[bool, list[str], list[str]]:
    monkeypatch.setattr(reachability, "check_reachability", lambda peers, host_maddrs: seen)
    monkeypatch.setattr(reachability, "is_local_address", lambda host: host.startswith("192.168."))
    a = TrainerAssignment(job_id="j", recipe_yaml="x", initial_peers=[COORDINATOR], swarm_token="t",
                          coordinator_public_key="k", volunteer_id="v", identity_key_path="/tmp/k.pem",
                          host_maddrs=["/ip4/0.0.0.0/tcp/41234"], **assignment)
    client_mode, host_maddrs, announce, _ = trainer._network_mode(a)
    assert host_maddrs == ["/ip4/0.0.0.0/tcp/41234"]
    return client_mode, host_maddrs, announce


def test_behind_a_router_that_mapped_a_port_it_is_a_full_peer_announcing_its_daemons_own_mapping(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Reachability(True, observed="198.51.100.7", address="/ip4/198.51.100.7/tcp/50123", via=MAPPED)
    client_mode, _, announce = _mode(monkeypatch, seen)
    # the probe's mapping went with the probe: the DHT's daemon maps and announces a port of its own
    assert client_mode is False and announce == []


def test_a_port_forward_is_announced_as_the_address_the_coordinator_dialed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Reachability(True, observed="198.51.100.7", address="/ip4/198.51.100.7/tcp/41234")
    assert _mode(monkeypatch, seen) == (False, ["/ip4/0.0.0.0/tcp/41234"], ["/ip4/198.51.100.7/tcp/41234"])


def test_nobody_can_dial_it_so_it_averages_through_the_coordinators_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Reachability(False, observed="198.51.100.7", reason="a dial back failed")
    assert _mode(monkeypatch, seen)[0] is True


def test_the_volunteers_setting_wins_over_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = Reachability(True, observed="198.51.100.7", address="/ip4/198.51.100.7/tcp/41234")
    assert _mode(monkeypatch, seen, client_mode="on")[0] is True
