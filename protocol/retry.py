"""The one retry helper every essaim network call goes through.

Exponential backoff with full jitter (sleep a random time in ``[0, min(cap, base * 2**n)]``),
a maximum number of attempts and an optional overall deadline; only the given exception types
are retried, anything else propagates at once.

    policy = RetryPolicy(attempts=4, base=0.2, cap=5.0, retry_on=(Unavailable,))
    reply = policy.call(lambda: stub.GetJob(request, timeout=10))
    for delay in policy.delays(): ...   # the sleeps alone, for a loop of one's own (the app's link)

Used by the coordinator client and the volunteer app. If calls fail with
"cannot reach the coordinator" during a coordinator restart, raise ``attempts`` or ``deadline``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from essaim.protocol.errors import Unavailable

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How to retry. ``attempts`` counts the first try; ``deadline`` (seconds) bounds the whole."""

    attempts: int = 3
    base: float = 0.2
    cap: float = 5.0
    deadline: float | None = None
    retry_on: tuple[type[BaseException], ...] = field(default=(Unavailable,))

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The sleeps between attempts: ``attempts - 1`` full-jitter values."""
        rand = rng or random
        for n in range(max(self.attempts - 1, 0)):
            yield rand.uniform(0.0, min(self.cap, self.base * (2**n)))

    def call(self, fn: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
        """Run ``fn`` until it returns, raises a non-retryable error, or attempts/deadline run out."""
        start = time.monotonic()
        delays = self.delays()
        while True:
            try:
                return fn()
            except self.retry_on as exc:
                delay = self._next_delay(delays, start, exc)
                sleep(delay)

    def _next_delay(self, delays: Iterator[float], start: float, exc: BaseException) -> float:
        delay = next(delays, None)
        if delay is None:
            raise exc
        if self.deadline is not None and time.monotonic() - start + delay > self.deadline:
            raise exc
        logger.debug("retrying in %.2fs after %s", delay, exc)
        return delay

