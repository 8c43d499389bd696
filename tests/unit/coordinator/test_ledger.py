"""The ledger's hash chain (pure functions): the published hash definition and chain checks."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from essaim.coordinator.store.ledger import (
    GENESIS_HASH,
    SignedHead,
    canonical_json,
    entry_hash,
    hash_of,
    head_bytes,
    head_signature_ok,
    micros,
    sign_head,
    verify_against_head,
    verify_chain,
)
from essaim.protocol.types import LedgerEntry
from hypothesis import given
from hypothesis import strategies as st


def chain(n: int, *, start_seq: int = 1, prev_hash: str = GENESIS_HASH) -> list[LedgerEntry]:
    entries = []
    for seq in range(start_seq, start_seq + n):
        fields = dict(
            seq=seq,
            job_id="job",
            volunteer_id=f"v{seq % 3}",
            epoch=seq // 2,
            samples=10 * seq,
            compute_seconds=micros(seq / 7) / 1e6,
            note="",
            created_at=micros(1_700_000_000 + seq / 3) / 1e6,
            prev_hash=prev_hash,
        )
        digest = entry_hash(**fields)  # type: ignore[arg-type]
        entries.append(LedgerEntry(hash=digest, **fields))  # type: ignore[arg-type]
        prev_hash = digest
    return entries


def test_hash_definition_is_stable() -> None:
    """The documented canonical form; changing it breaks every published ledger."""
    args = (1, "job", "vol", 2, 30, 1.5, "né", 1_700_000_000.25, GENESIS_HASH)
    assert canonical_json(*args) == (
        '{"compute_us":1500000,"created_at_us":1700000000250000,"epoch":2,"job_id":"job","note":"né",'
        '"prev_hash":"' + "0" * 64 + '","samples":30,"seq":1,"volunteer_id":"vol"}'
    ).encode("utf-8")
    assert entry_hash(*args) == "02a97933e0d49d3212a50a77a0e55797c24f1ede528c2d54b774838618a39ab7"


def test_hash_definition_version_2_covers_what_was_claimed() -> None:
    args = (1, "job", "vol", 2, 30, 1.5, "capped 300 to 30 samples by throughput", 1_700_000_000.25, GENESIS_HASH)
    data = canonical_json(*args, claimed_samples=300, claimed_compute_seconds=2.0)
    assert b'"claimed_compute_us":2000000,"claimed_samples":300,"compute_us":1500000' in data
    v2 = entry_hash(*args, claimed_samples=300, claimed_compute_seconds=2.0)
    assert v2 != entry_hash(*args)  # a row without claims is hashed as version 1
    # a claim edited after the fact breaks the chain
    row = LedgerEntry(seq=1, job_id="job", volunteer_id="vol", epoch=2, samples=30, compute_seconds=1.5,
                      created_at=1_700_000_000.25, prev_hash=GENESIS_HASH, hash=v2, note=args[6],
                      claimed_samples=300, claimed_compute_seconds=2.0)
    assert verify_chain([row]).ok
    assert not verify_chain([dataclasses.replace(row, claimed_samples=30)]).ok


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))  # up to year 2100, in microseconds
def test_microsecond_times_round_trip_exactly(us: int) -> None:
    assert micros(us / 1_000_000) == us


def test_a_good_chain_verifies() -> None:
    assert verify_chain([]).ok
    result = verify_chain(chain(6))
    assert result.ok and result.checked == 6 and result.first_bad_seq is None


def test_an_edited_field_is_found() -> None:
    entries = chain(5)
    entries[2] = dataclasses.replace(entries[2], samples=entries[2].samples + 1)
    result = verify_chain(entries)
    assert (result.ok, result.checked, result.first_bad_seq) == (False, 2, 3)
    assert "altered" in result.message


def test_missing_rows_are_found() -> None:
    entries = chain(6)
    one = verify_chain(entries[:2] + entries[3:])
    assert (one.ok, one.first_bad_seq) == (False, 3) and "row 3 is missing" in one.message
    two = verify_chain(entries[:1] + entries[3:])
    assert two.first_bad_seq == 2 and "rows 2 to 3 are missing" in two.message
    assert verify_chain(entries[1:]).first_bad_seq == 1  # the first row itself


def test_reordered_and_repeated_rows_are_found() -> None:
    entries = chain(4)
    assert verify_chain([entries[0], entries[2], entries[1], entries[3]]).first_bad_seq == 2
    repeated = verify_chain([entries[0], entries[1], entries[1]])
    assert repeated.first_bad_seq == 3 and "appears again" in repeated.message


def test_a_fork_is_found() -> None:
    entries = chain(5)
    # another valid row 3 after row 2, re-hashed: row 4 still points at the original row 3
    forked = dataclasses.replace(entries[2], volunteer_id="intruder")
    forked = dataclasses.replace(forked, hash=hash_of(forked))
    result = verify_chain([*entries[:2], forked, *entries[3:]])
    assert (result.first_bad_seq, result.checked) == (4, 3) and "does not follow" in result.message


def test_a_slice_verifies_from_a_known_row() -> None:
    entries = chain(8)
    tail = entries[5:]
    assert not verify_chain(tail).ok
    assert verify_chain(tail, prev_hash=entries[4].hash, first_seq=6).ok


# ---- the signed head ----

def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _der(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_head_definition_is_stable() -> None:
    assert head_bytes(7, "ab" * 32, 1_700_000_000.5) == (
        '{"hash":"' + "ab" * 32 + '","seq":7,"signed_at_us":1700000000500000,"type":"essaim-ledger-head","version":1}'
    ).encode()


def test_a_signed_head_verifies_with_its_key_only() -> None:
    key, other = _key(), _key()
    entries = chain(4)
    head = sign_head(key, entries[-1].seq, entries[-1].hash, 1_700_000_000.25)
    again = SignedHead.from_dict(json.loads(json.dumps(head.to_dict())))
    assert again == head and head_signature_ok(again, _der(key))
    assert not head_signature_ok(head, _der(other))  # someone else's key
    assert not head_signature_ok(dataclasses.replace(head, seq=3), _der(key))  # a head moved back
    assert not head_signature_ok(dataclasses.replace(head, signature="AAAA"), _der(key))
    for junk in ({}, {"type": "essaim-ledger-head", "version": 1}, {**head.to_dict(), "version": 2},
                 {**head.to_dict(), "seq": 0}):
        with pytest.raises(ValueError):
            SignedHead.from_dict(junk)


def test_a_ledger_is_checked_against_a_head_signed_earlier() -> None:
    key = _key()
    entries = chain(6)
    head = sign_head(key, entries[3].seq, entries[3].hash, 1_700_000_000.0)
    assert verify_against_head(entries, head).ok  # rows appended since are fine
    assert verify_against_head(entries[:4], head).ok
    cut = verify_against_head(entries[:3], head)  # rows cut off the end: a valid but shorter chain
    assert verify_chain(entries[:3]).ok and not cut.ok and "cut off" in cut.message, cut
    # a rewrite from row 3 on, every later hash recomputed: an unbroken chain, but not the one signed
    rewritten = list(entries)
    rewritten[2] = dataclasses.replace(rewritten[2], samples=rewritten[2].samples + 1000)
    rewritten = _rehash(rewritten)
    assert verify_chain(rewritten).ok
    result = verify_against_head(rewritten, head)
    assert not result.ok and "rewritten" in result.message and result.first_bad_seq == 4, result
    empty = sign_head(key, 0, GENESIS_HASH, 1_700_000_000.0)
    assert verify_against_head([], empty).ok and verify_against_head(entries, empty).ok


def _rehash(entries: list[LedgerEntry]) -> list[LedgerEntry]:
    out, prev = [], GENESIS_HASH
    for e in entries:
        e = dataclasses.replace(e, prev_hash=prev)
        e = dataclasses.replace(e, hash=hash_of(e))
        out.append(e)
        prev = e.hash
    return out
