"""A volunteer that attacks the swarm's averaging rounds cannot wreck the model, and is named.

Two volunteers train the demo job with the coordinator's averaging peer; a third (mallory) joins
once they have averaged, running ``hostile_trainer.py``: the real trainer, whose update each round
is in turn multiplied by 1000, negated and multiplied by 10, then NaN. Under robust aggregation (the
recipe's default) only the averaging peer reduces the rounds (the volunteers are full peers here
and could each reduce a slice): it clips her first attack to the group's scale, names her as its
suspect, and refuses her every part after that; it never names an honest volunteer. The model learns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow
EPOCHS = 12
TARGET_BATCH = 3200
HOSTILE = Path(__file__).with_name("hostile_trainer.py")
ATTACKS = "scale,sign,nan"  # her own trainer dies of the NaN she sends: it comes last
# held-out exact match after the 12 epochs (0.0 before): 0.80-0.905 with mallory in the swarm on
# this 2-core machine, but 0.025-0.045 in runs beside two busy processes, where rounds the honest
# volunteers miss slow the demo's learning (0.065 at epoch 6 instead of 0.13-0.2); an attack that got
# through leaves it at 0.0 for good (measured: an x1000 update applied at 4x the usual norm)
LEARNED = 0.02


@pytest.fixture(scope="module")
def attacked(harness: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("services-trust")
    recipe = harness.make_job(root / "job", epochs=EPOCHS, target_batch_size=TARGET_BATCH, adapter="full",
                              averaging="local", checkpoint_every_epochs=EPOCHS // 2, eval_size=200,
                              matchmaking_time=2.5)
    swarm = harness.ServiceSwarm.start(module_launcher, root / "coord", recipe)
    try:
        for name in ("alice", "bob"):
            swarm.volunteer(name).start()
        # she joins a swarm that has averaged once: the first rounds of a job, when an attacker is
        # alone in them, have no reference to hold her to (see essaim.swarm.aggregation.NormHistory)
        harness.wait_until(lambda: any(len(r["volunteers"]) >= 2 for r in _rounds(swarm)), 240,
                           "a first round of the honest volunteers", interval=1.0)
        swarm.volunteer("mallory").start(command=[sys.executable, str(HOSTILE)],
                                         env={"ESSAIM_TEST_ATTACKS": ATTACKS})
        harness.wait_until(lambda: swarm.job().status.value in ("completed", "failed"), 480,
                           "the job to end", interval=2.0)
        yield swarm
    finally:
        swarm.close()


def _rounds(swarm: Any) -> list[dict[str, Any]]:
    path = swarm.job_dir / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _ids(swarm: Any) -> dict[str, str]:
    return {v.name: v.volunteer_id for v in swarm.volunteers}


@pytest.mark.timeout(600)
def test_the_attacker_is_named_in_the_rounds_it_took_part_in(attacked: Any) -> None:
    job = attacked.job()
    assert job.status.value == "completed", (job.status, job.status_reason)
    ids = _ids(attacked)
    rounds = _rounds(attacked)
    assert rounds, "no rounds recorded"
    honest = {ids["alice"], ids["bob"]}
    # an honest volunteer is never a suspect
    assert not [r for r in rounds if honest & set(r["suspects"])], rounds
    # mallory attacks in every round she is in, and is named in each of them; her NaN is refused
    named = [r for r in rounds if ids["mallory"] in r["suspects"]]
    assert len(named) >= 3, rounds
    assert all(ids["mallory"] in r["suspects"] for r in rounds if ids["mallory"] in r["volunteers"]), rounds
    assert any(r["suspects"][ids["mallory"]].startswith("refused") for r in named), named
    assert any(r["suspects"][ids["mallory"]].startswith("clipped") for r in named), named
    # once named, she is shut out: every later part of hers is refused
    assert all(r["suspects"][ids["mallory"]].startswith("refused") for r in named[1:]), named
    assert all(ids["mallory"] not in r["volunteers"] for r in named
               if r["suspects"][ids["mallory"]].startswith("refused")), named
    # the honest volunteers averaged together all along
    together = [r for r in rounds[1:] if not r["error"] and honest <= set(r["volunteers"])]
    assert len(together) >= 0.8 * (len(rounds) - 1), rounds


@pytest.mark.timeout(600)
def test_the_model_learns_despite_the_attacker(attacked: Any) -> None:
    provenance = json.loads((attacked.data_dir / "artifacts" / attacked.job_id / "provenance.json").read_text())
    ev = provenance["eval"]
    assert ev["metric"] == "exact_match" and ev["before"] < 0.05, ev
    assert ev["after"] >= LEARNED, ev
    # the public record says how the rounds were reduced and whom they named
    aggregation = provenance["aggregation"]
    assert aggregation["method"] == "robust" and aggregation["rounds"] == EPOCHS, aggregation
    assert [s["volunteer"] for s in aggregation["suspects"]] == [_ids(attacked)["mallory"]], aggregation


@pytest.mark.timeout(120)
def test_the_honest_volunteers_never_saw_a_non_finite_model(attacked: Any) -> None:
    for v in attacked.volunteers:
        if v.name == "mallory":
            continue
        stopped = v.wait_for(lambda e: e["event"] == "stopped", 60, "stopped")
        assert stopped["reason"] == "completed", (v.name, stopped, v.tail())
        assert not [e for e in v.events if e["event"] == "error"], v.tail()
