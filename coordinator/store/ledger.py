"""The contributions ledger's hash chain: how a row is hashed and how a chain is checked.

The coordinator's store appends ledger rows (:meth:`Store.append_ledger`) and anyone who downloads
the ledger can re-verify it with :func:`verify_chain`; this module is pure (no database) so that a
script outside the coordinator can import it, or re-implement it from this definition.

Hash of a row (definition version 1)
------------------------------------
Each row ``n`` (``seq`` = 1, 2, 3, ... with no gaps) carries ``prev_hash`` = the ``hash`` of row
``n - 1`` (64 zeros, :data:`GENESIS_HASH`, for row 1) and ``hash`` = the lowercase hex SHA-256 of the
UTF-8 bytes of this JSON object, written with keys sorted, no whitespace (separators ``,`` and
``:``) and non-ASCII characters kept as they are (not ``\\u`` escaped)::

    {"compute_us": <int>, "created_at_us": <int>, "epoch": <int>, "job_id": <str>, "note": <str>,
     "prev_hash": <str>, "samples": <int>, "seq": <int>, "volunteer_id": <str>}

where ``compute_us`` is the compute time and ``created_at_us`` the unix time of the row, both in
whole microseconds (``round(seconds * 1_000_000)``). Integers keep the hash exact across
databases and languages; the store keeps these two fields as integers and hands them out as
float seconds, which round back to the same integers.

What the chain proves: an edited field, a deleted or inserted row, or rows reordered show up as
a wrong ``hash``, a wrong ``prev_hash`` or a ``seq`` gap at the first row affected. Removing rows
from the end leaves a valid shorter chain; compare the head (``seq``, ``hash``) with one published
earlier to rule that out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from essaim.protocol.types import LedgerEntry

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first row."""


def micros(seconds: float) -> int:
    """Seconds as whole microseconds, the form in which times are hashed and stored."""
    return round(seconds * 1_000_000)


def canonical_json(
    seq: int,
    job_id: str,
    volunteer_id: str,
    epoch: int,
    samples: int,
    compute_seconds: float,
    note: str,
    created_at: float,
    prev_hash: str,
) -> bytes:
    """The exact bytes a row's hash is taken over (see the module docstring)."""
    doc = {
        "compute_us": micros(compute_seconds),
        "created_at_us": micros(created_at),
        "epoch": int(epoch),
        "job_id": job_id,
        "note": note,
        "prev_hash": prev_hash,
        "samples": int(samples),
        "seq": int(seq),
        "volunteer_id": volunteer_id,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(
    seq: int,
    job_id: str,
    volunteer_id: str,
    epoch: int,
    samples: int,
    compute_seconds: float,
    note: str,
    created_at: float,
    prev_hash: str,
) -> str:
    """The hex SHA-256 of a row's canonical JSON: the value of its ``hash`` field."""
    data = canonical_json(
        seq, job_id, volunteer_id, epoch, samples, compute_seconds, note, created_at, prev_hash
    )
    return hashlib.sha256(data).hexdigest()


def hash_of(entry: LedgerEntry) -> str:
    """What ``entry.hash`` should be, given its other fields."""
    return entry_hash(
        entry.seq,
        entry.job_id,
        entry.volunteer_id,
        entry.epoch,
        entry.samples,
        entry.compute_seconds,
        entry.note,
        entry.created_at,
        entry.prev_hash,
    )


@dataclass(slots=True, frozen=True)
class LedgerVerification:
    """The result of checking a chain. ``checked`` counts the rows found good before
    ``first_bad_seq`` (all of them when ``ok``)."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    message: str = ""


def verify_chain(
    entries: Iterable[LedgerEntry], *, prev_hash: str = GENESIS_HASH, first_seq: int = 1
) -> LedgerVerification:
    """Check rows given in ``seq`` order; stops at the first bad one.

    A whole ledger starts at ``seq`` 1 after :data:`GENESIS_HASH`. To check a slice, pass the
    ``hash`` of the row just before it as ``prev_hash`` and that row's ``seq + 1`` as ``first_seq``.
    """
    expected_seq, expected_prev, checked = first_seq, prev_hash, 0
    for entry in entries:
        if entry.seq != expected_seq:
            if entry.seq > expected_seq:
                missing = (
                    f"row {expected_seq} is missing"
                    if entry.seq == expected_seq + 1
                    else f"rows {expected_seq} to {entry.seq - 1} are missing"
                )
                message = f"{missing} (row {entry.seq} follows row {expected_seq - 1})"
            else:
                message = f"row {entry.seq} appears again or out of order after row {expected_seq - 1}"
            return LedgerVerification(False, checked, expected_seq, message)
        if entry.prev_hash != expected_prev:
            return LedgerVerification(
                False,
                checked,
                entry.seq,
                f"row {entry.seq} does not follow row {entry.seq - 1}: its prev_hash "
                f"{entry.prev_hash[:16]}... is not that row's hash {expected_prev[:16]}... "
                "(a row before it was replaced, or the chain forked)",
            )
        actual = hash_of(entry)
        if entry.hash != actual:
            return LedgerVerification(
                False,
                checked,
                entry.seq,
                f"row {entry.seq} was altered: its fields hash to {actual[:16]}..., "
                f"not to its recorded hash {entry.hash[:16]}...",
            )
        checked += 1
        expected_seq, expected_prev = entry.seq + 1, entry.hash
    return LedgerVerification(True, checked, None, f"{checked} row(s) form one unbroken chain")
