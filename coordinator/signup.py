"""Guards on volunteer sign-up, the one call strangers may make without a token.

- **Replay.** A volunteer first asks for a challenge (RegistrationChallenge): a nonce this
  coordinator made (:class:`Challenges`: an expiry, random bytes and an HMAC under a secret the
  store keeps, shared by every coordinator process on one database), valid ``CHALLENGE_TTL_S``.
  It signs ``essaim-register|<peer_id>|<name>|<timestamp>|<nonce hex>`` with its identity key
  (:func:`essaim.coordinator.keys.verify_registration` checks the signature and that the timestamp
  is within ``REGISTRATION_MAX_SKEW_SECONDS``). A nonce is accepted once (:meth:`Store.use_once`,
  until it expires): a captured request replayed mints no second token, here or at any other
  coordinator (whose secret made no such nonce), and no registration can be signed ahead of time.
- **Rate.** :class:`RateLimiter`: registrations without a token, per source address (an IPv6
  address counts by its /64, what one home gets) and in all, as token buckets. Behind a reverse
  proxy every caller has the proxy's address: raise the per-source rate there.
- **Claims.** Declared hardware is a claim: :func:`bounded_hardware` keeps it within what one
  machine can hold and its names printable and short; speeds must be finite. Pages show it as
  declared beside the throughput the ledger measured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import replace

from essaim.protocol.errors import Unauthenticated
from essaim.protocol.types import Hardware

MAX_CPU_CORES = 4096
MAX_RAM_BYTES = 64 * 1024**4  # 64 TiB
MAX_GPUS = 64
MAX_VRAM_BYTES = 1024**4  # 1 TiB per GPU
MAX_HARDWARE_TEXT = 64
ACCELERATORS = frozenset({"cpu", "cuda", "mps", "rocm", "xpu"})
MAX_SOURCES = 100_000  # sources tracked at once (the least recently seen are forgotten first)


CHALLENGE_TTL_S = 300.0
CHALLENGE_SECRET_SETTING = "registration_challenge_secret"
_NONCE_RANDOM = 16
_NONCE_MAC = 16


class Challenges:
    """Registration nonces: ``expiry (8 bytes) | random | HMAC-SHA256(secret, both)[:16]``, so a
    coordinator checks its own without keeping them (see the module docstring)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a challenge secret needs at least 16 bytes")
        self._secret = secret

    @classmethod
    def from_store(cls, store: object) -> Challenges:
        """The challenges of the coordinator whose store this is (its secret made once, kept there)."""
        value = store.setting_once(CHALLENGE_SECRET_SETTING, secrets.token_hex(32))  # type: ignore[attr-defined]
        return cls(bytes.fromhex(value))

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:_NONCE_MAC]

    def issue(self, now: float | None = None) -> tuple[bytes, float]:
        """A fresh nonce and when it expires."""
        expires_at = (time.time() if now is None else now) + CHALLENGE_TTL_S
        body = struct.pack(">d", expires_at) + secrets.token_bytes(_NONCE_RANDOM)
        return body + self._mac(body), expires_at

    def check(self, nonce: bytes, now: float | None = None) -> float:
        """When ``nonce`` expires; Unauthenticated unless this coordinator made it and it is fresh."""
        if len(nonce) != 8 + _NONCE_RANDOM + _NONCE_MAC:
            raise Unauthenticated("the registration carries no challenge of this coordinator: ask "
                                  "RegistrationChallenge for one and sign it (an older client?)")
        body, mac = nonce[:-_NONCE_MAC], nonce[-_NONCE_MAC:]
        if not hmac.compare_digest(mac, self._mac(body)):
            raise Unauthenticated("the registration's challenge was not made by this coordinator")
        (expires_at,) = struct.unpack(">d", body[:8])
        if not (time.time() if now is None else now) <= expires_at:
            raise Unauthenticated("the registration's challenge expired: ask for a new one")
        return float(expires_at)


def registration_digest(public_key: bytes, message: bytes) -> str:
    """What identifies one signed registration: the key and the message it signed."""
    h = hashlib.sha256()
    h.update(len(public_key).to_bytes(4, "big"))
    h.update(public_key)
    h.update(message)
    return h.hexdigest()


def source_of(peer: str) -> str:
    """The rate-limited source of a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5",
    "unix:..."): the IPv4 address, the IPv6 /64, or the string itself."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        host = rest.rsplit(":", 1)[0].strip("[]")
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return peer or "unknown"


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class RateLimiter:
    """Token buckets: ``per_source`` and ``total`` calls a minute (burst: one minute's worth).
    0 turns a limit off."""

    def __init__(self, *, per_source: int, total: int, clock: object = time.monotonic) -> None:
        self.per_source = per_source
        self.total = total
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._all = _Bucket(float(total), self._now())

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    @staticmethod
    def _take(bucket: _Bucket, per_minute: int, now: float) -> float:
        """0 when a call may go now (and takes it), else the seconds until it may."""
        bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.at) * per_minute / 60.0)
        bucket.at = now
        if bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) * 60.0 / per_minute

    def check(self, source: str) -> float:
        """Take one call for ``source``: 0 when it may go, else the seconds to wait (nothing taken)."""
        now = self._now()
        with self._lock:
            bucket = None
            if self.per_source:
                bucket = self._sources.pop(source, None) or _Bucket(float(self.per_source), now)
                self._sources[source] = bucket
                while len(self._sources) > MAX_SOURCES:
                    self._sources.popitem(last=False)
                wait = self._take(bucket, self.per_source, now)
                if wait:
                    return wait
            if self.total:
                wait = self._take(self._all, self.total, now)
                if wait:
                    return wait
                self._all.tokens -= 1.0
            if bucket is not None:
                bucket.tokens -= 1.0
            return 0.0


def _text(value: str) -> str:
    value = "".join(c for c in value if c.isprintable())
    return value[:MAX_HARDWARE_TEXT]


def _count(value: int, limit: int) -> int:
    return max(0, min(int(value), limit))


def bounded_hardware(hw: Hardware) -> Hardware:
    """``hw`` as a claim one machine could make: counts and sizes clamped, names printable and
    short, an unknown accelerator read as "cpu"."""
    accelerator = hw.accelerator if hw.accelerator in ACCELERATORS else "cpu"
    gpus = _count(hw.gpu_count, MAX_GPUS) if accelerator != "cpu" else 0
    return replace(
        hw,
        os=_text(hw.os),
        arch=_text(hw.arch),
        cpu_cores=_count(hw.cpu_cores, MAX_CPU_CORES),
        ram_bytes=_count(hw.ram_bytes, MAX_RAM_BYTES),
        accelerator=accelerator,
        gpu_name=_text(hw.gpu_name) if gpus else "",
        gpu_vram_bytes=_count(hw.gpu_vram_bytes, MAX_VRAM_BYTES) if gpus else 0,
        gpu_count=gpus,
    )


def finite_rate(value: float) -> float:
    """A reported speed: finite and non-negative, else 0."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else 0.0
