"""``essaim job ...``: the researcher's commands.

    essaim job init [--output FILE]          the documented example recipe (it validates as is)
    essaim job validate FILE [--json]        every problem with its field path, value and expectation
    essaim job submit FILE [--priority N]    uploads the recipe's files, prints the new job's id
    essaim job list [--status S ...]         jobs as a table
    essaim job status ID [--follow]          one job; --follow draws a live progress bar until it ends
    essaim job cancel | approve | priority   change a job
    essaim job download ID [--output DIR]    the artifact into DIR/artifact, provenance.json into DIR

Mounted by :mod:`essaim.main`; remote commands get their client from :mod:`essaim.remote`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from essaim import output
from essaim.output import console
from essaim.protocol.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    RecipeError,
    Unavailable,
)
from essaim.protocol.types import FileKind, Job, JobStatus
from essaim.remote import CoordinatorOption, TokenOption, client_from_options

if TYPE_CHECKING:
    from essaim.protocol.client import CoordinatorClient
    from essaim.protocol.recipe import Recipe

app = typer.Typer(
    name="job",
    help="Submit fine-tune jobs as recipes, follow them and download what they made.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
JobIdArg = Annotated[str, typer.Argument(metavar="ID", help="The job id `essaim job submit` printed.")]

STATUS_STYLE = {
    JobStatus.AWAITING_APPROVAL: "magenta",
    JobStatus.QUEUED: "blue",
    JobStatus.RUNNING: "cyan",
    JobStatus.PAUSED: "yellow",
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "yellow",
    JobStatus.REJECTED: "red",
}
UNREACHABLE_GRACE_SECONDS = 300.0
"""How long ``--follow`` keeps polling a coordinator that stopped answering before giving up."""


def styled_status(status: JobStatus) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status.value}[/]"


def metrics_line(job: Job) -> str:
    """``loss 2.31 · 812 samples/s · eval loss 2.10 · 5 peers · ETA 1h 02m`` (what is known)."""
    m = job.metrics
    parts = []
    if m.loss:
        parts.append(f"loss {m.loss:.4g}")
    if m.samples_per_second:
        parts.append(f"{m.samples_per_second:,.1f} samples/s")
    if m.eval_metric_name:
        parts.append(f"eval {m.eval_metric_name} {m.eval_metric:.4g}")
    if m.live_peers or job.status == JobStatus.RUNNING:
        parts.append(f"{m.live_peers} peer{'s' if m.live_peers != 1 else ''} averaged")
    if m.eta_seconds and not job.status.is_final:
        parts.append(f"ETA {output.duration(m.eta_seconds)}")
    return " · ".join(parts)


def epoch_text(job: Job) -> str:
    m = job.metrics
    return f"{m.epoch}/{m.target_epochs}" if m.target_epochs else str(m.epoch)


def _show_job(job: Job) -> None:
    grid = output.table("", "")
    grid.show_header = False
    m = job.metrics
    status = styled_status(job.status)
    if job.status_reason:
        status += f" ({output.escape(job.status_reason)})"
    rows = [
        ("id", job.id),
        ("name", output.escape(job.name)),
        ("status", status),
        ("owner", output.escape(job.owner) or "-"),
        ("priority", str(job.priority)),
        ("created", output.ago(job.created_at)),
        ("updated", output.ago(job.updated_at)),
        ("epoch", epoch_text(job)),
        ("samples", f"{m.samples:,}"),
        ("progress", metrics_line(job) or "-"),
        ("files", f"{len(job.files)} ({output.human_bytes(sum(f.size for f in job.files))})"),
        ("artifact", "ready: essaim job download " + job.id if job.has_artifact else "not yet"),
    ]
    for key, value in rows:
        grid.add_row(f"[bold]{key}[/]", value)
    console.print(grid)


def _print_job(job: Job, as_json: bool, done: str) -> None:
    if as_json:
        output.print_json(job)
    else:
        output.notice(f"{done} job {output.escape(job.name)}: {styled_status(job.status)}")
        output.plain(job.id)


# ---- local commands ---------------------------------------------------------------------------


@app.command("init")
def init(
    output_file: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write the recipe here instead of stdout.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
) -> None:
    """Print the documented example recipe: a starting point whose fields validate as is (`validate` then asks
    for the data files it names, next to the recipe)."""
    from essaim.protocol.recipe import example_recipe_text  # pydantic: only for recipe commands

    text = example_recipe_text()
    if output_file is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    if output_file.exists() and not force:
        raise InvalidArgument(f"{output_file} exists; pass --force to overwrite it, or choose another --output")
    try:
        output_file.parent.mkdir(parents=True, exist_ok=True)
        output_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot write {output_file}: {exc.strerror}") from None
    output.notice(f"wrote {output_file}; edit it, put the data files it names beside it, "
                  f"then run `essaim job validate {output_file}`")


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The recipe (YAML) to check.")],
    as_json: JsonOption = False,
) -> None:
    """Check a recipe: every problem is named with its field path, the value given and what is expected;
    the data and eval files it names must be there, next to it, as `submit` will upload them."""
    from essaim.protocol.recipe import load_recipe_file

    try:
        recipe = load_recipe_file(file)
        _check_recipe_files(recipe, file)
    except RecipeError as err:
        if not as_json:
            raise
        output.print_json({"valid": False, "file": str(file), "problems": err.problems})
        raise typer.Exit(err.exit_code) from None
    files = recipe.referenced_files()
    if as_json:
        output.print_json({"valid": True, "file": str(file), "name": recipe.name, "files": files})
        return
    console.print(
        f"[green]ok[/]: {output.escape(str(file))} is a valid recipe "
        f"(job {output.escape(recipe.name)}, {len(files)} referenced file{'s' if len(files) != 1 else ''})",
        soft_wrap=True,
    )


def _check_recipe_files(recipe: Recipe, file: Path) -> None:
    """RecipeError naming each file the recipe references that is not a file beside it, as `submit`
    would refuse it."""
    from essaim.protocol.client import recipe_file_problems

    problems = recipe_file_problems(recipe, file.parent)
    if problems:
        raise RecipeError(problems, source=str(file))


# ---- remote commands --------------------------------------------------------------------------


@app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The recipe (YAML) to submit.")],
    priority: Annotated[int, typer.Option("--priority", "-p", help="Higher runs first.")] = 0,
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Validate a recipe, upload the files it references and submit it; prints the job id last."""
    from essaim.protocol.recipe import load_recipe_file

    load_recipe_file(file)  # fail on a bad recipe before touching the network
    with client_from_options(coordinator, token) as client, output.transfer_progress("uploading") as progress:
        job = client.submit_recipe_file(file, priority=priority, progress=progress)
    if as_json:
        output.print_json(job)
        return
    output.notice(
        f"submitted job {output.escape(job.name)}: {styled_status(job.status)}; "
        f"follow it with `essaim job status {job.id} --follow`"
    )
    output.plain(job.id)


