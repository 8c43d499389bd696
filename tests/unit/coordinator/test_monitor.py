"""The swarm monitor's pure logic: job metrics from progress records, and ledger claims with their caps."""

from __future__ import annotations

import math

import pytest
from essaim.coordinator.monitor import (
    LIVE_RECORD_S,
    MIN_RATE_ALLOWANCE,
    RATE_MARGIN,
    SWARM_MARGIN,
    Accepted,
    MonitorState,
    PeerReport,
    claims,
    swarm_metrics,
)
from essaim.protocol.types import JobMetrics

NOW = 1_000_000.0
TARGET = 1000  # samples per swarm epoch


def report(vid: str, *, samples: int, epoch: int = 1, compute: float = 0.0, rate: float = 10.0,
           loss: float | None = 1.0, age: float = 0.0, banned: bool = False) -> PeerReport:
    return PeerReport(volunteer_id=vid, epoch=epoch, samples=samples, compute_seconds=compute,
                      samples_per_second=rate, loss=loss, updated_at=NOW - age, banned=banned)


def reports(*items: PeerReport) -> dict[str, PeerReport]:
    return {r.volunteer_id: r for r in items}


def state_started(seconds_ago: float) -> MonitorState:
    return MonitorState(started_at=NOW - seconds_ago)


# ---- swarm_metrics ----

def test_metrics_of_live_peers() -> None:
    m = swarm_metrics(
        reports(report("a", samples=300, epoch=2, rate=10.0, loss=2.0),
                report("b", samples=200, epoch=3, rate=30.0, loss=1.0)),
        target_epochs=5, target_batch_size=TARGET, swarm_epoch=3, now=NOW,
    )
    assert (m.epoch, m.target_epochs, m.samples, m.live_peers) == (3, 5, 500, 2)
    assert m.samples_per_second == pytest.approx(40.0)
    assert m.loss == pytest.approx(1.5)
    assert m.eta_seconds == pytest.approx(2 * TARGET / 40.0)  # two epochs left at 40 samples/s


def test_stale_records_count_for_the_epoch_but_not_as_live() -> None:
    m = swarm_metrics(
        reports(report("a", samples=100, epoch=4, rate=50.0, loss=9.0, age=LIVE_RECORD_S + 1),
                report("b", samples=100, epoch=2, rate=5.0, loss=1.0),
                report("c", samples=0, epoch=4, rate=0.0, loss=None)),
        target_epochs=10, target_batch_size=TARGET, now=NOW,
    )
    assert m.live_peers == 2 and m.epoch == 4 and m.samples == 200
    assert m.samples_per_second == pytest.approx(5.0) and m.loss == pytest.approx(1.0)


def test_one_volunteers_forged_epoch_does_not_move_the_job() -> None:
    """The job's epoch is the one at least half of the volunteers reached: the job runner catches
    its averaging peer up to it, which would complete the job on one volunteer's word."""
    honest = [report("a", samples=100, epoch=2), report("b", samples=100, epoch=3)]
    m = swarm_metrics(reports(*honest, report("mallory", samples=100, epoch=1_000_000)),
                      target_epochs=10, target_batch_size=TARGET, swarm_epoch=2, now=NOW)
    assert m.epoch == 3
    m = swarm_metrics(reports(report("a", samples=100, epoch=2), report("mallory", samples=100, epoch=1_000_000)),
                      target_epochs=10, target_batch_size=TARGET, swarm_epoch=2, now=NOW)
    assert m.epoch == 2  # in a pair, the lower one
    m = swarm_metrics(reports(report("a", samples=100, epoch=5), report("b", samples=100, epoch=5)),
                      target_epochs=10, target_batch_size=TARGET, swarm_epoch=2, now=NOW)
    assert m.epoch == 5  # the volunteers went on without the averaging peer (a restarted runner)


def test_banned_records_do_not_count() -> None:
    m = swarm_metrics(
        reports(report("a", samples=100, epoch=2), report("mallory", samples=10**9, epoch=999, banned=True)),
        target_epochs=10, target_batch_size=TARGET, now=NOW,
    )
    assert (m.epoch, m.samples, m.live_peers) == (2, 100, 1)


def test_epoch_never_goes_back_and_eval_is_kept() -> None:
    previous = JobMetrics(epoch=7, loss=0.8, eval_metric=0.42, eval_metric_name="exact_match")
    m = swarm_metrics({}, target_epochs=10, target_batch_size=TARGET, swarm_epoch=3, previous=previous, now=NOW)
    assert m.epoch == 7 and m.live_peers == 0
    assert m.loss == pytest.approx(0.8)  # no live loss: the last one stays
    assert (m.eval_metric, m.eval_metric_name) == (0.42, "exact_match")
    assert m.eta_seconds == 0.0  # no throughput, no estimate
    assert swarm_metrics({}, target_epochs=10, target_batch_size=TARGET, swarm_epoch=9, previous=previous,
                         now=NOW).epoch == 9


