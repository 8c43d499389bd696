"""Gradient rounds tagged with the epoch they close (swarm/optimizer.py): a leader refuses a member of
another epoch's round, and a client-mode peer whose round's group is closed gives up on it."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from essaim.swarm import optimizer
from essaim.swarm.optimizer import ROUND_EPOCH, _GradAverager, _HivemindOptimizer, round_epoch
from hivemind.averaging.control import AveragingStage
from hivemind.averaging.partition import AllreduceException
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


def _peer(*, client_mode: bool, full_peer_epoch: int, follows_only: bool = False) -> Any:
    return SimpleNamespace(client_mode=client_mode, averaging_timeout=15.0, matchmaking_time=2.0,
                           tracker=SimpleNamespace(full_peer_epoch=full_peer_epoch),
                           grad_averager=SimpleNamespace(follows_only=follows_only))


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


def test_a_full_volunteer_that_only_follows_gives_up_like_a_client(clock: list[float]) -> None:
    """Under robust aggregation a volunteer that accepts connections still never leads (it follows
    the averaging peers' groups): once they moved past its round's epoch, it stops looking too."""
    peer, control = _peer(client_mode=False, full_peer_epoch=3, follows_only=True), _Control()
    assert _HivemindOptimizer._give_up_if_left_behind(peer, control, 2) is True and control.cancelled


def _record(key: Any, epoch: int, *, claims: Any = None) -> tuple[bytes, Any]:
    from essaim.swarm.identity import peer_id_for_key
    from essaim.swarm.records import owner_subkey
    from hivemind.p2p import PeerID

    claimed = peer_id_for_key(claims if claims is not None else key)
    value = {"peer_id": PeerID.from_base58(claimed).to_bytes(), "epoch": epoch, "client_mode": False}
    return owner_subkey(key), SimpleNamespace(value=value)


def test_the_leaders_epoch_is_read_from_their_own_signed_records_only(tmp_path: Any) -> None:
    """A volunteer gives up a round when the averaging peer's record says it moved on; a record
    claiming the averaging peer's id under another key (a liar's) does not count."""
    from essaim.swarm.identity import load_or_create_private_key, peer_id_for_key

    leader, liar = (load_or_create_private_key(tmp_path / f"{n}.pem") for n in ("leader", "liar"))
    tracker = object.__new__(optimizer._Tracker)
    threading.Thread.__init__(tracker, daemon=True)
    tracker.leaders = frozenset({peer_id_for_key(leader)})
    found = tracker._records_by_owner(dict([_record(leader, 4), _record(liar, 9, claims=leader), _record(liar, 7)]))
    assert [(owner, r["epoch"]) for owner, r in found] == [(peer_id_for_key(leader), 4), (peer_id_for_key(liar), 7)]
    assert [r["epoch"] for owner, r in found if owner in tracker.leaders] == [4]


def _sources(announced: dict[bytes, float], me: bytes) -> list[bytes]:
    from hivemind.p2p import PeerID

    async def get(key: str, latest: bool, return_future: bool) -> Any:
        return SimpleNamespace(value={peer: SimpleNamespace(value=epoch) for peer, epoch in announced.items()})

    averager = SimpleNamespace(state_sources=None, peer_id=PeerID(me), dht=SimpleNamespace(get=get),
                               announce_key="job.all_averagers")
    ranked = asyncio.run(optimizer._StateAverager._state_sources(averager))  # type: ignore[arg-type]
    return [p.to_bytes() for p in ranked]


def test_under_mean_aggregation_a_peer_reloads_only_from_peers_ranked_above_it() -> None:
    swarm = {b"peer-a": 3.0, b"peer-b": 3.0, b"peer-c": 3.0, b"peer-z": 2.0}
    # two peers of one epoch whose round failed: the lower loads the higher's state, never the reverse
    assert _sources(swarm, b"peer-b") == [b"peer-c"]
    assert _sources(swarm, b"peer-a") == [b"peer-c", b"peer-b"]
    assert _sources(swarm, b"peer-c") == []  # the highest keeps its own
    # a peer behind (a newcomer, epoch 2) loads from every peer ahead of it, the highest first
    assert _sources(swarm, b"peer-z") == [b"peer-c", b"peer-b", b"peer-a"]
    # a peer that offers no state of its own (client mode) may load from anyone
    assert _sources(swarm, b"peer-x") == [b"peer-c", b"peer-b", b"peer-a", b"peer-z"]
    # the trainer's side asks the same question before it reloads: the highest peer does not
    announced = {peer: SimpleNamespace(value=epoch) for peer, epoch in swarm.items()}
    from hivemind.p2p import PeerID

    assert optimizer.ranked_above(announced, PeerID(b"peer-c")) == []
    assert [p.to_bytes() for p in optimizer.ranked_above(announced, PeerID(b"peer-b"))] == [b"peer-c"]


class _Progress:
    def __init__(self, global_epoch: int) -> None:
        self.global_epoch, self.reported = global_epoch, []

    def report_local_progress(self, local_epoch: int, samples_accumulated: int) -> None:
        self.reported.append(local_epoch)


def _behind(local_epoch: int, global_epoch: int, *, loaded: bool = False) -> Any:
    state = SimpleNamespace(local_epoch=local_epoch, loaded=loaded, state_sharing_priority=local_epoch)
    peer = SimpleNamespace(state_averager=state, tracker=_Progress(global_epoch), client_mode=False, drifted=False)
    peer.local_epoch = local_epoch
    _HivemindOptimizer._move_on_unloaded(peer)
    return peer


def test_a_peer_far_behind_that_no_peer_sends_a_state_moves_on_as_drifted() -> None:
    # hivemind would reload at every step, each load failing at once while the averaging peer is down
    peer = _behind(25, 27)
    assert (peer.state_averager.local_epoch, peer.tracker.reported, peer.drifted) == (27, [27], True)
    assert peer.state_averager.state_sharing_priority == 27


@pytest.mark.parametrize(("local", "swarm", "loaded"), [(26, 27, False), (25, 27, True), (0, 27, False)])
def test_a_peer_keeps_its_epoch_when_it_loaded_a_state_is_one_behind_or_is_joining(local: int, swarm: int,
                                                                                   loaded: bool) -> None:
    # one behind: hivemind catches up itself; a newcomer (epoch 0) must load a state before it trains
    peer = _behind(local, swarm, loaded=loaded)
    assert (peer.state_averager.local_epoch, peer.tracker.reported, peer.drifted) == (local, [], False)


def _run_failing_rounds(tag: Any) -> tuple[int, Any]:
    """hivemind's own step loop (DecentralizedAverager._step) in a _GradAverager whose matchmaking
    always finds a group and whose all-reduce always fails: how many times it ran the all-reduce,
    and what the step ended with."""
    from hivemind.averaging.control import StepControl
    from hivemind.utils import get_dht_time
    from hivemind.utils.mpfuture import MPFuture

    averager = object.__new__(_GradAverager)
    attempts = [0]

    async def look_for_group(_step: Any) -> Any:
        await asyncio.sleep(0)
        return SimpleNamespace(group_id=b"group", peer_ids=("a", "b"), gathered=())

    async def reduce(*_args: Any, **_kwargs: Any) -> Any:
        attempts[0] += 1
        raise AllreduceException("the reducer returned 50% of the average")

    averager.__dict__.update(
        serializer=MSGPackSerializer, _matchmaking=SimpleNamespace(look_for_group=look_for_group),
        _reduce_with_group=reduce, _running_groups={}, _allreduce_timeout=5.0, tensor_infos=(),
        allreduce_kwargs={"min_vector_size": 0}, _parent_pid=-1,  # never its own process: nothing to shut down
    )

    async def run() -> Any:  # hivemind's futures belong to the event loop they are made in
        MPFuture()  # its future backend starts on the base class first (a subclass first breaks it)
        step = StepControl(scheduled_time=get_dht_time(), deadline=get_dht_time() + 2.0, allow_retries=True,
                           weight=1.0, data_for_gather=_gathered(tag))
        averager._pending_groups_registered = asyncio.Event()
        init: MPFuture[Any] = MPFuture()
        task = asyncio.create_task(averager._step(step=step, future_for_init=init))
        await init  # hivemind's _step attached its trigger to the step (one process here)
        step.allow_allreduce()
        await asyncio.wait_for(task, 10.0)
        return step.exception()

    error = asyncio.run(run())
    return attempts[0], error


def test_a_tagged_round_whose_all_reduce_failed_is_not_tried_again() -> None:
    # its group's other members ended that epoch's round: a retry could only hold the next rounds
    attempts, error = _run_failing_rounds({ROUND_EPOCH: 3})
    assert attempts == 1 and isinstance(error, AllreduceException)


def test_an_untagged_round_is_retried_as_hivemind_does() -> None:
    attempts, error = _run_failing_rounds(None)  # until its deadline (2 s)
    assert attempts > 1 and isinstance(error, AllreduceException)


def _tracker(leader_key: Any, *, local_epoch: int, always_report: bool = False) -> Any:
    """A tracker that knows its leaders (robust aggregation), built without hivemind's threads."""
    from essaim.swarm.identity import peer_id_for_key
    from hivemind.optim.progress_tracker import LocalTrainingProgress
    from hivemind.utils.performance_ema import PerformanceEMA

    tracker = object.__new__(optimizer._Tracker)
    threading.Thread.__init__(tracker, daemon=True)  # never started: hivemind's __del__ asks whether it runs
    tracker.leaders = frozenset({peer_id_for_key(leader_key)})
    tracker.always_report, tracker.target_batch_size, tracker.prefix = always_report, 4800, "job"
    tracker.status_loglevel, tracker.performance_ema = 10, PerformanceEMA(alpha=0.1)
    tracker.min_refresh_period, tracker.max_refresh_period, tracker.default_refresh_period = 0.5, 10.0, 3.0
    tracker.expected_drift_peers, tracker.expected_drift_rate = 3, 0.2
    tracker.local_progress = LocalTrainingProgress(peer_id=b"me", epoch=local_epoch, samples_accumulated=0,
                                                   samples_per_second=1.0, time=0.0, client_mode=always_report)
    return tracker


