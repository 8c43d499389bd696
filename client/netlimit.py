"""Training traffic: the caps the trainer is told, and the daily total the app keeps.

    caps = NetCaps(upload_kbps=500, download_kbps=2000, daily_mb=1024)
    env.update(caps.to_env(remaining_bytes=account.remaining(caps)))   # the trainer reads NetCaps.from_env()
    account = DailyTraffic(data_dir / "traffic.json")
    account.add_totals(sent=..., received=...)   # cumulative counters from the trainer (or the NIC)
    account.today_bytes()                        # what the daily limit is checked against

The trainer owns the swarm's connections (through hivemind's libp2p daemon), so it measures them
(:class:`TrafficMeter`) and enforces the rate caps (:class:`NetPacer`: two token buckets, one per
direction; when the traffic ran ahead of a cap the trainer holds its computation until the bucket
refills, which delays its next averaging round, so the average rate stays under the cap); it
reports its cumulative counters in its progress events. The app counts the day's traffic and stops
the trainer when the daily limit is reached (policy rule "network"). Days are local calendar days; the count is kept in
a small JSON file so a restart does not reset it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

logger = logging.getLogger(__name__)
KB = 1024
MB = 1024 * 1024
ENV_UPLOAD = "ESSAIM_NET_UPLOAD_KBPS"
ENV_DOWNLOAD = "ESSAIM_NET_DOWNLOAD_KBPS"
ENV_REMAINING = "ESSAIM_NET_REMAINING_BYTES"


@dataclass(frozen=True, slots=True)
class NetCaps:
    """0 means "no cap" everywhere."""

    upload_kbps: int = 0
    download_kbps: int = 0
    daily_mb: int = 0

    def to_env(self, *, remaining_bytes: int | None = None) -> dict[str, str]:
        env = {ENV_UPLOAD: str(self.upload_kbps), ENV_DOWNLOAD: str(self.download_kbps)}
        if remaining_bytes is not None:
            env[ENV_REMAINING] = str(max(remaining_bytes, 0))
        return env

    def to_json(self, *, remaining_bytes: int | None = None) -> dict[str, int | None]:
        return {
            "upload_kbps": self.upload_kbps,
            "download_kbps": self.download_kbps,
            "daily_mb": self.daily_mb,
            "remaining_bytes_today": remaining_bytes,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NetCaps:
        env = os.environ if env is None else env
        return cls(
            upload_kbps=int(env.get(ENV_UPLOAD, 0) or 0), download_kbps=int(env.get(ENV_DOWNLOAD, 0) or 0)
        )


class RateLimiter:
    """A token bucket of ``kbps`` kilobytes per second (0: unlimited); ``wait(n)`` before sending n bytes."""

    def __init__(
        self, kbps: int, *, burst_seconds: float = 1.0, clock=time.monotonic, sleep=time.sleep
    ) -> None:
        self.rate = kbps * KB
        self.capacity = max(self.rate * burst_seconds, 1)
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._at = clock()
        self._lock = threading.Lock()

    def delay_for(self, nbytes: int) -> float:
        """Take ``nbytes`` from the bucket; the seconds to wait before sending them."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= nbytes
            return max(-self._tokens / self.rate, 0.0)

    def wait(self, nbytes: int) -> None:
        delay = self.delay_for(nbytes)
        if delay > 0:
            self._sleep(delay)


