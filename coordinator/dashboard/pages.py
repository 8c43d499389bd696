"""The dashboard's read-only pages, rendered on the server from :class:`.queries.DashboardQueries`.

    /                          Swarm: volunteers online over time, throughput, the volunteers table
                               (admins: each one's reachability and last round in its job)
    /volunteers/{id}           one volunteer: hardware, totals, contributions per job (admins and
                               the volunteer itself: how it takes part in each job's swarm)
    /jobs                      jobs with status, epoch / target, samples/s, ETA
    /jobs/{id}                 one job: curves, volunteers on it, contributors, admin controls
                               (admins: each volunteer's reachability, IP seen, last round)
    /jobs/{id}/transparency    recipe, dataset hashes, provenance, model card, ledger + verification
    /contributions             leaderboards (overall or one job; by samples or compute), teams
    /teams?name=               one team's members
    /ledger                    the whole ledger's chain verification and its newest rows

With ``settings.public_pages`` off, a visitor who is not signed in is sent to ``/signin``.
Sign-in and the admin forms are in :mod:`.admin_pages`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import quote

from essaim.coordinator.dashboard.access import Access, AuthFailed, Viewer
from essaim.coordinator.dashboard.queries import DashboardQueries
from essaim.coordinator.dashboard.rendering import Renderer, progress_charts, time_chart
from essaim.coordinator.dashboard.sampler import SwarmSampler
from essaim.protocol.errors import EssaimError, NotFound
from essaim.protocol.types import FINAL_JOB_STATUSES, JobStatus, VolunteerStatus
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

PAGE_SIZE = 200
JOB_FILTERS: dict[str, list[JobStatus] | None] = {
    "all": None,
    "active": [JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.PAUSED],
    "awaiting": [JobStatus.AWAITING_APPROVAL],
    "finished": sorted(FINAL_JOB_STATUSES),
}


class PageContext:
    """What every page handler needs: who asks, and how to answer."""

    def __init__(self, *, access: Access, renderer: Renderer, queries: DashboardQueries) -> None:
        self.access = access
        self.renderer = renderer
        self.queries = queries

    def gate(self, request: Request) -> Viewer | Response:
        """The viewer, or the answer to send instead (sign-in redirect, 401 for a bad token)."""
        try:
            viewer = self.access.viewer(request)
        except AuthFailed as exc:
            return self.error(request, Viewer(), 401, "Not signed in", exc.message)
        if not self.access.may_read(viewer):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)
        return viewer

    def error(self, request: Request, viewer: Viewer, status: int, title: str, message: str) -> HTMLResponse:
        return self.renderer.page(request, viewer, "error.html", status_code=status, title=title, message=message)

    def render(self, request: Request, template: str, build: Callable[[Viewer], dict[str, Any]], *, active: str) -> Response:
        gated = self.gate(request)
        if isinstance(gated, Response):
            return gated
        viewer = gated
        try:
            context = build(viewer)
        except NotFound as exc:
            return self.error(request, viewer, 404, "Not found", exc.message)
        except EssaimError as exc:
            return self.error(request, viewer, 503, "Something went wrong", exc.message)
        return self.renderer.page(request, viewer, template, active=active, **context)


def build_pages_router(ctx: PageContext, *, sampler: SwarmSampler) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    q = ctx.queries

    @router.get("/", response_class=HTMLResponse)
    def swarm(request: Request, page: Annotated[int, Query(ge=1)] = 1) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            samples = sampler.points()
            counts = {s.value: q.count_volunteers(s) for s in VolunteerStatus}
            volunteers = [viewer.shown(v) for v in q.volunteers(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)]
            running = q.jobs(statuses=[JobStatus.RUNNING])
            board = q.leaderboard()
            return {
                "counts": counts,
                "total": sum(counts.values()),
                "training": sum(j.volunteers_online for j in running),
                "running_jobs": running,
                "throughput": sum(j.metrics.samples_per_second for j in running),
                "compute_hours": board.total_compute_hours,
                "total_samples": board.total_samples,
                "volunteers": volunteers,
                "swarm_peers": q.current_swarm_peers(volunteers, with_observed=True) if viewer.is_admin else {},
                "page": page,
                "pages": max(1, -(-sum(counts.values()) // PAGE_SIZE)),
                "online_chart": time_chart(
                    "online", [(t, n) for t, n, _ in samples], y_label="volunteers online", empty="Sampling the swarm…"
                ),
                "throughput_chart": time_chart(
                    "samples/s", [(t, s) for t, _, s in samples], y_label="samples/s", empty="Sampling the swarm…"
                ),
                "sample_interval": sampler.interval,
            }

        return ctx.render(request, "swarm.html", build, active="swarm")

    @router.get("/volunteers/{volunteer_id}", response_class=HTMLResponse)
    def volunteer(request: Request, volunteer_id: str) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            v = viewer.shown(q.volunteer(volunteer_id))
            current = None
            if v.current_job_id:
                try:
                    current = q.store.get_job(v.current_job_id)
                except NotFound:
                    current = None
            peers = None
            if viewer.may_see_swarm_of(v.id):
                peers = q.swarm_peers(volunteer_id=v.id, with_observed=viewer.is_admin)
            credit = time_chart("samples given", q.volunteer_history(volunteer_id), y_label="samples given, in all",
                                empty="Nothing in the ledger yet: contributions appear once an epoch is accepted")
            return {"v": v, "jobs": q.volunteer_jobs(volunteer_id), "current_job": current, "swarm_peers": peers,
                    "credit_chart": credit}

        return ctx.render(request, "volunteer.html", build, active="swarm")

    @router.get("/jobs", response_class=HTMLResponse)
    def jobs(request: Request, show: Literal["all", "active", "awaiting", "finished"] = "all") -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            return {"jobs": q.jobs(statuses=JOB_FILTERS[show]), "show": show, "filters": list(JOB_FILTERS)}

        return ctx.render(request, "jobs.html", build, active="jobs")

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: str) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            detail = q.job(job_id)
            detail = detail.model_copy(update={"volunteers": [v for v in detail.volunteers if viewer.may_see_private_of(v.id)]})
            peers = q.swarm_peers(job_id=job_id, with_observed=True) if viewer.is_admin else None
            return {"job": detail, "charts": progress_charts(q.progress(job_id)), "tab": "overview", "swarm_peers": peers,
                    "samples": q.samples(job_id)}

        return ctx.render(request, "job.html", build, active="jobs")

    @router.get("/jobs/{job_id}/transparency", response_class=HTMLResponse)
    def transparency(request: Request, job_id: str) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            detail = q.job(job_id)
            provenance = q.provenance(job_id)
            return {
                "job": detail,
                "tab": "transparency",
                "provenance": provenance,
                "provenance_text": None if provenance is None else json.dumps(provenance, indent=2, ensure_ascii=False),
                "model_card": q.model_card(job_id),
                "ledger": q.last_ledger_rows(job_id=job_id, count=500),
                "verification": q.verify_ledger(),
                "names": q.names(),
            }

        return ctx.render(request, "transparency.html", build, active="jobs")

    @router.get("/contributions", response_class=HTMLResponse)
    def contributions(
        request: Request, job: str = "", order: Literal["samples", "compute"] = "samples"
    ) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            return {
                "board": q.leaderboard(job_id=job or None, order=order),
                "jobs": q.jobs(limit=500),
                "job": job,
                "order": order,
            }

        return ctx.render(request, "contributions.html", build, active="contributions")

    @router.get("/teams", response_class=HTMLResponse)
    def team(request: Request, name: str = "") -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            members = [viewer.shown(v) for v in q.team_members(name)] if name else []
            if not members:
                raise NotFound(f"no volunteer is in a team named {name!r}; see the teams on the contributions page")
            return {
                "team": name,
                "members": members,
                "samples": sum(m.samples for m in members),
                "compute_seconds": sum(m.compute_seconds for m in members),
                "online": sum(1 for m in members if m.status == "online"),
            }

        return ctx.render(request, "team.html", build, active="contributions")

    @router.get("/ledger", response_class=HTMLResponse)
    def ledger(request: Request) -> Response:
        def build(viewer: Viewer) -> dict[str, Any]:
            verification = q.verify_ledger()
            after = max(0, verification.head_seq - PAGE_SIZE)
            bad = verification.first_bad_seq
            around = q.ledger(after_seq=max(0, bad - 3), limit=6) if bad is not None and bad <= after else []
            return {
                "verification": verification,
                "ledger": q.ledger(after_seq=after, limit=PAGE_SIZE),
                "around_bad": around,
                "names": q.names(),
                "jobs": {j.id: j.name for j in q.jobs(limit=1000)},
            }

        return ctx.render(request, "ledger.html", build, active="ledger")

    return router
