"""Admin sign-in sessions of the dashboard, kept in the coordinator's memory.

An admin signs in once with an admin token; the browser then holds only a random session id in
an HttpOnly, SameSite=Strict cookie. The token never leaves the sign-in request: a session keeps
the token's *hash*, which is re-checked against the store every ``recheck_seconds`` so that a
revoked token ends its sessions. Each session has its own CSRF token, which every form and every
cookie-authenticated POST must echo. Sessions end on sign-out, after ``ttl_seconds``, or when the
coordinator restarts (the admin signs in again).

Used by :mod:`.access` (who is asking) and :mod:`.pages` (sign-in, sign-out, flash messages).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

COOKIE_NAME = "essaim_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class Session:
    """One signed-in admin. ``token_hash`` is the sha256 of the admin token (never the token)."""

    token_hash: str
    subject: str
    csrf: str
    created_at: float
    expires_at: float
    checked_at: float
    flashes: list[tuple[str, str]] = field(default_factory=list)

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf.encode(), str(presented).encode())

    def flash(self, kind: str, message: str) -> None:
        """Queue a message for the next page this admin sees (``kind``: ok or bad)."""
        self.flashes.append((kind, message))
        del self.flashes[:-5]

    def pop_flashes(self) -> list[tuple[str, str]]:
        out, self.flashes = self.flashes, []
        return out


class SessionStore:
    """Sessions by the sha256 of their id (a memory dump shows no usable cookie)."""

    def __init__(self, *, ttl_seconds: float = 12 * 3600, recheck_seconds: float = 30.0, max_sessions: int = 1000) -> None:
        self.ttl_seconds = ttl_seconds
        self.recheck_seconds = recheck_seconds
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, *, token_hash: str, subject: str) -> tuple[str, Session]:
        """A new session; returns (session id for the cookie, session)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        session = Session(
            token_hash=token_hash,
            subject=subject,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.ttl_seconds,
            checked_at=now,
        )
        with self._lock:
            self._sessions[_key(session_id)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            if time.time() >= session.expires_at:
                del self._sessions[key]
                return None
            return session

    def due_for_recheck(self, session: Session) -> bool:
        return time.time() - session.checked_at >= self.recheck_seconds

    def mark_checked(self, session: Session) -> None:
        session.checked_at = time.time()

    def delete(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_key(session_id), None)

    def delete_for_token(self, token_hash: str) -> None:
        with self._lock:
            for key in [k for k, s in self._sessions.items() if s.token_hash == token_hash]:
                del self._sessions[key]

    def __len__(self) -> int:
        return len(self._sessions)


class SignInThrottle:
    """At most ``limit`` failed sign-ins per client address per ``window`` seconds."""

    def __init__(self, *, limit: int = 10, window: float = 300.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        now = time.time()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window]
            if recent:
                self._failures[client] = recent
            else:
                self._failures.pop(client, None)
            return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, []).append(time.time())
            if len(self._failures) > 10_000:
                self._failures.clear()

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)
