"""The volunteer app's own process: the supervisor, the control endpoint and the tray, and no CLI.

    essaim run --headless --idle-minutes 5       Typer parses and checks the flags (essaim.client.cli),
      -> launch(flags=..., tray=False)            then this process becomes, same pid (os.execv):
      -> python -m essaim.client.entry --flags '{"policy.idle_minutes": 5.0}' --log-level INFO \
             -- /path/to/essaim run --headless --idle-minutes 5

The app runs for days, so what it holds in memory counts: Typer, Click, Rich and pydantic, which the
command line needs, would stay loaded for nothing (about 15 MB). ``essaim run`` and ``essaim`` alone
therefore parse their options, then replace themselves with this module, which imports only the
app. ``--tray`` shows the tray icon; ``--flags`` carries the settings given on the command line;
what follows ``--`` is the command as it was typed, ignored but kept visible to ``ps`` and
``pkill -f`` (the Windows tray stops the app that way).
Errors end the process with ``error: <message>`` and the error's exit code, as the CLI does.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import logging.handlers
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from essaim.client import control
from essaim.client.config import Paths
from essaim.protocol.errors import EssaimError

logger = logging.getLogger(__name__)
MODULE = "essaim.client.entry"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def launch(*, flags: dict[str, Any], tray: bool) -> NoReturn:
    """Become the app: exec this module with ``flags`` (the same pid), keeping the log level in force."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    argv = [sys.executable, "-m", MODULE, "--flags", json.dumps(flags), "--log-level", str(level)]
    if tray:
        argv.append("--tray")
    argv += ["--", *sys.argv]  # the command as typed stays in ps, for `pkill -f "essaim run --headless"`
    sys.stdout.flush()
    sys.stderr.flush()
    if not sys.executable or not hasattr(os, "execv"):
        sys.exit(main(argv[3:]))
    os.execv(sys.executable, argv)


def serve(*, flags: dict[str, Any], tray: bool, paths: Paths | None = None) -> None:
    """Run the app (supervisor + control endpoint, and the tray unless headless) until it is stopped."""
    from essaim.client.supervisor import Supervisor

    paths = paths or Paths.default()
    paths.ensure()
    _log_to_file(paths)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack (a stuck app)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    supervisor = Supervisor(paths=paths, flags=flags)
    server = control.ControlServer(paths.control_address, handler=supervisor.command)
    server.start()
    stop = threading.Event()
    try:
        if tray:
            from essaim.client.tray import Tray

            Tray(
                supervisor, paths=paths, stop=stop, force_exit=True, on_exit=server.stop
            ).run()  # main thread
        else:
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: stop.set())
            supervisor.run(stop)
    finally:
        stop.set()
        server.stop()


def _log_to_file(paths: Paths) -> None:
    """Keep a rotating app.log that the tray's "Open logs" shows."""
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        paths.log_dir / "app.log", maxBytes=2_000_000, backupCount=3
    )
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def _parse(argv: list[str]) -> tuple[dict[str, Any], bool, str]:
    flags: dict[str, Any] = {}
    tray, level = False, "INFO"
    args = iter(argv)
    for arg in args:
        if arg == "--tray":
            tray = True
        elif arg == "--flags":
            flags = json.loads(next(args, "{}"))
        elif arg == "--log-level":
            level = next(args, level).upper()
        elif arg == "--":
            break  # the command line the app was started with, kept for ps
        else:
            raise SystemExit(
                f"usage: python -m {MODULE} [--tray] [--flags JSON] [--log-level LEVEL] [-- COMMAND...]; "
                f"unknown argument {arg!r} (start the app with `essaim run`)"
            )
    return flags, tray, level


def main(argv: list[str] | None = None) -> int:
    """Run the app from ``argv`` (see :func:`launch`); returns the exit code."""
    flags, tray, level = _parse(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    try:
        serve(flags=flags, tray=tray)
    except EssaimError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
