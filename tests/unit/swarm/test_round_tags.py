"""Gradient rounds tagged with the epoch they close (swarm/optimizer.py): a leader refuses a member of
another epoch's round, and a client-mode peer whose round's group is closed gives up on it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from essaim.swarm import optimizer
from essaim.swarm.optimizer import ROUND_EPOCH, _GradAverager, _HivemindOptimizer, round_epoch
from hivemind.averaging.control import AveragingStage
from hivemind.proto import averaging_pb2
from hivemind.utils.serializer import MSGPackSerializer


def _gathered(tag: Any) -> bytes:
    """A member's gathered data as hivemind's averager writes it: [bandwidth, mode, user data]."""
    return MSGPackSerializer.dumps([None, 0, MSGPackSerializer.dumps(tag)])


def test_the_epoch_is_read_from_a_members_gathered_data() -> None:
    assert round_epoch(MSGPackSerializer, _gathered({ROUND_EPOCH: 7})) == 7
    assert round_epoch(MSGPackSerializer, _gathered(None)) is None  # an untagged round
    assert round_epoch(MSGPackSerializer, b"\x00garbage") is None


def _join(leader_tag: Any, member_tag: Any) -> list[Any]:
    leader = SimpleNamespace(serializer=MSGPackSerializer,
                             _matchmaking=SimpleNamespace(step_control=SimpleNamespace(data_for_gather=_gathered(leader_tag))))
    request = averaging_pb2.JoinRequest(gather=_gathered(member_tag))

    async def run() -> list[Any]:
        return [m async for m in _GradAverager.rpc_join_group(leader, request, SimpleNamespace(remote_id="member"))]

    return asyncio.run(run())


@pytest.mark.parametrize("member", [{ROUND_EPOCH: 4}, {ROUND_EPOCH: 6}, None])
def test_a_leader_refuses_a_member_of_another_epochs_round(member: Any) -> None:
    replies = _join({ROUND_EPOCH: 5}, member)
    assert [r.code for r in replies] == [averaging_pb2.BAD_GROUP_KEY]


class _Control:
    def __init__(self) -> None:
        self.stage, self.cancelled = AveragingStage.LOOKING_FOR_GROUP, False

    def done(self) -> bool:
        return self.cancelled

    def cancel(self) -> None:
        self.cancelled = True


def _peer(*, client_mode: bool, full_peer_epoch: int) -> Any:
    return SimpleNamespace(client_mode=client_mode, averaging_timeout=15.0, matchmaking_time=2.0,
                           tracker=SimpleNamespace(full_peer_epoch=full_peer_epoch))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A monotonic clock that moves 0.5 s each time it is read; sleeping takes no time."""
    now = [100.0]

    def tick() -> float:
        now[0] += 0.5
        return now[0]

    monkeypatch.setattr(optimizer.time, "monotonic", tick)
    monkeypatch.setattr(optimizer.time, "sleep", lambda _s: None)
    return now


def test_a_client_gives_up_a_round_whose_group_closed(clock: list[float]) -> None:
    peer, control = _peer(client_mode=True, full_peer_epoch=3), _Control()
    start = clock[0]
    assert _HivemindOptimizer._give_up_if_left_behind(peer, control, 2) is True and control.cancelled
    # not before the averaging peer's group could have closed: a matchmaking period and a half
    assert clock[0] - start >= optimizer.LATE_MATCHMAKING * peer.matchmaking_time


def test_a_client_keeps_looking_while_the_swarm_is_on_its_epoch(clock: list[float]) -> None:
    peer, control = _peer(client_mode=True, full_peer_epoch=2), _Control()  # the averaging peer is on 2 too
    assert _HivemindOptimizer._give_up_if_left_behind(peer, control, 2) is False and not control.cancelled


def test_a_round_in_its_group_or_of_a_full_peer_is_never_given_up(clock: list[float]) -> None:
    full, control = _peer(client_mode=False, full_peer_epoch=9), _Control()
    assert _HivemindOptimizer._give_up_if_left_behind(full, control, 2) is False  # full peers can lead
    client, running = _peer(client_mode=True, full_peer_epoch=9), _Control()
    running.stage = AveragingStage.RUNNING_ALLREDUCE  # it found its group
    assert _HivemindOptimizer._give_up_if_left_behind(client, running, 2) is False and not running.cancelled
