"""The ``essaim`` command: the root of the command tree, and the one place that sets up logging.

    essaim --version
    essaim                                   the volunteer tray (help until the app provides it)
    essaim run | status | pause | resume | finish | config     the volunteer app (essaim.client.cli)
    essaim demo                              a local demo swarm (essaim.demo)
    essaim job init | validate | submit | list | status | cancel | approve | priority | download
    essaim coordinator serve | token | ledger (essaim.coordinator.cli) | volunteers | ban

Groups that live in other packages are mounted when their module exists; a module that exists
but fails to import is a bug and raises. Every :class:`EssaimError` ends the command with
``error: <message>`` on stderr and the error's exit code (2 usage, 3 not found, 4 unauthorized,
5 unreachable); Ctrl-C exits 130.
"""

from __future__ import annotations

import enum
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from essaim import admin, job, output
from essaim.protocol.errors import EssaimError
from essaim.protocol.version import PROTOCOL_VERSION, __version__
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click.core import Context as ClickContext


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"

SERVICE_COMMANDS = {("coordinator", "serve"), ("run",)}
"""Long-running commands whose log level defaults to INFO instead of WARNING (the demo keeps WARNING:
its live view is the output, and each process logs to a file in its work dir)."""


class EssaimGroup(TyperGroup):
    """The root group: turns every EssaimError raised below it into a message and an exit code."""

    def invoke(self, ctx: ClickContext) -> Any:
        # the root callback runs after click has taken these away; it needs them to pick a log level
        ctx.meta["essaim.command_args"] = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        try:
            return super().invoke(ctx)
        except EssaimError as err:
            output.print_error(err)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            output.notice("interrupted")
            raise typer.Exit(130) from None


def plain_help() -> None:
    """Help as a user reads it: typer (0.29) prints ``<bool>`` beside every flag, which reads as "takes
    a value" (``--json true`` then fails), and ``{ID}`` for a required argument in the usage line.
    Flags show no type, and usage lines name arguments as click does (``ID``). Where typer moved
    these methods, its own help stays."""
    from typer import core

    option_type = getattr(core.TyperOption, "display_type_rich", None)
    if option_type is not None and not getattr(option_type, "essaim_plain", False):
        def display_type_rich(self: Any, ctx: Any) -> str | None:
            return None if getattr(self, "is_flag", False) else option_type(self, ctx)

        display_type_rich.essaim_plain = True  # type: ignore[attr-defined]
        core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
    if hasattr(core.TyperArgument, "_usage_display_name"):
        def usage_name(self: Any) -> str:
            name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return name + ("..." if self.nargs != 1 else "")

        core.TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


def optional_module(name: str) -> ModuleType | None:
    """Import ``name``; None only when that module (or its package) does not exist yet."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise


def _merge(into: typer.Typer, source: typer.Typer, *, with_callback: bool) -> None:
    into.registered_commands.extend(source.registered_commands)
    into.registered_groups.extend(source.registered_groups)
    if with_callback and source.registered_callback is not None:
        into.registered_callback = source.registered_callback


def _version(value: bool) -> None:
    if value:
        typer.echo(f"essaim {__version__} (protocol {PROTOCOL_VERSION})")
        raise typer.Exit()


def _command_path(ctx: ClickContext) -> tuple[str, ...]:
    words = [a for a in ctx.meta.get("essaim.command_args", ()) if not a.startswith("-")]
    return tuple(words[:2])


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be swapped)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str) -> None:
    """Log records go to stderr: through rich on a terminal, as plain lines in files and pipes."""
    handler: logging.Handler
    if output.err_console.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=output.err_console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def build_app() -> typer.Typer:
    """The whole command tree, with whatever optional groups are installed."""
    plain_help()
    client_cli = optional_module("essaim.client.cli")
    server_cli = optional_module("essaim.coordinator.cli")
    demo_module = optional_module("essaim.demo")

    app = typer.Typer(
        name="essaim",
        cls=EssaimGroup,
        help="Volunteer computing for open language models: fine-tune together, peer-to-peer.",
        invoke_without_command=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        ctx: typer.Context,
        version: Annotated[
            bool,
            typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
        ] = False,
        log_level: Annotated[
            LogLevel | None,
            typer.Option(
                "--log-level",
                envvar="ESSAIM_LOG_LEVEL",
                metavar="LEVEL",
                case_sensitive=False,
                help="DEBUG, INFO, WARNING or ERROR (default: WARNING; INFO for serve and run).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        if log_level is None:
            path = _command_path(ctx)
            service = any(path[: len(cmd)] == cmd for cmd in SERVICE_COMMANDS)
            log_level = LogLevel.INFO if service else LogLevel.WARNING
        configure_logging(log_level.value)
        if ctx.invoked_subcommand is None:
            start_tray = getattr(client_cli, "start_tray", None)
            if start_tray is not None:
                start_tray()
                return
            typer.echo(ctx.get_help())
            raise typer.Exit()

    app.add_typer(job.app, name="job")

    coordinator = typer.Typer(
        name="coordinator", help="Run a coordinator, and administer a running one.", no_args_is_help=True
    )
    if server_cli is not None:
        _merge(coordinator, server_cli.app, with_callback=True)
    _merge(coordinator, admin.app, with_callback=False)
    app.add_typer(coordinator, name="coordinator")

    if client_cli is not None:
        _merge(app, client_cli.app, with_callback=False)
    if demo_module is not None:
        app.command("demo")(demo_module.demo)
    return app


app = build_app()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``essaim`` console script."""
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # keep grpc's C core quiet on stderr
    try:
        app(args=argv, prog_name="essaim")
    except EssaimError as err:  # raised outside a command (while building the tree)
        output.print_error(err)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        output.notice("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
