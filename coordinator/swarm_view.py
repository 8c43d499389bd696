"""How each volunteer takes part in a job's swarm, from what the job's averaging peer knows, into the store.

    publish_swarm_view(store, job_id, rounds=runner.rounds,
                       checks=read_checks(job_dir / REACHABILITY_FILE), owner=runner._owner)

Two files of the job's directory say it: ``reachability.json`` (the reachability checks the job's
peer answered, by libp2p peer id: :func:`essaim.swarm.reachability.read_checks`) and
``rounds.jsonl`` (the averaging rounds, by volunteer: :class:`essaim.coordinator.rounds.RoundBook`).
This module joins them into one :class:`~essaim.coordinator.store.SwarmPeer` row per volunteer seen
in either, which the dashboard shows: public (a full peer), NAT-ed (it averages through the
coordinator's averaging peer) or unknown, and "averaged in epoch N" or "not in the last round".

Called by the job runner (:mod:`essaim.coordinator.jobrunner`) at most every
:data:`PUBLISH_EVERY_S`; a store error there is logged, never fatal to the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from essaim.coordinator.rounds import RoundBook
from essaim.coordinator.store import Store, SwarmPeer
from essaim.swarm.reachability import MAPPED, Reachability

logger = logging.getLogger(__name__)

PUBLISH_EVERY_S = 5.0
"""How often the job runner writes the view. The dashboard's reachability and last-round columns
lag the swarm by about this much; lower it if admins see them trail a round behind."""

UNKNOWN = Reachability(None).label
LABELS = frozenset({*(Reachability(reachable).label for reachable in (True, False, None)), Reachability(True, via=MAPPED).label})

Owner = Callable[[str], tuple[str, bool] | None]
"""A libp2p peer id -> (volunteer id, banned), or None for a peer no volunteer registered."""


def _newest_checks(checks: Mapping[str, Any], owner: Owner) -> dict[str, dict[str, Any]]:
    """volunteer id -> its newest check, over every peer id it used (a volunteer gets a new peer id
    when it re-installs, and may run several machines under one key's volunteer)."""
    newest: dict[str, dict[str, Any]] = {}
    for peer_id, check in checks.items():
        if not isinstance(check, Mapping):
            continue
        found = owner(peer_id)
        if found is None:
            continue
        volunteer_id, _banned = found
        at = _number(check.get("at"))
        if volunteer_id not in newest or at >= _number(newest[volunteer_id].get("at")):
            newest[volunteer_id] = dict(check)
    return newest


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def swarm_view(
    job_id: str, *, rounds: RoundBook, checks: Mapping[str, Any], owner: Owner, at: float | None = None
) -> list[SwarmPeer]:
    """The rows :func:`publish_swarm_view` writes, one per volunteer, sorted by volunteer id."""
    t = time.time() if at is None else at
    last = rounds.last
    averaged = set(last.volunteers) if last is not None and not last.error else set()
    newest = _newest_checks(checks, owner)
    seen = set(newest) | {v for entry in rounds.entries for v in entry.volunteers}
    rows = []
    for volunteer_id in sorted(seen):
        check = newest.get(volunteer_id, {})
        label = str(check.get("reachability", UNKNOWN))
        rows.append(
            SwarmPeer(
                job_id=job_id,
                volunteer_id=volunteer_id,
                reachability=label if label in LABELS else UNKNOWN,
                observed=str(check.get("observed") or ""),
                last_round_epoch=None if last is None else last.epoch,
                averaged_in_last_round=volunteer_id in averaged,
                updated_at=t,
            )
        )
    return rows


def publish_swarm_view(
    store: Store, job_id: str, *, rounds: RoundBook, checks: Mapping[str, Any], owner: Owner
) -> int:
    """Upsert the job's :func:`swarm_view` into the store; returns how many volunteers it holds.
    Store errors (:class:`essaim.protocol.errors.EssaimError`) are the caller's to log."""
    rows = swarm_view(job_id, rounds=rounds, checks=checks, owner=owner)
    store.upsert_swarm_peers(rows)
    logger.debug("job %s: swarm view of %d volunteer(s) stored", job_id, len(rows))
    return len(rows)