class DailyTraffic:
    """Bytes of training traffic per local day, from cumulative counters that may restart at 0."""

    def __init__(self, path: Path, *, today=date.today) -> None:
        self.path = Path(path)
        self._today = today
        self._day, self._bytes = self._load()
        self._last_total: int | None = None
        self._dirty_since: float | None = None

    def _load(self) -> tuple[str, int]:
        try:
            data = json.loads(self.path.read_text())
            return str(data["day"]), int(data["bytes"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the unreadable traffic count %s (%s)", self.path, exc)
        return self._today().isoformat(), 0

    def _roll(self) -> None:
        day = self._today().isoformat()
        if day != self._day:
            self._day, self._bytes = day, 0

    def add(self, nbytes: int) -> None:
        self._roll()
        self._bytes += max(int(nbytes), 0)
        self._dirty_since = self._dirty_since or time.monotonic()

    def add_totals(self, *, sent: int, received: int) -> None:
        """Feed cumulative counters (since the trainer started); a counter that went down has restarted."""
        total = int(sent) + int(received)
        if self._last_total is not None and total >= self._last_total:
            self.add(total - self._last_total)
        else:  # the first report of a trainer, or a new one whose counters began again at 0
            self.add(total)
        self._last_total = total

    def reset_counter(self) -> None:
        """A new trainer: its counters start again from 0."""
        self._last_total = None

    def today_bytes(self) -> int:
        self._roll()
        return self._bytes

    def remaining(self, caps: NetCaps) -> int | None:
        if caps.daily_mb <= 0:
            return None
        return max(caps.daily_mb * MB - self.today_bytes(), 0)

    def save(self, *, every: float = 30.0) -> None:
        """Write the count if it changed more than ``every`` seconds ago (0: now)."""
        if self._dirty_since is None or time.monotonic() - self._dirty_since < every:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"day": self._day, "bytes": self._bytes}))
            os.replace(tmp, self.path)
            self._dirty_since = None
        except OSError as exc:
            logger.warning("cannot save the traffic count to %s: %s", self.path, exc)


class TrafficMeter:
    """Cumulative bytes a process's libp2p daemons (hivemind's ``p2pd`` children) moved on the network.

    The daemon relays every byte between the network and the trainer over a local socket, so the
    kernel's per-process counters (``/proc/PID/io``: rchar, wchar) each count the network traffic
    once: read = received from the network + handed over to send; written = sent + handed over
    after receiving. Their mean is the total on the network (DHT, averaging, state downloads). The
    split by direction is not visible there; all-reduce receives as much as it sends, so each
    direction is counted as half of the total. Where the OS has no such counters (macOS) it
    reports 0. Daemons that exited keep counting with their last values.
    """

    def __init__(self, pid: int | None = None, *, names: tuple[str, ...] = ("p2pd",)) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.names = names
        self._last: dict[int, int] = {}

    def total(self) -> int:
        import psutil

        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                if child.name() not in self.names:
                    continue
                io = child.io_counters()
            except (psutil.Error, AttributeError, NotImplementedError):
                continue
            moved = (getattr(io, "read_chars", 0) + getattr(io, "write_chars", 0)) // 2
            self._last[child.pid] = max(moved, self._last.get(child.pid, 0))
        return sum(self._last.values())

    def totals(self) -> tuple[int, int]:
        """(sent, received) since this meter began."""
        total = self.total()
        return total - total // 2, total // 2


class NetPacer:
    """How long the trainer should hold, now, so its traffic stays under the caps (0: go on).

    Call it between micro-batches: it reads the meter at most every ``interval`` seconds and takes
    the traffic since the last reading from each direction's token bucket.
    """

    def __init__(
        self, caps: NetCaps, meter: TrafficMeter, *, interval: float = 0.5, clock=time.monotonic
    ) -> None:
        self.caps, self.meter = caps, meter
        self.up = RateLimiter(caps.upload_kbps, burst_seconds=5.0, clock=clock)
        self.down = RateLimiter(caps.download_kbps, burst_seconds=5.0, clock=clock)
        self.interval, self._clock = interval, clock
        self._read_at = -float("inf")
        self._sent = self._received = 0

    @property
    def active(self) -> bool:
        return self.caps.upload_kbps > 0 or self.caps.download_kbps > 0

    def __call__(self) -> float:
        if not self.active or self._clock() - self._read_at < self.interval:
            return 0.0
        self._read_at = self._clock()
        sent, received = self.meter.totals()
        delay = max(self.up.delay_for(sent - self._sent), self.down.delay_for(received - self._received))
        self._sent, self._received = sent, received
        return delay
