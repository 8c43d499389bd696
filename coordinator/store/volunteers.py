"""Volunteers in the store: registration, heartbeats, presence and bans.

The coordinator's service registers volunteers (:meth:`upsert_volunteer`), buffers their heartbeats
and flushes them here in batches (:meth:`record_heartbeats`, one transaction and one bulk UPDATE per
batch), and a presence loop calls :meth:`mark_offline`. The dashboard lists them with their totals
from the ledger. A ban (:meth:`set_volunteer_status`) survives re-registration and heartbeats.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from essaim.coordinator.store import tables
from essaim.coordinator.store.base import StoreBase, new_id, now
from essaim.coordinator.store.records import HeartbeatRecord
from essaim.coordinator.store.rows import to_json, volunteer_from_row, volunteer_values
from essaim.coordinator.store.tables import ledger, volunteers
from essaim.protocol.errors import AlreadyExists, InvalidArgument, NotFound
from essaim.protocol.types import Hardware, Volunteer, VolunteerStatus

BANNED = VolunteerStatus.BANNED.value
ONLINE = VolunteerStatus.ONLINE.value
OFFLINE = VolunteerStatus.OFFLINE.value
ERASED = VolunteerStatus.ERASED.value

_CHUNK = 900  # ids per IN (...) list, under SQLite's bound-parameter limit
_FEW = 2 * _CHUNK  # pages larger than this get their ledger totals from one grouped scan
_INSERT_CHUNK = 5_000

# status after a sign of life: online, unless banned
_ALIVE_STATUS = sa.case((volunteers.c.status == BANNED, BANNED), else_=ONLINE)


def _heartbeat_update(*, with_hardware: bool) -> sa.Update:
    values: dict[str, Any] = {
        "status": _ALIVE_STATUS,
        "last_seen": sa.bindparam("b_at"),
        "state": sa.bindparam("b_state"),
        # a ban's reason stays (a heartbeat buffered before the ban is written after it)
        "reason": sa.case((volunteers.c.status == BANNED, volunteers.c.reason),
                          else_=sa.bindparam("b_reason", type_=sa.String())),
        "client_version": sa.func.coalesce(
            sa.func.nullif(sa.bindparam("b_client_version", type_=sa.String()), ""),
            volunteers.c.client_version,
        ),
        "current_job_id": sa.bindparam("b_current_job_id"),
        "samples_per_second": sa.bindparam("b_samples_per_second"),
    }
    if with_hardware:
        values["hardware"] = sa.bindparam("b_hardware", type_=volunteers.c.hardware.type)
    # an erased account takes no more heartbeats (one may be in flight while it is erased)
    return (sa.update(volunteers).where(volunteers.c.id == sa.bindparam("b_id"), volunteers.c.status != ERASED)
            .values(values))


_HEARTBEAT = _heartbeat_update(with_hardware=False)
_HEARTBEAT_WITH_HARDWARE = _heartbeat_update(with_hardware=True)


class VolunteersMixin(StoreBase):
    def upsert_volunteer(self, v: Volunteer) -> Volunteer:
        """Register a volunteer, or update the one with the same public key.

        An existing volunteer keeps its id and ``registered_at``; its name, peer id, hardware, team and
        client version are replaced, and it becomes online unless banned. A new one gets ``v.id`` (or
        a fresh id when empty) and ``registered_at``/``last_seen`` = now when they are 0.
        """
        if not v.public_key:
            raise InvalidArgument("a volunteer needs a public key; the app creates one on first run")
        t = now()
        key = bytes(v.public_key)
        with self._write() as conn:
            volunteer_id = self._update_registration(conn, v, t)
            if volunteer_id is None:
                values = volunteer_values(v)
                values.update(
                    id=v.id or new_id(),
                    public_key=key,
                    status=BANNED if v.status == VolunteerStatus.BANNED else ONLINE,
                    registered_at=v.registered_at or t,
                    last_seen=v.last_seen or t,
                )
                inserted = conn.execute(
                    self._insert(volunteers).values(values).on_conflict_do_nothing()
                ).rowcount
                volunteer_id = values["id"] if inserted else self._update_registration(conn, v, t)
                if volunteer_id is None:
                    raise AlreadyExists(f"volunteer id {values['id']} is already taken; register again")
            return self._get(conn, volunteer_id)

    def _update_registration(self, conn: sa.Connection, v: Volunteer, t: float) -> str | None:
        volunteer_id = conn.execute(
            sa.select(volunteers.c.id).where(volunteers.c.public_key == bytes(v.public_key))
        ).scalar()
        if volunteer_id is not None:
            conn.execute(
                sa.update(volunteers)
                .where(volunteers.c.id == volunteer_id)
                .values(
                    name=v.name,
                    peer_id=v.peer_id,
                    hardware=to_json(v.hardware),
                    team=v.team,
                    client_version=v.client_version,
                    status=_ALIVE_STATUS,
                    last_seen=v.last_seen or t,
                )
            )
        return volunteer_id

    def get_volunteer(self, volunteer_id: str) -> Volunteer:
        with self._read() as conn:
            return self._get(conn, volunteer_id)

    def _get(self, conn: sa.Connection, volunteer_id: str) -> Volunteer:
        found = self._with_totals(conn, sa.select(volunteers).where(volunteers.c.id == volunteer_id))
        if not found:
            raise NotFound(f"no volunteer with id {volunteer_id!r}; list them with `essaim coordinator volunteers`")
        return found[0]

    def find_volunteer_by_public_key(self, public_key: bytes) -> Volunteer | None:
        if not public_key:
            return None
        with self._read() as conn:
            found = self._with_totals(
                conn, sa.select(volunteers).where(volunteers.c.public_key == bytes(public_key))
            )
        return found[0] if found else None

    def list_volunteers(
        self, *, status: VolunteerStatus | None = None, limit: int = 1000, offset: int = 0
    ) -> list[Volunteer]:
        """Volunteers in registration order, with their ledger totals (samples, compute seconds)."""
        query = sa.select(volunteers).order_by(volunteers.c.registered_at, volunteers.c.id)
        if status is not None:
            query = query.where(volunteers.c.status == VolunteerStatus(status).value)
        with self._read() as conn:
            return self._with_totals(conn, query.limit(limit).offset(offset))

    def count_volunteers(self, status: VolunteerStatus | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(volunteers)
        if status is not None:
            query = query.where(volunteers.c.status == VolunteerStatus(status).value)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def _with_totals(self, conn: sa.Connection, query: sa.Select[Any]) -> list[Volunteer]:
        rows = conn.execute(query).all()
        ids = [row.id for row in rows]
        sums = sa.select(
            ledger.c.volunteer_id, sa.func.sum(ledger.c.samples), sa.func.sum(ledger.c.compute_us)
        ).group_by(ledger.c.volunteer_id)
        if len(ids) > _FEW:  # a big page: one pass over the whole ledger beats many IN lookups
            queries = [sums]
        else:
            queries = [
                sums.where(ledger.c.volunteer_id.in_(ids[i : i + _CHUNK])) for i in range(0, len(ids), _CHUNK)
            ]
        totals: dict[str, tuple[int, int]] = {}
        for totals_query in queries:
            totals.update(
                (vid, (int(samples), int(compute_us)))
                for vid, samples, compute_us in conn.execute(totals_query)
            )
        out = []
        for row in rows:
            samples, compute_us = totals.get(row.id, (0, 0))
            out.append(volunteer_from_row(row, samples=samples, compute_seconds=compute_us / 1_000_000))
        return out

    def record_heartbeats(self, beats: Sequence[HeartbeatRecord]) -> None:
        """Apply a batch of heartbeats in one transaction (the latest per volunteer wins).

        Each sets ``last_seen``, state, reason, current job and throughput, the hardware when given,
        the pseudonym and team when given (by the latest beat that gave them), and the status to
        online unless banned. Beats of unknown volunteers are ignored.
        """
        latest: dict[str, HeartbeatRecord] = {}
        profiles: dict[str, HeartbeatRecord] = {}
        for beat in beats:
            kept = latest.get(beat.volunteer_id)
            if kept is None or beat.at >= kept.at:
                latest[beat.volunteer_id] = beat
            if beat.name is not None and (beat.volunteer_id not in profiles
                                          or beat.at >= profiles[beat.volunteer_id].at):
                profiles[beat.volunteer_id] = beat
        if not latest:
            return
        plain, with_hardware = [], []
        for beat in latest.values():
            params = {
                "b_id": beat.volunteer_id,
                "b_at": float(beat.at),
                "b_state": beat.state,
                "b_reason": beat.reason,
                "b_client_version": beat.client_version,
                "b_current_job_id": beat.current_job_id,
                "b_samples_per_second": float(beat.samples_per_second),
            }
            if beat.hardware is not None:
                params["b_hardware"] = dataclasses.asdict(beat.hardware)
                with_hardware.append(params)
            else:
                plain.append(params)
        with self._write() as conn:
            if plain:
                conn.execute(_HEARTBEAT, plain)
            if with_hardware:
                conn.execute(_HEARTBEAT_WITH_HARDWARE, with_hardware)
            for beat in profiles.values():  # rare: a volunteer renamed itself
                conn.execute(sa.update(volunteers).where(volunteers.c.id == beat.volunteer_id,
                                                         volunteers.c.status.not_in((ERASED,)))
                             .values(name=beat.name, team=beat.team))

    def erase_volunteer(self, volunteer_id: str) -> Volunteer:
        """Forget what a volunteer told about itself: pseudonym, team, peer id, hardware, state,
        reason, client and how it took part in each swarm. Its id, public key (a ban on it
        survives; the same key registering again is a new consent) and ledger rows remain, so the
        ledger still verifies and its contributions still count, under its id."""
        with self._write() as conn:
            current = self._get(conn, volunteer_id)
            banned = current.status == VolunteerStatus.BANNED
            conn.execute(
                sa.update(volunteers).where(volunteers.c.id == volunteer_id).values(
                    name="", team="", peer_id="", hardware=to_json(Hardware()), state="",
                    reason=current.reason if banned else "", client_version="", current_job_id="",
                    samples_per_second=0.0, status=BANNED if banned else ERASED,
                )
            )
            conn.execute(sa.delete(tables.swarm_peers).where(tables.swarm_peers.c.volunteer_id == volunteer_id))
            return self._get(conn, volunteer_id)

    def mark_offline(self, *, last_seen_before: float) -> int:
        """Mark online volunteers not seen since ``last_seen_before`` offline; returns how many."""
        with self._write() as conn:
            return conn.execute(
                sa.update(volunteers)
                .where(volunteers.c.status == ONLINE, volunteers.c.last_seen < last_seen_before)
                .values(status=OFFLINE)
            ).rowcount

    def set_volunteer_status(self, volunteer_id: str, status: VolunteerStatus, reason: str = "") -> Volunteer:
        """Set a volunteer's status (ban, unban) and the reason shown with it."""
        with self._write() as conn:
            updated = conn.execute(
                sa.update(volunteers)
                .where(volunteers.c.id == volunteer_id)
                .values(status=VolunteerStatus(status).value, reason=reason)
            ).rowcount
            if not updated:
                raise NotFound(f"no volunteer with id {volunteer_id!r}; list them with `essaim coordinator volunteers`")
            return self._get(conn, volunteer_id)

    def bulk_insert_volunteers(self, volunteers: Sequence[Volunteer]) -> None:
        """Insert many new volunteers at once (benchmarks, tests, imports); no upsert semantics."""
        t = now()
        with self._write() as conn:
            for chunk in _chunks(volunteers, _INSERT_CHUNK):
                rows = []
                for v in chunk:
                    values = volunteer_values(v)
                    values["id"] = v.id or new_id()
                    values["registered_at"] = v.registered_at or t
                    rows.append(values)
                conn.execute(sa.insert(tables.volunteers), rows)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
