"""Heartbeats are buffered in memory and written to the store in batches.

The Heartbeat RPC returns once its record is in the buffer: at 100,000 volunteers one store
transaction per heartbeat would be the bottleneck. A background task flushes the buffer every
``flush_interval`` seconds (and once more on shutdown) in one transaction per batch, keeping only
the newest record per volunteer. So an acknowledged heartbeat may be lost on kill -9, never
half-written. Another task marks volunteers offline after ``heartbeat_timeout_s`` of silence.

Used by the server (starts both tasks) and the servicer (``add``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
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


async def run_offline_sweeper(
    store: Any,
    buffer: HeartbeatBuffer,
    stop: asyncio.Event,
    *,
    timeout: float,
    on_swept: Callable[[int], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> None:
    """Every few seconds mark volunteers silent for ``timeout`` seconds offline."""
    interval = max(0.2, min(timeout / 4, 5.0))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            await buffer.flush()
            count = await asyncio.to_thread(store.mark_offline, last_seen_before=time.time() - timeout)
        except Exception as exc:
            logger.warning("could not mark silent volunteers offline: %s", exc)
            if on_error:
                on_error(exc)
            continue
        if count:
            logger.info("%d volunteer(s) went offline (no heartbeat for %.0f s)", count, timeout)
        if on_swept:
            on_swept(count)
