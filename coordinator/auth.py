"""Bearer tokens, roles and which RPC each role may call.

Tokens look like ``essaim_<43 urlsafe characters>`` (32 random bytes); the store keeps only their
sha256. Roles: admin > researcher; volunteer tokens are bound to one volunteer id (the token's
subject) and stop working when that volunteer is banned.

    token = create_token(store, role=Role.RESEARCHER, label="alice")   # printed once, never stored
    auth = Authenticator(store)
    principal = auth.authenticate(token)          # Unauthenticated / BannedVolunteer
    check_access("CancelJob", principal, open_registration=True)   # PermissionDenied

Used by the servicer (every call), the service (ownership checks) and ``essaim coordinator token``.
Lookups are cached for ``cache_ttl`` seconds (several heartbeat intervals) so heartbeats do not hit
the store; a ban clears the volunteer's entries at once, expiry is checked on every use, and a token
revoked in the store, by this process or another (``essaim coordinator token revoke``), stops
working within seconds: the server calls :meth:`Authenticator.watch_revocations` every 2 s, one
read of a settings row, and drops the whole cache when a revocation happened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from essaim.coordinator.errors import BannedVolunteer, PermissionDenied, Unauthenticated
from essaim.protocol.auth_metadata import TOKEN_PREFIX
from essaim.protocol.types import Role

logger = logging.getLogger(__name__)

MAX_CACHED_TOKENS = 1_000_000
ROLE_RANK = {Role.VOLUNTEER: 0, Role.RESEARCHER: 1, Role.ADMIN: 2}

# RPC -> roles allowed. Register is special (anonymous while registration is open).
RESEARCHER_UP = frozenset({Role.RESEARCHER, Role.ADMIN})
RPC_ROLES: dict[str, frozenset[Role]] = {
    "RegistrationChallenge": frozenset({Role.VOLUNTEER, Role.ADMIN}),
    "Register": frozenset({Role.VOLUNTEER, Role.ADMIN}),
    "Heartbeat": frozenset({Role.VOLUNTEER}),
    "GetAssignment": frozenset({Role.VOLUNTEER}),
    "SubmitJob": RESEARCHER_UP,
    "ListJobs": RESEARCHER_UP,
    "GetJob": RESEARCHER_UP,
    "CancelJob": RESEARCHER_UP,
    "UploadFile": RESEARCHER_UP,
    "Download": frozenset({Role.RESEARCHER, Role.ADMIN, Role.VOLUNTEER}),
    "ApproveJob": frozenset({Role.ADMIN}),
    "SetJobPriority": frozenset({Role.ADMIN}),
    "ListVolunteers": frozenset({Role.ADMIN}),
    "BanVolunteer": frozenset({Role.ADMIN}),
    "UnbanVolunteer": frozenset({Role.ADMIN}),
    "EraseVolunteer": frozenset({Role.VOLUNTEER, Role.ADMIN}),  # a volunteer: only itself
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role and a subject (volunteer id, researcher name, or "admin")."""

    role: Role
    subject: str
    label: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def at_least(self, role: Role) -> bool:
        return self.role != Role.VOLUNTEER and ROLE_RANK[self.role] >= ROLE_RANK[role]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(
    store: Any,
    *,
    role: Role,
    label: str = "",
    subject: str | None = None,
    expires_at: float | None = None,
) -> str:
    """Store a new token's hash and return the token itself (shown once)."""
    role = Role(role)
    if subject is None:
        subject = "admin" if role == Role.ADMIN else (label or f"{role}-{secrets.token_hex(4)}")
    token = new_token()
    store.add_token(
        token_hash=hash_token(token), role=role, subject=subject, label=label, expires_at=expires_at
    )
    return token


FIRST_ADMIN_TOKEN_DAYS = 90.0  # as tokens made by ``token create``


def ensure_admin_token(store: Any, path: Path) -> str | None:
    """At a start with no usable admin token (the first start, or every admin token expired or
    revoked) create one, valid ``FIRST_ADMIN_TOKEN_DAYS``, and write it 0600 to ``path``.

    Returns the new token (to print once) or None when a usable admin token exists already.
    """
    if store.count_tokens(role=Role.ADMIN) > 0:
        return None
    token = create_token(store, role=Role.ADMIN, label="first admin",
                         expires_at=time.time() + FIRST_ADMIN_TOKEN_DAYS * 86_400)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    logger.info("created the first admin token in %s", path)
    return token


