"""Training traffic: the caps the trainer is told, and the daily total the app keeps.

    caps = NetCaps(upload_kbps=500, download_kbps=2000, daily_mb=1024)
    env.update(caps.to_env(remaining_bytes=account.remaining(caps)))   # the trainer reads NetCaps.from_env()
    account = DailyTraffic(data_dir / "traffic.json")
    account.add_totals(sent=..., received=...)   # cumulative counters from the trainer (or the NIC)
    account.today_bytes()                        # what the daily limit is checked against

The trainer owns the sockets, so it enforces the rate caps (:class:`RateLimiter` is a token bucket
it can wrap its transfers with); the app counts the day's traffic and stops the trainer when the
daily limit is reached (policy rule "network"). Days are local calendar days; the count is kept in
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
        elif self._last_total is not None:
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
