"""``essaim demo``: a whole swarm on one machine, from an empty directory to a trained model.

It starts a coordinator (SQLite in a temporary directory), builds and submits the built-in job (a
tiny causal LM learning to add, on a generated corpus), registers N volunteers and runs one
trainer process for each, exactly as volunteer apps would (register, ask for an assignment,
heartbeat, train peer-to-peer), shows the swarm's progress live, then downloads the artifact and
its provenance. The held-out exact-match accuracy before and after training is in the provenance.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer
from essaim.protocol.errors import EssaimError, FailedPrecondition, InvalidArgument, Unavailable
from essaim.protocol.types import FileKind, Hardware, Job, JobProgress, JobStatus
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

console = Console(stderr=True)
READY_PREFIX = "essaim coordinator ready "
FINAL = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.REJECTED}
EPOCHS_ENV = "ESSAIM_DEMO_EPOCHS"


@dataclass
class Coordinator:
    proc: subprocess.Popen[str]
    grpc: str
    http: str
    admin_token: str
    data_dir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_coordinator(data_dir: Path, log_path: Path, *, timeout: float = 90.0) -> Coordinator:
    env = {
        **os.environ,
        "ESSAIM_COORDINATOR_HEARTBEAT_INTERVAL_S": "2",
        "ESSAIM_COORDINATOR_HEARTBEAT_TIMEOUT_S": "20",
    }
    log = open(log_path, "ab")  # noqa: SIM115 - the coordinator's stderr for its whole life
    proc = subprocess.Popen(
        [sys.executable, "-m", "essaim.coordinator", "serve", "--data-dir", str(data_dir),
         "--grpc-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env,
    )
    log.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    ready: dict[str, str] = {}
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(READY_PREFIX):
                ready.update(dict(part.split("=", 1) for part in line[len(READY_PREFIX):].split() if "=" in part))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while not ready and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if not ready:
        proc.kill()
        raise Unavailable(f"the demo coordinator did not start; see {log_path}")
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    token = (data_dir / "admin-token").read_text().strip()
    return Coordinator(proc, ready["grpc"], ready["http"], token, data_dir)


def _hardware() -> Hardware:
    return Hardware(
        os=platform.system().lower(), arch=platform.machine(), cpu_cores=psutil.cpu_count() or 1,
        ram_bytes=psutil.virtual_memory().total, accelerator="cpu",
    )


@dataclass
class Volunteer:
    """One demo volunteer: its identity, its registration and its trainer process."""

    name: str
    directory: Path
    coordinator: str
    volunteer_id: str = ""
    token: str = ""
    handle: Any = None
    state: str = "starting"
    progress: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""
    error: str = ""
    threads: int = 1  # its share of this machine's cores

    def register(self) -> None:
        from essaim.client import keys
        from essaim.protocol.client import CoordinatorClient

        key = keys.load_or_create_private_key(self.directory / "identity.pem")
        peer_id = keys.peer_id_for(key)
        with CoordinatorClient(self.coordinator) as client:
            reg = client.register_with_key(sign=partial(keys.sign, key), public_key=keys.public_key_der(key),
                                           peer_id=peer_id, name=self.name, hardware=_hardware(), team="demo")
        self.volunteer_id, self.token = reg.volunteer_id, reg.token

    def start(self, deadline: float) -> None:
        from essaim.client.trainer_handle import TrainerHandle, default_trainer_command
        from essaim.client.trainer_protocol import assignment_for_trainer
        from essaim.protocol.client import CoordinatorClient

        with CoordinatorClient(self.coordinator, token=self.token) as client:
            while True:
                try:
                    assignment = client.get_assignment(self.volunteer_id, _hardware())
                except (Unavailable, FailedPrecondition):
                    assignment = None  # the job's swarm is starting
                if assignment is not None and assignment.job is not None and assignment.initial_peers:
                    break
                if time.monotonic() > deadline:
                    raise Unavailable(f"{self.name} got no assignment from the demo coordinator")
                time.sleep(1.0)
        assert assignment.job is not None
        self.job_id = assignment.job.id
        trainer_job = assignment_for_trainer(
            assignment, volunteer_id=self.volunteer_id,
            identity_key_path=str(self.directory / "identity.pem"),
            host_maddrs=["/ip4/127.0.0.1/tcp/0"], client_mode="off", threads=self.threads,
        )
        path = self.directory / "assignment.json"
        path.write_text(trainer_job.model_dump_json())
        self.handle = TrainerHandle(
            command=default_trainer_command(), assignment_file=path, work_dir=self.directory / "work",
            coordinator=self.coordinator, token=self.token, low_priority=False,
            env={"ESSAIM_LOG_LEVEL": os.environ.get("ESSAIM_LOG_LEVEL", "INFO"),
                 "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)},
        )
        self.handle.start()
        self.state = "joining"

    def poll(self) -> None:
        if self.handle is None:
            return
        for event in self.handle.events():
            kind = event.get("event")
            if kind in ("progress", "epoch"):
                self.progress = event
                self.state = "training"
            elif kind == "joined":
                self.state = "joined"
            elif kind == "error":
                self.error = str(event.get("message", ""))
                self.state = "error"
            elif kind in ("stopped", "_exit"):
                self.state = "done" if self.state != "error" else self.state

    def heartbeat(self) -> None:
        from essaim.protocol.client import CoordinatorClient

        p = self.progress
        progress = [JobProgress(
            job_id=self.job_id, epoch=int(p.get("epoch", 0)), samples=int(p.get("samples", 0)),
            compute_seconds=float(p.get("compute_seconds", 0.0)),
            samples_per_second=float(p.get("samples_per_second", 0.0)), loss=float(p.get("loss") or 0.0),
        )] if self.job_id and self.state in ("training", "joined") else []
        with CoordinatorClient(self.coordinator, token=self.token, timeout=5.0, retries=1) as client:
            client.heartbeat(volunteer_id=self.volunteer_id, state=self.state, reason="demo volunteer",
                             progress=progress)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop(timeout=10)


def _render(job: Job | None, volunteers: list[Volunteer], started: float, dashboard: str) -> Group:
    head = Table.grid(padding=(0, 2))
    elapsed = time.monotonic() - started
    if job is None:
        head.add_row("job", "submitting...")
    else:
        m = job.metrics
        head.add_row("job", f"{job.name} ({job.id[:12]})", "status", f"[bold]{job.status.value}[/]")
        head.add_row("epoch", f"{m.epoch} / {m.target_epochs}", "loss", f"{m.loss:.4f}" if m.loss else "-")
        head.add_row(
            m.eval_metric_name or "eval", f"{m.eval_metric:.3f}" if m.eval_metric_name else "-",
            "samples/s", f"{m.samples_per_second:.1f}",
        )
        head.add_row("peers averaged", str(m.live_peers), "elapsed", f"{elapsed:.0f} s")
    head.add_row("dashboard", dashboard)
    table = Table(title="volunteers", expand=False)
    for column in ("name", "state", "epoch", "samples", "samples/s", "loss"):
        table.add_column(column)
    for v in volunteers:
        p = v.progress
        loss = p.get("loss")
        table.add_row(
            v.name, v.state if not v.error else f"[red]{v.error[:60]}[/]", str(p.get("epoch", "-")),
            str(p.get("samples", "-")), f"{float(p.get('samples_per_second', 0.0)):.1f}",
            f"{float(loss):.3f}" if loss is not None else "-",
        )
    return Group(head, table)


def _demo_config() -> Any:
    """The built-in job's settings; ``ESSAIM_DEMO_EPOCHS`` (not a documented option) shortens it for CI."""
    from essaim.swarm.demo_task import DemoConfig

    epochs = os.environ.get(EPOCHS_ENV, "").strip()
    if not epochs:
        return DemoConfig()
    try:
        value = int(epochs)
    except ValueError:
        raise InvalidArgument(f"{EPOCHS_ENV}={epochs!r} is not a number of epochs; unset it") from None
    if value < 1:
        raise InvalidArgument(f"{EPOCHS_ENV} must be at least 1; unset it for the full demo")
    return DemoConfig(epochs=value)


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    tmp = Path(tempfile.mkdtemp(prefix="essaim-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_demo(*, volunteers: int, output: Path, keep_running: bool, timeout: float, workdir: Path | None) -> int:
    from essaim.protocol.client import CoordinatorClient
    from essaim.swarm.demo_task import make_demo_job

    started = time.monotonic()
    deadline = started + timeout
    output = output.resolve()
    with _workdir(workdir) as work:
        console.print(f"[bold]essaim demo[/]: a coordinator and {volunteers} volunteers on this machine ({work})")
        recipe = make_demo_job(work / "job", config=_demo_config())
        coordinator = start_coordinator(work / "coordinator", work / "coordinator.log")
        dashboard = f"http://{coordinator.http}/"
        # trainers that each spin as many threads as the machine has cores starve one another (one of
        # three got ~1% of the work on two cores): each gets its share instead
        share = max(1, (os.cpu_count() or 1) // volunteers)
        crew = [Volunteer(f"volunteer-{i + 1}", work / f"volunteer-{i + 1}", coordinator.grpc, threads=share)
                for i in range(volunteers)]
        job: Job | None = None
        try:
            with CoordinatorClient(coordinator.grpc, token=coordinator.admin_token) as admin:
                job = admin.submit_recipe_file(recipe)
                console.print(f"submitted job {job.id} ({job.name}); dashboard at {dashboard}")
                for v in crew:
                    v.directory.mkdir(parents=True, exist_ok=True)
                    v.register()
                for v in crew:
                    v.start(deadline)
                last_beat = 0.0
                with Live(_render(job, crew, started, dashboard), console=console, refresh_per_second=2) as live:
                    while True:
                        for v in crew:
                            v.poll()
                        if time.monotonic() - last_beat > 2.0:
                            last_beat = time.monotonic()
                            for v in crew:
                                with contextlib.suppress(EssaimError):
                                    v.heartbeat()
                        job = admin.get_job(job.id)
                        live.update(_render(job, crew, started, dashboard))
                        if job.status in FINAL:
                            break
                        if all(v.state == "error" for v in crew):
                            raise FailedPrecondition("every demo volunteer failed: " + crew[0].error)
                        if time.monotonic() > deadline:
                            raise Unavailable(f"the demo job did not finish within {timeout:.0f} s")
                        time.sleep(0.5)
                if job.status != JobStatus.COMPLETED:
                    console.print(f"[red]the job ended {job.status.value}: {job.status_reason}[/]")
                    return 1
                if output.exists():
                    shutil.rmtree(output / "artifact", ignore_errors=True)
                admin.download(job.id, FileKind.ARTIFACT, output)
                provenance = json.loads((output / "provenance.json").read_text())
        finally:
            for v in crew:
                v.stop()
            if not keep_running:
                coordinator.stop()
        ev = provenance.get("eval") or {}
        console.print(
            f"[bold green]done[/] in {time.monotonic() - started:.0f} s: {ev.get('metric', 'eval')} "
            f"{ev.get('before', 0.0):.3f} -> {ev.get('after', 0.0):.3f} on held-out sums"
        )
        for sample in provenance.get("samples") or []:
            console.print(f"  {sample.get('prompt')!r}: base model {sample.get('before')!r}, trained {sample.get('after')!r}",
                          highlight=False)
        console.print(f"artifact:   {output / 'artifact'}")
        console.print(f"provenance: {output / 'provenance.json'}")
        console.print(f"dashboard:  {dashboard}jobs/{job.id}")
        if keep_running:
            token_file = coordinator.data_dir / "admin-token"
            console.print(f"coordinator: {coordinator.grpc} (gRPC), admin token in {token_file}:")
            console.print(f"  ESSAIM_COORDINATOR={coordinator.grpc} ESSAIM_TOKEN=$(cat {token_file}) essaim job list",
                          soft_wrap=True, highlight=False)
            console.print("the coordinator keeps running; press Ctrl-C to stop it")
            try:
                coordinator.proc.wait()
            except KeyboardInterrupt:
                coordinator.stop()
    return 0


def demo(
    volunteers: Annotated[int, typer.Option("--volunteers", "-n", min=1, max=16, help="volunteer trainers to start")] = 3,
    output: Annotated[Path, typer.Option("--output", "-o", help="DIR/artifact and DIR/provenance.json")] = Path(
        "demo-output"),
    keep_running: Annotated[bool, typer.Option("--keep-running", help="keep the coordinator and dashboard up")] = False,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 900.0,
    workdir: Annotated[Path | None, typer.Option(help="keep the demo's working files here")] = None,
) -> None:
    """Run a local demo swarm: a coordinator and N volunteers train a tiny model to add."""
    raise typer.Exit(run_demo(volunteers=volunteers, output=output, keep_running=keep_running,
                              timeout=timeout, workdir=workdir))