def test_non_finite_losses_are_ignored() -> None:
    m = swarm_metrics(
        reports(report("a", samples=1, loss=math.nan), report("b", samples=1, loss=None),
                report("c", samples=1, loss=2.5)),
        target_epochs=3, target_batch_size=TARGET, now=NOW,
    )
    assert m.loss == pytest.approx(2.5)


# ---- claims ----

def test_claims_are_deltas_of_the_published_totals() -> None:
    state = state_started(100)
    first = claims(reports(report("a", samples=300, compute=30.0), report("b", samples=200, compute=20.0)),
                   state, target_batch_size=TARGET, swarm_epoch=1, now=NOW)
    assert [(c.volunteer_id, c.samples, c.compute_seconds, c.note) for c in first] == [
        ("a", 300, 30.0, ""), ("b", 200, 20.0, "")]
    second = claims(reports(report("a", samples=450, compute=45.0, epoch=2), report("b", samples=200, compute=20.0)),
                    state, target_batch_size=TARGET, swarm_epoch=2, now=NOW + 15)
    assert [(c.volunteer_id, c.epoch, c.samples, c.compute_seconds) for c in second] == [("a", 2, 150, 15.0)]
    assert state.accepted["a"] == Accepted(450, 45.0, NOW + 15, claimed_samples=450, claimed_compute=45.0)
    assert [(c.claimed_samples, c.claimed_compute_seconds) for c in second] == [(150, 15.0)]
    # the same totals read again: nothing new, no row
    assert claims(reports(report("a", samples=450, compute=45.0)), state, target_batch_size=TARGET,
                  swarm_epoch=2, now=NOW + 17) == []


def test_totals_that_go_back_claim_nothing_until_they_pass_the_ledger() -> None:
    state = state_started(100)
    state.accepted["a"] = Accepted(500, 50.0, NOW - 10)
    assert claims(reports(report("a", samples=120, compute=5.0)), state, target_batch_size=TARGET,
                  swarm_epoch=3, now=NOW) == []
    [c] = claims(reports(report("a", samples=560, compute=56.0)), state, target_batch_size=TARGET,
                 swarm_epoch=3, now=NOW)
    assert (c.samples, c.compute_seconds) == (60, 6.0)


def test_a_row_holds_what_was_claimed_and_what_was_granted() -> None:
    state = state_started(10)
    allowance = int(MIN_RATE_ALLOWANCE * 10)
    # an inflated claim: capped by throughput; the row says what was claimed and what was granted
    [first] = claims(reports(report("liar", samples=100_000, rate=0.0)), state, target_batch_size=10**9,
                     swarm_epoch=1, now=NOW)
    assert (first.claimed_samples, first.samples) == (100_000, allowance) and "capped" in first.note
    # the rest is granted later, as time passes; those rows claim nothing new
    [later] = claims(reports(report("liar", samples=100_000, rate=0.0)), state, target_batch_size=10**9,
                     swarm_epoch=1, now=NOW + 10)
    assert (later.claimed_samples, later.samples) == (0, allowance)


def test_claims_are_capped_by_throughput_and_the_rest_comes_later() -> None:
    state = state_started(10)  # 10 s ago; the swarm's typical rate is 10 samples/s
    peers = [report("a", samples=5000, compute=9.0, rate=10.0), report("b", samples=0, rate=10.0),
             report("c", samples=0, rate=10.0)]
    [c] = claims(reports(*peers), state, target_batch_size=100_000, swarm_epoch=0, now=NOW)
    allowed = int(max(MIN_RATE_ALLOWANCE, 10.0 * RATE_MARGIN) * 10)
    assert c.samples == allowed and "by throughput" in c.note
    # as time passes, what was over the cap is accepted too (never more than the rate allows)
    [later] = claims(reports(*peers), state, target_batch_size=100_000, swarm_epoch=0, now=NOW + 100)
    assert later.samples == 5000 - allowed and later.note == ""
    assert state.accepted["a"].samples == 5000


def test_claimed_compute_does_not_raise_the_sample_allowance() -> None:
    state = state_started(2)
    [c] = claims(reports(report("a", samples=10**9, compute=10**9, rate=1.0)), state,
                 target_batch_size=10**12, swarm_epoch=0, now=NOW)
    assert c.samples == int(MIN_RATE_ALLOWANCE * 2)
    assert c.compute_seconds == pytest.approx(2.0) and "capped compute" in c.note


