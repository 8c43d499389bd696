"""Admin actions from the dashboard, done through the coordinator's service.

The JSON API's POST routes and the pages' forms both call :class:`AdminActions`, which calls the
same service methods the gRPC API does (approve, reject, cancel, priority, ban), so one set of
rules applies whichever door an admin uses. Pause and resume use the service's ``pause_job`` /
``resume_job`` when it has them, else move the job in the store (only from the states that allow
it) and ask the service to reload its live jobs.
"""

from __future__ import annotations

import logging
from typing import Any

from essaim.coordinator.auth import Principal
from essaim.protocol.errors import InvalidArgument
from essaim.protocol.types import Job, JobStatus, Role, Volunteer

log = logging.getLogger(__name__)

JOB_ACTIONS = ("approve", "reject", "pause", "resume", "cancel")
PAUSABLE = (JobStatus.QUEUED, JobStatus.RUNNING)
MAX_REASON = 500


def _reason(reason: str, default: str) -> str:
    reason = " ".join(reason.split())[:MAX_REASON]
    return reason or default


class AdminActions:
    """What an admin may change; every method raises essaim errors the caller turns into answers."""

    def __init__(self, service: Any) -> None:
        self.service = service

    @staticmethod
    def principal(subject: str) -> Principal:
        return Principal(role=Role.ADMIN, subject=subject or "admin", label="dashboard")

    def job_action(self, job_id: str, action: str, *, reason: str = "", admin: str) -> Job:
        if action not in JOB_ACTIONS:
            raise InvalidArgument(f"unknown job action {action!r}; expected one of {', '.join(JOB_ACTIONS)}")
        by = f"by {admin or 'admin'} on the dashboard"
        if action == "approve":
            job = self.service.approve_job(job_id, reason=_reason(reason, f"approved {by}"))
        elif action == "reject":
            job = self.service.approve_job(job_id, reject=True, reason=_reason(reason, f"rejected {by}"))
        elif action == "cancel":
            job = self.service.cancel_job(job_id, _reason(reason, f"cancelled {by}"), self.principal(admin))
        elif action == "pause":
            job = self._pause(job_id, _reason(reason, f"paused {by}"))
        else:
            job = self._resume(job_id, _reason(reason, f"resumed {by}"))
        log.info("%s on the dashboard: %s job %s", admin, action, job_id)
        return job

    def _pause(self, job_id: str, reason: str) -> Job:
        if hasattr(self.service, "pause_job"):
            return self.service.pause_job(job_id, reason)
        job = self.service.store.update_job_status(job_id, JobStatus.PAUSED, reason, expect=PAUSABLE)
        self._after_status_change(job_id)
        return job

    def _resume(self, job_id: str, reason: str) -> Job:
        if hasattr(self.service, "resume_job"):
            return self.service.resume_job(job_id, reason)
        job = self.service.store.update_job_status(job_id, JobStatus.QUEUED, reason, expect=[JobStatus.PAUSED])
        self._after_status_change(job_id)
        return job

    def _after_status_change(self, job_id: str) -> None:
        refresh = getattr(self.service, "refresh_jobs", None)
        if refresh is not None:
            refresh()
        gateway = getattr(self.service, "gateway", None)
        if gateway is not None:
            job = self.service.store.get_job(job_id)
            if job.status == JobStatus.PAUSED:
                gateway.stop_job(job_id)

    def set_priority(self, job_id: str, priority: int, *, admin: str) -> Job:
        job = self.service.set_job_priority(job_id, int(priority))
        log.info("%s on the dashboard: job %s priority %d", admin, job_id, priority)
        return job

    def ban(self, volunteer_id: str, *, reason: str = "", undo: bool = False, admin: str) -> Volunteer:
        volunteer = self.service.ban_volunteer(volunteer_id, _reason(reason, f"banned by {admin or 'admin'}"), undo=undo)
        log.info("%s on the dashboard: banned volunteer %s%s", admin, volunteer_id, " (its rounds undone)" if undo else "")
        return volunteer
