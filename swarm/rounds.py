"""Averaging rounds as a peer saw them: who it averaged with at the end of each epoch, or why not.

    outcome = optimizer.last_round            # RoundOutcome(epoch=4, peers=(...), error="")
    outcome.others(exclude=coordinator_peers) # 2: the volunteers this peer averaged with
    outcome.error                             # "" when it averaged, else a sentence for the volunteer

A round is *averaged* when the group held at least one peer besides this one. In a public swarm the
coordinator's averaging peers are in every group (NAT-ed volunteers can only join groups that hold a
full peer), so "averaged with N volunteers" counts the group without them and without this peer.

Used by :mod:`essaim.swarm.optimizer` (which records one outcome per epoch), the trainer (which
reports it to the volunteer's app) and the coordinator's averaging peer (which reports each round's
volunteers to the job's metrics).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ALONE = "no other peer trains this job right now"
NO_GROUP = (
    "could not find a group: no peer that accepts connections (the coordinator's averaging peer, "
    "or a reachable volunteer) answered in time"
)
TIMED_OUT = "the round timed out before every peer sent its part (a slow or lost peer)"


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """One epoch's averaging round: ``peers`` are the base58 peer ids of the group (this peer
    included), empty when no group formed; ``error`` says why it failed, "" when it averaged."""

    epoch: int
    peers: tuple[str, ...] = ()
    error: str = ""
    at: float = field(default_factory=time.time)
    # where this peer reduced the round robustly: peer id -> {"refused", "kept", "parts"}
    # (essaim.swarm.aggregation.Verdict); empty otherwise
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def averaged(self) -> bool:
        return not self.error and len(self.peers) > 1

    def others(self, *, me: str | None = None, exclude: Iterable[str] = ()) -> int:
        """How many peers of the group are neither ``me`` nor in ``exclude`` (e.g. the coordinator's)."""
        skip = set(exclude)
        if me is not None:
            skip.add(me)
        return sum(1 for p in self.peers if p not in skip)


def describe_failure(exc: BaseException | None) -> str:
    """A volunteer-readable reason for a failed round, from hivemind's exception."""
    if exc is None:
        return TIMED_OUT
    text = f"{type(exc).__name__}: {exc}".lower()
    if "unable to run all-reduce" in text:  # a group formed (hivemind wraps it as a matchmaking error)
        detail = str(exc).split("Unable to run All-Reduce:", 1)[-1].strip()
        return f"the group formed, but its all-reduce failed partway: {detail}"[:300]
    if "could not find a group" in text or "matchmaking" in text:
        return NO_GROUP
    if isinstance(exc, TimeoutError) or "timeout" in text or "timed out" in text:
        return TIMED_OUT
    if "cancel" in text:
        return "the round was cancelled (the peer paused or left)"
    return f"the round failed: {type(exc).__name__}: {exc}"[:300]
