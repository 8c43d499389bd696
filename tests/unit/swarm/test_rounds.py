"""Round outcomes: who a peer averaged with, and the reason a round averaged nobody."""

from __future__ import annotations

from essaim.swarm.rounds import ALONE, NO_GROUP, TIMED_OUT, RoundOutcome, describe_failure


def test_others_leave_out_this_peer_and_the_coordinators() -> None:
    outcome = RoundOutcome(epoch=3, peers=("me", "coord", "bob", "carol"))
    assert outcome.averaged
    assert outcome.others(me="me", exclude={"coord"}) == 2
    assert outcome.others() == 4


def test_a_group_of_one_or_a_failed_round_is_not_averaged() -> None:
    assert not RoundOutcome(epoch=1, peers=("me",)).averaged
    assert not RoundOutcome(epoch=1, peers=("me", "coord"), error=TIMED_OUT).averaged
    assert not RoundOutcome(epoch=1, error=ALONE).averaged


def test_failures_read_as_sentences_a_volunteer_can_act_on() -> None:
    class AllreduceException(Exception):
        pass

    assert describe_failure(AllreduceException("Averaging step failed: could not find a group")) == NO_GROUP
    # a group that formed and then lost a reducer's part is not "no group" (hivemind raises it as a
    # MatchmakingException, "Unable to run All-Reduce: ...")
    class MatchmakingException(Exception):
        pass

    partway = describe_failure(MatchmakingException("Unable to run All-Reduce: the reducer returned 50% of the average"))
    assert partway == "the group formed, but its all-reduce failed partway: the reducer returned 50% of the average"
    assert describe_failure(TimeoutError()) == TIMED_OUT
    assert describe_failure(None) == TIMED_OUT
    assert "cancelled" in describe_failure(RuntimeError("cancelled"))
    odd = describe_failure(ValueError("x" * 1000))
    assert odd.startswith("the round failed: ValueError") and len(odd) <= 300
