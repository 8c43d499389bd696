"""Training traffic: the caps the trainer is told, and the daily total the app keeps.

    caps = NetCaps(upload_kbps=500, download_kbps=2000, daily_mb=1024)
    env.update(caps.to_env(remaining_bytes=account.remaining(caps)))   # the trainer reads NetCaps.from_env()
    account = DailyTraffic(data_dir / "traffic.json")
    trainers = TrainerTraffic()
    trainers.new_trainer()                       # the app started a trainer: its counters begin at 0
    sent, received = trainers.report(sent=..., received=...)      # each report of that trainer
    account.add_totals(sent=sent, received=received)
    account.today_bytes()                        # what the daily limit is checked against

The trainer owns the swarm's connections (through hivemind's libp2p daemon), so it measures them
(:class:`TrafficMeter`) and enforces the rate caps (:class:`NetPacer`: two token buckets, one per
direction; when the traffic ran ahead of a cap the trainer holds its computation until the bucket
refills, which delays its next averaging round, so the average rate stays under the cap); it
reports its cumulative counters in its progress events. The app joins the counters of its
successive trainers into one running count (:class:`TrainerTraffic`), counts the day's traffic
and stops the trainer when the daily limit is reached (policy rule "network"). Between two of the
app's checks the trainer guards the limit itself (:class:`TrafficBudget`: the bytes left today
when it started). Days are local calendar days; the count is kept in a small JSON file so a
restart does not reset it.
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
NETWORK_LIMIT = "network-limit"  # the trainer's stop reason when its TrafficBudget is spent


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


def remaining_from_env(env: Mapping[str, str] | None = None) -> int | None:
    """The bytes of today's limit left when the app started the trainer (None: no daily limit)."""
    env = os.environ if env is None else env
    text = env.get(ENV_REMAINING, "")
    if not text.strip():
        return None
    try:
        return max(int(text), 0)
    except ValueError:
        logger.warning("ignoring %s=%r: not a number of bytes", ENV_REMAINING, text)
        return None


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
        """Feed cumulative counters since the app started (:meth:`TrainerTraffic.report`).

        The first report is counted whole: the traffic before it is this app's too. A counter
        that went down began again at 0, and is counted from there."""
        total = int(sent) + int(received)
        if self._last_total is not None and total >= self._last_total:
            self.add(total - self._last_total)
        else:
            self.add(total)
        self._last_total = total

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


class TrainerTraffic:
    """The traffic of the app's successive trainers as one running count, for :class:`DailyTraffic`.

    Each trainer is a new process whose counters start at 0, so its reports are a fresh baseline
    on top of what the trainers before it moved: the old trainer's last report (5 MB) and the new
    one's first (8 MB, the state it downloaded on joining) make 13 MB, not 8.
    """

    def __init__(self) -> None:
        self._before = (0, 0)  # (sent, received) of the trainers that ended
        self._current = (0, 0)  # the highest counters the running trainer reported

    def new_trainer(self) -> None:
        """A trainer started: what the previous one reported is kept, and counting begins at 0."""
        self._before = (self._before[0] + self._current[0], self._before[1] + self._current[1])
        self._current = (0, 0)

    def report(self, *, sent: int, received: int) -> tuple[int, int]:
        """The running trainer's counters -> (sent, received) of all the trainers so far."""
        self._current = (max(int(sent), self._current[0]), max(int(received), self._current[1]))
        return self._before[0] + self._current[0], self._before[1] + self._current[1]


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
        self._lock = threading.Lock()  # read by the training loop, its reports and the budget's watcher

    def total(self) -> int:
        import psutil

        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            children = []
        with self._lock:
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


class TrafficBudget:
    """The trainer's own guard on the daily limit: spent once its meter reaches the bytes that
    were left today when the app started it (``ESSAIM_NET_REMAINING_BYTES``).

    The app checks the day's total against the limit from the trainer's progress reports, every
    couple of seconds; a burst in between (the state download on joining, an averaging round)
    would run past the limit by what it moves meanwhile. The trainer reads its meter more often
    (``essaim.client.trainer`` stops with reason "network-limit" when it is spent).
    """

    def __init__(self, remaining: int | None, meter: TrafficMeter) -> None:
        self.remaining, self.meter = remaining, meter

    @classmethod
    def from_env(cls, meter: TrafficMeter, env: Mapping[str, str] | None = None) -> TrafficBudget:
        return cls(remaining_from_env(env), meter)

    @property
    def active(self) -> bool:
        return self.remaining is not None

    def spent(self) -> bool:
        return self.remaining is not None and self.meter.total() >= self.remaining
