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

Definition version 2 (rows that carry what was claimed): ``samples`` and ``compute_us`` are what
was granted, and the object has two more keys, ``"claimed_compute_us": <int>`` and
``"claimed_samples": <int>``, what the volunteer's records claimed for the row before caps and
refusals (the row's ``note`` says why they differ). A row whose ``claimed_samples`` is null is
hashed by version 1 (rows written before claims were kept).

What the chain proves: an edited field, a deleted or inserted row, or rows reordered show up as
a wrong ``hash``, a wrong ``prev_hash`` or a ``seq`` gap at the first row affected. Removing rows
from the end leaves a valid shorter chain, and whoever holds the database can rewrite every row
and recompute every later hash: a chain alone proves nothing against its keeper.

Signed head (definition version 1)
----------------------------------
So the coordinator signs the chain's head with its swarm key (the RSA key whose public half every
volunteer's swarm token names): RSASSA-PSS, SHA-256, MGF1-SHA-256, maximal salt, over the bytes of
the JSON object (written as a row's)::

    {"hash": <the head row's hash>, "seq": <its seq>, "signed_at_us": <int>,
     "type": "essaim-ledger-head", "version": 1}

It publishes it (``/api/v1/ledger/head``, the ledger page, each job's provenance.json). Anyone who
saved a signed head checks a later ledger against it (:func:`verify_against_head`, ``essaim
coordinator ledger verify --head FILE``): row ``seq`` must still be there, with that hash, on an
unbroken chain. Rows cut off the end, or a chain rewritten at or before that row, then fail.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
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
    *,
    claimed_samples: int | None = None,
    claimed_compute_seconds: float | None = None,
) -> bytes:
    """The exact bytes a row's hash is taken over (see the module docstring)."""
    doc: dict[str, Any] = {
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
    if claimed_samples is not None:  # definition version 2
        doc["claimed_samples"] = int(claimed_samples)
        doc["claimed_compute_us"] = micros(claimed_compute_seconds or 0.0)
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
    *,
    claimed_samples: int | None = None,
    claimed_compute_seconds: float | None = None,
) -> str:
    """The hex SHA-256 of a row's canonical JSON: the value of its ``hash`` field."""
    data = canonical_json(
        seq, job_id, volunteer_id, epoch, samples, compute_seconds, note, created_at, prev_hash,
        claimed_samples=claimed_samples, claimed_compute_seconds=claimed_compute_seconds,
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
        claimed_samples=entry.claimed_samples,
        claimed_compute_seconds=entry.claimed_compute_seconds,
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


HEAD_TYPE = "essaim-ledger-head"
HEAD_VERSION = 1
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


def head_bytes(seq: int, hash: str, signed_at: float) -> bytes:
    """The exact bytes a head's signature covers (see the module docstring)."""
    doc = {"hash": hash, "seq": int(seq), "signed_at_us": micros(signed_at), "type": HEAD_TYPE,
           "version": HEAD_VERSION}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(slots=True, frozen=True)
class SignedHead:
    """A ledger head signed by the coordinator: ``signature`` and ``public_key`` (DER
    SubjectPublicKeyInfo) in base64. The embedded key says who signed; trust comes from comparing
    it with the coordinator's key as you know it (:func:`head_signature_ok` takes that one)."""

    seq: int
    hash: str
    signed_at: float
    signature: str
    public_key: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": HEAD_TYPE, "version": HEAD_VERSION, "seq": self.seq, "hash": self.hash,
                "signed_at": self.signed_at, "signature": self.signature, "public_key": self.public_key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignedHead:
        """From :meth:`to_dict`'s form (a saved head, or a provenance's ``ledger_head``); ValueError
        when it is not one."""
        try:
            if data.get("type") != HEAD_TYPE or data.get("version") != HEAD_VERSION:
                raise ValueError(f"not a version {HEAD_VERSION} {HEAD_TYPE}")
            head = cls(seq=int(data["seq"]), hash=str(data["hash"]), signed_at=float(data["signed_at"]),
                       signature=str(data["signature"]), public_key=str(data["public_key"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a signed ledger head: {exc!r}") from None
        if head.seq < 0 or (head.seq == 0) != (head.hash == GENESIS_HASH):
            raise ValueError("a signed head's seq and hash do not go together")
        return head


def sign_head(key: rsa.RSAPrivateKey, seq: int, hash: str, signed_at: float) -> SignedHead:
    """The coordinator's signature over the head row ``seq`` (``hash``); an empty ledger's head is
    seq 0 with :data:`GENESIS_HASH`."""
    signed_at = micros(signed_at) / 1_000_000
    signature = key.sign(head_bytes(seq, hash, signed_at), _PSS, hashes.SHA256())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SignedHead(seq=int(seq), hash=hash, signed_at=signed_at, signature=base64.b64encode(signature).decode(),
                      public_key=base64.b64encode(der).decode())


def head_signature_ok(head: SignedHead, public_key_der: bytes) -> bool:
    """Whether ``head`` was signed by the key ``public_key_der`` (the coordinator's, as you know it)."""
    try:
        public = serialization.load_der_public_key(public_key_der)
        if not isinstance(public, rsa.RSAPublicKey):
            return False
        public.verify(base64.b64decode(head.signature, validate=True), head_bytes(head.seq, head.hash, head.signed_at),
                      _PSS, hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def verify_against_head(entries: Iterable[LedgerEntry], head: SignedHead) -> LedgerVerification:
    """Check a whole ledger (rows in ``seq`` order from 1) against a head signed earlier: an unbroken
    chain that still holds row ``head.seq`` with ``head.hash``. Check the head's signature first."""
    at_head: list[LedgerEntry] = []

    def watched() -> Iterator[LedgerEntry]:
        for entry in entries:
            if entry.seq == head.seq:
                at_head.append(entry)
            yield entry

    result = verify_chain(watched())
    if not result.ok:
        return result
    if head.seq == 0:
        return result
    if not at_head:
        return LedgerVerification(
            False, result.checked, result.checked + 1,
            f"rows were cut off: the ledger ends at row {result.checked}, but a head signed earlier covers "
            f"row {head.seq}")
    if at_head[0].hash != head.hash:
        return LedgerVerification(
            False, result.checked, head.seq,
            f"the chain was rewritten: row {head.seq} hashes to {at_head[0].hash[:16]}..., not to "
            f"{head.hash[:16]}... as the head signed earlier says")
    return LedgerVerification(True, result.checked, None,
                              f"{result.message}, holding the row {head.seq} a head signed earlier covers")
