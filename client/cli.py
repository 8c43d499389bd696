"""The volunteer's commands: ``essaim run | status | pause | resume | finish | config``, and the tray.

    essaim                          the tray (``tray_main``); says so where there is no display
    essaim run [--headless] [--idle-minutes 5 --cpu-max-cores 2 ...]   one flag per setting
    essaim status [--json]          state, reason, job, trainer pid (from the running app)
    essaim pause [--for 1h] | resume | finish
    essaim config show | set KEY VALUE
    essaim erase-account [--yes]    erase this volunteer's account on the coordinator (app not running)

``app`` is mounted at the top level of ``essaim`` by :mod:`essaim.main`. The flags of ``run`` are
made from :data:`essaim.client.settings.SETTINGS`, so each setting has one. Once ``run`` (or the
tray) has its options, the process becomes :mod:`essaim.client.entry`, which holds no CLI library. Commands other than
``run`` talk to the running app over the local control endpoint (:mod:`essaim.client.control`);
``config`` works on the file directly when the app is not running.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from typing import Annotated, Any

import typer
from essaim.client import control, entry
from essaim.client.config import Paths, load_settings, render, save_value
from essaim.client.errors import AppNotRunning, ClientError, NoDisplay
from essaim.client.settings import SETTINGS, parse_duration
from essaim.protocol.errors import EssaimError
from essaim.protocol.tls import ENV_CA_FILE

logger = logging.getLogger(__name__)
app = typer.Typer(help="The volunteer app.", no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Show or change the volunteer app's settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _run(headless: bool, **options: Any) -> None:
    flags = {key: options[_param(key)] for key in SETTINGS if options.get(_param(key)) is not None}
    if not headless:
        problem = display_problem()
        if problem:
            raise NoDisplay(problem)
    entry.launch(flags=flags, tray=not headless)


def _param(key: str) -> str:
    return key.replace(".", "__")


def _build_run() -> Any:
    """``run``'s signature: ``--headless`` plus one optional flag per setting."""
    params = [
        inspect.Parameter(
            "headless",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--headless", help="No tray icon (servers, services).")],
        )
    ]
    for spec in SETTINGS.values():
        decl = f"{spec.flag}/--no-{spec.flag[2:]}" if spec.kind is bool else spec.flag
        option = typer.Option(
            decl, help=f"{spec.help}; config key {spec.key}", show_default=False, rich_help_panel=spec.table
        )
        params.append(
            inspect.Parameter(
                _param(spec.key),
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[spec.kind | None, option],
            )
        )

    def run(**kwargs: Any) -> None:
        """Run the volunteer app: train when the machine is idle, within every limit you set."""
        _run(**kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


app.command("run")(_build_run())


def _ask(message: dict[str, Any]) -> dict[str, Any]:
    return control.request(Paths.default().control_address, message)


@app.command()
def status(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """What the app is doing now, and why."""
    try:
        reply = _ask({"cmd": "status"})
    except AppNotRunning as exc:
        if json_output:
            typer.echo(json.dumps({"state": "not-running", "reason": str(exc), "trainer_pid": None}))
            raise typer.Exit(exc.exit_code) from None
        raise
    st = reply["status"]
    if json_output:
        typer.echo(json.dumps(st, indent=2, default=str))
        return
    typer.echo(format_status(st))


def format_status(st: dict[str, Any]) -> str:
    lines = [str(st.get("reason") or st.get("state", "?"))]
    job, trainer = st.get("job"), st.get("trainer") or {}
    if job:
        pid = f", trainer pid {st['trainer_pid']} ({trainer.get('state')})" if st.get("trainer_pid") else ""
        lines.append(f"job: {job.get('name') or job.get('id')}{pid}")
        swarm = st.get("swarm") or {}
        if swarm.get("summary"):
            lines.append(f"swarm: {swarm['summary']}")
    coordinator = st.get("coordinator")
    if coordinator:
        how = (
            "connected"
            if coordinator.get("connected")
            else f"not connected: {coordinator.get('error') or '...'}"
        )
        lines.append(f"coordinator: {coordinator.get('address')} ({how})")
    lines.extend(_temperature_lines(st.get("temperature")))
    c = st.get("contribution") or {}
    lines.append(
        f"contribution: {c.get('samples', 0):,} samples, {c.get('compute_seconds', 0) / 3600:.2f} compute hours, "
        f"{len(c.get('jobs', []))} job(s)"
    )
    for problem in st.get("config_problems") or []:
        lines.append(f"config: {problem}")
    return "\n".join(lines)


def _temperature_lines(temperature: dict[str, Any] | None) -> list[str]:
    """Why heat cannot pause training here, or the readings the temperature rule watches."""
    if not temperature:
        return []
    if temperature.get("note"):
        return [str(temperature["note"])]
    read = [
        f"{part} {temperature[f'{key}_c']:.0f}°C"
        for part, key in (("CPU", "cpu"), ("GPU", "gpu"))
        if temperature.get(f"{key}_rule") == "on" and temperature.get(f"{key}_c") is not None
    ]
    return [f"temperature: {', '.join(read)}"] if read else []


@app.command()
def pause(
    duration: Annotated[
        str | None, typer.Option("--for", help="e.g. 30m, 1h, 2h; default: until resume.")
    ] = None,
) -> None:
    """Pause training now (for a while, with --for)."""
    message: dict[str, Any] = {"cmd": "pause"}
    if duration:
        message["seconds"] = parse_duration(duration)
    typer.echo(_ask(message)["status"]["reason"])


@app.command()
def resume() -> None:
    """Resume after a pause or a finish."""
    typer.echo(_ask({"cmd": "resume"})["status"]["reason"])


@app.command()
def finish() -> None:
    """Complete the current epoch's averaging, then stop taking work."""
    typer.echo(_ask({"cmd": "finish"})["status"]["reason"])


@app.command("erase-account")
def erase_account(
    coordinator: Annotated[
        str | None, typer.Option("--coordinator", help="The coordinator's address (default: coordinator.address).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase your volunteer account on the coordinator, and forget it on this machine."""
    try:
        _ask({"cmd": "status"})
    except AppNotRunning:
        pass
    else:
        raise ClientError("the app is running: quit it first (the tray's Quit, or stop its service), "
                          "then run essaim erase-account again")
    paths = Paths.default()
    settings = load_settings(paths)
    address = coordinator or settings["coordinator.address"]
    if not address:
        raise ClientError("no coordinator is set (coordinator.address): there is no account to erase")
    if settings["coordinator.ca_file"]:
        os.environ[ENV_CA_FILE] = settings["coordinator.ca_file"]
    if not yes:
        typer.confirm(f"Erase your volunteer account on {address}? Your pseudonym, team and machine details are "
                      "deleted there; your contributions stay in its public ledger under an anonymous id",
                      abort=True)
    from essaim.client.link import erase_account as erase  # the coordinator client, only here

    volunteer_id = erase(address=address, registration_file=paths.data_dir / "registration.json",
                         identity_file=paths.identity_file)
    typer.echo(f"erased volunteer {volunteer_id} on {address}: its ledger rows remain under that id; "
               "joining again makes a new volunteer")


@config_app.command("show")
def config_show() -> None:
    """Every setting, its value and where it comes from (file, env, flag)."""
    try:
        typer.echo(_ask({"cmd": "config_show"})["text"])
    except AppNotRunning:
        paths = Paths.default()
        settings = load_settings(paths)
        for problem in settings.problems:
            typer.echo(f"# {problem}", err=True)
        typer.echo(f"# {paths.config_file}")
        typer.echo(render(settings))


@config_app.command("set", context_settings={"ignore_unknown_options": True})
def config_set(
    key: Annotated[str, typer.Argument(metavar="KEY", help="A key `essaim config show` lists, e.g. policy.idle_minutes.")],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="Its new value (a negative number is a value too).")],
) -> None:
    """Change a setting in the config file (and in the running app); exit 2 when KEY or VALUE is not valid."""
    try:
        reply = _ask({"cmd": "config_set", "key": key, "value": value})
        typer.echo(f"{key} = {reply['value']!r}")
    except AppNotRunning:
        parsed = save_value(Paths.default().config_file, key, value)
        typer.echo(f"{key} = {parsed!r} (saved; the app is not running)")


def display_problem() -> str:
    """Why no tray icon can be shown here, or "" when one can."""
    if sys.platform in ("win32", "darwin"):
        return ""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "DISPLAY is not set"
    try:
        import pystray  # noqa: F401
    except ImportError:
        return "the tray needs pystray and Pillow: pip install 'essaim[tray]'"
    except Exception as exc:  # pystray's backends raise on import when the display is unusable
        return f"the display cannot be used ({exc})"
    return ""


def tray_main() -> None:
    """``essaim`` with no arguments: the tray, or a clear message where there is no display."""
    problem = display_problem()
    if problem:
        raise NoDisplay(problem)
    entry.launch(flags={}, tray=True)


start_tray = tray_main
"""The name :mod:`essaim.main` looks for."""


def main() -> None:
    """``python -m essaim.client.cli``: these commands alone (the light entry point for autostart)."""
    try:
        app(prog_name="essaim")
    except EssaimError as err:  # raised outside a command's own handling
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
