"""The coordinator's errors: the shared essaim hierarchy plus the few only the server raises.

    EssaimError (essaim.protocol.errors)
    ├── InvalidArgument, NotFound, Unauthenticated, PermissionDenied, FailedPrecondition,
    │   AlreadyExists, ResourceExhausted, Unavailable        re-exported from essaim.protocol.errors
    ├── BannedVolunteer (PermissionDenied)                    a banned volunteer's token or key
    └── ConfigError (InvalidArgument)                         bad settings or flags at start-up

The servicer maps every one of them to a gRPC status code through ``grpc_code_name``; the CLI
exits with ``exit_code``. Anything else raised inside the coordinator is a bug: it is logged
with its traceback and answered as INTERNAL with an id to find it in the log.
"""

from __future__ import annotations

from essaim.protocol.errors import (
    AlreadyExists,
    EssaimError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RecipeError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "AlreadyExists",
    "BannedVolunteer",
    "ConfigError",
    "EssaimError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "RecipeError",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]


class BannedVolunteer(PermissionDenied):
    """A banned volunteer tried to register or use its token."""

    def __init__(self, volunteer_id: str, reason: str = "") -> None:
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"volunteer {volunteer_id} is banned by this coordinator's admin{why}; "
            "ask the admin to lift the ban"
        )
        self.volunteer_id = volunteer_id


class ConfigError(InvalidArgument):
    """A setting or flag the coordinator cannot start with."""
