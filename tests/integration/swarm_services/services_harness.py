"""A real coordinator with its swarm services, a small demo job and volunteer trainers, for the
swarm services' integration tests.

    swarm = ServiceSwarm.start(launcher, tmp / "coord", recipe_path)    # coordinator + job submitted
    alice = swarm.volunteer("alice"); alice.start()                      # registered, assigned, training
    alice.wait_for(lambda e: e["event"] == "epoch", 120)
    swarm.kill_coordinator(); swarm.restart_coordinator()
    swarm.close()                                                        # every process killed

The coordinator is ``python -m essaim.coordinator serve`` started through the launcher of
``tests/conftest.py``; it spawns the job runner (:mod:`essaim.coordinator.jobrunner`) itself. Each
volunteer does what ``essaim demo`` does (:mod:`essaim.cli.demo`): an RSA identity from
:mod:`essaim.client.keys`, Register, GetAssignment, a TrainerAssignment file and a
:class:`essaim.client.trainer_handle.TrainerHandle` running ``python -m essaim.client.trainer``;
a thread sends every volunteer's heartbeat every 2 s, as the app would. Loaded by path by this
folder's conftest (test folders are not packages).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import yaml

RUNNER_MODULE = "essaim.coordinator.jobrunner"
COORDINATOR_ENV = {
    "ESSAIM_COORDINATOR_HEARTBEAT_INTERVAL_S": "2",
    "ESSAIM_COORDINATOR_HEARTBEAT_TIMEOUT_S": "30",
    "ESSAIM_LOG_LEVEL": "INFO",
}
TRAINER_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
}
DATA_DIRS: list[Path] = []  # every coordinator data dir these tests used, checked for leftover runners
# quick epochs: a few seconds of compute per epoch for two one-thread peers
TRAINING = {"batch_size": 16, "matchmaking_time": 1.5, "averaging_timeout": 15.0, "compression": "fp16"}


def make_job(out_dir: Path, *, epochs: int, target_batch_size: int, adapter: str = "full",
             averaging: str = "local", checkpoint_every_epochs: int = 1, eval_size: int = 40,
             **training: Any) -> Path:
    """The demo job made small: generated model and data, and a recipe with quick training settings."""
    from essaim.swarm.demo_task import DemoConfig, make_demo_job

    config = DemoConfig(epochs=epochs, target_batch_size=target_batch_size, adapter=adapter, averaging=averaging,
                        checkpoint_every_epochs=checkpoint_every_epochs, eval_size=eval_size)
    recipe_path = make_demo_job(out_dir, train_lines=3000, config=config)
    data = yaml.safe_load(recipe_path.read_text())
    data["training"].update({**TRAINING, **training})
    path = out_dir / "recipe-small.yaml"  # next to model/ and data/, which the recipe names
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def hardware() -> Any:
    from essaim.protocol.types import Hardware

    return Hardware(os=platform.system().lower(), arch=platform.machine(), cpu_cores=psutil.cpu_count() or 1,
                    ram_bytes=psutil.virtual_memory().total, accelerator="cpu")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception as exc:  # the coordinator may be restarting: keep asking
            value, last_error = None, exc
        else:
            last_error = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


class Volunteer:
    """One volunteer: identity, registration, assignment and its trainer runs (events kept per run)."""

    def __init__(self, swarm: ServiceSwarm, name: str, directory: Path) -> None:
        self.swarm, self.name, self.directory = swarm, name, directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key_path = directory / "identity.pem"
        self.volunteer_id = ""
        self.token = ""
        self.peer_id = ""
        self.handle: Any = None
        self.runs: list[list[dict[str, Any]]] = []
        self.work_dir = directory / "work"
        self._cond = threading.Condition()
        self._pump: threading.Thread | None = None

    # ---- the app's side ----
    def register(self) -> None:
        from essaim.client import keys

        key = keys.load_or_create_private_key(self.key_path)
        self.peer_id = keys.peer_id_for(key)
        with self.swarm.client() as client:
            reg = client.register_with_key(sign=partial(keys.sign, key), public_key=keys.public_key_der(key),
                                           peer_id=self.peer_id, name=self.name, hardware=hardware())
        self.volunteer_id, self.token = reg.volunteer_id, reg.token

    def assignment(self, timeout: float = 120.0) -> Any:
        """GetAssignment until the job's swarm gives initial peers (its runner takes a while to start)."""
        from essaim.protocol.errors import EssaimError

        def ask() -> Any:
            with self.swarm.client(self.token) as client:
                try:
                    got = client.get_assignment(self.volunteer_id, hardware())
                except EssaimError:
                    return None
            return got if got.job is not None and got.initial_peers else None

        return wait_until(ask, timeout, f"an assignment with initial peers for {self.name}", interval=1.0)

    def start(self, *, work_dir: Path | None = None, client_mode: str = "off",
              host_maddrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",), prefix: tuple[str, ...] = (),
              command: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """Ask for an assignment and start a trainer (the same work dir as before unless told).

        ``prefix`` goes before the trainer's command (``ip netns exec NS``: a volunteer behind a
        NAT); ``command`` replaces the trainer's (a hostile one), ``env`` adds to its environment."""
        from essaim.client.trainer_handle import TrainerHandle, default_trainer_command
        from essaim.client.trainer_protocol import assignment_for_trainer

        if not self.volunteer_id:
            self.register()
        if work_dir is not None:
            self.work_dir = work_dir
        assignment = self.assignment()
        assert assignment.job.id == self.swarm.job_id, assignment.job.id
        trainer_job = assignment_for_trainer(
            assignment, volunteer_id=self.volunteer_id, identity_key_path=str(self.key_path),
            host_maddrs=list(host_maddrs), client_mode=client_mode, threads=1,
        )
        path = self.directory / "assignment.json"
        path.write_text(trainer_job.model_dump_json())
        self.handle = TrainerHandle(
            command=[*prefix, *(command or default_trainer_command())], assignment_file=path,
            work_dir=self.work_dir, coordinator=self.swarm.coord.grpc_address, token=self.token, low_priority=False,
            env={**TRAINER_ENV, **(env or {})},
        )
        with self._cond:
            self.runs.append([])
        self.handle.start()
        self._pump = threading.Thread(target=self._pump_events, args=(self.handle, self.runs[-1]), daemon=True)
        self._pump.start()

    def _pump_events(self, handle: Any, events: list[dict[str, Any]]) -> None:
        while True:
            got = handle.events()
            if got:
                with self._cond:
                    for event in got:
                        event["received"] = time.monotonic()
                    events.extend(got)
                    self._cond.notify_all()
                if any(e.get("event") == "_exit" for e in got):
                    return
            time.sleep(0.1)

    # ---- observing ----
    @property
    def events(self) -> list[dict[str, Any]]:
        return self.runs[-1] if self.runs else []

    @property
    def alive(self) -> bool:
        return self.handle is not None and self.handle.alive

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str = "",
                 *, after: int = 0) -> dict[str, Any]:
        """The first event of the current run (from index ``after``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        events = self.events
        seen = after
        with self._cond:
            while True:
                for event in events[seen:]:
                    if predicate(event):
                        return event
                    if event.get("event") == "_exit":
                        raise AssertionError(f"{self.name}'s trainer exited before {what or 'the event'}: "
                                             f"{self.tail()}")
                seen = len(events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what or 'matching event'} in {timeout:.0f} s: {self.tail()}")
                self._cond.wait(min(left, 1.0))

    def wait_epoch(self, epoch: int, timeout: float, *, after: int = 0) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") in ("epoch", "progress", "joined") and e.get("epoch", -1) >= epoch,
                             timeout, f"epoch {epoch}", after=after)

    def last(self, kind: str) -> dict[str, Any] | None:
        with self._cond:
            return next((e for e in reversed(self.events) if e.get("event") == kind), None)

    def epoch(self) -> int:
        with self._cond:
            return max((int(e.get("epoch", 0)) for e in self.events if "epoch" in e), default=0)

    def tail(self) -> str:
        log = self.work_dir / "trainer-stderr.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return f"last events {self.events[-3:]}\n--- trainer stderr tail ---\n{text[-3000:]}"

    # ---- stopping ----
    def kill(self) -> None:
        """SIGKILL the trainer and everything it started, as a crash or a pulled plug would."""
        if self.handle is not None:
            self.handle.kill()

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop(timeout=15)


class ServiceSwarm:
    """A coordinator (with its job runner), one submitted job and its volunteers."""

    def __init__(self, launcher: Any, data_dir: Path, coord: Any, job_id: str, recipe_path: Path) -> None:
        self.launcher, self.data_dir, self.coord, self.job_id = launcher, data_dir, coord, job_id
        self.recipe_path = recipe_path  # beside the job's model/ and data/
        self.volunteers: list[Volunteer] = []
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True)
        self._beats.start()

    @classmethod
    def start(cls, launcher: Any, data_dir: Path, recipe_path: Path) -> ServiceSwarm:
        DATA_DIRS.append(data_dir)
        coord = launcher(data_dir, env=COORDINATOR_ENV)
        with coord.client(coord.admin_token) as admin:
            job = admin.submit_recipe_file(recipe_path)
        return cls(launcher, data_dir, coord, job.id, recipe_path)

    # ---- the coordinator ----
    def client(self, token: str | None = None) -> Any:
        return self.coord.client(token, timeout=10.0)

    def admin(self) -> Any:
        return self.client(self.coord.admin_token)

    def job(self) -> Any:
        with self.admin() as admin:
            return admin.get_job(self.job_id)

    def open_store(self) -> Any:
        from essaim.coordinator.store import open_store

        return open_store(f"sqlite:///{(self.data_dir / 'coordinator.db').resolve()}")

    def contributions(self) -> dict[str, int]:
        """Samples in the ledger per volunteer id, for this job."""
        store = self.open_store()
        try:
            return {c.volunteer_id: c.samples for c in store.contributions(job_id=self.job_id)}
        finally:
            store.close()

    def stored_job(self) -> Any:
        """The job as the store holds it (readable while the coordinator is down)."""
        store = self.open_store()
        try:
            return store.get_job(self.job_id)
        finally:
            store.close()

    def epoch_history(self) -> list[int]:
        store = self.open_store()
        try:
            return [m.epoch for _, m in store.list_progress(self.job_id)]
        finally:
            store.close()

    @property
    def job_dir(self) -> Path:
        return self.data_dir / "jobs" / self.job_id

    def keeper_record(self) -> dict[str, Any]:
        """The keeper's record (``keeper.json``); {} before its first write."""
        try:
            return json.loads((self.job_dir / "keeper.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_averaged(self, volunteers: int = 2, timeout: float = 240.0) -> None:
        """Until a round of the averaging peer has averaged ``volunteers`` volunteers or more."""
        wait_until(lambda: any(len(r["volunteers"]) >= volunteers for r in self.rounds()), timeout,
                   f"a first round of {volunteers} volunteers", interval=1.0)

    def wait_ended(self, timeout: float = 480.0) -> Any:
        """Until the job has completed or failed; returns it."""
        return wait_until(lambda: (job := self.job()).status.value in ("completed", "failed") and job, timeout,
                          "the job to end", interval=2.0)

    def rounds(self) -> list[dict[str, Any]]:
        """The averaging peer's rounds so far (``rounds.jsonl``, essaim.coordinator.rounds)."""
        path = self.job_dir / "rounds.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def runner_info(self) -> dict[str, Any]:
        path = self.job_dir / "runner.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def runner_pids(self) -> list[int]:
        """Job runner processes of this coordinator's data dir still alive."""
        return runner_pids(self.data_dir)

    def kill_coordinator(self, *, with_runner: bool = False) -> None:
        """kill -9 the coordinator (the job runner lives on in its own session unless ``with_runner``)."""
        self.coord.kill()
        if with_runner:
            for pid in self.runner_pids():
                kill_group(pid)
            wait_until(lambda: not self.runner_pids(), 15, "the job runner to die")

    def restart_coordinator(self) -> None:
        """Start the coordinator again on the same data dir and ports."""
        grpc_port = self.coord.grpc_address.rsplit(":", 1)[1]
        http_port = self.coord.http_address.rsplit(":", 1)[1]
        self.coord = self.launcher(self.data_dir, "--grpc-port", grpc_port, "--http-port", http_port,
                                   env=COORDINATOR_ENV)

    # ---- volunteers ----
    def volunteer(self, name: str) -> Volunteer:
        v = Volunteer(self, name, self.data_dir.parent / f"volunteer-{name}")
        self.volunteers.append(v)
        return v

    def _heartbeats(self) -> None:
        from essaim.protocol.client import CoordinatorClient
        from essaim.protocol.errors import EssaimError
        from essaim.protocol.types import JobProgress

        while not self._stop.wait(2.0):
            for v in list(self.volunteers):
                if not v.volunteer_id:
                    continue
                p = v.last("progress") or v.last("epoch") or {}
                training = v.alive and bool(p)
                progress = [JobProgress(
                    job_id=self.job_id, epoch=int(p.get("epoch", 0)), samples=int(p.get("samples", 0)),
                    compute_seconds=float(p.get("compute_seconds", 0.0)),
                    samples_per_second=float(p.get("samples_per_second", 0.0)), loss=float(p.get("loss") or 0.0),
                )] if training else []
                with contextlib.suppress(EssaimError), CoordinatorClient(
                    self.coord.grpc_address, token=v.token, timeout=3.0, retries=1
                ) as client:
                    client.heartbeat(volunteer_id=v.volunteer_id, state="training" if training else "idle",
                                     progress=progress)

    def close(self) -> None:
        self._stop.set()
        for v in self.volunteers:
            with contextlib.suppress(Exception):
                v.kill()
        with contextlib.suppress(Exception):
            self.coord.stop()
        for pid in self.runner_pids():  # a runner orphaned by a killed coordinator
            kill_group(pid)
        self._beats.join(10)


def runner_pids(data_dir: Path) -> list[int]:
    """Job runners (``python -m essaim.coordinator.jobrunner``) working in ``data_dir``: the leaders
    of their sessions, not the helper processes hivemind forks from them (same command line)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getsid(proc.info["pid"]) != proc.info["pid"]:
                continue
        except (psutil.Error, OSError):
            continue
        if RUNNER_MODULE in cmdline and any(str(data_dir) in part for part in cmdline):
            found.append(proc.info["pid"])
    return found


def kill_group(pid: int) -> None:
    """SIGKILL a process started in its own session, with everything in it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(10)


def essaim(*args: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``essaim`` command line."""
    return subprocess.run([sys.executable, "-m", "essaim", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
