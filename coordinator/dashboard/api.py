"""The dashboard's JSON API under ``/api/v1``: what the pages show, for scripts and other tools.

    GET  /api/v1/volunteers[?status=&limit=&offset=]   GET /api/v1/volunteers/{id}
    GET  /api/v1/swarm/online                          volunteers online over time
    GET  /api/v1/jobs[?status=]                        GET /api/v1/jobs/{id}, /api/v1/jobs/{id}/progress
    GET  /api/v1/jobs/{id}/peers                       how each volunteer takes part in the job's swarm (admin)
    GET  /api/v1/volunteers/{id}/peers                 the same for one volunteer (admin, or that volunteer)
    GET  /api/v1/contributions[?job_id=&order=]        volunteers and teams leaderboards
    GET  /api/v1/ledger[?job_id=&after_seq=&limit=]    GET /api/v1/ledger/verify
    POST /api/v1/jobs/{id}/{approve|reject|pause|resume|cancel}   body {"reason": "..."}
    POST /api/v1/jobs/{id}/priority                    body {"priority": 5}
    POST /api/v1/volunteers/{id}/ban                   body {"reason": "..."}

Reads follow ``settings.public_pages`` (off: a bearer token or an admin sign-in is needed), except
the ``peers`` reads: a volunteer's reachability and rounds are for admins and that volunteer (403
for anyone else), and the IP it was seen from for admins only (null otherwise). POSTs
need an admin (bearer token, or the sign-in cookie plus the ``X-CSRF-Token`` header) and get 403
otherwise. Errors answer ``{"detail": "..."}`` with the status of the essaim error. Downloads of
the transparency documents live in :mod:`.downloads`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from essaim.coordinator.dashboard.access import Access, Viewer
from essaim.coordinator.dashboard.actions import AdminActions
from essaim.coordinator.dashboard.queries import DashboardQueries, volunteer_out
from essaim.coordinator.dashboard.sampler import SwarmSampler
from essaim.coordinator.dashboard.schemas import (
    BanIn,
    JobDetail,
    JobList,
    JobOut,
    Leaderboard,
    LedgerPage,
    LedgerVerificationOut,
    OnlinePoint,
    OnlineSeries,
    PriorityIn,
    ProgressOut,
    ReasonIn,
    SignedHeadOut,
    SwarmPeerList,
    VolunteerList,
    VolunteerOut,
)
from essaim.protocol.errors import (
    EssaimError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from essaim.protocol.types import JobStatus, VolunteerStatus
from fastapi import APIRouter, Body, Depends, HTTPException, Query

HTTP_STATUS: list[tuple[type[EssaimError], int]] = [
    (NotFound, 404),
    (InvalidArgument, 400),
    (FailedPrecondition, 409),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (Unavailable, 503),
]


def http_error(exc: EssaimError) -> HTTPException:
    """The HTTP answer for an essaim error (its message is written for the reader)."""
    for cls, code in HTTP_STATUS:
        if isinstance(exc, cls):
            return HTTPException(status_code=code, detail=exc.message)
    return HTTPException(status_code=500, detail=exc.message)


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except EssaimError as exc:
        raise http_error(exc) from None


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "reading needs a token (public pages are off), or the token is not valid"},
    404: {"description": "no such job or volunteer"},
}
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "not an admin (or a cookie without its CSRF token)"},
    404: {"description": "no such job or volunteer"},
    409: {"description": "the job is not in a state that allows this action"},
}


def build_api_router(
    *, queries: DashboardQueries, access: Access, actions: AdminActions, sampler: SwarmSampler
) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["dashboard"], responses=ERRORS)

    # ---- volunteers ----

    @router.get("/volunteers", response_model=VolunteerList, summary="Volunteers with their totals")
    def list_volunteers(
        viewer: Viewer = Depends(access.reader),
        status: Annotated[VolunteerStatus | None, Query(description="online, offline or banned")] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> VolunteerList:
        items = call(queries.volunteers, status=status, limit=limit, offset=offset)
        return VolunteerList(total=call(queries.count_volunteers, status), items=[viewer.shown(v) for v in items])

    @router.get("/volunteers/{volunteer_id}", response_model=VolunteerOut, summary="One volunteer")
    def get_volunteer(volunteer_id: str, viewer: Viewer = Depends(access.reader)) -> VolunteerOut:
        return viewer.shown(call(queries.volunteer, volunteer_id))

    @router.get("/swarm/online", response_model=OnlineSeries, summary="Volunteers online over time")
    def swarm_online(
        _: Viewer = Depends(access.reader), since: Annotated[float, Query(description="unix seconds; default: all kept samples")] = 0.0
    ) -> OnlineSeries:
        return OnlineSeries(
            interval_seconds=sampler.interval,
            points=[OnlinePoint(at=t, online=n, samples_per_second=s) for t, n, s in sampler.points(since=since)],
        )

    # ---- jobs ----

    @router.get("/jobs", response_model=JobList, summary="Jobs, newest first")
    def list_jobs(
        _: Viewer = Depends(access.reader),
        status: Annotated[list[JobStatus] | None, Query(description="repeat to ask for several")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> JobList:
        return JobList(items=call(queries.jobs, statuses=status or None, limit=limit))

    @router.get("/jobs/{job_id}", response_model=JobDetail, summary="One job, its recipe, files and volunteers")
    def get_job(job_id: str, viewer: Viewer = Depends(access.reader)) -> JobDetail:
        detail = call(queries.job, job_id)
        return detail.model_copy(update={"volunteers": [v for v in detail.volunteers if viewer.may_see_private_of(v.id)]})

    @router.get("/jobs/{job_id}/progress", response_model=ProgressOut, summary="A job's loss, eval and throughput curve")
    def job_progress(job_id: str, _: Viewer = Depends(access.reader)) -> ProgressOut:
        return call(queries.progress, job_id)

    # ---- how volunteers take part in the swarm ----

    peer_errors: dict[int | str, dict[str, Any]] = {
        **ERRORS,
        403: {"description": "only admins (and, for its own rows, the volunteer) may see this"},
    }

    @router.get(
        "/jobs/{job_id}/peers", response_model=SwarmPeerList, responses=peer_errors,
        summary="How each volunteer takes part in a job's swarm: reachability, last round, IP seen (admin)",
    )
    def job_peers(job_id: str, viewer: Viewer = Depends(access.reader)) -> SwarmPeerList:
        if not viewer.is_admin:
            raise HTTPException(status_code=403, detail="how volunteers take part in a job's swarm is for admins only")
        return SwarmPeerList(items=call(queries.swarm_peers, job_id=job_id, with_observed=True))

    @router.get(
        "/volunteers/{volunteer_id}/peers", response_model=SwarmPeerList, responses=peer_errors,
        summary="How one volunteer takes part in each job's swarm (admin, or that volunteer)",
    )
    def volunteer_peers(volunteer_id: str, viewer: Viewer = Depends(access.reader)) -> SwarmPeerList:
        if not viewer.may_see_swarm_of(volunteer_id):
            raise HTTPException(status_code=403, detail="only admins and this volunteer may see how it takes part in the swarm")
        return SwarmPeerList(items=call(queries.swarm_peers, volunteer_id=volunteer_id, with_observed=viewer.is_admin))

    # ---- contributions and ledger ----

    @router.get("/contributions", response_model=Leaderboard, summary="Leaderboards of volunteers and teams")
    def contributions(
        _: Viewer = Depends(access.reader),
        job_id: Annotated[str | None, Query(description="one job's totals; default all jobs")] = None,
        order: Annotated[Literal["samples", "compute"], Query()] = "samples",
    ) -> Leaderboard:
        return call(queries.leaderboard, job_id=job_id, order=order)

    @router.get("/ledger", response_model=LedgerPage, summary="Ledger rows in order, with their hashes")
    def ledger(
        _: Viewer = Depends(access.reader),
        job_id: str | None = None,
        after_seq: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> LedgerPage:
        items = call(queries.ledger, job_id=job_id, after_seq=after_seq, limit=limit)
        return LedgerPage(items=items, next_after_seq=items[-1].seq if len(items) == limit else None)

    @router.get("/ledger/verify", response_model=LedgerVerificationOut, summary="Re-check the ledger's hash chain")
    def verify(_: Viewer = Depends(access.reader)) -> LedgerVerificationOut:
        return call(queries.verify_ledger)

    @router.get("/ledger/head", response_model=SignedHeadOut, summary="The ledger's head, signed by the coordinator")
    def head(_: Viewer = Depends(access.reader)) -> SignedHeadOut:
        signed = call(queries.signed_head)
        if signed is None:
            raise HTTPException(status_code=404, detail="this coordinator signs no ledger head (it has no swarm key)")
        return signed

    # ---- admin ----

    def job_out(job_id: str) -> JobOut:
        detail = call(queries.job, job_id)
        return JobOut(**detail.model_dump(include=set(JobOut.model_fields)))

    def add_job_action(action: str) -> None:
        def act(job_id: str, admin: Viewer = Depends(access.admin), body: Annotated[ReasonIn | None, Body()] = None) -> JobOut:
            call(actions.job_action, job_id, action, reason=body.reason if body else "", admin=admin.subject)
            return job_out(job_id)

        router.add_api_route(
            f"/jobs/{{job_id}}/{action}",
            act,
            methods=["POST"],
            response_model=JobOut,
            responses=ADMIN_ERRORS,
            summary=f"{action.capitalize()} a job (admin)",
            name=f"{action}_job",
        )

    for action in ("approve", "reject", "pause", "resume", "cancel"):
        add_job_action(action)

    @router.post("/jobs/{job_id}/priority", response_model=JobOut, responses=ADMIN_ERRORS, summary="Set a job's priority (admin)")
    def set_priority(job_id: str, body: PriorityIn, admin: Viewer = Depends(access.admin)) -> JobOut:
        call(actions.set_priority, job_id, body.priority, admin=admin.subject)
        return job_out(job_id)

    @router.post(
        "/volunteers/{volunteer_id}/ban", response_model=VolunteerOut, responses=ADMIN_ERRORS, summary="Ban a volunteer (admin)"
    )
    def ban(volunteer_id: str, admin: Viewer = Depends(access.admin), body: Annotated[BanIn | None, Body()] = None) -> VolunteerOut:
        return volunteer_out(call(actions.ban, volunteer_id, reason=body.reason if body else "",
                                  undo=bool(body and body.undo), admin=admin.subject))

    return router
