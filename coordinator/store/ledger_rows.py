"""The contributions ledger in the store: appending chained rows, reading, verifying, summing.

The coordinator's accounting appends one row per volunteer and epoch it accepted
(:meth:`append_ledger`); the dashboard and the public ledger download read it; anyone can check it
with :meth:`verify_ledger` (or :func:`essaim.coordinator.store.ledger.verify_chain` on a download).
Appends are serialized so the chain never forks: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped
advisory lock on PostgreSQL (which also holds across coordinator processes).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from essaim.coordinator.store.base import StoreBase, now
from essaim.coordinator.store.engine import LEDGER_LOCK_KEY
from essaim.coordinator.store.ledger import (
    GENESIS_HASH,
    LedgerVerification,
    SignedHead,
    entry_hash,
    micros,
    verify_against_head,
    verify_chain,
)
from essaim.coordinator.store.records import Contribution, LedgerDraft
from essaim.coordinator.store.rows import ledger_from_row
from essaim.coordinator.store.tables import ledger, volunteers
from essaim.protocol.errors import InvalidArgument
from essaim.protocol.types import LedgerEntry

_VERIFY_PAGE = 5_000


def _check(draft: LedgerDraft) -> None:
    problems = []
    if not draft.job_id:
        problems.append("job_id is empty")
    if not draft.volunteer_id:
        problems.append("volunteer_id is empty")
    if draft.epoch < 0:
        problems.append(f"epoch {draft.epoch} is negative")
    if draft.samples < 0:
        problems.append(f"samples {draft.samples} is negative")
    if not math.isfinite(draft.compute_seconds) or draft.compute_seconds < 0:
        problems.append(f"compute_seconds {draft.compute_seconds} is not a finite number >= 0")
    if draft.created_at is not None and not math.isfinite(draft.created_at):
        problems.append(f"created_at {draft.created_at} is not a finite time")
    if draft.claimed_samples is not None and draft.claimed_samples < 0:
        problems.append(f"claimed_samples {draft.claimed_samples} is negative")
    claimed_compute = draft.claimed_compute_seconds
    if claimed_compute is not None and (not math.isfinite(claimed_compute) or claimed_compute < 0):
        problems.append(f"claimed_compute_seconds {claimed_compute} is not a finite number >= 0")
    if problems:
        raise InvalidArgument(
            f"ledger row for {draft.volunteer_id or '?'} is not valid: " + "; ".join(problems)
        )


class LedgerMixin(StoreBase):
    def append_ledger(self, drafts: Sequence[LedgerDraft]) -> list[LedgerEntry]:
        """Number, chain and store rows, all or none; returns them as stored."""
        for draft in drafts:
            _check(draft)
        if not drafts:
            return []
        t = now()
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(LEDGER_LOCK_KEY)))
            head = conn.execute(
                sa.select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
            ).first()
            seq, prev_hash = (head.seq, head.hash) if head is not None else (0, GENESIS_HASH)
            entries: list[LedgerEntry] = []
            for draft in drafts:
                seq += 1
                # hash what will be read back: whole microseconds, as the table keeps them
                created_at = micros(t if draft.created_at is None else draft.created_at) / 1_000_000
                compute_seconds = micros(draft.compute_seconds) / 1_000_000
                claimed_compute = (None if draft.claimed_samples is None
                                   else micros(draft.claimed_compute_seconds or 0.0) / 1_000_000)
                claimed = None if draft.claimed_samples is None else int(draft.claimed_samples)
                digest = entry_hash(
                    seq,
                    draft.job_id,
                    draft.volunteer_id,
                    int(draft.epoch),
                    int(draft.samples),
                    compute_seconds,
                    draft.note,
                    created_at,
                    prev_hash,
                    claimed_samples=claimed,
                    claimed_compute_seconds=claimed_compute,
                )
                entries.append(
                    LedgerEntry(
                        seq=seq,
                        job_id=draft.job_id,
                        volunteer_id=draft.volunteer_id,
                        epoch=int(draft.epoch),
                        samples=int(draft.samples),
                        compute_seconds=compute_seconds,
                        created_at=created_at,
                        prev_hash=prev_hash,
                        hash=digest,
                        note=draft.note,
                        claimed_samples=claimed,
                        claimed_compute_seconds=claimed_compute,
                    )
                )
                prev_hash = digest
            conn.execute(
                sa.insert(ledger),
                [
                    {
                        "seq": e.seq,
                        "job_id": e.job_id,
                        "volunteer_id": e.volunteer_id,
                        "epoch": e.epoch,
                        "samples": e.samples,
                        "compute_us": micros(e.compute_seconds),
                        "note": e.note,
                        "created_at_us": micros(e.created_at),
                        "prev_hash": e.prev_hash,
                        "hash": e.hash,
                        "claimed_samples": e.claimed_samples,
                        "claimed_compute_us": (None if e.claimed_compute_seconds is None
                                               else micros(e.claimed_compute_seconds)),
                    }
                    for e in entries
                ],
            )
        return entries

    def list_ledger(
        self, *, job_id: str | None = None, volunteer_id: str | None = None, after_seq: int = 0,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        """Rows with ``seq > after_seq`` in order, optionally only one job's or one volunteer's."""
        query = sa.select(ledger).where(ledger.c.seq > after_seq).order_by(ledger.c.seq)
        if job_id is not None:
            query = query.where(ledger.c.job_id == job_id)
        if volunteer_id is not None:
            query = query.where(ledger.c.volunteer_id == volunteer_id)
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [ledger_from_row(row) for row in conn.execute(query)]

    def ledger_head(self) -> LedgerEntry | None:
        """The last row, or None for an empty ledger."""
        with self._read() as conn:
            row = conn.execute(sa.select(ledger).order_by(ledger.c.seq.desc()).limit(1)).first()
        return None if row is None else ledger_from_row(row)

    def verify_ledger(self, head: SignedHead | None = None) -> LedgerVerification:
        """Re-hash the whole ledger from row 1 and check every link (see :mod:`.ledger`); with a
        ``head`` signed earlier (its signature checked by the caller), also that its row is still
        there, unchanged."""
        if head is not None:
            return verify_against_head(self._iter_ledger(), head)
        return verify_chain(self._iter_ledger())

    def _iter_ledger(self) -> Iterator[LedgerEntry]:
        after = 0
        while True:
            page = self.list_ledger(after_seq=after, limit=_VERIFY_PAGE)
            yield from page
            if len(page) < _VERIFY_PAGE:
                return
            after = page[-1].seq

    def contributions(self, *, job_id: str | None = None) -> list[Contribution]:
        """Per-volunteer totals from the ledger (one job's rows, or all), most samples first."""
        per_epoch = sa.select(
            ledger.c.volunteer_id,
            sa.func.sum(ledger.c.samples).label("samples"),
            sa.func.sum(ledger.c.compute_us).label("compute_us"),
        ).group_by(ledger.c.volunteer_id, ledger.c.job_id, ledger.c.epoch)
        if job_id is not None:
            per_epoch = per_epoch.where(ledger.c.job_id == job_id)
        epochs = per_epoch.subquery()
        totals = (
            sa.select(
                epochs.c.volunteer_id,
                sa.func.sum(epochs.c.samples).label("samples"),
                sa.func.sum(epochs.c.compute_us).label("compute_us"),
                sa.func.count().label("epochs"),
            )
            .group_by(epochs.c.volunteer_id)
            .subquery()
        )
        query = (
            sa.select(totals, volunteers.c.name)
            .select_from(totals.outerjoin(volunteers, volunteers.c.id == totals.c.volunteer_id))
            .order_by(totals.c.samples.desc(), totals.c.volunteer_id)
        )
        with self._read() as conn:
            return [
                Contribution(
                    volunteer_id=row.volunteer_id,
                    volunteer_name=row.name or "",
                    samples=int(row.samples),
                    compute_seconds=int(row.compute_us) / 1_000_000,
                    epochs=int(row.epochs),
                )
                for row in conn.execute(query)
            ]