def test_claims_are_capped_by_the_swarms_progress() -> None:
    state = state_started(1000)
    cap = int(2 * TARGET * SWARM_MARGIN)  # swarm epoch 1: at most two epochs' worth of samples, with margin
    got = claims(reports(report("a", samples=cap - 100, rate=20.0), report("b", samples=400, rate=20.0)),
                 state, target_batch_size=TARGET, swarm_epoch=1, now=NOW)
    assert [(c.volunteer_id, c.samples) for c in got] == [("a", cap - 100), ("b", 100)]
    assert got[1].note == "capped 400 to 100 samples by the swarm's progress"
    # nothing more fits until the swarm moves on: no row at all (not an empty one at every read)
    assert claims(reports(report("a", samples=cap - 100, rate=20.0), report("b", samples=400, rate=20.0)),
                  state, target_batch_size=TARGET, swarm_epoch=1, now=NOW + 2) == []
    # the next epoch makes room for the rest
    [rest] = claims(reports(report("b", samples=400, rate=20.0)), state, target_batch_size=TARGET,
                    swarm_epoch=2, now=NOW + 30)
    assert (rest.volunteer_id, rest.samples, rest.note) == ("b", 300, "")


def test_capped_samples_still_credit_compute() -> None:
    state = state_started(100)
    state.accepted["a"] = Accepted(int(TARGET * SWARM_MARGIN), 40.0, NOW - 10)
    [c] = claims(reports(report("a", samples=int(TARGET * SWARM_MARGIN) + 50, compute=48.0)), state,
                 target_batch_size=TARGET, swarm_epoch=0, now=NOW)
    assert c.samples == 0 and c.compute_seconds == pytest.approx(8.0) and "swarm's progress" in c.note


def test_banned_volunteers_work_is_refused_once_and_takes_no_room() -> None:
    state = state_started(100)
    got = claims(reports(report("a", samples=100), report("mallory", samples=900, compute=90.0, banned=True)),
                 state, target_batch_size=TARGET, swarm_epoch=0, now=NOW)
    assert [(c.volunteer_id, c.samples, c.compute_seconds, c.note) for c in got] == [
        ("a", 100, 0.0, ""), ("mallory", 0, 0.0, "refused 900 samples: banned")]
    # the refusal is not repeated at the next read
    assert claims(reports(report("mallory", samples=900, compute=90.0, banned=True)), state,
                  target_batch_size=TARGET, swarm_epoch=0, now=NOW + 2) == []
    # refused samples leave the swarm's room to the others
    [c] = claims(reports(report("a", samples=int(TARGET * SWARM_MARGIN))), state, target_batch_size=TARGET,
                 swarm_epoch=0, now=NOW + 100)
    assert c.samples == int(TARGET * SWARM_MARGIN) - 100 and c.note == ""
    # unbanned later, it is credited only for what it does from then on
    [back] = claims(reports(report("mallory", samples=950, compute=95.0)), state,
                    target_batch_size=10 * TARGET, swarm_epoch=5, now=NOW + 200)
    assert (back.samples, back.compute_seconds) == (50, pytest.approx(5.0))


def test_a_banned_volunteers_rate_does_not_raise_the_cap_of_others() -> None:
    state = state_started(10)
    got = claims(reports(report("a", samples=10_000, rate=1.0), report("mallory", samples=0, rate=1e6, banned=True)),
                 state, target_batch_size=10**9, swarm_epoch=0, now=NOW)
    assert got[0].samples == int(MIN_RATE_ALLOWANCE * 10)


def test_catch_up_after_a_gap() -> None:
    """The coordinator was down for 5 minutes; the records carry totals, so one read catches up."""
    state = state_started(3600)
    state.accepted.update(a=Accepted(4000, 400.0, NOW - 300), b=Accepted(3000, 300.0, NOW - 300))
    got = claims(reports(report("a", samples=8000, compute=680.0, epoch=14, rate=20.0),
                         report("b", samples=7000, compute=580.0, epoch=14, rate=20.0)),
                 state, target_batch_size=TARGET, swarm_epoch=14, now=NOW)
    assert [(c.volunteer_id, c.epoch, c.samples, c.compute_seconds, c.note) for c in got] == [
        ("a", 14, 4000, 280.0, ""), ("b", 14, 4000, 280.0, "")]
    assert sum(a.samples for a in state.accepted.values()) == 15_000


def test_a_volunteer_new_to_this_monitor_is_allowed_the_time_since_it_started() -> None:
    """A runner restarted from the ledger has no row of a volunteer that joined while it was down."""
    state = state_started(600)  # the job started 10 minutes ago
    [c] = claims(reports(report("late", samples=6000, compute=290.0, rate=20.0)), state,
                 target_batch_size=TARGET, swarm_epoch=10, now=NOW)
    assert (c.samples, c.compute_seconds, c.note) == (6000, 290.0, "")


