"""Admin sign-in and the admin forms of the dashboard's pages.

    GET/POST /signin                     an admin token in, a session cookie out (the token is never
                                         stored, echoed, logged or put in a URL)
    POST     /signout
    POST     /admin/jobs/{id}/{action}   approve, reject, pause, resume, cancel (field ``reason``)
    POST     /admin/jobs/{id}/priority   field ``priority``
    POST     /admin/volunteers/{id}/ban  field ``reason``

Every form carries the session's CSRF token (field ``csrf_token``); a POST without it, from another
site, or from someone who is not a signed-in admin gets 403. After an action the admin is sent
back to the page they came from with a message saying what happened. Forms are parsed here
(``application/x-www-form-urlencoded``, at most 16 KiB) so no multipart parser is needed.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from essaim.coordinator.dashboard.access import Access, AuthFailed, Viewer, same_origin
from essaim.coordinator.dashboard.actions import JOB_ACTIONS, AdminActions
from essaim.coordinator.dashboard.pages import PageContext
from essaim.coordinator.dashboard.sessions import COOKIE_NAME, CSRF_FIELD, SignInThrottle
from essaim.protocol.errors import EssaimError
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024
PAST_TENSE = {"approve": "approved", "reject": "rejected", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}


async def read_form(request: Request) -> dict[str, str]:
    """The fields of an urlencoded form (first value of each); 413 when it is too large."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(status_code=413, detail="form too large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=50)
    return {key: values[0] for key, values in fields.items()}


def local_path(target: str | None, default: str = "/") -> str:
    """``target`` if it is a path on this site (no scheme, host or ``//``), else ``default``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    if any(ord(c) < 32 for c in target):
        return default
    return target


def client_key(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def build_admin_pages_router(ctx: PageContext, *, actions: AdminActions, secure_cookie: bool | None = None) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    access: Access = ctx.access
    throttle = SignInThrottle()

    def signin_page(request: Request, viewer: Viewer, *, next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
        return ctx.renderer.page(
            request, viewer, "signin.html", status_code=status, next_path=next_path, error=error, active=""
        )

    @router.get("/signin", response_class=HTMLResponse)
    def signin_form(request: Request, next: str = "/") -> Response:
        try:
            viewer = access.viewer(request)
        except AuthFailed:
            viewer = Viewer()
        if viewer.is_admin:
            return RedirectResponse(local_path(next), status_code=303)
        return signin_page(request, viewer, next_path=local_path(next))

    @router.post("/signin", response_class=HTMLResponse)
    async def signin(request: Request) -> Response:
        if not same_origin(request):
            raise HTTPException(status_code=403, detail="sign-in from another site is refused")
        form = await read_form(request)
        next_path = local_path(form.get("next"))
        client = client_key(request)
        if throttle.blocked(client):
            return signin_page(
                request, Viewer(), next_path=next_path, status=429,
                error="Too many failed sign-ins from this address; wait a few minutes and try again.",
            )
        try:
            session_id, _ = await run_in_threadpool(access.sign_in, form.get("token", ""))
        except AuthFailed:
            throttle.failed(client)
            log.info("failed dashboard sign-in from %s", client)
            return signin_page(
                request, Viewer(), next_path=next_path, status=401,
                error="That is not an admin token of this coordinator. Find it in the coordinator's data "
                "directory (admin-token) or create one with `essaim coordinator token create --role admin`.",
            )
        throttle.succeeded(client)
        response = RedirectResponse(next_path, status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            session_id,
            max_age=int(access.sessions.ttl_seconds),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https" if secure_cookie is None else secure_cookie,
        )
        return response

    async def admin_form(request: Request) -> tuple[Viewer, dict[str, str]]:
        """The signed-in admin and the form fields; 403 unless an admin posted a valid CSRF token."""
        form = await read_form(request)
        try:
            viewer = await run_in_threadpool(access.viewer, request)
        except AuthFailed:
            viewer = Viewer()
        if not viewer.is_admin or viewer.via != "session":
            raise HTTPException(status_code=403, detail="sign in as an admin first")
        access.check_csrf(request, viewer, form.get(CSRF_FIELD))
        return viewer, form

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        await admin_form(request)
        access.sessions.delete(request.cookies.get(COOKIE_NAME))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")
        return response

    def done(viewer: Viewer, form: dict[str, str], default: str, ok: str | None, error: str | None) -> Response:
        if viewer.session is not None:
            viewer.session.flash("bad" if error else "ok", error or ok or "")
        return RedirectResponse(local_path(form.get("next"), default), status_code=303)

    @router.post("/admin/jobs/{job_id}/priority")
    async def job_priority(request: Request, job_id: str) -> Response:
        viewer, form = await admin_form(request)
        try:
            priority = int(form.get("priority", ""))
        except ValueError:
            return done(viewer, form, f"/jobs/{job_id}", None, "Priority must be a whole number.")
        try:
            job = await run_in_threadpool(actions.set_priority, job_id, priority, admin=viewer.subject)
        except EssaimError as exc:
            return done(viewer, form, f"/jobs/{job_id}", None, exc.message)
        return done(viewer, form, f"/jobs/{job_id}", f"Job {job.name} now has priority {job.priority}.", None)

    @router.post("/admin/jobs/{job_id}/{action}")
    async def job_action(request: Request, job_id: str, action: str) -> Response:
        viewer, form = await admin_form(request)
        if action not in JOB_ACTIONS:
            raise HTTPException(status_code=404, detail=f"unknown action {action!r}")
        try:
            job = await run_in_threadpool(
                actions.job_action, job_id, action, reason=form.get("reason", ""), admin=viewer.subject
            )
        except EssaimError as exc:
            return done(viewer, form, f"/jobs/{job_id}", None, exc.message)
        return done(viewer, form, f"/jobs/{job_id}", f"Job {job.name} {PAST_TENSE[action]}: it is now {job.status.replace('_', ' ')}.", None)

    @router.post("/admin/volunteers/{volunteer_id}/ban")
    async def ban(request: Request, volunteer_id: str) -> Response:
        viewer, form = await admin_form(request)
        try:
            v = await run_in_threadpool(actions.ban, volunteer_id, reason=form.get("reason", ""),
                                        undo=form.get("undo") == "on", admin=viewer.subject)
        except EssaimError as exc:
            return done(viewer, form, f"/volunteers/{volunteer_id}", None, exc.message)
        name = v.name or volunteer_id
        return done(viewer, form, f"/volunteers/{volunteer_id}", f"Volunteer {name} is banned; its tokens are revoked.", None)

    return router
