"""What the volunteer is told of its swarm: reachability and the last averaging round, in `essaim
status` and the tray's tooltip, from the trainer's events."""

from __future__ import annotations

from pathlib import Path

from essaim.client.cli import format_status
from essaim.client.worker import Worker, swarm_line
from essaim.client.worker import round_note as _round_note


def _worker(tmp_path: Path) -> Worker:
    return Worker(work_root=tmp_path, command=lambda: ["true"], env=dict)


def test_the_trainers_events_tell_reachability_and_rounds(tmp_path: Path) -> None:
    w = _worker(tmp_path)
    w._on_event({"event": "started", "client_mode": True, "reachability": "nat", "observed": "203.0.113.7",
                 "reachability_reason": "a dial back to 203.0.113.7 failed"}, now=0.0)
    assert swarm_line(w.swarm) == ("NAT-ed: averages through the coordinator's peer (seen as 203.0.113.7); "
                                   "no averaging round yet")
    w._on_event({"event": "epoch", "epoch": 5, "round_epoch": 4, "round_peers": 2, "round_error": ""}, now=1.0)
    assert swarm_line(w.swarm).endswith("epoch 4 averaged with 2 other volunteers")
    w._on_event({"event": "progress", "epoch": 5, "round_epoch": 5, "round_peers": 0,
                 "round_error": "could not find a group"}, now=2.0)
    assert swarm_line(w.swarm).endswith("epoch 5 averaged with nobody: could not find a group")
    w._on_event({"event": "progress", "epoch": 6}, now=3.0)  # no round news: the last one stays
    assert w.swarm["round_epoch"] == 5


def test_a_reachable_volunteer_is_a_full_peer(tmp_path: Path) -> None:
    swarm = {"client_mode": False, "reachability": "public", "observed": "198.51.100.4", "round_epoch": 2,
             "round_peers": 1, "round_error": ""}
    assert swarm_line(swarm) == ("reachable: a full peer of the swarm (seen as 198.51.100.4); "
                                 "epoch 2 averaged with 1 other volunteer")
    assert swarm_line({}) == ""


def test_a_volunteer_behind_a_mapping_router_is_told_how_it_averages() -> None:
    swarm = {"client_mode": True, "reachability": "upnp", "observed": "198.51.100.4"}
    assert swarm_line(swarm) == ("reachable through the router's port mapping (UPnP/NAT-PMP): averages through "
                                 "the coordinator's peer (seen as 198.51.100.4); no averaging round yet")


def test_status_and_tooltip_show_it() -> None:
    swarm = {"client_mode": True, "reachability": "nat", "round_epoch": 3, "round_peers": 2, "round_error": ""}
    status = {"state": "training", "reason": "training", "job": {"id": "j1", "name": "demo"},
              "swarm": {**swarm, "summary": swarm_line(swarm)}, "contribution": {}}
    assert "swarm: NAT-ed: averages through the coordinator's peer; epoch 3 averaged with 2 other volunteers" \
        in format_status(status)
    assert _round_note(status) == "NAT-ed; epoch 3: averaged with 2 others"
    assert _round_note({"swarm": {**swarm, "round_error": "timed out"}}) == "NAT-ed; epoch 3: averaged with nobody"
    assert _round_note({}) == ""