def _progress(key: Any, epoch: int, samples: int, *, client_mode: bool) -> tuple[bytes, Any]:
    from hivemind.utils import get_dht_time

    subkey, item = _record(key, epoch)
    item.value.update(samples_accumulated=samples, samples_per_second=100.0, time=get_dht_time(),
                      client_mode=client_mode)
    return subkey, item


def test_the_averaging_peer_follows_the_volunteers_not_the_first_full_one(tmp_path: Any) -> None:
    """Under robust aggregation the averaging peers lead every round: a full-mode volunteer moving
    on (or claiming a forged epoch) does not move the averaging peer's epoch, which follows the
    volunteers' median, full and NAT-ed alike, counting everyone's samples there. A volunteer still
    moves on when it sees another full one begin the round (hivemind's rule)."""
    from essaim.swarm.identity import load_or_create_private_key

    leader, full, nat1, nat2 = (load_or_create_private_key(tmp_path / f"{n}.pem")
                                for n in ("leader", "full", "nat1", "nat2"))
    swarm = dict([_progress(leader, 2, 0, client_mode=False), _progress(full, 3, 900, client_mode=False),
                  _progress(nat1, 2, 2000, client_mode=True), _progress(nat2, 2, 1500, client_mode=True)])
    averaging_peer = _tracker(leader, local_epoch=2, always_report=True)._parse_swarm_progress_data(swarm)
    assert (averaging_peer.epoch, averaging_peer.samples_accumulated, averaging_peer.num_clients) == (2, 3500, 2)
    assert _tracker(leader, local_epoch=2)._parse_swarm_progress_data(swarm).epoch == 3  # a volunteer's view
    swarm.update([_progress(full, 1_000_000, 1, client_mode=False)])  # a forged epoch
    assert _tracker(leader, local_epoch=2, always_report=True)._parse_swarm_progress_data(swarm).epoch == 2
    # the volunteers' median moved on: the averaging peer follows, and counts everyone's samples there
    swarm.update([_progress(nat1, 3, 100, client_mode=True), _progress(full, 3, 900, client_mode=False)])
    moved = _tracker(leader, local_epoch=2, always_report=True)._parse_swarm_progress_data(swarm)
    assert (moved.epoch, moved.samples_accumulated) == (3, 1000)


