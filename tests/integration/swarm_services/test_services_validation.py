"""A free rider is found by the loss its updates remove, dropped from the rounds, and refused credit.

Alice and bob train the demo job honestly with the coordinator's averaging peer; mallory joins once
they have averaged, running ``hostile_trainer.py``: she computes like them, sends her first update
honestly, then a zero update (claiming 100x her samples as its weight), random noise of her
update's norm, and her first update again, in turn. Robust aggregation cannot tell these from work
(none is far from the group); the averaging peer's validator (essaim.swarm.validation) does: zero
and noise remove no loss on her own data, and the replay is one it has seen. She is dropped from
the rounds once her failed checks outnumber her passed ones by three; the ledger holds what she
claims from her first failure and refuses it once she is dropped. Alice's and bob's checks never
fail.

Her progress records also claim 1,000 epochs more than she reached. No one follows her: alice and
bob ignore records further on than the averaging peer can be, the averaging peer follows the
volunteers' median epoch, the job's epoch is the one most volunteers reached; the job runs all its
rounds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from essaim.swarm.optimizer import FAILS_TO_DROP

pytestmark = pytest.mark.slow
EPOCHS = 10
TARGET_BATCH = 3200
HOSTILE = Path(__file__).with_name("hostile_trainer.py")
FORGED_AHEAD = 1000  # the epochs her progress records claim more than she reached


@pytest.fixture(scope="module")
def freeriding(harness: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("services-validation")
    recipe = harness.make_job(root / "job", epochs=EPOCHS, target_batch_size=TARGET_BATCH, adapter="full",
                              averaging="local", checkpoint_every_epochs=EPOCHS // 2, eval_size=100,
                              matchmaking_time=2.5)
    swarm = harness.ServiceSwarm.start(module_launcher, root / "coord", recipe)
    may_join = root / "mallory-may-join"
    try:
        for name in ("alice", "bob"):
            swarm.volunteer(name).start()
        mallory = swarm.volunteer("mallory")
        mallory.start(command=[sys.executable, str(HOSTILE)],
                      env={"ESSAIM_TEST_ATTACKS": "replay,zero,noise", "ESSAIM_TEST_JOIN_WHEN": str(may_join),
                           "ESSAIM_TEST_FORGE_EPOCH": str(FORGED_AHEAD)})
        swarm.wait_averaged()
        may_join.touch()
        swarm.wait_ended()
        yield swarm
    finally:
        swarm.close()



@pytest.mark.timeout(900)
def test_the_free_rider_fails_validation_and_is_dropped(freeriding: Any) -> None:
    job = freeriding.job()
    assert job.status.value == "completed", (job.status, job.status_reason)
    ids = {v.name: v.volunteer_id for v in freeriding.volunteers}
    rounds = freeriding.rounds()
    checks = [(r["epoch"], v, c) for r in rounds for v, c in r.get("checks", {}).items()]
    honest = [c for _, v, c in checks if v in (ids["alice"], ids["bob"])]
    hers = [c for _, v, c in checks if v == ids["mallory"]]
    # an honest volunteer is never a suspect (her zero update claiming 100x her samples does not set
    # the scale honest updates are clipped to)
    honest_ids = {ids["alice"], ids["bob"]}
    assert not [r for r in rounds if honest_ids & set(r["suspects"])], rounds
    # every volunteer's first rounds are checked; honest updates never fail
    assert len(honest) >= 4, checks
    assert all(c["passed"] or c.get("inconclusive") for c in honest), [c for c in checks if c[1] in honest_ids]
    failed = [c for c in hers if not c["passed"]]
    assert len(failed) >= FAILS_TO_DROP, checks
    assert any("removed no loss on its own data" in c["why"] for c in failed), failed
    assert any("repeats its own earlier update" in c["why"] for c in failed), failed
    # once her failed checks outnumber her passed ones by three she is refused for the rest of the job
    dropped = [r for r in rounds if r["suspects"].get(ids["mallory"], "").startswith("refused: excluded")]
    assert dropped and all(ids["mallory"] not in r["volunteers"] for r in dropped), rounds
    assert "failing validation" in dropped[0]["suspects"][ids["mallory"]], dropped[0]


@pytest.mark.timeout(120)
def test_the_free_rider_is_refused_credit_and_the_honest_are_not(freeriding: Any) -> None:
    ids = {v.name: v.volunteer_id for v in freeriding.volunteers}
    store = freeriding.open_store()
    try:
        rows = store.list_ledger(job_id=freeriding.job_id)
    finally:
        store.close()
    refused = [e for e in rows if e.volunteer_id == ids["mallory"] and "failed validation" in e.note]
    assert refused and all(e.samples == 0 for e in refused), [(e.volunteer_id, e.samples, e.note) for e in rows]
    for name in ("alice", "bob"):
        mine = [e for e in rows if e.volunteer_id == ids[name]]
        assert sum(e.samples for e in mine) > 0 and not any("refused" in e.note for e in mine), mine
    # what she was granted is at most what she claimed before her first failed check: her first
    # round, honest, of at most an epoch's samples
    granted = sum(e.samples for e in rows if e.volunteer_id == ids["mallory"])
    assert granted <= 2 * TARGET_BATCH, granted


@pytest.mark.timeout(120)
def test_her_forged_epoch_moves_no_one(freeriding: Any) -> None:
    """Before, every volunteer followed the highest epoch a full peer reported: alice and bob
    reloaded the state at every step (some 350 times each), then took her epoch up and left, and
    the job completed after 4 of its rounds."""
    job = freeriding.job()
    assert job.status.value == "completed" and job.metrics.epoch == EPOCHS, job.metrics
    assert sorted({r["epoch"] for r in freeriding.rounds()}) == list(range(EPOCHS)), freeriding.rounds()
    for v in freeriding.volunteers:
        if v.name == "mallory":
            continue
        stopped = v.wait_for(lambda e: e["event"] == "stopped", 60, "stopped")
        assert stopped["reason"] == "completed" and stopped["epoch"] == EPOCHS, (v.name, stopped)
        log = (v.work_dir / "trainer-stderr.log").read_text(errors="replace")
        assert log.count("downloaded the state of epoch") <= 3, (v.name, v.tail())
        assert "progress record(s) claiming an epoch past" in log, (v.name, v.tail())
