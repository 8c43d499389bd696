"""Sign-up guards: rate buckets, sources, declared hardware bounds, registration digests."""

from __future__ import annotations

import math

import pytest
from essaim.coordinator.signup import (
    MAX_GPUS,
    RateLimiter,
    bounded_hardware,
    finite_rate,
    registration_digest,
    source_of,
)
from essaim.protocol.types import Hardware


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_each_source_gets_its_rate_and_a_refusal_says_when_to_come_back() -> None:
    clock = Clock()
    limiter = RateLimiter(per_source=3, total=0, clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.check("a")
    assert math.isclose(wait, 20.0), wait  # one token every 60/3 s
    assert limiter.check("b") == 0.0  # another address is not held back
    clock.t += 20.0
    assert limiter.check("a") == 0.0 and limiter.check("a") > 0


def test_the_total_rate_holds_across_sources_and_a_refused_call_takes_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(per_source=2, total=3, clock=clock)
    assert [limiter.check(s) for s in ("a", "b", "c")] == [0.0, 0.0, 0.0]
    assert limiter.check("d") > 0  # the whole coordinator's rate is spent
    clock.t += 20.0  # one token back in all
    assert limiter.check("d") == 0.0
    # "a" was refused nothing by the total: it still has its second token
    clock.t += 20.0
    assert limiter.check("a") == 0.0


def test_no_limit_when_zero() -> None:
    limiter = RateLimiter(per_source=0, total=0)
    assert all(limiter.check("a") == 0.0 for _ in range(10_000))


def test_sources_are_addresses_and_ipv6_homes_count_by_their_64() -> None:
    assert source_of("ipv4:203.0.113.7:50123") == "203.0.113.7"
    assert source_of("ipv6:[2001:db8:1:2:aaaa::1]:443") == source_of("ipv6:[2001:db8:1:2:bbbb::9]:80")
    assert source_of("ipv6:[2001:db8:1:2::1]:443") != source_of("ipv6:[2001:db8:1:3::1]:443")
    assert source_of("unix:/tmp/s") == "unix:/tmp/s" and source_of("") == "unknown"


def test_declared_hardware_is_bounded_to_one_machine() -> None:
    hw = bounded_hardware(Hardware(cpu_cores=-4, ram_bytes=2**70, accelerator="quantum", gpu_name="Q",
                                   gpu_count=8, gpu_vram_bytes=2**50))
    assert (hw.cpu_cores, hw.accelerator, hw.gpu_count, hw.gpu_name, hw.gpu_vram_bytes) == (0, "cpu", 0, "", 0)
    gpu = bounded_hardware(Hardware(accelerator="cuda", gpu_count=10**9, gpu_name="A\nB\x00" + "c" * 99))
    assert gpu.gpu_count == MAX_GPUS and gpu.gpu_name == "AB" + "c" * 62
    honest = Hardware(os="Linux", arch="x86_64", cpu_cores=16, ram_bytes=64 * 2**30, accelerator="cuda",
                      gpu_name="RTX 4090", gpu_vram_bytes=24 * 2**30, gpu_count=1)
    assert bounded_hardware(honest) == honest


def test_speeds_are_finite() -> None:
    assert [finite_rate(x) for x in (float("inf"), float("nan"), -3.0, 12.5)] == [0.0, 0.0, 0.0, 12.5]


def test_a_registration_digest_binds_the_key_and_the_message() -> None:
    assert registration_digest(b"k1", b"m") != registration_digest(b"k2", b"m")
    assert registration_digest(b"k", b"1m") != registration_digest(b"k1", b"m")
    assert len(registration_digest(b"k", b"m")) == 64


def test_challenges_are_this_coordinators_fresh_and_unforgeable() -> None:
    from essaim.coordinator.signup import CHALLENGE_TTL_S, Challenges
    from essaim.protocol.errors import Unauthenticated

    mine, other = Challenges(b"s" * 32), Challenges(b"t" * 32)
    nonce, expires_at = mine.issue(now=1000.0)
    assert expires_at == 1000.0 + CHALLENGE_TTL_S and mine.check(nonce, now=1001.0) == expires_at
    assert mine.issue(now=1000.0)[0] != nonce  # random: two challenges never repeat
    with pytest.raises(Unauthenticated, match="expired"):
        mine.check(nonce, now=expires_at + 1)
    with pytest.raises(Unauthenticated, match="not made by this coordinator"):
        other.check(nonce, now=1001.0)
    forged = bytearray(nonce)
    forged[0] ^= 1  # a later expiry written in by hand
    with pytest.raises(Unauthenticated, match="not made by this coordinator"):
        mine.check(bytes(forged), now=1001.0)
    with pytest.raises(Unauthenticated, match="no challenge"):
        mine.check(b"", now=1001.0)
