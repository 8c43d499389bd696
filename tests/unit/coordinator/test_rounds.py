"""The coordinator's book of averaging rounds: what a job's peers are, and when a job may not complete."""

from __future__ import annotations

import json
from pathlib import Path

from essaim.coordinator.monitor import PeerReport, swarm_metrics
from essaim.coordinator.rounds import ROUNDS_FILE, RoundBook
from essaim.swarm.rounds import ALONE, RoundOutcome


def _book(tmp_path: Path, *rounds: tuple[int, list[str], str]) -> RoundBook:
    book = RoundBook(tmp_path / ROUNDS_FILE)
    for epoch, volunteers, error in rounds:
        book.add(RoundOutcome(epoch=epoch, peers=("coord", *volunteers), error=error), volunteers)
    return book


def test_rounds_are_kept_and_read_back_by_a_restarted_runner(tmp_path: Path) -> None:
    _book(tmp_path, (0, ["a", "b"], ""), (1, [], ALONE))
    lines = [json.loads(line) for line in (tmp_path / ROUNDS_FILE).read_text().splitlines()]
    assert [(r["epoch"], r["volunteers"], r["error"]) for r in lines] == [(0, ["a", "b"], ""), (1, [], ALONE)]
    again = RoundBook(tmp_path / ROUNDS_FILE)
    assert [e.epoch for e in again.entries] == [0, 1] and again.entries[0].averaged
    (tmp_path / ROUNDS_FILE).write_text((tmp_path / ROUNDS_FILE).read_text() + "not json\n")
    assert len(RoundBook(tmp_path / ROUNDS_FILE).entries) == 2  # a torn line is skipped


def test_the_last_round_says_who_was_averaged(tmp_path: Path) -> None:
    book = _book(tmp_path)
    assert book.averaged_volunteers() is None and book.describe_last() == ""
    book = _book(tmp_path / "x", (0, ["a", "b", "c"], ""))
    assert book.averaged_volunteers() == {"a", "b", "c"}
    assert book.describe_last() == "epoch 0: averaged 3 volunteers"
    book.add(RoundOutcome(epoch=1, error=ALONE), [])
    assert book.averaged_volunteers() == set()
    assert book.describe_last() == f"epoch 1: averaged with nobody: {ALONE}"
    book.add(RoundOutcome(epoch=2, peers=("coord", "a")), ["a"])
    assert "averaged with nobody: only 1 volunteer" in book.describe_last()


def test_a_swarm_that_never_averaged_together_is_not_done(tmp_path: Path) -> None:
    alone = _book(tmp_path / "alone", (0, ["a"], ""), (1, ["b"], ""), (2, ["a"], ""))
    problem = alone.why_not_averaged(3)
    assert problem is not None and "never averaged together" in problem
    one_volunteer = _book(tmp_path / "one", (0, ["a"], ""), (1, ["a"], ""))
    assert one_volunteer.why_not_averaged(2) is None  # one volunteer's model is the swarm's here
    good = _book(tmp_path / "good", (0, ["a"], ""), (1, ["a", "b"], ""), (2, ["a", "b"], ""))
    assert good.why_not_averaged(3) is None


def test_a_last_round_that_averaged_nobody_keeps_the_job_from_completing(tmp_path: Path) -> None:
    book = _book(tmp_path, (0, ["a", "b"], ""), (1, ["a", "b"], ""), (2, [], "the round timed out"))
    problem = book.why_not_averaged(3)
    assert problem is not None and "last epoch (2)" in problem and "timed out" in problem
    book.add(RoundOutcome(epoch=2, peers=("coord", "a", "b")), ["a", "b"])  # retried and averaged
    assert book.why_not_averaged(3) is None


def test_a_jobs_peers_are_the_live_volunteers_of_its_last_round() -> None:
    now = 1000.0
    reports = {v: PeerReport(volunteer_id=v, epoch=2, samples=100, compute_seconds=10, samples_per_second=5,
                             loss=1.0, updated_at=now - 5) for v in ("a", "b", "c")}
    reports["c"].updated_at = now - 600  # gone
    assert swarm_metrics(reports, target_epochs=5, target_batch_size=100, now=now).live_peers == 2
    m = swarm_metrics(reports, target_epochs=5, target_batch_size=100, averaged={"a", "c"}, now=now)
    assert m.live_peers == 1  # c was averaged but is gone; b reports but was not averaged
    assert swarm_metrics(reports, target_epochs=5, target_batch_size=100, averaged=set(), now=now).live_peers == 0


