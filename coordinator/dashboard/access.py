"""Who is asking the dashboard, and what they may do.

Three kinds of callers: anonymous (public read-only pages, when ``settings.public_pages`` is on),
a bearer token in the ``Authorization`` header (scripts; any valid token may read, only an admin
token may act), and an admin signed in through the page (session cookie, see :mod:`.sessions`).
Cookie-authenticated POSTs must carry the session's CSRF token (``X-CSRF-Token`` header or the
``csrf_token`` form field) and, when the browser sends one, an ``Origin`` of this very host.
Admin actions asked without admin rights are answered 403, whatever was (not) presented.

:class:`SecurityHeaders` adds the Content-Security-Policy (self only), nosniff, frame and
referrer headers to every response. Used by :mod:`.api` and :mod:`.pages`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from essaim.coordinator.auth import hash_token
from essaim.coordinator.dashboard.queries import withheld
from essaim.coordinator.dashboard.sessions import COOKIE_NAME, CSRF_HEADER, Session, SessionStore
from essaim.protocol.errors import EssaimError
from essaim.protocol.types import Role
from fastapi import HTTPException, Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@dataclass(frozen=True, slots=True)
class Viewer:
    """The caller of one request. ``role`` is None for anonymous visitors."""

    role: Role | None = None
    subject: str = ""
    via: str = "anonymous"  # "anonymous", "bearer" or "session"
    session: Session | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def may_see_swarm_of(self, volunteer_id: str) -> bool:
        """How a volunteer takes part in the swarm (reachability, last round) is for admins and for
        that volunteer (its own bearer token) only; the IP it was seen from, for admins only."""
        return self.is_admin or (self.role == Role.VOLUNTEER and self.subject == volunteer_id)

    def may_see_private_of(self, volunteer_id: str) -> bool:
        """A volunteer's live state, reason, hardware and client: admins and that volunteer only."""
        return self.is_admin or (self.role == Role.VOLUNTEER and self.subject == volunteer_id)

    def shown(self, v: Any) -> Any:
        """A :class:`VolunteerOut` as this viewer may see it (see ``queries.withheld``)."""
        return v if self.may_see_private_of(v.id) else withheld(v)

    @property
    def signed_in(self) -> bool:
        return self.role is not None

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session else ""


ANONYMOUS = Viewer()


class AuthFailed(Exception):
    """A presented credential is not valid (unknown, revoked or expired token)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailed("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser, or a same-origin GET-style navigation: the CSRF token decides
    if origin == "null":
        return False  # sandboxed frames, file:// pages, privacy redirects
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


class Access:
    """Resolves a request's :class:`Viewer` and enforces the read and admin rules."""

    def __init__(self, *, service: Any, settings: Any, sessions: SessionStore) -> None:
        self.service = service
        self.settings = settings
        self.sessions = sessions

    def viewer(self, request: Request) -> Viewer:
        """Who is asking; raises AuthFailed for a bad bearer token (a bad cookie is just ignored)."""
        cached = getattr(request.state, "dashboard_viewer", None)
        if cached is not None:
            return cached
        viewer = self._resolve(request)
        request.state.dashboard_viewer = viewer
        return viewer

    def _resolve(self, request: Request) -> Viewer:
        token = bearer_token(request)
        if token is not None:
            try:
                principal = self.service.auth.authenticate(token)
            except EssaimError as exc:
                raise AuthFailed(exc.message) from None
            return Viewer(role=principal.role, subject=principal.subject, via="bearer")
        session = self.session(request)
        if session is not None:
            return Viewer(role=Role.ADMIN, subject=session.subject, via="session", session=session)
        return ANONYMOUS

    def session(self, request: Request) -> Session | None:
        session_id = request.cookies.get(COOKIE_NAME)
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if self.sessions.due_for_recheck(session):
            if not self.admin_token_usable(session.token_hash):
                log.info("ending the dashboard sessions of a revoked or expired admin token")
                self.sessions.delete_for_token(session.token_hash)
                return None
            self.sessions.mark_checked(session)
        return session

    def admin_token_usable(self, token_hash: str) -> bool:
        record = self.service.store.find_token(token_hash)
        return record is not None and record.role == Role.ADMIN and record.usable(time.time())

    def sign_in(self, token: str) -> tuple[str, Session]:
        """Check an admin token and open a session; raises AuthFailed (the token is never logged)."""
        try:
            principal = self.service.auth.authenticate(token.strip())
        except EssaimError:
            principal = None
        if principal is None or principal.role != Role.ADMIN:
            raise AuthFailed("that is not a valid admin token for this coordinator")
        session_id, session = self.sessions.create(token_hash=hash_token(token.strip()), subject=principal.subject)
        log.info("%s signed in to the dashboard with an admin token", principal.subject)
        return session_id, session

    # ---- rules ----

    def may_read(self, viewer: Viewer) -> bool:
        """Public pages on: anyone. Off: admins only (a volunteer's or researcher's token reads
        nothing here; researchers follow their jobs with the CLI)."""
        return bool(self.settings.public_pages) or viewer.is_admin

    def reader(self, request: Request) -> Viewer:
        """FastAPI dependency for the JSON API's GET routes: 401 when reading needs sign-in."""
        try:
            viewer = self.viewer(request)
        except AuthFailed as exc:
            raise HTTPException(status_code=401, detail=exc.message, headers={"WWW-Authenticate": "Bearer"}) from None
        if not self.may_read(viewer):
            raise HTTPException(
                status_code=401,
                detail="public pages are turned off on this coordinator; only an admin token may read them",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return viewer

    def admin(self, request: Request) -> Viewer:
        """FastAPI dependency for admin actions: 403 unless an admin asks (with CSRF for cookies)."""
        try:
            viewer = self.viewer(request)
        except AuthFailed as exc:
            raise HTTPException(status_code=403, detail=f"admin actions need an admin token: {exc.message}") from None
        if not viewer.is_admin:
            raise HTTPException(
                status_code=403,
                detail="admin actions need an admin token (Authorization: Bearer ...) or an admin sign-in",
            )
        if viewer.via == "session":
            self.check_csrf(request, viewer, request.headers.get(CSRF_HEADER))
        return viewer

    def check_csrf(self, request: Request, viewer: Viewer, presented: str | None) -> None:
        if viewer.session is None or not viewer.session.csrf_ok(presented) or not same_origin(request):
            raise HTTPException(
                status_code=403,
                detail="missing or wrong CSRF token; reload the page and try again",
            )


class SecurityHeaders:
    """ASGI middleware: CSP (self only), nosniff, no framing, same-origin referrers, no caching of
    dynamic answers (static files keep their own caching)."""

    def __init__(self, app: ASGIApp, *, static_prefix: str) -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_static = str(scope.get("path", "")).startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "content-security-policy" not in headers:
                    headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "same-origin"
                if not is_static and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
