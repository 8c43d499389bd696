"""bench/yield_latency.py counts the yield time from just before the input event is sent."""

from __future__ import annotations

import threading
import time


def test_latency_includes_the_input_events_delivery(bench):
    """A trainer that burns a core until the input reaches it, 0.3 s after it is sent (a slow
    xdotool or X server): the measured yield time includes those 0.3 s."""
    yield_latency = bench("yield_latency")
    origin = time.monotonic()
    stopped: list[float] = []
    lock = threading.Lock()

    def trainer_cpu() -> float:  # CPU seconds of a trainer using one core until it stops
        with lock:
            now = stopped[0] if stopped else time.monotonic()
        return now - origin

    def send_input() -> None:
        time.sleep(0.3)  # the event's way to the app, which then stops the trainer at once
        with lock:
            stopped.append(time.monotonic())

    latency = yield_latency.trial(trainer_cpu, send_input, watch_s=1.0)
    assert latency is not None
    assert latency >= 0.29