def test_validation_standing_holds_after_a_failed_check_and_drops_at_three_more_fails_than_passes(
        tmp_path: Path) -> None:
    book = RoundBook(tmp_path / ROUNDS_FILE)
    fail = {"passed": False, "drop": 0.0, "t": 0.0, "why": "it removed no loss on its own data"}
    ok = {"passed": True, "drop": 0.01, "t": 5.0, "why": ""}
    for epoch, checks in enumerate([{"a": ok, "m": fail, "n": fail}, {"a": fail, "m": fail}, {"a": ok, "m": fail},
                                    {"n": ok}]):
        book.add(RoundOutcome(epoch=epoch, peers=("coord", "a", "m")), ["a", "m"], checks=checks)
    held, dropped = book.standing()
    assert held == set() and dropped == {"m": "it removed no loss on its own data"}
    assert book.verified() == {"a", "n"}
    # a restarted runner reads the same standing back
    assert RoundBook(tmp_path / ROUNDS_FILE).standing() == (held, dropped)
    book.add(RoundOutcome(epoch=4, peers=("coord", "a")), ["a"], checks={"a": fail})
    assert book.standing()[0] == {"a"}
    # a lucky pass of an imitation does not wipe out its failures (a pass counts one down)
    for epoch, check in enumerate([fail, fail, ok, fail, fail], start=10):
        book.add(RoundOutcome(epoch=epoch, peers=("coord", "n")), ["n"], checks={"n": check})
    assert "n" in book.standing()[1]
    # an inconclusive check neither clears nor counts
    maybe = {"passed": False, "inconclusive": True, "drop": 0.001, "t": 1.2, "why": "without significance"}
    book.add(RoundOutcome(epoch=5, peers=("coord", "a")), ["a"], checks={"a": maybe})
    assert book.standing()[0] == {"a"}


def test_what_each_volunteers_rounds_carried_into_the_averages(tmp_path: Path) -> None:
    """The samples the ledger may grant (essaim.coordinator.monitor.claims' ``carried``): the weights
    of the rounds that averaged, read back by a restarted runner; none from a failed round."""
    book = RoundBook(tmp_path / ROUNDS_FILE)
    assert book.carried() is None  # no round says: no cap (mean aggregation)
    book.add(RoundOutcome(epoch=0, peers=("coord", "pa", "pb")), ["a", "b"], weights={"a": 300.0, "b": 200.0})
    book.add(RoundOutcome(epoch=1, peers=("coord", "pa", "pb")), ["a", "b"], weights={"a": 0.0, "b": 250.0})
    book.add(RoundOutcome(epoch=2, error="the round timed out"), [], weights={"a": 400.0})
    assert book.carried() == {"a": 300.0, "b": 450.0}
    assert RoundBook(tmp_path / ROUNDS_FILE).carried() == {"a": 300.0, "b": 450.0}
    assert book.unobserved(3) == 0 and book.unobserved(6) == 3  # epochs 3-5: no round recorded


def test_checks_count_across_the_jobs_averaging_peers_in_the_order_of_the_rounds(tmp_path: Path) -> None:
    """Each averaging peer checks its own slice: a volunteer failing one slice per round is dropped
    after three, counted across the books."""
    first = RoundBook(tmp_path / "first.jsonl")
    second = RoundBook(tmp_path / "second.jsonl")
    fail = {"passed": False, "why": "it removed no loss on its own data"}
    for epoch in range(3):
        book = first if epoch % 2 == 0 else second
        book.add(RoundOutcome(epoch=epoch, peers=("coord", "pm")), ["m"], checks={"m": fail})
    assert first.standing() == ({"m"}, {})
    held, dropped = first.standing([second])
    assert dropped == {"m": fail["why"]} and not held
    second.add(RoundOutcome(epoch=3, peers=("coord", "pm")), ["m"], checks={"m": {"passed": True}})
    assert "m" in first.verified([second]) and "m" not in first.verified()
