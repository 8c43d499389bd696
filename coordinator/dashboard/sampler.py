"""The swarm's size over time: a background sampler behind the "volunteers online" chart.

The store only knows who is online *now*, so every ``interval`` seconds a thread counts the online
volunteers and sums the running jobs' throughput into a ring buffer (``max_points`` samples, a day
at the default 10 s). The buffer is saved in the store's settings every few minutes and on stop, so
a restarted coordinator keeps its chart. The environment variable ``ESSAIM_DASHBOARD_SAMPLE_S``
changes the interval (tests use a short one); a chart that looks too coarse: lower it.

Started and stopped with the HTTP app's lifespan by :func:`essaim.coordinator.dashboard.register_dashboard`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from typing import Any

from essaim.protocol.errors import EssaimError
from essaim.protocol.types import JobStatus, VolunteerStatus

log = logging.getLogger(__name__)

SETTING_KEY = "dashboard.online_series"
INTERVAL_ENV = "ESSAIM_DASHBOARD_SAMPLE_S"
DEFAULT_INTERVAL = 10.0
SAVE_EVERY_SECONDS = 300.0


def interval_from_env() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", INTERVAL_ENV, raw, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL
    return min(max(value, 0.2), 3600.0)


class SwarmSampler:
    """Samples (time, volunteers online, samples/s of running jobs) until stopped."""

    def __init__(self, store: Any, *, interval: float | None = None, max_points: int = 8640) -> None:
        self.store = store
        self.interval = interval if interval is not None else interval_from_env()
        self._points: deque[tuple[float, int, float]] = deque(maxlen=max_points)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_at = 0.0

    def start(self) -> None:
        """Load the saved series, take a first sample and start the thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="essaim-dashboard-sampler", daemon=True)
        self._load()
        self.sample()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            self._save()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
            if time.time() - self._saved_at >= SAVE_EVERY_SECONDS:
                self._save()

    def sample(self) -> None:
        try:
            online = int(self.store.count_volunteers(VolunteerStatus.ONLINE))
            running = self.store.list_jobs(statuses=[JobStatus.RUNNING], limit=1000)
        except EssaimError as exc:
            log.warning("could not sample the swarm for the dashboard: %s", exc)
            return
        throughput = sum(max(0.0, j.metrics.samples_per_second) for j in running)
        with self._lock:
            self._points.append((time.time(), online, throughput))

    def points(self, *, since: float = 0.0) -> list[tuple[float, int, float]]:
        with self._lock:
            return [p for p in self._points if p[0] >= since]

    def _load(self) -> None:
        try:
            raw = self.store.get_setting(SETTING_KEY)
        except EssaimError as exc:
            log.warning("could not load the saved swarm series: %s", exc)
            return
        if not raw:
            return
        try:
            rows = [(float(t), int(n), float(s)) for t, n, s in json.loads(raw)]
        except (ValueError, TypeError):
            log.warning("the saved swarm series is not readable; starting a new one")
            return
        with self._lock:
            self._points.extend(sorted(rows))

    def _save(self) -> None:
        with self._lock:
            rows = [[round(t, 1), n, round(s, 3)] for t, n, s in self._points]
        try:
            self.store.set_setting(SETTING_KEY, json.dumps(rows, separators=(",", ":")))
        except EssaimError as exc:
            log.warning("could not save the swarm series: %s", exc)
            return
        self._saved_at = time.time()
