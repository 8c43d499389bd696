"""Heartbeats are buffered in memory and written to the store in batches.

The Heartbeat RPC returns once its record is in the buffer: at 100,000 volunteers one store
transaction per heartbeat would be the bottleneck. A background task flushes the buffer every
``flush_interval`` seconds (and once more on shutdown) in one transaction per batch, keeping only
the newest record per volunteer. So an acknowledged heartbeat may be lost on kill -9, never
half-written. Another task marks volunteers offline after ``heartbeat_timeout_s`` of silence.

The interval volunteers are told to heartbeat at is not fixed: a :class:`HeartbeatPacer` watches
how busy the API process is and how late its event loop runs, and lengthens the interval
when either passes its target (shortening it again, slowly, once the load is gone). A surge of
volunteers then slows reporting instead of timing calls out; the offline timeout grows with the
longest interval a volunteer may still be heeding, so a volunteer told to wait is not marked
offline for waiting.

Used by the server (starts the tasks) and the servicer (``add``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

MAX_PENDING = 500_000
"""More distinct volunteers than this waiting for a flush means the store cannot keep up:
new heartbeats are then dropped (logged) rather than growing memory without bound."""


class HeartbeatBuffer:
    """Newest heartbeat record per volunteer, waiting to be written. Use from the event loop."""

    def __init__(
        self,
        store: Any,
        *,
        flush_interval: float = 0.2,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._store = store
        self._interval = flush_interval
        self.on_error = on_error
        self._pending: dict[str, Any] = {}
        self._flush_lock = asyncio.Lock()
        self.flushed = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, record: Any) -> None:
        """Queue ``record`` (a store HeartbeatRecord); a newer record replaces an older one, keeping
        the hardware and the pseudonym the older one carried when it carries none."""
        old = self._pending.get(record.volunteer_id)
        if old is not None:
            if record.hardware is None and old.hardware is not None:
                record = dataclasses.replace(record, hardware=old.hardware)
            if record.name is None and old.name is not None:
                record = dataclasses.replace(record, name=old.name, team=old.team)
        elif len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            if self.dropped % 10_000 == 1:
                logger.warning(
                    "heartbeat buffer full (%d volunteers); the store is falling behind", MAX_PENDING
                )
            return
        self._pending[record.volunteer_id] = record

    def discard(self, volunteer_id: str) -> None:
        """Drop a volunteer's pending heartbeat (its account was erased)."""
        self._pending.pop(volunteer_id, None)

    async def flush(self) -> int:
        """Write everything pending in one transaction; on failure keep it for the next try."""
        async with self._flush_lock:
            if not self._pending:
                return 0
            batch, self._pending = self._pending, {}
            try:
                await asyncio.to_thread(self._store.record_heartbeats, list(batch.values()))
            except Exception as exc:
                logger.warning("could not write %d heartbeats to the store (will retry): %s", len(batch), exc)
                if self.on_error:
                    self.on_error(exc)
                for vid, rec in batch.items():
                    self._pending.setdefault(vid, rec)
                return 0
            self.flushed += len(batch)
            return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every ``flush_interval`` until ``stop`` is set, then flush a last time."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            await self.flush()
        await self.flush()


BUSY_TARGET = 0.75
"""The share of one core the API process may spend: its Python code runs on one core at a time
(gRPC's own threads add a little), so past this, calls queue. Above it, the heartbeat interval
grows. Measured here: 413-476 us of CPU per heartbeat, so about 1,600 heartbeats/s at 0.75."""
LAG_TARGET = 0.05
"""How late (seconds) the event loop may wake a task: what every call waits on top of its own work."""
GROW_AT_MOST = 4.0  # one step lengthens the interval at most this many times
SHRINK = 0.8  # one step with the load under half its targets shortens it this much


