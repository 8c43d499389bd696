"""Conversions between database rows and the shared domain dataclasses.

The store's repositories use these so that nothing outside :mod:`essaim.coordinator.store` sees a
row. JSON columns are read leniently: unknown keys (written by a newer coordinator) are ignored and
missing ones take the dataclass default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from essaim.protocol.types import (
    Hardware,
    Job,
    JobFile,
    JobMetrics,
    JobStatus,
    LedgerEntry,
    Volunteer,
    VolunteerStatus,
)

T = TypeVar("T")


def to_json(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict for a JSON column."""
    return dataclasses.asdict(obj)


def from_json(cls: type[T], data: Mapping[str, Any] | None) -> T:
    """A dataclass from a JSON column, ignoring keys it does not know."""
    if not data:
        return cls()
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def volunteer_values(v: Volunteer) -> dict[str, Any]:
    """Column values of a volunteer (the ledger totals are not columns)."""
    return {
        "id": v.id,
        "name": v.name,
        "team": v.team,
        "public_key": bytes(v.public_key) or None,
        "peer_id": v.peer_id,
        "hardware": to_json(v.hardware),
        "status": VolunteerStatus(v.status).value,
        "state": v.state,
        "reason": v.reason,
        "last_seen": float(v.last_seen),
        "registered_at": float(v.registered_at),
        "client_version": v.client_version,
        "current_job_id": v.current_job_id,
        "samples_per_second": float(v.samples_per_second),
    }


def volunteer_from_row(row: Any, *, samples: int = 0, compute_seconds: float = 0.0) -> Volunteer:
    m = row._mapping
    return Volunteer(
        id=m["id"],
        name=m["name"],
        peer_id=m["peer_id"],
        public_key=bytes(m["public_key"] or b""),
        status=VolunteerStatus(m["status"]),
        state=m["state"],
        reason=m["reason"],
        hardware=from_json(Hardware, m["hardware"]),
        last_seen=m["last_seen"],
        registered_at=m["registered_at"],
        client_version=m["client_version"],
        team=m["team"],
        samples=int(samples),
        compute_seconds=float(compute_seconds),
        samples_per_second=m["samples_per_second"],
        current_job_id=m["current_job_id"],
    )


def job_values(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "status": JobStatus(job.status).value,
        "status_reason": job.status_reason,
        "priority": int(job.priority),
        "recipe_yaml": job.recipe_yaml,
        "files": [to_json(f) for f in job.files],
        "created_at": float(job.created_at),
        "updated_at": float(job.updated_at),
        "metrics": to_json(job.metrics),
        "has_artifact": bool(job.has_artifact),
    }


def job_from_row(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        name=m["name"],
        status=JobStatus(m["status"]),
        recipe_yaml=m["recipe_yaml"],
        owner=m["owner"],
        priority=m["priority"],
        status_reason=m["status_reason"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        metrics=from_json(JobMetrics, m["metrics"]),
        has_artifact=bool(m["has_artifact"]),
        files=[from_json_file(f) for f in (m["files"] or [])],
    )


def from_json_file(data: Mapping[str, Any]) -> JobFile:
    return JobFile(path=data["path"], sha256=data["sha256"], size=int(data["size"]))


def ledger_from_row(row: Any) -> LedgerEntry:
    m = row._mapping
    return LedgerEntry(
        seq=m["seq"],
        job_id=m["job_id"],
        volunteer_id=m["volunteer_id"],
        epoch=m["epoch"],
        samples=m["samples"],
        compute_seconds=m["compute_us"] / 1_000_000,
        created_at=m["created_at_us"] / 1_000_000,
        prev_hash=m["prev_hash"],
        hash=m["hash"],
        note=m["note"],
        claimed_samples=m["claimed_samples"],
        claimed_compute_seconds=None if m["claimed_compute_us"] is None else m["claimed_compute_us"] / 1_000_000,
    )
