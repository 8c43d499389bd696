"""The errors every essaim component shares, and how they cross the wire.

    EssaimError                      base of every error essaim raises on purpose
    ├── InvalidArgument              bad input: a recipe, a flag, a message field   (gRPC INVALID_ARGUMENT, exit 2)
    │   └── RecipeError              a recipe that fails validation, with one line per problem
    ├── NotFound                     unknown job, volunteer, file                   (NOT_FOUND, exit 3)
    ├── Unauthenticated              missing, unknown or expired token              (UNAUTHENTICATED, exit 4)
    ├── PermissionDenied             a valid token whose role may not do this       (PERMISSION_DENIED, exit 4)
    ├── FailedPrecondition           protocol version mismatch, wrong job state     (FAILED_PRECONDITION, exit 2)
    ├── AlreadyExists                                                               (ALREADY_EXISTS, exit 2)
    ├── ResourceExhausted            payload too large, rate limited                (RESOURCE_EXHAUSTED, exit 2)
    └── Unavailable                  coordinator unreachable or overloaded          (UNAVAILABLE, exit 5)

Messages are written for the person who reads them: what is wrong and how to fix it. The server
maps these to gRPC status codes (``GRPC_CODE_NAMES``); the clients map status codes back with
``from_grpc_status`` so callers only ever see these classes, never ``grpc.RpcError``.
"""

from __future__ import annotations


class EssaimError(Exception):
    """Base of every error essaim raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1
    grpc_code_name = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(EssaimError):
    exit_code = 2
    grpc_code_name = "INVALID_ARGUMENT"


class RecipeError(InvalidArgument):
    """A recipe that fails validation. ``problems`` holds one human line per problem."""

    def __init__(self, problems: list[str], *, source: str = "recipe") -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} is not valid ({len(self.problems)} problem(s)):\n{lines}")


class NotFound(EssaimError):
    exit_code = 3
    grpc_code_name = "NOT_FOUND"


class Unauthenticated(EssaimError):
    exit_code = 4
    grpc_code_name = "UNAUTHENTICATED"


class PermissionDenied(EssaimError):
    exit_code = 4
    grpc_code_name = "PERMISSION_DENIED"


class FailedPrecondition(EssaimError):
    exit_code = 2
    grpc_code_name = "FAILED_PRECONDITION"


class AlreadyExists(EssaimError):
    exit_code = 2
    grpc_code_name = "ALREADY_EXISTS"


class ResourceExhausted(EssaimError):
    exit_code = 2
    grpc_code_name = "RESOURCE_EXHAUSTED"


class Unavailable(EssaimError):
    exit_code = 5
    grpc_code_name = "UNAVAILABLE"


_BY_CODE_NAME: dict[str, type[EssaimError]] = {
    cls.grpc_code_name: cls
    for cls in (
        InvalidArgument,
        NotFound,
        Unauthenticated,
        PermissionDenied,
        FailedPrecondition,
        AlreadyExists,
        ResourceExhausted,
        Unavailable,
    )
}
_BY_CODE_NAME["DEADLINE_EXCEEDED"] = Unavailable


def from_grpc_code_name(code_name: str, message: str) -> EssaimError:
    """The essaim error for a gRPC status code name (``grpc.StatusCode.X.name``)."""
    return _BY_CODE_NAME.get(code_name, EssaimError)(message)


def from_grpc_status(code_name: str, details: str, address: str) -> EssaimError:
    """The essaim error for a call to ``address`` that failed with this status; both clients use it.

    UNAVAILABLE and DEADLINE_EXCEEDED say the coordinator cannot be reached and name its address.
    """
    if code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return Unavailable(f"cannot reach the coordinator at {address}: {details or code_name}")
    if code_name == "UNKNOWN" and not details:
        details = "the coordinator answered with an unknown error"
    return from_grpc_code_name(code_name, details or f"the call failed with {code_name}")
