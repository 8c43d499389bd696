"""How volunteers take part in each job's swarm, in the store: one row per (job, volunteer).

Each job's runner (:mod:`essaim.coordinator.swarm_view`) upserts, every few seconds, what its
averaging peer knows of each volunteer: reachability (public, NAT-ed or unknown), the IP it saw the
volunteer connect from, and whether the job's last averaging round included it. The dashboard
lists the rows by job (an admin's view of a job and of the swarm) or by volunteer (a volunteer's own
page); only admins may see ``observed``, and the dashboard enforces that, not the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from essaim.coordinator.store.base import StoreBase, now
from essaim.coordinator.store.records import SwarmPeer
from essaim.coordinator.store.tables import assignments, swarm_peers
from essaim.protocol.errors import InvalidArgument

_UPDATED = ("reachability", "observed", "last_round_epoch", "averaged_in_last_round", "updated_at")


def _values(peer: SwarmPeer, t: float) -> dict[str, Any]:
    if not peer.job_id or not peer.volunteer_id:
        raise InvalidArgument(f"a swarm peer row needs a job id and a volunteer id (got {peer!r})")
    return {
        "job_id": peer.job_id,
        "volunteer_id": peer.volunteer_id,
        "reachability": peer.reachability or "unknown",
        "observed": peer.observed,
        "last_round_epoch": None if peer.last_round_epoch is None else int(peer.last_round_epoch),
        "averaged_in_last_round": bool(peer.averaged_in_last_round),
        "updated_at": float(peer.updated_at or t),
    }


def _from_row(row: Any) -> SwarmPeer:
    m = row._mapping
    return SwarmPeer(
        job_id=m["job_id"],
        volunteer_id=m["volunteer_id"],
        reachability=m["reachability"],
        observed=m["observed"],
        last_round_epoch=m["last_round_epoch"],
        averaged_in_last_round=bool(m["averaged_in_last_round"]),
        updated_at=m["updated_at"],
    )


class SwarmPeersMixin(StoreBase):
    def record_assignment(self, job_id: str, volunteer_id: str, slots: Iterable[int]) -> None:
        """Remember the shard slots last handed to ``volunteer_id`` for ``job_id``."""
        insert = self._insert(assignments).values(
            job_id=job_id, volunteer_id=volunteer_id, slots=json.dumps(sorted(int(s) for s in slots)),
            assigned_at=now())
        upsert = insert.on_conflict_do_update(index_elements=["job_id", "volunteer_id"],
                                              set_={"slots": insert.excluded.slots,
                                                    "assigned_at": insert.excluded.assigned_at})
        with self._write() as conn:
            conn.execute(upsert)

    def assigned_slots(self, job_id: str, *, volunteer_id: str | None = None) -> dict[str, list[int]]:
        """Volunteer id -> the shard slots last handed to it for ``job_id`` (one volunteer's only,
        given ``volunteer_id``)."""
        query = sa.select(assignments.c.volunteer_id, assignments.c.slots).where(assignments.c.job_id == job_id)
        if volunteer_id is not None:
            query = query.where(assignments.c.volunteer_id == volunteer_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return {vid: [int(s) for s in json.loads(slots)] for vid, slots in rows}

    def upsert_swarm_peers(self, peers: Iterable[SwarmPeer]) -> int:
        """Insert or replace the rows of these (job, volunteer) pairs, all in one transaction;
        ``updated_at`` 0 means now. Returns how many rows were given."""
        t = now()
        rows = [_values(p, t) for p in peers]
        if not rows:
            return 0
        insert = self._insert(swarm_peers)
        upsert = insert.on_conflict_do_update(
            index_elements=["job_id", "volunteer_id"],
            set_={name: insert.excluded[name] for name in _UPDATED},
        )
        with self._write() as conn:
            conn.execute(upsert, rows)
        return len(rows)

    def list_swarm_peers(
        self, *, job_id: str | None = None, volunteer_id: str | None = None, limit: int = 100_000
    ) -> list[SwarmPeer]:
        """The rows of one job, of one volunteer (all its jobs), or of both filters at once,
        ordered by job then volunteer."""
        query = (
            sa.select(swarm_peers)
            .order_by(swarm_peers.c.job_id, swarm_peers.c.volunteer_id)
            .limit(limit)
        )
        if job_id is not None:
            query = query.where(swarm_peers.c.job_id == job_id)
        if volunteer_id is not None:
            query = query.where(swarm_peers.c.volunteer_id == volunteer_id)
        with self._read() as conn:
            return [_from_row(row) for row in conn.execute(query)]
