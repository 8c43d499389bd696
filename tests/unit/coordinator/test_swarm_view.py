"""The swarm view a job's runner stores: rounds.jsonl + reachability.json -> one row per volunteer."""

from __future__ import annotations

import json
from pathlib import Path

from essaim.coordinator.rounds import ROUNDS_FILE, RoundBook
from essaim.coordinator.store import Store, SwarmPeer
from essaim.coordinator.swarm_view import publish_swarm_view
from essaim.swarm.reachability import read_checks
from essaim.swarm.rounds import RoundOutcome

OWNERS = {
    "12D3KooWBob": ("v-bob", False),
    "12D3KooWBobOld": ("v-bob", False),  # bob's machine before a re-install
    "12D3KooWAlice": ("v-alice", False),
    "12D3KooWEve": ("v-eve", True),  # banned, but still shown to admins
}


def owner(peer_id: str) -> tuple[str, bool] | None:
    return OWNERS.get(peer_id)


def write_checks(path: Path, checks: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    path.write_text(json.dumps(checks))
    return read_checks(path)


def by_volunteer(store: Store, job_id: str) -> dict[str, SwarmPeer]:
    return {p.volunteer_id: p for p in store.list_swarm_peers(job_id=job_id)}


def test_each_volunteer_seen_in_either_file_gets_its_reachability_and_last_round(
    store: Store, tmp_path: Path
) -> None:
    book = RoundBook(tmp_path / ROUNDS_FILE)
    book.add(RoundOutcome(epoch=3, peers=("12D3KooWCoord", "12D3KooWBob", "12D3KooWCarol")), ["v-bob", "v-carol"])
    book.add(RoundOutcome(epoch=4, peers=("12D3KooWCoord", "12D3KooWBob", "12D3KooWAlice")), ["v-alice", "v-bob"])
    checks = write_checks(tmp_path / "reachability.json", {
        "12D3KooWBobOld": {"reachability": "public", "observed": "198.51.100.9", "at": 100.0},
        "12D3KooWBob": {"reachability": "nat", "observed": "203.0.113.7", "address": "", "at": 200.0},
        "12D3KooWAlice": {"reachability": "public", "observed": "198.51.100.2", "at": 150.0},
        "12D3KooWEve": {"reachability": "upnp", "observed": "192.0.2.66", "at": 120.0},
        "12D3KooWStranger": {"reachability": "public", "observed": "192.0.2.1", "at": 130.0},
    })

    assert publish_swarm_view(store, "job-1", rounds=RoundBook(tmp_path / ROUNDS_FILE), checks=checks, owner=owner) == 4
    rows = by_volunteer(store, "job-1")
    assert set(rows) == {"v-alice", "v-bob", "v-carol", "v-eve"}  # the stranger is no volunteer
    bob = rows["v-bob"]  # its newest check wins over its old machine's
    assert (bob.reachability, bob.observed, bob.last_round_epoch, bob.averaged_in_last_round) == (
        "nat", "203.0.113.7", 4, True)
    alice = rows["v-alice"]
    assert (alice.reachability, alice.observed, alice.averaged_in_last_round) == ("public", "198.51.100.2", True)
    carol = rows["v-carol"]  # averaged in epoch 3 only, never checked
    assert (carol.reachability, carol.observed, carol.last_round_epoch, carol.averaged_in_last_round) == (
        "unknown", "", 4, False)
    eve = rows["v-eve"]  # checked (reachable through its router's mapping), never averaged
    assert (eve.reachability, eve.last_round_epoch, eve.averaged_in_last_round) == ("upnp", 4, False)
    assert all(p.updated_at > 0 for p in rows.values())


def test_a_failed_last_round_averaged_nobody(store: Store, tmp_path: Path) -> None:
    book = RoundBook(tmp_path / ROUNDS_FILE)
    book.add(RoundOutcome(epoch=4, peers=("12D3KooWCoord", "12D3KooWBob")), ["v-bob"])
    publish_swarm_view(store, "job-1", rounds=book, checks={}, owner=owner)
    assert by_volunteer(store, "job-1")["v-bob"].averaged_in_last_round
    book.add(RoundOutcome(epoch=5, error="matchmaking timed out"), [])
    publish_swarm_view(store, "job-1", rounds=book, checks={}, owner=owner)
    bob = by_volunteer(store, "job-1")["v-bob"]
    assert (bob.last_round_epoch, bob.averaged_in_last_round) == (5, False)


def test_before_any_round_only_reachability_is_known(store: Store, tmp_path: Path) -> None:
    book = RoundBook(tmp_path / ROUNDS_FILE)  # no file yet
    checks = {
        "12D3KooWAlice": {"reachability": "public", "observed": "198.51.100.2", "at": 1.0},
        "12D3KooWBob": {"reachability": "something new", "observed": None, "at": "garbled"},
        "12D3KooWEve": "not a check",
    }
    assert publish_swarm_view(store, "job-1", rounds=book, checks=checks, owner=owner) == 2
    rows = by_volunteer(store, "job-1")
    assert (rows["v-alice"].reachability, rows["v-alice"].last_round_epoch) == ("public", None)
    assert (rows["v-bob"].reachability, rows["v-bob"].observed) == ("unknown", "")
    assert publish_swarm_view(store, "job-2", rounds=book, checks={}, owner=owner) == 0
    assert store.list_swarm_peers(job_id="job-2") == []
