"""Jobs in the store: submission, status, priority, metrics and progress curves, uploaded blobs.

The coordinator's service creates jobs and moves them through their states (with
``expect=`` so that two admins cannot both act on a stale view); the swarm monitor writes metrics,
each update also appending a point to the job's progress curve; the file service records the
content-addressed blobs it receives.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import sqlalchemy as sa
from essaim.coordinator.store.base import StoreBase, check_sha256, new_id, now
from essaim.coordinator.store.rows import job_from_row, job_values, to_json
from essaim.coordinator.store.tables import blobs, jobs, progress
from essaim.protocol.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from essaim.protocol.types import Job, JobMetrics, JobStatus

MIN_ID_PREFIX = 4
_ID_PREFIX = re.compile(r"[0-9a-z-]+")


def _no_job(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}; list them with `essaim job list`")


class JobsMixin(StoreBase):
    def create_job(self, job: Job) -> Job:
        """Store a new job (a fresh id when ``job.id`` is empty; times default to now)."""
        if not job.name:
            raise InvalidArgument("a job needs a name")
        values = job_values(job)
        values["id"] = job.id or new_id()
        values["created_at"] = job.created_at or now()
        values["updated_at"] = job.updated_at or values["created_at"]
        with self._write() as conn:
            inserted = conn.execute(self._insert(jobs).values(values).on_conflict_do_nothing()).rowcount
            if not inserted:
                raise AlreadyExists(f"a job with id {values['id']!r} already exists; submit it without an id")
            return self._get_job(conn, values["id"])

    def get_job(self, job_id: str) -> Job:
        with self._read() as conn:
            return self._get_job(conn, job_id)

    def find_job(self, ref: str) -> Job:
        """The one job whose id is ``ref`` or starts with it (at least ``MIN_ID_PREFIX`` characters,
        as git takes a commit's): the short ids the demo and the dashboard show. A full id costs
        one read, as :meth:`get_job` does."""
        ref = ref.strip().lower()
        with self._read() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == ref)).first()
            if row is None and len(ref) >= MIN_ID_PREFIX and _ID_PREFIX.fullmatch(ref):
                found = conn.execute(sa.select(jobs).where(jobs.c.id.startswith(ref, autoescape=True))
                                     .order_by(jobs.c.id).limit(6)).all()
                if len(found) > 1:
                    ids = [r.id for r in found]
                    shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
                    raise InvalidArgument(f"job id {ref!r} is the start of {'more than 5' if len(ids) > 5 else len(ids)} "
                                          f"jobs' ids ({shown}); give more of it")
                row = found[0] if found else None
        if row is None:
            raise _no_job(ref)
        return job_from_row(row)

    def _get_job(self, conn: sa.Connection, job_id: str) -> Job:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise _no_job(job_id)
        return job_from_row(row)

    def list_jobs(self, *, statuses: Collection[JobStatus] | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally only those in some statuses."""
        query = sa.select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        if statuses is not None:
            query = query.where(jobs.c.status.in_([JobStatus(s).value for s in statuses]))
        with self._read() as conn:
            return [job_from_row(row) for row in conn.execute(query)]

    def update_job_status(
        self,
        job_id: str,
        status: JobStatus,
        reason: str = "",
        *,
        expect: Collection[JobStatus] | None = None,
    ) -> Job:
        """Move a job to ``status``; with ``expect``, only from one of those statuses (atomically).

        Raises NotFound for an unknown job and FailedPrecondition, naming the current status, when
        the job is not in an expected status.
        """
        status = JobStatus(status)
        query = (
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(status=status.value, status_reason=reason, updated_at=now())
        )
        expected = None if expect is None else [JobStatus(s).value for s in expect]
        if expected is not None:
            query = query.where(jobs.c.status.in_(expected))
        with self._write() as conn:
            if not conn.execute(query).rowcount:
                current = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
                if current is None:
                    raise _no_job(job_id)
                allowed = " or ".join(sorted(expected or [])) or "in no status"
                raise FailedPrecondition(
                    f"job {job_id} is {current}, so it cannot become {status.value} "
                    f"(only a job that is {allowed} can); refresh and try again"
                )
            return self._get_job(conn, job_id)

    def set_job_priority(self, job_id: str, priority: int) -> Job:
        with self._write() as conn:
            if not conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id).values(priority=int(priority), updated_at=now())
            ).rowcount:
                raise _no_job(job_id)
            return self._get_job(conn, job_id)

    def update_job_metrics(
        self, job_id: str, metrics: JobMetrics, *, record_progress: bool = True, at: float | None = None
    ) -> None:
        """Replace a job's current metrics; with ``record_progress``, also add a point (at ``at``,
        default now) to its progress curve."""
        t = now() if at is None else at
        with self._write() as conn:
            if not conn.execute(
                sa.update(jobs).where(jobs.c.id == job_id).values(metrics=to_json(metrics), updated_at=now())
            ).rowcount:
                raise _no_job(job_id)
            if record_progress:
                conn.execute(
                    sa.insert(progress).values(
                        job_id=job_id,
                        at=t,
                        epoch=metrics.epoch,
                        samples=metrics.samples,
                        samples_per_second=metrics.samples_per_second,
                        loss=metrics.loss if metrics.loss is not None else 0.0,  # 0.0: none reported
                        eval_metric=metrics.eval_metric,
                        live_peers=metrics.live_peers,
                    )
                )

    def list_progress(self, job_id: str, *, limit: int = 10000) -> list[tuple[float, JobMetrics]]:
        """A job's progress curve, oldest first: its last ``limit`` points as (time, metrics), where
        metrics hold epoch, samples, samples_per_second, loss, eval_metric and live_peers."""
        query = (
            sa.select(progress)
            .where(progress.c.job_id == job_id)
            .order_by(progress.c.at.desc(), progress.c.id.desc())
            .limit(limit)
        )
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            (
                row.at,
                JobMetrics(
                    epoch=row.epoch,
                    samples=row.samples,
                    samples_per_second=row.samples_per_second,
                    loss=row.loss if row.loss > 0 else None,
                    eval_metric=row.eval_metric,
                    live_peers=row.live_peers,
                ),
            )
            for row in reversed(rows)
        ]

    def set_job_artifact(self, job_id: str, has_artifact: bool = True) -> None:
        with self._write() as conn:
            if not conn.execute(
                sa.update(jobs)
                .where(jobs.c.id == job_id)
                .values(has_artifact=bool(has_artifact), updated_at=now())
            ).rowcount:
                raise _no_job(job_id)

    def add_blob(self, sha256: str, size: int, uploaded_by: str | None = None) -> bool:
        """Record an uploaded file by content hash (and who uploaded it first); False when it was
        already recorded."""
        check_sha256(sha256)
        if size < 0:
            raise InvalidArgument(f"a file size cannot be negative (got {size})")
        with self._write() as conn:
            return bool(
                conn.execute(
                    self._insert(blobs)
                    .values(sha256=sha256, size=int(size), created_at=now(), uploaded_by=uploaded_by)
                    .on_conflict_do_nothing(index_elements=["sha256"])
                ).rowcount
            )

    def uploaded_bytes(self, uploaded_by: str) -> int:
        """The bytes of the files ``uploaded_by`` uploaded first (what counts against its quota)."""
        with self._read() as conn:
            total = conn.execute(sa.select(sa.func.sum(blobs.c.size)).where(blobs.c.uploaded_by == uploaded_by)).scalar()
        return int(total or 0)

    def has_blob(self, sha256: str) -> bool:
        with self._read() as conn:
            return conn.execute(sa.select(blobs.c.sha256).where(blobs.c.sha256 == sha256)).first() is not None
