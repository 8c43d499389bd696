"""The swarm services under faults, with real processes on loopback: one coordinator (and the job runner
it spawns), one long job and volunteer trainers started as ``essaim demo`` starts them.

The tests run in order on the same swarm (each leaves it training for the next): volunteers train
and the monitor follows; a volunteer killed with SIGKILL rejoins; a late joiner loads the state;
the coordinator (then the coordinator and its job runner) die and come back; every volunteer
leaves and one comes back to the keeper's state; a banned volunteer's swarm token is refused.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow
NAMES = ("alice", "bob")


@pytest.fixture(scope="module")
def swarm(harness: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("services-faults")
    recipe = harness.make_job(root / "job", epochs=100_000, target_batch_size=256, checkpoint_every_epochs=5)
    made = harness.ServiceSwarm.start(module_launcher, root / "coord", recipe)
    try:
        for name in NAMES:
            made.volunteer(name).start()
        yield made
        if made.coord.proc.poll() is None:  # a cancelled job's runner is stopped by the coordinator
            with made.admin() as admin:
                admin.cancel_job(made.job_id, "the tests are over")
            harness.wait_until(lambda: not made.runner_pids(), 40, "the job runner to stop after the cancel")
    finally:
        made.close()
    assert not made.runner_pids()


def by_name(swarm: Any, name: str) -> Any:
    return next(v for v in swarm.volunteers if v.name == name)


def training(swarm: Any) -> tuple[Any, Any]:
    """Alice and Bob, once both train (each test can then also run alone)."""
    alice, bob = (by_name(swarm, n) for n in NAMES)
    for v in (alice, bob):
        v.wait_for(lambda e: e["event"] in ("progress", "epoch"), 300, "training")
    return alice, bob


def ledger_ok(harness: ModuleType, swarm: Any) -> dict[str, Any]:
    result = harness.essaim("coordinator", "ledger", "verify", "--data-dir", str(swarm.data_dir), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_epochs_never_go_back(swarm: Any) -> None:
    history = swarm.epoch_history()
    assert history == sorted(history), f"the job's epoch went back: {history}"


@pytest.mark.timeout(420)
def test_volunteers_train_and_the_monitor_follows(swarm: Any, harness: ModuleType) -> None:
    alice, bob = (by_name(swarm, n) for n in NAMES)
    for v in (alice, bob):
        started = v.wait_for(lambda e: e["event"] == "started", 240, "started")
        assert started["peer_id"] == v.peer_id  # the swarm identity is the registered key
        v.wait_for(lambda e: e["event"] == "joined", 240, "joined")
    job = harness.wait_until(lambda: (j := swarm.job()).metrics.epoch >= 2 and j, 300, "job epoch 2")
    assert job.status.value == "running" and job.metrics.target_epochs == 100_000
    got = harness.wait_until(lambda: (c := swarm.contributions()).get(alice.volunteer_id) and
                             c.get(bob.volunteer_id) and c, 120, "ledger rows for both volunteers")
    assert got[alice.volunteer_id] > 0 and got[bob.volunteer_id] > 0
    harness.wait_until(lambda: swarm.job().metrics.live_peers == 2, 60, "two live peers in the job's metrics")
    assert ledger_ok(harness, swarm)["ok"]


@pytest.mark.timeout(360)
def test_a_volunteer_killed_mid_epoch_rejoins_with_its_identity_and_state(swarm: Any, harness: ModuleType) -> None:
    alice, bob = training(swarm)
    first_peer_id = alice.wait_for(lambda e: e["event"] == "started", 10, "started")["peer_id"]
    # mid-epoch: a moment after a progress report
    alice.wait_for(lambda e: e["event"] in ("progress", "epoch"), 60, "progress", after=len(alice.events))
    time.sleep(0.5)
    epoch_at_kill = max(alice.epoch(), swarm.job().metrics.epoch)
    credited = harness.wait_until(lambda: swarm.contributions().get(alice.volunteer_id), 60, "alice's ledger rows")
    alice.kill()
    assert not alice.alive

    # the others go on: bob closes another epoch without alice
    bob.wait_epoch(bob.epoch() + 1, 150, after=len(bob.events))
    # what alice gave until the kill stays in the ledger, and the ledger's chain holds
    assert swarm.contributions()[alice.volunteer_id] >= credited
    assert ledger_ok(harness, swarm)["checked"] > 0

    # restarted with the same identity key and work dir, it rejoins as the same peer, from a state
    # at least as new as the swarm's when it died
    alice.start()
    assert alice.wait_for(lambda e: e["event"] == "started", 180, "started")["peer_id"] == first_peer_id
    joined = alice.wait_for(lambda e: e["event"] == "joined", 180, "joined")
    assert joined["source"] in ("local", "peers") and joined["epoch"] >= epoch_at_kill, joined
    progress = alice.wait_for(lambda e: e["event"] in ("progress", "epoch"), 120, "progress after the restart")
    assert progress["epoch"] >= joined["epoch"]
    # its counters went on from where they were: the monitor credits its new work
    before_restart = swarm.contributions()[alice.volunteer_id]
    harness.wait_until(lambda: swarm.contributions()[alice.volunteer_id] > before_restart, 120,
                       "new ledger rows for alice after her restart")
    assert_epochs_never_go_back(swarm)


@pytest.mark.timeout(300)
def test_a_late_joiner_loads_the_current_state_before_it_contributes(swarm: Any, harness: ModuleType) -> None:
    training(swarm)
    carol = swarm.volunteer("carol")
    swarm_epoch = harness.wait_until(lambda: swarm.job().metrics.epoch, 120, "a first epoch")
    assert swarm_epoch > 0
    carol.start()
    joined = carol.wait_for(lambda e: e["event"] == "joined", 240, "joined")
    # its state came from a peer (a volunteer or the keeper), not from the base model
    assert joined["source"] == "peers" and joined["epoch"] >= swarm_epoch > 0, joined
    first = carol.wait_for(lambda e: e["event"] in ("progress", "epoch"), 120, "first progress")
    assert first["epoch"] >= joined["epoch"]
    carol.kill()  # back to two volunteers: the machine running the tests has few cores
    assert_epochs_never_go_back(swarm)


@pytest.mark.timeout(420)
def test_the_swarm_trains_on_while_the_coordinator_is_down(swarm: Any, harness: ModuleType) -> None:
    alice, bob = training(swarm)
    info = swarm.runner_info()
    runner_pid, maddrs = info["pid"], info["maddrs"]

    # 1. the coordinator crashes; its job runner (a session of its own) keeps the job's record
    swarm.kill_coordinator()
    assert swarm.runner_pids() == [runner_pid]
    store_epoch = swarm.stored_job().metrics.epoch
    bob.wait_epoch(bob.epoch() + 1, 150, after=len(bob.events))
    harness.wait_until(lambda: swarm.stored_job().metrics.epoch > store_epoch, 60,
                       "the runner to record a new epoch while the coordinator is down")
    swarm.restart_coordinator()
    assert swarm.runner_info()["pid"] == runner_pid  # the restarted coordinator adopted it
    assert swarm.runner_pids() == [runner_pid]

    # 2. the coordinator and its job runner both die; the volunteers train on, peer to peer
    job_epoch = swarm.job().metrics.epoch
    ledger_before = swarm.contributions()
    swarm.kill_coordinator(with_runner=True)
    for v in (alice, bob):
        v.wait_epoch(max(v.epoch(), job_epoch) + 1, 200, after=len(v.events))
    reached = {v.volunteer_id: v.last("epoch") for v in (alice, bob)}
    assert all(e is not None for e in reached.values())
    swarm.restart_coordinator()

    # a new runner comes back as the same bootstrap peer (identity and port) ...
    harness.wait_until(lambda: swarm.runner_info().get("pid") not in (None, runner_pid), 120, "a new job runner")
    # it hands out its address once its averaging peer is in the swarm again: the same one
    harness.wait_until(lambda: swarm.runner_info().get("maddrs"), 120, "the new runner's address")
    assert swarm.runner_info()["maddrs"] == maddrs
    # ... and its monitor catches up from the records in the DHT
    top = max(e["epoch"] for e in reached.values())
    harness.wait_until(lambda: swarm.job().metrics.epoch >= top, 180, f"the job's epoch to reach {top}")
    for vid, event in reached.items():
        harness.wait_until(lambda vid=vid, event=event: swarm.contributions().get(vid, 0) >= event["samples"], 120,
                           f"the ledger to credit {vid} with its {event['samples']} samples")
        assert swarm.contributions()[vid] > ledger_before.get(vid, 0)
    assert ledger_ok(harness, swarm)["ok"]
    assert_epochs_never_go_back(swarm)


@pytest.mark.timeout(360)
def test_when_every_volunteer_leaves_the_job_waits_and_resumes_from_the_keeper(
        swarm: Any, harness: ModuleType, tmp_path: Path) -> None:
    alice, bob = training(swarm)
    harness.wait_until(lambda: swarm.keeper_record().get("checkpoint_epoch", 0) > 0, 240, "a first checkpoint")
    leaving = [threading.Thread(target=v.stop) for v in (alice, bob)]
    for thread in leaving:
        thread.start()
    for thread in leaving:
        thread.join()
    assert not alice.alive and not bob.alive
    time.sleep(4)  # the monitor reads the records the trainers published as they left
    left_at = swarm.job().metrics.epoch
    kept = swarm.keeper_record()
    assert kept.get("checkpoint_epoch", 0) > 0, kept

    # nobody trains: the job waits, running, at the same epoch
    time.sleep(6)
    job = swarm.job()
    assert job.status.value == "running" and job.metrics.epoch == left_at

    # one comes back with an empty work dir (no local state): it starts from the keeper's state
    alice.start(work_dir=tmp_path / "alice-fresh")
    joined = alice.wait_for(lambda e: e["event"] == "joined", 240, "joined")
    kept = swarm.keeper_record()
    assert joined["source"] == "peers" and joined["epoch"] >= kept["checkpoint_epoch"] > 0, (joined, kept)
    harness.wait_until(lambda: swarm.job().metrics.epoch > left_at, 240, "the job to move on again")
    assert_epochs_never_go_back(swarm)


def _probe(swarm: Any, volunteer: Any, token: str) -> dict[str, Any]:
    """join_probe.py: a peer with the volunteer's key and swarm token tries to join the job's DHT."""
    probe = Path(__file__).resolve().parents[1] / "swarm" / "join_probe.py"
    command = [sys.executable, str(probe), "--peer", swarm.runner_info()["maddrs"][0], "--job-id", swarm.job_id,
               "--key", str(volunteer.key_path), "--trust", str(swarm.data_dir / "swarm-key.pem"),
               "--token", token]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, start_new_session=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the probe failed:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.timeout(300)
def test_a_banned_volunteers_swarm_token_stops_working_within_seconds(
        swarm: Any, harness: ModuleType) -> None:
    alice = by_name(swarm, "alice")
    alice.wait_for(lambda e: e["event"] in ("progress", "epoch"), 300, "training")
    mallory = swarm.volunteer("mallory")
    mallory.register()
    token = mallory.assignment().swarm_token
    assert _probe(swarm, mallory, token)["joined"] is True  # a valid token, not yet banned

    with swarm.admin() as admin:
        admin.ban_volunteer(mallory.volunteer_id, "poisoned gradients")
    banned_at = time.monotonic()
    revoked = alice.work_dir / "revoked.json"
    # the job runner publishes the signed list; alice's trainer copies it for her DHT's authorizer
    harness.wait_until(lambda: revoked.exists() and json.loads(revoked.read_text())["keys"], 30,
                       "the revocation list to reach alice")
    interval = float(harness.COORDINATOR_ENV["ESSAIM_COORDINATOR_HEARTBEAT_INTERVAL_S"])
    assert time.monotonic() - banned_at < max(interval, 10.0)  # the runner reads bans every 4 s, peers every 5 s
    refused = _probe(swarm, mallory, token)  # the same token, still unexpired
    assert refused["joined"] is False, refused
    with swarm.client(mallory.token) as client, pytest.raises(Exception, match="banned"):
        client.get_assignment(mallory.volunteer_id, harness.hardware())