def test_the_swarm_cap_counts_what_peers_compute_while_a_round_gathers() -> None:
    # short epochs with overlapped rounds: peers train through each round, so an epoch holds several
    # times its target; honest claims fit once the round's seconds are counted, at the capped rates
    state = state_started(1000)
    honest = reports(report("a", samples=2000, rate=350.0), report("b", samples=1900, rate=350.0))
    tight = claims(honest, state_started(1000), target_batch_size=256, swarm_epoch=2, now=NOW)
    assert any("swarm's progress" in c.note for c in tight)
    got = claims(honest, state, target_batch_size=256, swarm_epoch=2, round_seconds=3.0, now=NOW)
    assert [(c.volunteer_id, c.samples, c.note) for c in got] == [("a", 2000, ""), ("b", 1900, "")]
    # a volunteer claiming an absurd rate gets no more room for it than the swarm's typical rate allows
    liar = reports(report("a", samples=2000, rate=350.0), report("b", samples=10**6, rate=10.0**9),
                   report("c", samples=1000, rate=350.0))
    got = claims(liar, state_started(1000), target_batch_size=256, swarm_epoch=2, round_seconds=3.0, now=NOW)
    assert sum(c.samples for c in got) <= 3 * (256 * 1.5 + 3 * 350.0 * 3 * 3.0)


def test_validation_holds_a_suspects_claims_and_refuses_a_dropped_volunteers() -> None:
    state = state_started(100)
    both = reports(report("a", samples=100), report("m", samples=200))
    # m's last checked update failed: no row for it until one passes; its claim stays claimable
    got = claims(both, state, target_batch_size=TARGET, swarm_epoch=0, now=NOW, held={"m"})
    assert [(c.volunteer_id, c.samples) for c in got] == [("a", 100)]
    [later] = claims(both, state, target_batch_size=TARGET, swarm_epoch=0, now=NOW + 10)
    assert (later.volunteer_id, later.samples) == ("m", 200)
    # dropped after failing again: what it claims from then on is refused, once
    more = reports(report("m", samples=500))
    [refused] = claims(more, state, target_batch_size=TARGET, swarm_epoch=0, now=NOW + 20,
                       refused={"m": "it repeats its own earlier update"})
    assert (refused.samples, refused.note) == (0, "refused 300 samples: failed validation: "
                                                   "it repeats its own earlier update")
    assert claims(more, state, target_batch_size=TARGET, swarm_epoch=0, now=NOW + 30, refused={"m": "x"}) == []


def test_an_inflated_rate_counts_at_most_the_cap_in_the_jobs_throughput() -> None:
    m = swarm_metrics(
        reports(report("a", samples=300, rate=10.0), report("b", samples=300, rate=10.0),
                report("liar", samples=30_000, rate=16_000.0)),
        target_epochs=5, target_batch_size=TARGET, swarm_epoch=1, now=NOW,
    )
    # the median reported rate is 10 samples/s: nobody counts for more than RATE_MARGIN times it
    assert m.samples_per_second == pytest.approx(20.0 + max(MIN_RATE_ALLOWANCE, 10.0 * RATE_MARGIN))


def test_no_more_is_granted_than_the_volunteers_rounds_carried() -> None:
    """Robust aggregation: a volunteer is granted what its updates carried into the averages, and
    two epochs of work in flight; the rest waits for its rounds, and never comes for work that
    never went into the model (a round sent with weight 0)."""
    state = state_started(1000)
    [c] = claims(reports(report("a", samples=3000, compute=30.0, rate=100.0)), state, target_batch_size=TARGET,
                 swarm_epoch=5, now=NOW, carried={"a": 0.0})
    assert c.samples == 2 * TARGET and "by what its rounds carried" in c.note and c.claimed_samples == 3000
    assert claims(reports(report("a", samples=3000, compute=30.0, rate=100.0)), state, target_batch_size=TARGET,
                  swarm_epoch=5, now=NOW + 10, carried={"a": 0.0}) == []
    [later] = claims(reports(report("a", samples=3000, compute=30.0, rate=100.0)), state, target_batch_size=TARGET,
                     swarm_epoch=5, now=NOW + 20, carried={"a": 1000.0})
    assert later.samples == 1000  # its round came: the rest is granted
    # epochs no averaging peer saw (the job runner was down; the volunteers trained on) are not capped
    gone = state_started(1000)
    [outage] = claims(reports(report("c", samples=3000, compute=30.0, rate=100.0)), gone, target_batch_size=TARGET,
                      swarm_epoch=5, now=NOW, carried={"c": 0.0}, unobserved_epochs=1)
    assert outage.samples == 3 * TARGET
    # without round weights (mean aggregation) nothing is capped this way
    fresh = state_started(1000)
    [plain] = claims(reports(report("b", samples=3000, compute=30.0, rate=100.0)), fresh, target_batch_size=TARGET,
                     swarm_epoch=5, now=NOW)
    assert plain.samples == 3000

