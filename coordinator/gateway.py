"""The coordinator's side of each job's swarm, as the API process sees it.

:class:`ProcessSwarmGateway` implements :class:`essaim.coordinator.service.SwarmGateway`: it starts
one job runner process per running job (:mod:`essaim.coordinator.jobrunner`: DHT bootstrap peer,
monitor, checkpoint keeper), hands volunteers that runner's addresses as initial peers, and signs
their swarm tokens with the coordinator's key (:mod:`.swarm_keys`), all without importing torch or
hivemind here.

Runners outlive a coordinator that is killed: a restarted coordinator adopts the runner it finds
alive in ``DATA_DIR/jobs/ID/runner.json`` instead of starting a second one, so the swarm keeps its
bootstrap peer through a coordinator restart. A runner that died is started again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
from essaim.coordinator.errors import Unavailable
from essaim.coordinator.settings import CoordinatorSettings
from essaim.coordinator.swarm_keys import (
    SWARM_KEY,
    issue_swarm_token,
    load_or_create_swarm_key,
    public_key_der,
)
from essaim.protocol.types import Job, Volunteer

logger = logging.getLogger(__name__)

RUNNER_FILE = "runner.json"  # essaim.coordinator.jobrunner.RUNNER_FILE (not imported: it pulls the store in)
PEERS_WAIT_S = 3.0
STOP_WAIT_S = 20.0


class ProcessSwarmGateway:
    """One runner process per running job; see the module docstring."""

    def __init__(self, settings: CoordinatorSettings, *, token_ttl_s: float = 900.0,
                 announce_host: str | None = None) -> None:
        self.settings = settings
        self.token_ttl_s = token_ttl_s
        self.announce_host = announce_host
        self.jobs_dir = settings.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._key = load_or_create_swarm_key(settings.data_dir / SWARM_KEY)
        self._public = public_key_der(self._key)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._closed = False

    # ---- SwarmGateway ----
    def public_key(self) -> bytes:
        return self._public

    def issue_swarm_token(self, volunteer: Volunteer, job: Job) -> tuple[str, float]:
        return issue_swarm_token(
            self._key, job_id=job.id, volunteer_id=volunteer.id,
            peer_public_key_der=volunteer.public_key, ttl_s=self.token_ttl_s,
        )

    def start_job(self, job: Job) -> None:
        with self._lock:
            if self._closed or self._alive(job.id):
                return
            directory = self.jobs_dir / job.id
            directory.mkdir(parents=True, exist_ok=True)
            (directory / RUNNER_FILE).unlink(missing_ok=True)
            log = open(directory / "runner.log", "ab")  # noqa: SIM115 - handed to the child
            cmd = [
                sys.executable, "-m", "essaim.coordinator.jobrunner",
                "--job-id", job.id,
                "--data-dir", str(self.settings.data_dir),
                "--db-url", self.settings.resolved_db_url(),
                "--host", self._listen_host(),
                "--max-averaging-peers", str(self.settings.max_averaging_peers),
            ]
            if self.announce_host:
                cmd += ["--announce-host", self.announce_host]
            if self.settings.reachability_second_address:
                cmd += ["--reachability-second-address", self.settings.reachability_second_address]
            for directory in self.settings.model_dirs:
                cmd += ["--model-dir", str(directory)]
            self._procs[job.id] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
            log.close()
            logger.info("job %s: started its swarm services (pid %d)", job.id, self._procs[job.id].pid)

    def stop_job(self, job_id: str) -> None:
        """Stop the job's runner without waiting: it saves a last checkpoint first, which can take
        longer than the request that ended the job (CancelJob) may wait."""
        with self._lock:
            proc = self._procs.pop(job_id, None)
            pid = proc.pid if proc is not None else self._runner_pid(job_id)
        if pid is not None:
            threading.Thread(target=_terminate, args=(pid, proc), name=f"stop-runner-{job_id[:8]}",
                             daemon=True).start()

    def initial_peers(self, job_id: str) -> list[str]:
        deadline = time.monotonic() + PEERS_WAIT_S
        while True:
            info = self._runner_info(job_id)
            maddrs = info.get("maddrs") if info else None
            if isinstance(maddrs, list) and maddrs:
                return [str(m) for m in maddrs]
            with self._lock:
                proc = self._procs.get(job_id)
                if proc is not None and proc.poll() is not None:
                    del self._procs[job_id]
                    proc = None
            if proc is None and not self._alive(job_id):
                raise Unavailable(f"the swarm services of job {job_id} are not running; ask again shortly")
            if time.monotonic() > deadline:
                raise Unavailable(f"the swarm of job {job_id} is starting; ask for an assignment again shortly")
            time.sleep(0.2)

    # ---- life ----
    def resume(self, jobs: list[Job]) -> None:
        """Make sure every running job has its runner (after a coordinator restart)."""
        for job in jobs:
            self.start_job(job)

    def check(self, jobs: list[Job]) -> None:
        """Restart the runner of a running job whose runner died; called periodically."""
        for job in jobs:
            with self._lock:
                proc = self._procs.get(job.id)
                dead = proc is not None and proc.poll() is not None
                if proc is not None and dead:
                    logger.warning("job %s: swarm services exited with %s; restarting", job.id, proc.returncode)
                    del self._procs[job.id]
            if dead or (proc is None and not self._alive(job.id)):
                self.start_job(job)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            procs = dict(self._procs)
            self._procs.clear()
        for proc in procs.values():
            _terminate(proc.pid, proc)

    # ---- internals ----
    def _listen_host(self) -> str:
        return "0.0.0.0" if self.settings.host in ("0.0.0.0", "::") else self.settings.host

    def _runner_info(self, job_id: str) -> dict[str, object] | None:
        try:
            return json.loads((self.jobs_dir / job_id / RUNNER_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _runner_pid(self, job_id: str) -> int | None:
        info = self._runner_info(job_id)
        pid = info.get("pid") if info else None
        if not isinstance(pid, int):
            return None
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return pid if "essaim.coordinator.jobrunner" in cmdline and job_id in cmdline else None

    def _alive(self, job_id: str) -> bool:
        proc = self._procs.get(job_id)
        if proc is not None:
            return proc.poll() is None
        return self._runner_pid(job_id) is not None


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not psutil.pid_exists(pid):
            return
        time.sleep(0.1)
    logger.warning("swarm services pid %d did not stop in %.0f s; killing it", pid, STOP_WAIT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(5)
