"""How callers prove who they are to a coordinator: bearer metadata and the registration signature.

    metadata = bearer_metadata(token)                   # [("authorization", "Bearer essaim_...")]
    token = token_from_metadata(context.invocation_metadata())
    data = registration_message(peer_id, name, timestamp)   # what a volunteer signs to register

Used by the client (sending) and the coordinator (checking); both sides build the signed bytes
with the same function so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

AUTHORIZATION_KEY = "authorization"
TOKEN_PREFIX = "essaim_"
REGISTRATION_MAX_SKEW_SECONDS = 600.0
"""A registration whose timestamp is further than this from the coordinator's clock is refused."""


def bearer_metadata(token: str | None) -> list[tuple[str, str]]:
    """gRPC metadata carrying ``token``; empty without one (anonymous calls)."""
    return [(AUTHORIZATION_KEY, f"Bearer {token}")] if token else []


def token_from_metadata(metadata: Iterable[Any] | None) -> str | None:
    """The bearer token in gRPC invocation metadata, or None when there is none."""
    for item in metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key.lower() != AUTHORIZATION_KEY:
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def registration_message(peer_id: str, name: str, timestamp: float, nonce: bytes = b"") -> bytes:
    """The bytes a volunteer signs with its identity key to register (``repr`` keeps the float
    exact): the coordinator's challenge ``nonce`` (RegistrationChallenge) binds the signature to
    that coordinator and to one registration."""
    return f"essaim-register|{peer_id}|{name}|{timestamp!r}|{nonce.hex()}".encode()
