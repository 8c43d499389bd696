"""Fixtures for the swarm integration tests: the demo job, a bootstrap DHT peer and trainer
processes (``python -m essaim.client.trainer --headless``), all on 127.0.0.1.

Every process is started in its own session and killed with its whole process group when the test
ends, pass or fail, so no hivemind daemon outlives a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
JOB_ID = "job-swarm-test"

# small and quick: about a second of compute per epoch per peer on one thread
TRAINING = {
    "target_batch_size": 160,
    "batch_size": 16,
    "matchmaking_time": 1.5,
    "averaging_timeout": 15.0,
    "compression": "fp16",
    "epochs": 1000,
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return env


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill a process we started and every process of its session (hivemind's children, p2pd)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from essaim.swarm.demo_task import make_demo_job

    out = tmp_path_factory.mktemp("demo-job")
    make_demo_job(out, train_lines=4000)
    return out


def recipe_text(demo_dir: Path, **training: Any) -> str:
    data = yaml.safe_load((demo_dir / "recipe.yaml").read_text())
    data["training"].update(TRAINING)
    data["training"].update(training)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.mkdir(mode=0o700)
    return path


class Bootstrap:
    """The job's bootstrap DHT peer (tests/integration/swarm/bootstrap_peer.py) in its own process."""

    def __init__(self, keys_dir: Path, log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "bootstrap_peer.py"), "--job-id", JOB_ID,
             "--key", str(keys_dir / "bootstrap.pem"), "--coordinator-key", str(keys_dir / "coordinator.pem")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=_env(),
            start_new_session=True, cwd=ROOT,
        )
        line = self._readline(60)
        self.maddrs: list[str] = json.loads(line)["maddrs"]

    def _readline(self, timeout: float) -> str:
        result: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: result.put(self.proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        try:
            line = result.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the bootstrap peer did not answer in time") from None
        if not line:
            raise AssertionError(f"the bootstrap peer exited: {self._log.name}")
        return line

    def records(self) -> dict[str, dict[str, Any]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("records\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(30))["records"]

    def close(self) -> None:
        _kill_group(self.proc)
        self._log.close()


class Trainer:
    """One trainer process; its events are collected as they arrive."""

    def __init__(self, name: str, *, work_dir: Path, assignment: dict[str, Any]) -> None:
        self.name = name
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "assignment.json").write_text(json.dumps(assignment))
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stderr = (work_dir / "stderr.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "essaim.client.trainer", "--assignment", str(work_dir / "assignment.json"),
             "--work-dir", str(work_dir), "--headless", "--verbose"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=_env(),
            start_new_session=True, cwd=ROOT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line}
            event["received"] = time.monotonic()
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "eof", "received": time.monotonic()})
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str = "") -> dict[str, Any]:
        """The first event (past or future) matching ``predicate``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                    if event["event"] == "eof":
                        raise AssertionError(f"{self.name} exited before {what or 'the event'}: {self.tail()}")
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: no {what or 'matching event'} in {timeout} s: {self.tail()}")
                self._cond.wait(left)

    def wait_epoch(self, epoch: int, timeout: float) -> dict[str, Any]:
        return self.wait_for(lambda e: e["event"] in ("epoch", "joined", "progress") and e.get("epoch", -1) >= epoch,
                             timeout, f"epoch {epoch}")

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        log = self.work_dir / "stderr.log"
        text = log.read_text() if log.exists() else ""
        return f"last events {self.events[-3:]}\n--- stderr tail ---\n{text[-3000:]}"

    def cpu_seconds(self) -> float:
        """CPU time of the trainer and all its children so far."""
        try:
            main = psutil.Process(self.proc.pid)
            procs = [main, *main.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total

    def kill(self) -> None:
        """SIGKILL the trainer process only (its children must leave by themselves)."""
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        _kill_group(self.proc)
        self._stderr.close()
        keep = os.environ.get("ESSAIM_SWARM_TEST_LOGS")
        if keep:  # keep the logs of a run for a post-mortem (pytest rotates its temporary dirs)
            target = Path(keep) / f"{self.work_dir.parent.name}-{self.name}-{self.proc.pid}"
            target.mkdir(parents=True, exist_ok=True)
            for name in ("stderr.log", "assignment.json"):
                if (self.work_dir / name).exists():
                    shutil.copy(self.work_dir / name, target / name)
            (target / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in self.events))


class Swarm:
    """Makes the bootstrap peer and trainers of one test, and kills them all at the end."""

    def __init__(self, tmp_path: Path, keys_dir: Path, demo_dir: Path) -> None:
        from essaim.swarm.identity import load_or_create_private_key, public_key_bytes

        self.tmp_path, self.keys_dir, self.demo_dir = tmp_path, keys_dir, demo_dir
        self.job_id = JOB_ID
        self.coordinator = load_or_create_private_key(keys_dir / "coordinator.pem")
        self.coordinator_public = public_key_bytes(self.coordinator)
        self.trainers: list[Trainer] = []
        self.bootstrap: Bootstrap | None = None

    def recipe(self, **training: Any) -> str:
        """The demo job's recipe with the tests' quick training settings (and ``training`` overrides)."""
        return recipe_text(self.demo_dir, **training)

    @staticmethod
    def saved_state(trainer: Trainer) -> dict[str, Any]:
        """The epoch and trainable weights a trainer saved in its state file when it stopped."""
        return load_trainable(trainer.work_dir)

    def start_bootstrap(self) -> Bootstrap:
        self.bootstrap = Bootstrap(self.keys_dir, self.tmp_path / "bootstrap.log")
        return self.bootstrap

    def token(self, name: str, *, job_id: str = JOB_ID, ttl_s: float = 3600, signer: Any = None) -> str:
        from essaim.swarm.auth import issue_swarm_token
        from essaim.swarm.identity import load_or_create_private_key, public_key_bytes

        key = load_or_create_private_key(self.keys_dir / f"{name}.pem")
        return issue_swarm_token(signer or self.coordinator, job_id=job_id, volunteer_id=name,
                                 peer_public_key=public_key_bytes(key), ttl_s=ttl_s)[0]

    def assignment(self, name: str, recipe: str, *, token: str | None = None, slots: list[int] | None = None,
                   **extra: Any) -> dict[str, Any]:
        import base64

        assert self.bootstrap is not None
        return {
            "job_id": JOB_ID,
            "recipe_yaml": recipe,
            "base_dir": str(self.demo_dir),
            "initial_peers": self.bootstrap.maddrs,
            "swarm_token": token or self.token(name),
            "coordinator_public_key": base64.b64encode(self.coordinator_public).decode(),
            "shard_ids": slots if slots is not None else [],
            "volunteer_id": name,
            "identity_key_path": str(self.keys_dir / f"{name}.pem"),
            "host_maddrs": ["/ip4/127.0.0.1/tcp/0"],
            "client_mode": "off",
            "threads": 1,
            **extra,
        }

    def start_trainer(self, name: str, recipe: str, **kwargs: Any) -> Trainer:
        trainer = Trainer(name, work_dir=self.tmp_path / name, assignment=self.assignment(name, recipe, **kwargs))
        self.trainers.append(trainer)
        return trainer

    def restart_trainer(self, old: Trainer) -> Trainer:
        assignment = json.loads((old.work_dir / "assignment.json").read_text())
        trainer = Trainer(old.name, work_dir=old.work_dir, assignment=assignment)
        self.trainers.append(trainer)
        return trainer

    def close(self) -> None:
        for trainer in self.trainers:
            trainer.close()
        if self.bootstrap is not None:
            self.bootstrap.close()


@pytest.fixture
def swarm(tmp_path: Path, keys_dir: Path, demo_dir: Path) -> Iterator[Swarm]:
    made = Swarm(tmp_path, keys_dir, demo_dir)
    try:
        yield made
    finally:
        made.close()


def load_trainable(work_dir: Path) -> dict[str, Any]:
    """The trainable weights a trainer saved in its state file when it stopped."""
    import torch

    payload = torch.load(work_dir / "swarm_state.pt", map_location="cpu", weights_only=True)
    return {"epoch": payload["optimizer"]["epoch"], "trainable": payload["trainable"]}
