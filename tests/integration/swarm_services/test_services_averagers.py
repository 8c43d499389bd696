"""A job with two averaging peers: each reduces its share of every round, checks its slice of the
updates, and both hold the swarm's state.

The recipe asks for ``training.averaging_peers: 2``. The job runner starts the second one as a
process of its own (essaim.coordinator.averagers) and hands out both addresses, the first one
first; the volunteers take both as their reducers. Every round after the first averages both
volunteers, and the second averaging peer's own book of rounds shows it received both volunteers'
parts in those rounds (the all-reduce gave it a share of the vector) and checked slices of their
updates. The job completes and learns, and no averaging peer process is left once it has.

Once they have averaged, the second averaging peer is killed: the job runner starts it again, and
it reduces its share of every round from then on.

Mallory (``hostile_trainer.py``) joins once they have averaged and sends zero updates and replays
of her first. Each averaging peer checks only its slice of her updates; her failures are counted
across both, and once they reach three both refuse her parts for the rest of the job.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.slow
EPOCHS = 10
TARGET_BATCH = 3200
AVERAGERS_MODULE = "essaim.coordinator.averagers"
HOSTILE = Path(__file__).with_name("hostile_trainer.py")
LEARNED = 0.05
RESTART_S = 60.0  # a restarted averaging peer loads the model and the state, and joins the rounds, within this
# (58 s once in a full suite run on 2 cores, where the 30 s allowed before failed the test)


def _averager_pids(data_dir: Any) -> list[int]:
    """The job's further averaging peers working in ``data_dir``: not the processes hivemind forks
    from them (same command line)."""
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if AVERAGERS_MODULE in cmdline and any(str(data_dir) in part for part in cmdline):
            found.append(proc.info["pid"])
    with_parents = {pid: psutil.Process(pid).ppid() for pid in found if psutil.pid_exists(pid)}
    return [pid for pid, parent in with_parents.items() if parent not in with_parents]


@pytest.fixture(scope="module")
def two_reducers(harness: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("services-averagers")
    recipe = harness.make_job(root / "job", epochs=EPOCHS, target_batch_size=TARGET_BATCH, adapter="full",
                              averaging="local", checkpoint_every_epochs=EPOCHS // 2, eval_size=100,
                              matchmaking_time=2.5, averaging_peers=2)
    swarm = harness.ServiceSwarm.start(module_launcher, root / "coord", recipe)
    may_join = root / "mallory-may-join"
    try:
        for name in ("alice", "bob"):
            swarm.volunteer(name).start()
        swarm.volunteer("mallory").start(command=[sys.executable, str(HOSTILE)],
                                         env={"ESSAIM_TEST_ATTACKS": "replay,zero",
                                              "ESSAIM_TEST_JOIN_WHEN": str(may_join)})
        swarm.wait_averaged()
        may_join.touch()
        swarm.in_flight = _averager_pids(swarm.data_dir)  # while the job runs
        # the second averaging peer dies (kill -9, with the processes hivemind forked): the job
        # runner starts it again, with the same key (the same reducer for the volunteers)
        swarm.killed_at = time.time()
        victim = psutil.Process(swarm.in_flight[0])
        for proc in [*victim.children(recursive=True), victim]:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        swarm.restarted = harness.wait_until(
            lambda: [p for p in _averager_pids(swarm.data_dir) if p not in swarm.in_flight], 60,
            "the job runner to start the second averaging peer again")
        swarm.restarted_at = time.time()
        swarm.wait_ended()
        yield swarm
    finally:
        swarm.close()
        for pid in _averager_pids(swarm.data_dir):
            harness.kill_group(pid)


def _ledger(swarm: Any) -> list[Any]:
    store = swarm.open_store()
    try:
        return store.list_ledger(job_id=swarm.job_id)
    finally:
        store.close()


def _book(swarm: Any, index: int) -> list[dict[str, Any]]:
    path = swarm.job_dir / "averagers" / str(index) / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(600)
def test_both_averaging_peers_are_handed_out_and_run(two_reducers: Any) -> None:
    assert len(two_reducers.in_flight) == 1, two_reducers.in_flight  # the second one, a process of its own
    assert len(two_reducers.restarted) == 1, two_reducers.restarted
    assert json.loads((two_reducers.job_dir / "averagers.json").read_text()) == {"count": 2}
    for v in two_reducers.volunteers:
        peers = json.loads((v.directory / "assignment.json").read_text())["initial_peers"]
        ids = [m.rsplit("/p2p/", 1)[1] for m in peers if "/p2p/" in m]
        assert len(set(ids)) == 2, peers  # the job runner's averaging peer, then the second one


@pytest.mark.timeout(600)
def test_every_round_is_reduced_by_both(two_reducers: Any) -> None:
    job = two_reducers.job()
    assert job.status.value == "completed", (job.status, job.status_reason)
    everyone = {v.volunteer_id for v in two_reducers.volunteers if v.name != "mallory"}
    first = {r["epoch"]: r for r in two_reducers.rounds()}
    second = {r["epoch"]: r for r in _book(two_reducers, 1)}
    assert sorted(first) == list(range(EPOCHS)), two_reducers.rounds()
    # after the first round (it may close before the second volunteer's model has loaded), the
    # volunteers averaged together, and the second averaging peer received both volunteers' parts:
    # it reduced a share of the round, the same round
    # (7 of the 9 beside two busy processes: a round while the second was down held one volunteer,
    # and a later one none, both volunteers having missed its group)
    later = [e for e in range(1, EPOCHS) if everyone <= set(first[e]["volunteers"])]
    assert len(later) >= EPOCHS - 3, two_reducers.rounds()
    shared = [e for e in later if e in second and everyone <= set(second[e]["volunteers"]) and not second[e]["error"]]
    # every round before it was killed, and every round once it was back: it loaded the first
    # one's state and joined a round within RESTART_S of starting again (18-37 s measured; 4 rounds
    # went without it), and the rounds after that one, to the job's end, have it
    before = [e for e in later if first[e]["at"] < two_reducers.killed_at]
    rejoined = [r for r in _book(two_reducers, 1) if r["at"] > two_reducers.restarted_at]
    assert rejoined and rejoined[0]["at"] < two_reducers.restarted_at + RESTART_S, _book(two_reducers, 1)
    back = [e for e in later if e > rejoined[0]["epoch"]]
    assert back and all(e in shared for e in before + back), (before, back, _book(two_reducers, 1))
    # each checked slices of the updates it reduced; an honest volunteer is never named, never
    # dropped, and its checks pass but for a rare one (in 3 runs: none twice; once one failed at t
    # -2.3, the round after mallory's replay, clipped, went into the average: a volunteer that
    # trains through its rounds computed part of its update at the state before that round); a
    # failed check holds its credit until its next check passes, and it did
    books = [*first.values(), *second.values()]
    for v in everyone:
        mine = [c for r in books for who, c in r.get("checks", {}).items() if who == v]
        failed = [c for c in mine if not c["passed"] and not c.get("inconclusive")]
        assert len(failed) <= 1 and sum(c["passed"] for c in mine) >= 3, (v, mine)
    assert any(c["passed"] for r in second.values() for c in r.get("checks", {}).values()), _book(two_reducers, 1)
    assert not any(everyone & set(r["suspects"]) for r in books), books
    ledger = _ledger(two_reducers)
    for v in everyone:
        assert sum(e.samples for e in ledger if e.volunteer_id == v) > 0, ledger


@pytest.mark.timeout(600)
def test_the_free_riders_failures_count_across_both_and_both_refuse_her(two_reducers: Any) -> None:
    mallory = next(v.volunteer_id for v in two_reducers.volunteers if v.name == "mallory")
    books = {"first": two_reducers.rounds(), "second": _book(two_reducers, 1)}
    failed = [c for rounds in books.values() for r in rounds for v, c in r.get("checks", {}).items()
              if v == mallory and not c["passed"] and not c.get("inconclusive")]
    assert len(failed) >= 3, books
    assert any("removed no loss" in c["why"] for c in failed) and any("repeats" in c["why"] for c in failed), failed
    for name, rounds in books.items():  # both refuse her once dropped, whichever counted her failures
        refused = [r for r in rounds if r["suspects"].get(mallory, "").startswith("refused: excluded")]
        assert refused and "failing validation" in refused[-1]["suspects"][mallory], (name, rounds)
        assert mallory not in rounds[-1]["volunteers"], (name, rounds[-1])


@pytest.mark.timeout(600)
def test_the_job_learns_and_no_averaging_peer_is_left(two_reducers: Any, harness: ModuleType) -> None:
    provenance = json.loads((two_reducers.data_dir / "artifacts" / two_reducers.job_id / "provenance.json").read_text())
    ev = provenance["eval"]
    # held-out exact match after these 10 short epochs, with mallory's attacks and the second
    # averaging peer down for 4 of them: 0.67 (this 2-core machine); after 8 epochs without the
    # restart, 0.38, 0.23 and 0.42; with 6 epochs and no attacker, 0.16, 0.20 and 0.20 with two
    # averaging peers and 0.10 with one; 0.0 before
    assert ev["before"] < 0.05 and ev["after"] >= LEARNED, ev
    harness.wait_until(lambda: not two_reducers.runner_pids() and not _averager_pids(two_reducers.data_dir), 60,
                       "the job runner and its averaging peers to exit")