def check_access(rpc: str, principal: Principal | None, *, open_registration: bool) -> None:
    """Raise Unauthenticated / PermissionDenied unless ``principal`` may call ``rpc``."""
    if rpc in ("Register", "RegistrationChallenge") and open_registration:
        return
    allowed = RPC_ROLES.get(rpc)
    if allowed is None:
        raise PermissionDenied(f"{rpc} is not a call this coordinator serves")
    if principal is None:
        raise Unauthenticated(
            f"{rpc} needs a bearer token: pass --token or set ESSAIM_TOKEN (ask the coordinator admin for one)"
        )
    if principal.role not in allowed:
        needed = " or ".join(sorted(allowed))
        raise PermissionDenied(f"{rpc} needs {_a(str(needed))} token; yours is {_a(str(principal.role))} token")


def check_own_volunteer(principal: Principal | None, volunteer_id: str) -> None:
    """A volunteer may act only as itself."""
    if principal is None or principal.role != Role.VOLUNTEER or principal.subject != volunteer_id:
        raise PermissionDenied(
            f"this token does not belong to volunteer {volunteer_id!r}; use the token Register returned"
        )


class Authenticator:
    """Token -> Principal, cached; knows banned volunteers so their tokens stop at once."""

    def __init__(self, store: Any, *, cache_ttl: float = 600.0) -> None:
        self._store = store
        self._ttl = cache_ttl
        # keyed by the token itself: hashing every heartbeat's token would cost more than the lookup
        self._cache: dict[str, tuple[Principal, float, float | None]] = {}
        self._banned: dict[str, str] = {}
        self._lock = threading.Lock()
        self._revoked_at: float | None = None

    def watch_revocations(self) -> bool:
        """Drop the cache if a token was revoked since the last look; True when it was."""
        at = self._store.revocations_at()
        if at == self._revoked_at:
            return False
        first, self._revoked_at = self._revoked_at is None, at
        with self._lock:
            self._cache.clear()
        return not first

    def load_banned(self, banned: dict[str, str]) -> None:
        with self._lock:
            self._banned = dict(banned)

    def mark_banned(self, volunteer_id: str, reason: str = "") -> None:
        with self._lock:
            self._banned[volunteer_id] = reason
            self._cache = {h: v for h, v in self._cache.items() if v[0].subject != volunteer_id}

    def unmark_banned(self, volunteer_id: str) -> None:
        with self._lock:
            self._banned.pop(volunteer_id, None)

    def forget_subject(self, subject: str) -> None:
        """Drop the cached tokens of ``subject`` (its tokens were revoked in this process)."""
        with self._lock:
            self._cache = {h: v for h, v in self._cache.items() if v[0].subject != subject}

    def is_banned(self, volunteer_id: str) -> bool:
        return volunteer_id in self._banned

    def check_not_banned(self, volunteer_id: str) -> None:
        if volunteer_id in self._banned:
            raise BannedVolunteer(volunteer_id, self._banned[volunteer_id])

    def cached(self, token: str | None) -> Principal | None:
        """The principal for ``token`` if it is in the cache and still valid (no store access)."""
        if not token:
            return None
        entry = self._cache.get(token)
        if entry is None:
            return None
        principal, until, expires_at = entry
        now = time.monotonic()
        if now > until or (expires_at is not None and time.time() > expires_at):
            return None
        if principal.role == Role.VOLUNTEER:
            self.check_not_banned(principal.subject)
        return principal

    def authenticate(self, token: str | None) -> Principal | None:
        """None for no token; the principal for a valid one; raises for a bad one."""
        if not token:
            return None
        principal = self.cached(token)
        if principal is not None:
            return principal
        token_hash = hash_token(token)
        record = self._store.find_token(token_hash)
        if record is None or not token.startswith(TOKEN_PREFIX):
            raise Unauthenticated(
                "this token is not known to this coordinator; check --token / ESSAIM_TOKEN, "
                "or ask the coordinator admin for a new one"
            )
        role = Role(record.role)
        if role == Role.VOLUNTEER:
            self.check_not_banned(record.subject)
        if record.revoked:
            raise Unauthenticated("this token was revoked; ask the coordinator admin for a new one")
        if record.expires_at is not None and record.expires_at < time.time():
            raise Unauthenticated("this token has expired; ask the coordinator admin for a new one")
        principal = Principal(role=role, subject=record.subject, label=record.label or "")
        with self._lock:
            if len(self._cache) >= MAX_CACHED_TOKENS:
                self._cache.clear()
            self._cache[token] = (principal, time.monotonic() + self._ttl, record.expires_at)
        return principal


def _a(word: str) -> str:
    """``word`` with its indefinite article ("an admin", "a researcher")."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
