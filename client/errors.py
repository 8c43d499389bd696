"""Errors of the volunteer app (:mod:`essaim.client`).

    EssaimError (essaim.protocol.errors)
    └── ClientError                 base of the volunteer app's errors                (exit 1)
        ├── ConfigError             a bad setting key or value, an unreadable config   (exit 2)
        ├── AppNotRunning           no running app answers on the control endpoint     (exit 6)
        ├── ControlError            the running app refused or failed a command        (exit 1)
        ├── TrainerError            the trainer process could not start or died        (exit 1)
        ├── IdentityError           the volunteer key cannot be read or made           (exit 1)
        └── NoDisplay               the tray needs a graphical session                 (exit 2)

Messages say what is wrong and what to type to fix it. The CLI prints them and exits with
``exit_code``; the supervisor shows them as its reason in ``essaim status``.
"""

from __future__ import annotations

from essaim.protocol.errors import EssaimError


class ClientError(EssaimError):
    """Base of every error the volunteer app raises on purpose."""


class ConfigError(ClientError):
    exit_code = 2


class AppNotRunning(ClientError):
    exit_code = 6

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "the essaim app is not running; start it with `essaim` (tray) or `essaim run --headless`"
        )


class ControlError(ClientError):
    pass


class TrainerError(ClientError):
    pass


class IdentityError(ClientError):
    pass


class NoDisplay(ClientError):
    exit_code = 2

    def __init__(self, detail: str = "") -> None:
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"no graphical display to show the tray icon{why}; "
            "run the app without a tray instead: `essaim run --headless`"
        )
