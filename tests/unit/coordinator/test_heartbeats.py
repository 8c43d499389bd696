"""The heartbeat pacer (essaim.coordinator.heartbeats): the interval grows with the load, holds
while volunteers take it up, shrinks once the load is gone, and the offline timeout follows it."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from essaim.coordinator.heartbeats import BUSY_TARGET, GROW_AT_MOST, LAG_TARGET, HeartbeatPacer, run_pacer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pacer(base: float = 30.0, longest: float = 300.0) -> tuple[HeartbeatPacer, Clock]:
    clock = Clock()
    return HeartbeatPacer(base, longest=longest, clock=clock), clock


def test_an_idle_coordinator_hands_out_its_base_interval() -> None:
    pacer, clock = _pacer()
    for _ in range(10):
        clock.now += 2
        assert pacer.update(busy=0.1, lag=0.001) == 30.0
    assert pacer.seconds() == 30 and pacer.timeout(90.0) == 90.0


def test_the_interval_grows_with_the_load_and_holds_while_volunteers_take_it_up() -> None:
    pacer, clock = _pacer()
    # twice the busy target: twice the interval (the heartbeats then come half as often)
    assert pacer.update(busy=2 * BUSY_TARGET, lag=0.0) == pytest.approx(60.0)
    # still loaded a second later: the volunteers have not heard of 60 s yet, so it holds
    clock.now += 2
    assert pacer.update(busy=2 * BUSY_TARGET, lag=0.0) == pytest.approx(60.0)
    # one old interval later it may grow again; lag counts as load too, a step is bounded
    clock.now += 30
    assert pacer.update(busy=0.0, lag=100 * LAG_TARGET) == pytest.approx(60.0 * GROW_AT_MOST)
    clock.now += 60
    assert pacer.update(busy=10.0, lag=0.0) == 300.0  # never past the longest
    assert pacer.seconds() == 300 and pacer.load == pytest.approx(10.0 / BUSY_TARGET)


def test_it_shrinks_slowly_once_the_load_is_gone_and_stays_between_half_and_full_load() -> None:
    pacer, clock = _pacer()
    pacer.update(busy=4 * BUSY_TARGET, lag=0.0)
    assert pacer.interval == pytest.approx(120.0)
    clock.now += 30
    assert pacer.update(busy=0.7 * BUSY_TARGET, lag=0.0) == pytest.approx(120.0)  # neither over nor idle
    changes = [(clock.now, pacer.interval)]
    while pacer.interval > 30.0:
        clock.now += 2
        if pacer.update(busy=0.1, lag=0.0) != changes[-1][1]:
            changes.append((clock.now, pacer.interval))
    # 120 x 0.8^7 < 30: back at the base in 7 steps, each one old interval after the one before
    assert [i for _, i in changes] == pytest.approx([120.0 * 0.8**k for k in range(7)] + [30.0])
    assert all(t - t0 >= i0 for (t0, i0), (t, _) in itertools.pairwise(changes[1:]))


def test_the_offline_timeout_covers_the_longest_interval_a_volunteer_may_still_heed() -> None:
    pacer, clock = _pacer()
    pacer.update(busy=3 * BUSY_TARGET, lag=0.0)  # 30 -> 90 s
    assert pacer.timeout(90.0) == pytest.approx(270.0)  # 3 intervals, as 90 s is 3 of 30
    clock.now += 90
    for _ in range(20):  # the load is gone: it shrinks back to 30 s
        clock.now += pacer.interval
        pacer.update(busy=0.0, lag=0.0)
    assert pacer.interval == 30.0
    # a volunteer told 90 s long ago has heard of a shorter interval since
    assert pacer.timeout(90.0) == 90.0
    # right after a shrink, the volunteers told the longer one may still be waiting it out
    pacer.update(busy=3 * BUSY_TARGET, lag=0.0)
    clock.now += 30
    for _ in range(3):
        clock.now += pacer.interval
        pacer.update(busy=0.0, lag=0.0)
    assert pacer.interval < 90.0 and pacer.timeout(90.0) == pytest.approx(270.0)


def test_run_pacer_measures_the_loop() -> None:
    """A loop thread that burns its CPU is loaded; one that sleeps is not."""
    async def measure(burn: bool) -> float:
        pacer, stop = HeartbeatPacer(1.0, longest=8.0), asyncio.Event()
        spent = [0.0]

        def cpu() -> float:  # the loop's CPU, as a loaded loop would spend it: one second per second
            spent[0] += 1.0 if burn else 0.0
            return spent[0]

        task = asyncio.create_task(run_pacer(pacer, stop, period=0.2, tick=0.05, cpu=cpu))
        await asyncio.sleep(0.5)
        stop.set()
        await task
        return pacer.interval

    assert asyncio.run(measure(burn=False)) == 1.0
    assert asyncio.run(measure(burn=True)) > 1.0