@app.command("list")
def list_jobs(
    status: Annotated[
        list[JobStatus] | None, typer.Option("--status", "-s", help="Only jobs in this status (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="At most this many (0: the server's default).")] = 0,
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """List jobs, newest first."""
    with client_from_options(coordinator, token) as client:
        jobs = client.list_jobs(status or None, limit=limit)
    if as_json:
        output.print_json(jobs)
        return
    if not jobs:
        output.notice("no jobs" + (f" with status {', '.join(s.value for s in status)}" if status else ""))
        return
    rows = output.table("ID", "NAME", "STATUS", "PRIO", "EPOCH", "LOSS", "SAMPLES/S", "PEERS", "CREATED")
    for job in jobs:
        m = job.metrics
        rows.add_row(
            job.id,
            output.escape(job.name),
            styled_status(job.status),
            str(job.priority),
            epoch_text(job),
            output.number(m.loss, digits=4),
            output.number(m.samples_per_second),
            str(m.live_peers),
            output.ago(job.created_at),
        )
    output.print_table(rows)


@app.command("status")
def status(
    job_id: JobIdArg,
    as_json: JsonOption = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow the job live until it ends (exit 0 if it completed).")
    ] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls with --follow.")] = 2.0,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.0, metavar="SECONDS",
                     help="With --follow: stop following after this long (exit 1 if the job has not ended); "
                          "a coordinator unreachable this long (at most 300 s) ends it with exit 5."),
    ] = None,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Show one job; with --follow, a live progress bar of epochs with loss, throughput, eval, peers and ETA
    (exit 0 once it completed, 1 when it ended otherwise or --timeout passed, 5 when the coordinator is
    unreachable for 300 s)."""
    with client_from_options(coordinator, token) as client:
        if not follow:
            job = client.get_job(job_id)
            output.print_json(job) if as_json else _show_job(job)
            return
        try:
            job = _follow(client, job_id, interval=interval, as_json=as_json, timeout=timeout)
        except KeyboardInterrupt:
            output.notice(f"stopped following; job {job_id} goes on")
            raise typer.Exit(130) from None
    if not job.status.is_final:
        output.notice(f"stopped following after {timeout:g} s; job {job.id} is {job.status.value} and goes on")
    if job.status != JobStatus.COMPLETED:
        raise typer.Exit(1)


def _watch(client: CoordinatorClient, job_id: str, interval: float, timeout: float | None = None) -> Iterator[Job]:
    """Each polled state of the job until it reaches a final status or ``timeout`` seconds passed,
    riding out outages shorter than the grace (``UNREACHABLE_GRACE_SECONDS``, or ``timeout``)."""
    started = time.monotonic()
    grace = UNREACHABLE_GRACE_SECONDS if timeout is None else min(timeout, UNREACHABLE_GRACE_SECONDS)
    unreachable_since: float | None = None
    while True:
        try:
            job = client.get_job(job_id)
        except Unavailable as err:
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
                output.notice(f"[yellow]{output.escape(str(err))}; still trying for {grace:g} s[/]")
            if now - unreachable_since >= grace:
                raise Unavailable(f"{err}; gave up after {now - unreachable_since:.0f} s") from None
            time.sleep(min(interval, max(0.0, grace - (now - unreachable_since))))
            continue
        if unreachable_since is not None:
            output.notice("coordinator reachable again")
            unreachable_since = None
        yield job
        if job.status.is_final or (timeout is not None and time.monotonic() - started >= timeout):
            return
        time.sleep(interval)


def _follow(client: CoordinatorClient, job_id: str, *, interval: float, as_json: bool,
            timeout: float | None = None) -> Job:
    """Render the job's progress (JSON lines, a live bar, or a line per change) until it ends."""
    last_seen: object = None
    job: Job | None = None
    if as_json or not console.is_terminal:
        for job in _watch(client, job_id, interval, timeout):
            key = (job.status, job.metrics.epoch, job.status_reason) if not as_json else output.to_jsonable(job)
            if key != last_seen:
                last_seen = key
                if as_json:
                    output.print_json(job, indent=None)
                else:
                    extra = metrics_line(job)
                    console.print(
                        f"{job.status.value}: epoch {epoch_text(job)}" + (f" · {extra}" if extra else ""),
                        soft_wrap=True,
                    )
    else:
        job = _follow_live(client, job_id, interval, timeout)
    assert job is not None  # _watch yields at least once or raises
    if not as_json and job.status.is_final:
        _print_final(job)
    return job


def _follow_live(client: CoordinatorClient, job_id: str, interval: float, timeout: float | None) -> Job:
    from rich.progress import BarColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(complete_style="cyan", finished_style="green"),
        TextColumn("epoch {task.fields[epoch]}"),
        TextColumn("{task.fields[details]}"),
        console=console,
        refresh_per_second=4,
    )
    job: Job | None = None
    with bar:
        task = bar.add_task("", total=None, epoch="", details="")
        for job in _watch(client, job_id, interval, timeout):
            m = job.metrics
            bar.update(
                task,
                description=f"{output.escape(job.name)} {styled_status(job.status)}",
                total=m.target_epochs or None,
                completed=m.epoch,
                epoch=epoch_text(job),
                details=output.escape(metrics_line(job)),
            )
    assert job is not None
    return job


def _print_final(job: Job) -> None:
    m = job.metrics
    text = f"job {job.id} {styled_status(job.status)}"
    if job.status_reason:
        text += f": {output.escape(job.status_reason)}"
    text += f" (epoch {epoch_text(job)}" + (f", loss {m.loss:.4g}" if m.loss else "") + ")"
    if job.status == JobStatus.COMPLETED and job.has_artifact:
        text += f"; download it with `essaim job download {job.id}`"
    console.print(text, soft_wrap=True)


@app.command("cancel")
def cancel(
    job_id: JobIdArg,
    reason: Annotated[str, typer.Option("--reason", help="Why; shown on the job's page.")] = "",
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Cancel a job; its volunteers stop at their next heartbeat."""
    with client_from_options(coordinator, token) as client:
        job = client.cancel_job(job_id, reason)
    _print_job(job, as_json, "cancelled")


@app.command("approve")
def approve(
    job_id: JobIdArg,
    reject: Annotated[bool, typer.Option("--reject", help="Reject the job instead.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why; shown to the job's owner.")] = "",
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Approve (or --reject) a job awaiting approval (admin)."""
    with client_from_options(coordinator, token) as client:
        job = client.approve_job(job_id, reject=reject, reason=reason)
    _print_job(job, as_json, "rejected" if reject else "approved")


@app.command("priority")
def priority(
    job_id: JobIdArg,
    value: Annotated[int, typer.Argument(metavar="N", help="The new priority; higher runs first.")],
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Set a job's priority (admin)."""
    with client_from_options(coordinator, token) as client:
        job = client.set_job_priority(job_id, value)
    _print_job(job, as_json, f"priority {job.priority} for")


BASE_DIR = "base"  # download --base: the job's shipped base model, under DIR/base/<its recipe path>


def _fetch_base(client: CoordinatorClient, job: Job, dest: Path, provenance: Path | None) -> Path | None:
    """The base model of a downloaded adapter, when it was shipped with the job: its files (each the
    job's file of the sha256 provenance records; a download checks what it receives against it)
    under ``dest/base/``, and the adapter pointed at them, so
    ``AutoPeftModelForCausalLM.from_pretrained(DIR/artifact)`` loads from anywhere. Returns the base's
    folder; None, with a notice, where there is nothing to fetch (a hub model, a coordinator's folder)."""
    import json

    try:
        record = json.loads(provenance.read_text()).get("base") if provenance else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or not record.get("source"):
        output.notice("this job's provenance does not describe its base model (a coordinator older than this "
                      "client); nothing more to fetch")
        return None
    name, path = str(record.get("name", "")), str(record.get("path", ""))
    if record["source"] == "hub":
        revision = record.get("commit") or record.get("revision") or "main"
        output.notice(f"the base model is on the hub: {name} (revision {revision}); nothing more to fetch")
        return None
    if record["source"] != "shipped":
        output.notice(f"the base model ({name}) is a folder on the coordinator, which it does not serve; "
                      "provenance.json lists the sha256 of its files")
        return None
    wanted = {str(f["file"]): str(f["sha256"]) for f in record.get("files", []) if isinstance(f, dict)}
    served = {f.path: f.sha256 for f in job.files}
    root = dest / BASE_DIR
    base = (root / path).resolve()
    unlike = [file for file, sha256 in wanted.items() if served.get(file) != sha256]
    if unlike or not base.is_relative_to(root.resolve()):
        what = ", ".join(unlike) or path
        raise FailedPrecondition(f"provenance.json describes a base model the job does not hold ({what}); the base "
                                 "model cannot be trusted")
    with output.transfer_progress("downloading the base model") as progress:
        for file in wanted:
            client.download(job.id, FileKind.JOB_FILE, root, path=file, progress=progress)
    config = dest / "artifact" / "adapter_config.json"
    if config.is_file():
        adapter = json.loads(config.read_text())
        adapter["base_model_name_or_path"] = str(base)
        config.write_text(json.dumps(adapter, indent=2) + "\n")
    return base


def _check_download_dir(dest: Path, *, force: bool) -> None:
    """Refuse to mix a download into an earlier one (AlreadyExists, exit 2), unless ``force``:
    then the earlier artifact folder and provenance are removed first, so none of their files stay."""
    import shutil

    earlier = [p for p in (dest / "artifact", dest / "provenance.json", dest / BASE_DIR) if p.exists()]
    if not earlier:
        return
    if not force:
        raise AlreadyExists(f"{dest} already holds a download ({', '.join(p.name for p in earlier)}); "
                            "pass --force to replace it, or --output DIR for another folder")
    for p in earlier:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


@app.command("download")
def download(
    job_id: JobIdArg,
    output_dir: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="DIR", help="Where to put it (default: ./ID).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a download already in DIR.")] = False,
    base: Annotated[bool, typer.Option(
        "--base", help="Also fetch the base model when the job shipped it (into DIR/base) and point the "
        "adapter at it.")] = False,
    as_json: JsonOption = False,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Download a finished job's artifact into DIR/artifact and its provenance.json into DIR."""
    with client_from_options(coordinator, token) as client:
        job = client.get_job(job_id)  # ID may be the start of the job's id: the full one names DIR
        job_id = job.id
        dest = output_dir or Path(job_id)
        _check_download_dir(dest, force=force)
        if not job.has_artifact:
            if job.status.is_final:
                raise FailedPrecondition(f"job {job_id} is {job.status.value} and has no artifact to download")
            raise FailedPrecondition(
                f"job {job_id} ({job.status.value}) has no artifact yet; "
                f"wait for it with `essaim job status {job_id} --follow`"
            )
        with output.transfer_progress("downloading") as progress:
            # the coordinator serves the job's artifact tree: artifact/... and provenance.json
            files = client.download(job_id, FileKind.ARTIFACT, dest, progress=progress)
        root = dest.resolve()
        provenance = [p for p in files if p == root / "provenance.json"]
        artifact = [p for p in files if p not in provenance]
        base_dir = _fetch_base(client, job, dest, provenance[0] if provenance else None) if base else None
    if as_json:
        output.print_json(
            {
                "job_id": job_id,
                "artifact_dir": dest / "artifact",
                "artifact_files": artifact,
                "provenance": provenance[0] if provenance else None,
                "base_dir": base_dir,
            }
        )
        return
    size = sum(p.stat().st_size for p in artifact if p.exists())
    output.notice(
        f"downloaded {len(artifact)} artifact file{'s' if len(artifact) != 1 else ''} "
        f"({output.human_bytes(size)}) to {output.escape(str(dest / 'artifact'))}"
        + (f" and {output.escape(str(provenance[0]))}" if provenance else "")
        + (f"; the base model to {output.escape(str(base_dir))}" if base_dir else "")
    )
    output.plain(str(dest))
