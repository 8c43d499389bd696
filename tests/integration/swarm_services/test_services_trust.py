"""A volunteer that attacks the swarm's averaging rounds cannot wreck the model, and is named.

Two volunteers train the demo job with the coordinator's averaging peer; a third (mallory) joins
once they have averaged, running ``hostile_trainer.py``: the real trainer, whose update each round
is in turn multiplied by 1000, negated and multiplied by 10 (three times), then NaN. Under robust
aggregation (the recipe's default) only the averaging peer reduces the rounds (the volunteers are
full peers here and could each reduce a slice): it clips every attack to the group's scale, names
her as its suspect at once when her x1000 is gross, or when she pulls against the group in two
rounds running (in a pair, which of two is far is not known), and refuses her every part after
that; it never names an honest volunteer. The model learns.
She also offers newcomers a forged state (epoch 1,000,000, the highest download priority, garbage
weights): a fourth volunteer (carol) joining meanwhile loads the averaging peer's state instead.
Meanwhile a stranger with no swarm token (``hostile_peer.py``) dials the averaging peer for the
job's state, a place in a group and a reduction, and gets none of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from essaim.swarm.aggregation import NAMED_AT_ONCE_KEPT, SUSPECT_KEPT

pytestmark = pytest.mark.slow
EPOCHS = 12
TARGET_BATCH = 3200
HOSTILE = Path(__file__).with_name("hostile_trainer.py")
STRANGER = Path(__file__).with_name("hostile_peer.py")
WAITING = Path(__file__).with_name("waiting_trainer.py")
# her own trainer dies of the NaN she sends: it comes last. The second "sign" names her (the second
# round running against the group); the third is there to be refused once she is named: a NaN
# right after the naming ended her in a CI run where she missed that round's group (applied
# locally, her NaN update killed her trainer and never reached the averaging peer)
ATTACKS = "scale,sign,sign,sign,nan"
# held-out exact match after the 12 epochs (0.0 before): 0.61-0.94 with mallory (and carol) in the
# swarm on this 2-core machine, 0.37 beside two busy processes (0.025-0.045 there before volunteers
# that miss a round reloaded the averaging peer's state); an attack that got through leaves it at
# 0.0 for good (measured: an x1000 update applied at 4x the usual norm)
LEARNED = 0.02
FORGED_STATE_SEEN_S = 3.0  # her announcement in the DHT, before the newcomer looks


@pytest.fixture(scope="module")
def attacked(harness: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("services-trust")
    recipe = harness.make_job(root / "job", epochs=EPOCHS, target_batch_size=TARGET_BATCH, adapter="full",
                              averaging="local", checkpoint_every_epochs=EPOCHS // 2, eval_size=200,
                              matchmaking_time=2.5)
    swarm = harness.ServiceSwarm.start(module_launcher, root / "coord", recipe)
    may_join = {name: root / f"{name}-may-join" for name in ("mallory", "carol")}
    carol_joined = root / "carol-joined"
    stranger = None
    try:
        for name in ("alice", "bob"):
            swarm.volunteer(name).start()
        # mallory and carol get ready (imports, files, model: a minute on a busy machine) and
        # hold before joining, so that each joins when the test says
        mallory = swarm.volunteer("mallory")
        mallory.start(command=[sys.executable, str(HOSTILE)],
                      env={"ESSAIM_TEST_ATTACKS": ATTACKS, "ESSAIM_TEST_FORGE_STATE": "1",
                           "ESSAIM_TEST_HOLD_NAN_UNTIL": str(carol_joined),
                           "ESSAIM_TEST_JOIN_WHEN": str(may_join["mallory"])})
        carol = swarm.volunteer("carol")
        carol.start(command=[sys.executable, str(WAITING)], env={"ESSAIM_TEST_JOIN_WHEN": str(may_join["carol"])})
        stranger = _start_stranger(harness, swarm, root / "stranger.json")
        # she joins a swarm that has averaged once: the first rounds of a job, when an attacker is
        # alone in them, have no reference to hold her to (see essaim.swarm.aggregation.NormHistory)
        swarm.wait_averaged()
        may_join["mallory"].touch()
        # a newcomer joins while she offers her forged state (announced once her optimizer is
        # built); she holds back the NaN that ends her own trainer until then
        harness.wait_until(lambda: "offering a forged state" in _stderr(mallory), 120, "mallory's forged state")
        time.sleep(FORGED_STATE_SEEN_S)
        may_join["carol"].touch()
        carol.wait_for(lambda e: e["event"] == "joined", 120, "carol joining")
        swarm.mallory_alive_when_carol_joined = mallory.alive
        carol_joined.touch()
        swarm.stranger = _stranger_result(stranger, root / "stranger.json")
        swarm.wait_ended()
        yield swarm
    finally:
        if stranger is not None and stranger.poll() is None:
            stranger.kill()
            stranger.wait(10)
        swarm.close()


def _start_stranger(harness: ModuleType, swarm: Any, out: Path) -> subprocess.Popen[str]:
    """A peer with no swarm token dialing the averaging peer directly (``hostile_peer.py``)."""
    peers = json.loads((swarm.volunteers[0].directory / "assignment.json").read_text())["initial_peers"]
    return subprocess.Popen([sys.executable, str(STRANGER), peers[0], swarm.job_id, "PseudoGradientAverager",
                             str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **harness.TRAINER_ENV})


def _stranger_result(process: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    """What the stranger got from the averaging peer."""
    output, _ = process.communicate(timeout=240)  # three streams of at most 60 s each (hostile_peer.TIMEOUT_S)
    assert out.exists(), output[-3000:]
    return json.loads(out.read_text())


def _stderr(volunteer: Any) -> str:
    log = volunteer.work_dir / "trainer-stderr.log"
    return log.read_text(errors="replace") if log.exists() else ""



def _ids(swarm: Any) -> dict[str, str]:
    return {v.name: v.volunteer_id for v in swarm.volunteers}


@pytest.mark.timeout(600)
def test_the_attacker_is_named_in_the_rounds_it_took_part_in(attacked: Any) -> None:
    job = attacked.job()
    assert job.status.value == "completed", (job.status, job.status_reason)
    ids = _ids(attacked)
    rounds = attacked.rounds()
    assert rounds, "no rounds recorded"
    honest = {ids["alice"], ids["bob"]}
    # an honest volunteer, the newcomer carol included, is never a suspect
    assert not [r for r in rounds if (honest | {ids["carol"]}) & set(r["suspects"])], rounds
    # mallory attacks in every round she is in: each of her updates is clipped, and she is named
    # in each round of three or more volunteers where it was gross (kept under NAMED_AT_ONCE_KEPT)
    # or far against the group for the second round running (her negated update; in a pair, which
    # of two is far is not known); her NaN is refused. x1000 of a newcomer's first update points along the group and is not
    # always gross: her inner learning rate ramps up over her first steps, and her x1000 came in
    # at about twice the group's scale once (kept 0.47) and at four times once (kept 0.22, far):
    # clipped, harmless, unnamed, as any far update along the group's direction
    named = [r for r in rounds if ids["mallory"] in r["suspects"]]
    assert len(named) >= 2, rounds
    hers = [r for r in rounds if ids["mallory"] in r["volunteers"]]
    assert hers and all(r["kept"][ids["mallory"]] < 1.0 for r in hers), rounds
    far = [r for r in hers if r["kept"][ids["mallory"]] < SUSPECT_KEPT]
    assert far and all(ids["mallory"] in r["suspects"] for r in far
                       if len(r["volunteers"]) >= 3 and r["kept"][ids["mallory"]] < NAMED_AT_ONCE_KEPT), rounds
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
    named = {s["volunteer"] for s in aggregation["suspects"]}
    ids = _ids(attacked)
    # mallory, and no honest volunteer. Carol, the newcomer (a fresh inner optimizer against the
    # others' long one: far in most rounds), was once far and against the group (clipped to 23% of
    # her pull, cosine -0.51 with the group's median) between rounds along it: not named, since
    # that takes two such rounds running
    assert named == {ids["mallory"]}, aggregation


@pytest.mark.timeout(120)
def test_the_honest_volunteers_never_saw_a_non_finite_model(attacked: Any) -> None:
    for v in attacked.volunteers:
        if v.name == "mallory":
            continue
        stopped = v.wait_for(lambda e: e["event"] == "stopped", 60, "stopped")
        assert stopped["reason"] == "completed", (v.name, stopped, v.tail())
        assert not [e for e in v.events if e["event"] == "error"], v.tail()


@pytest.mark.timeout(600)
def test_a_stranger_without_a_swarm_token_gets_neither_the_state_nor_a_round(attacked: Any) -> None:
    """hivemind's authorizer guards DHT calls only; the averagers' streams check the token too
    (essaim.swarm.admission). The stranger knows the averaging peer's address and the job id."""
    got = attacked.stranger
    assert got["state_messages"] == 0, got  # no part of the model's state
    assert got["join_codes"] and "ACCEPTED" not in got["join_codes"], got
    assert got["aggregate_codes"] == ["PROTOCOL_VIOLATION"], got


@pytest.mark.timeout(120)
def test_a_newcomer_loads_the_averaging_peers_state_not_a_forged_one(attacked: Any) -> None:
    """Mallory announces a state of epoch 1,000,000 with the swarm's highest download priority
    (hivemind's newcomers take the highest); carol, joining meanwhile, loads the averaging peer's."""
    assert attacked.mallory_alive_when_carol_joined  # her forged state was on offer all along
    carol = next(v for v in attacked.volunteers if v.name == "carol")
    joined = carol.wait_for(lambda e: e["event"] == "joined", 60, "carol joining")
    assert joined["source"] == "peers" and 0 < joined["epoch"] <= EPOCHS, joined
    reducers = json.loads((carol.directory / "assignment.json").read_text())["reducers"]
    assert f"from {reducers[0]}" in _stderr(carol), carol.tail()
    stopped = carol.wait_for(lambda e: e["event"] == "stopped", 60, "stopped")
    assert stopped["reason"] == "completed", (stopped, carol.tail())
    assert not [e for e in carol.events if e["event"] == "error"], carol.tail()
    assert max(e.get("epoch", 0) for e in carol.events) <= EPOCHS, carol.events[-3:]