def test_a_volunteer_ignores_records_further_on_than_the_leaders_can_be(tmp_path: Any) -> None:
    """A full-mode volunteer claiming a forged epoch moved every other volunteer (hivemind's global
    epoch, the highest a full peer reports): each reloaded the state at every step, then took the
    forged epoch up and left the job as done. No honest volunteer is more than one epoch past the
    leaders, who take part in every round; one that is just so still moves the others on."""
    from essaim.swarm.identity import load_or_create_private_key

    leader, full, liar = (load_or_create_private_key(tmp_path / f"{n}.pem") for n in ("leader", "full", "liar"))
    swarm = dict([_progress(leader, 2, 0, client_mode=False), _progress(full, 2, 900, client_mode=False),
                  _progress(liar, 1_000_000, 4800, client_mode=False)])
    volunteer = _tracker(leader, local_epoch=2)
    seen = volunteer._parse_swarm_progress_data(swarm)
    assert (seen.epoch, seen.samples_accumulated, seen.num_peers) == (2, 900, 2)
    swarm.update([_progress(liar, 3, 4800, client_mode=False)])  # one past the leaders: as a peer that began the round
    assert volunteer._parse_swarm_progress_data(swarm).epoch == 3
    # the leaders' record expired: the epoch they were last seen at still bounds the others
    del swarm[next(iter(dict([_progress(leader, 2, 0, client_mode=False)])))]
    swarm.update([_progress(liar, 50, 4800, client_mode=False)])
    assert volunteer._parse_swarm_progress_data(swarm).epoch == 2
    # before the leaders were ever seen, hivemind's rule
    assert _tracker(leader, local_epoch=2)._parse_swarm_progress_data(swarm).epoch == 50


def test_one_of_a_pair_moves_the_averaging_peer_one_epoch_at_most(tmp_path: Any) -> None:
    """In a pair the volunteers' upper median is one volunteer's word: it may begin the round
    (one epoch on), not take the averaging peer to a forged epoch; both together may."""
    from essaim.swarm.identity import load_or_create_private_key

    leader, honest, liar = (load_or_create_private_key(tmp_path / f"{n}.pem") for n in ("leader", "honest", "liar"))
    swarm = dict([_progress(leader, 2, 0, client_mode=False), _progress(honest, 2, 900, client_mode=True),
                  _progress(liar, 1_000_000, 10, client_mode=True)])
    seen = _tracker(leader, local_epoch=2, always_report=True)._parse_swarm_progress_data(swarm)
    assert (seen.epoch, seen.samples_accumulated) == (3, 0)
    swarm.update([_progress(honest, 9, 100, client_mode=True), _progress(liar, 9, 10, client_mode=True)])
    seen = _tracker(leader, local_epoch=2, always_report=True)._parse_swarm_progress_data(swarm)
    assert (seen.epoch, seen.samples_accumulated) == (9, 110)  # both went on without it (a restarted runner)