class HeartbeatPacer:
    """The heartbeat interval the coordinator hands out, from ``base`` up to ``longest``.

    :meth:`update` takes the load (the API process's CPU share of one core, its event loop's lag) over
    the last few seconds. Above a target, the interval grows by the load's ratio to it (at most
    ``GROW_AT_MOST`` times a step); under half of both, it shrinks by ``SHRINK``. Either way it
    then holds for one old interval: volunteers take up a new interval at their next heartbeat, so
    the load only shows the change after that. :meth:`timeout` scales the offline timeout with the
    longest interval a volunteer may still be heeding. :meth:`update` runs on the event loop,
    :meth:`timeout` also in the worker threads that hand out assignments: both hold a lock over
    the intervals still heeded."""

    def __init__(self, base: float, *, longest: float, busy_target: float = BUSY_TARGET,
                 lag_target: float = LAG_TARGET, clock: Callable[[], float] = time.monotonic) -> None:
        self.base = float(base)
        self.longest = max(float(longest), self.base)
        self.busy_target = busy_target
        self.lag_target = lag_target
        self._clock = clock
        self.interval = self.base
        self.load = 0.0  # the last load, as a ratio to its target (1.0: at target)
        self._hold_until = -math.inf
        # (when it stopped being handed out, interval): intervals volunteers may still heed
        self._recent: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def seconds(self) -> int:
        """The interval to hand out, in whole seconds (the protocol's unit)."""
        return max(1, round(self.interval))

    def update(self, busy: float, lag: float) -> float:
        """Take the load of the last period (``busy``: CPU seconds per second; ``lag``: seconds)
        and return the interval to hand out from now."""
        now = self._clock()
        self.load = max(busy / self.busy_target, lag / self.lag_target)
        if now < self._hold_until:
            return self.interval
        if self.load > 1.0 and self.interval < self.longest:
            new = min(self.longest, self.interval * min(self.load, GROW_AT_MOST))
        elif self.load < 0.5 and self.interval > self.base:
            new = max(self.base, self.interval * SHRINK)
        else:
            return self.interval
        logger.info("heartbeat interval %.0f s -> %.0f s (load %.2f of its target)", self.interval, new, self.load)
        with self._lock:
            self._recent.append((now, self.interval))
            self._hold_until = now + self.interval
            self.interval = new
        return new

    def timeout(self, base_timeout: float) -> float:
        """The offline timeout: ``base_timeout`` as many times longer as the longest interval a
        volunteer may still heed is longer than ``base`` (one handed out until ``base_timeout``
        of those intervals ago)."""
        now = self._clock()
        ratio = base_timeout / self.base
        with self._lock:
            while self._recent and now - self._recent[0][0] > ratio * self._recent[0][1]:
                self._recent.popleft()
            heeded = max([self.interval, *(interval for _, interval in self._recent)])
        return max(base_timeout, ratio * heeded)


async def run_pacer(pacer: HeartbeatPacer, stop: asyncio.Event, *, period: float = 2.0,
                    tick: float = 0.1, cpu: Callable[[], float] = time.process_time) -> None:
    """Measure the API process's load every ``period`` seconds and hand it to ``pacer``: its CPU
    share of one core (every call is decoded, checked and answered in it; the job services run in
    their own processes), and the median lag of a task on its event loop that sleeps ``tick``
    seconds at a time (the median: a machine busy with other work delays a tick now and then, a
    loop that cannot keep up delays every one)."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started, cpu_started, lags = loop.time(), cpu(), []
        while not stop.is_set() and loop.time() - started < period:
            before = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
            lags.append(max(0.0, loop.time() - before - tick))
        elapsed = loop.time() - started
        if elapsed > 0 and lags and not stop.is_set():
            pacer.update((cpu() - cpu_started) / elapsed, sorted(lags)[len(lags) // 2])


async def run_offline_sweeper(
    store: Any,
    buffer: HeartbeatBuffer,
    stop: asyncio.Event,
    *,
    timeout: float | Callable[[], float],
    on_swept: Callable[[int], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Every few seconds mark volunteers silent for ``timeout`` seconds offline (a callable: read
    each time, as :meth:`HeartbeatPacer.timeout` grows with the interval)."""
    timeout_now = timeout if callable(timeout) else (lambda: float(timeout))
    interval = max(0.2, min(timeout_now() / 4, 5.0))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        silent = timeout_now()
        try:
            await buffer.flush()
            count = await asyncio.to_thread(store.mark_offline, last_seen_before=time.time() - silent)
        except Exception as exc:
            logger.warning("could not mark silent volunteers offline: %s", exc)
            if on_error:
                on_error(exc)
            continue
        if count:
            logger.info("%d volunteer(s) went offline (no heartbeat for %.0f s)", count, silent)
        if on_swept:
            on_swept(count)
