"""The volunteer app's engine: look at the machine, apply the policy, drive the trainer, report.

    sup = Supervisor(paths=Paths.default(), flags={"policy.idle_minutes": 1.0})
    sup.run(stop_event)                 # blocks; `essaim run --headless` and the tray both use it
    sup.command({"cmd": "pause", "seconds": 3600})     # from the tray or the control endpoint
    sup.status()                        # {"state": "waiting", "reason": "waiting: user active ...", ...}

Every second it samples the machine (:mod:`observe`, :mod:`idle`), evaluates :func:`policy.decide`
and applies the decision to the trainer (:mod:`worker`). While the trainer computes, the user's
idle time is read every 0.2 s, so activity pauses it well within a second; a trainer that does not
confirm the pause within ``policy.yield_grace_seconds`` is suspended. The coordinator is reached
only through :class:`link.CoordinatorLink`'s thread, so an outage never blocks the loop. Settings
are reloaded when the config file changes; commands are run on the loop's thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import shlex
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from essaim.client import keys
from essaim.client.config import Paths, Settings, load_settings, render, save_value
from essaim.client.errors import ClientError, ConfigError
from essaim.client.idle import IdleSource, detect_idle_source
from essaim.client.link import ClientFactory, CoordinatorLink, default_client_factory
from essaim.client.netlimit import DailyTraffic, NetCaps
from essaim.client.observe import Observer, SystemSample
from essaim.client.policy import Decision, Observations, PolicyConfig, PolicyState, decide, temperature_watch
from essaim.client.settings import parse_duration
from essaim.client.trainer_handle import default_trainer_command
from essaim.client.worker import Contribution, Worker, swarm_line
from essaim.protocol.tls import ENV_CA_FILE
from essaim.protocol.types import Assignment
from essaim.protocol.version import __version__

logger = logging.getLogger(__name__)
TICK = 1.0
FAST_TICK = 0.2
CONFIRM_TICK = 0.05
BAD_ASSIGNMENT_RETRY = 60.0
COMPLETED_RETRY = 60.0  # a job that completed here, offered again: ask again this much later


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3])[:300]


class Supervisor:
    def __init__(
        self,
        *,
        paths: Paths,
        flags: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        idle_source: IdleSource | None = None,
        observer: Observer | None = None,
        client_factory: ClientFactory = default_client_factory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self._flags = dict(flags or {})
        self._env = env
        self._clock = clock
        self._idle_source = idle_source
        self.observer = observer or Observer()
        self._client_factory = client_factory
        self.settings: Settings = load_settings(paths, flags=self._flags, env=env)
        self._config_mtime = self._mtime()
        self.cfg = PolicyConfig.from_settings(self.settings.values)
        self.pstate = PolicyState()
        self.decision: Decision | None = None
        self.idle_seconds: float | None = None
        self._sample: SystemSample | None = None
        self._sampled_at = 0.0
        self._commands: queue.Queue[tuple[dict[str, Any], queue.Queue[dict[str, Any]]]] = queue.Queue()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {"state": "starting", "reason": "starting"}
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self.fatal = ""
        self.assignment_problem = ""
        self.tick_error = ""
        self._temperature_note = ""
        self.link: CoordinatorLink | None = None
        self.traffic = DailyTraffic(paths.data_dir / "traffic.json")
        self.contribution = self._load_contribution()
        self._contribution_saved_at = clock()
        self.worker = Worker(
            work_root=paths.data_dir / "jobs",
            command=self._trainer_command,
            env=self._trainer_env,
            coordinator=self._coordinator_for_trainer,
            on_traffic=lambda sent, received: self.traffic.add_totals(sent=sent, received=received),
            on_contribution=self._add_contribution,
            cache_dir=paths.data_dir / "cache",
            cache_max_bytes=lambda: int(self.settings["limits.cache_gb"] * 2**30),
        )

    # ---- life ----

    def run(self, stop: threading.Event) -> None:
        """Run the loop on this thread until ``stop`` is set; stops the trainer on the way out."""
        self.paths.ensure()
        try:
            self._prepare()
            while not stop.is_set():
                try:
                    self.tick()
                    self.tick_error = ""
                except Exception as exc:  # a bug must not stop the app, nor leave a trainer unwatched
                    logger.exception("supervisor tick failed")
                    self.tick_error = f"{type(exc).__name__}: {exc}"
                    self._publish({**self._status, "state": "error", "reason": f"error: {self.tick_error}"})
                self._wake.wait(self._next_wait())
                self._wake.clear()
        finally:
            self.shutdown()

    def _prepare(self) -> None:
        for problem in self.settings.problems:
            logger.error("%s", problem)
        if self._idle_source is None:
            self._idle_source = detect_idle_source()
        logger.info("user idle time from: %s", self._idle_source.name)
        try:  # the key is made when first needed: registering, or by the trainer
            keys.check_identity_file(self.paths.identity_file)
        except ClientError as exc:
            self.fatal = str(exc)
        self._connect()

    def _connect(self) -> None:
        address = self.settings["coordinator.address"]
        ca_file = self.settings["coordinator.ca_file"]
        if ca_file:  # the app's link and its trainers verify the coordinator with it (essaim.protocol.tls)
            os.environ[ENV_CA_FILE] = ca_file
        else:
            os.environ.pop(ENV_CA_FILE, None)
        if self.link is not None and (self.link.address != address or self.link.ca_file != ca_file):
            self.link.stop()
            self.link = None
        if address and self.link is None and not self.settings["volunteer.job_file"]:
            self.link = CoordinatorLink(
                address=address,
                ca_file=ca_file,
                identity_file=self.paths.identity_file,
                registration_file=self.paths.data_dir / "registration.json",
                name=self.settings["volunteer.name"],
                team=self.settings["volunteer.team"],
                hardware=self.observer.hardware,
                client_factory=self._client_factory,
            )
            self.link.start()
        elif self.link is not None:
            self.link.set_profile(self.settings["volunteer.name"], self.settings["volunteer.team"])

    def shutdown(self) -> None:
        self.worker.shutdown()
        if self.link is not None:
            self.link.stop()
        self.traffic.save(every=0)
        self._save_contribution()
        if self._idle_source is not None:
            self._idle_source.close()
        self._publish({**self._status, "state": "stopped", "reason": "the app has stopped"})

    def wake(self) -> None:
        self._wake.set()

    def _next_wait(self) -> float:
        if self.worker.trainer_state == "pausing":
            return CONFIRM_TICK
        if self.worker.computing or self.worker.trainer_state == "stopping":
            return FAST_TICK
        return TICK

    # ---- one tick ----

    def tick(self) -> None:
        now = self._clock()
        self._run_commands()
        self._reload_if_changed()
        self.worker.poll(now)
        self.idle_seconds = self._idle_source.idle_seconds() if self._idle_source else None
        if now - self._sampled_at >= TICK * 0.9 or self._sample is None:
            self._sample = self.observer.sample(self.worker.handle.pids() if self.worker.handle else set())
            self._sampled_at = now
        decision = decide(self._observations(), self.cfg, self.pstate, datetime.fromtimestamp(now))
        self.pstate, self.decision = decision.new_state, decision
        self._apply(decision, now)
        self.worker.enforce_pause(now, self.settings["policy.yield_grace_seconds"])
        self._talk_to_coordinator(decision)
        self.traffic.save()
        if now - self._contribution_saved_at > 60:
            self._save_contribution()
            self._contribution_saved_at = now
        self._publish(self._make_status(decision))

    def _observations(self) -> Observations:
        s = self._sample
        assert s is not None
        return Observations(
            user_idle_seconds=self.idle_seconds,
            on_battery=s.on_battery,
            battery_percent=s.battery_percent,
            cpu_temp_c=s.cpu_temp_c,
            gpu_temp_c=s.gpu_temp_c,
            other_cpu_percent=s.other_cpu_percent,
            available_ram_bytes=s.available_ram_bytes,
            gpu_present=s.gpu_present,
            other_gpu_processes=s.other_gpu_processes,
            network_today_bytes=self.traffic.today_bytes(),
            trainer_running=self.worker.running,
            cpu_count=self.observer.cpu_count,
        )

    def _apply(self, d: Decision, now: float) -> None:
        w = self.worker
        if self.fatal or (self.link is not None and self.link.snapshot().banned):
            w.request_stop(now)
            return
        if d.action in ("train", "throttle"):
            if self.cfg.cpu_max_cores and w.handle is not None:
                w.handle.limit_cores(self.cfg.cpu_max_cores)
            if w.assignment is not None and not w.finished:
                w.run(d.threads, d.duty_cycle, now)
        elif d.action == "pause":
            w.pause(now)
            release = self.settings["volunteer.release_after_minutes"] * 60
            if release and w.paused_since is not None and now - w.paused_since > release:
                logger.info(
                    "trainer paused for over %.0f min; stopping it to give its memory back", release / 60
                )
                w.request_stop(now)
        elif d.action == "stop":
            w.request_stop(now)
        elif d.action == "finish":
            w.finish()
        if d.action != "finish" and w.finished:
            w.finished = False  # resumed after a finish: take work again
            w.drop_assignment()

    def _talk_to_coordinator(self, d: Decision) -> None:
        w = self.worker
        job_file = self.settings["volunteer.job_file"]
        wants = d.action in ("train", "throttle") and not self.fatal
        if job_file:
            if wants and w.assignment is None:
                self._load_job_file(Path(job_file))
            return
        if self.link is None:
            return
        for job_id in self.link.take_stop_job_ids():
            if job_id == w.job_id:
                logger.info("the coordinator stopped job %s", job_id)
                w.request_stop(self._clock())
                w.drop_assignment()
        now = self._clock()
        if not w.running and w.token_expires_at and w.token_expires_at < now + 60:
            w.drop_assignment()  # its swarm token has expired: ask for a fresh assignment
        refresh = w.running and w.token_expires_at and w.token_expires_at < now + 300
        assignment = self.link.take_assignment()
        if (assignment is not None and assignment.job is not None and w.assignment is None
                and w.saw_complete(assignment.job.id, now)):
            logger.info("the coordinator offers job %s, which completed here; asking again in %.0fs",
                        assignment.job.id, COMPLETED_RETRY)
            self.link.defer_assignment(COMPLETED_RETRY)
            assignment = None
        if assignment is not None and assignment.job is not None:
            if w.assignment is None:
                try:
                    description = self._for_trainer(assignment)
                except ValueError as exc:  # pydantic's ValidationError is a ValueError
                    self.assignment_problem = (
                        f"the coordinator's assignment for job {assignment.job.id} cannot be trained "
                        f"({_first_line(exc)}); asking again in {BAD_ASSIGNMENT_RETRY:.0f}s"
                    )
                    logger.error("%s", self.assignment_problem)
                    self.link.defer_assignment(BAD_ASSIGNMENT_RETRY)
                    assignment = None
            if assignment is not None and w.assignment is None:
                self.assignment_problem = ""
                w.assign(
                    description,
                    name=assignment.job.name,
                    expires_at=assignment.swarm_token_expires_at,
                )
                logger.info("assigned job %s (%s)", w.job_name, w.job_id)
            elif assignment.job.id == w.job_id:
                w.refresh_token(assignment.swarm_token, assignment.swarm_token_expires_at)
        self.link.want_assignment(bool((wants and w.assignment is None) or refresh))
        state, reason = self._effective(d)
        self.link.report(state=state, reason=reason, progress=[w.progress] if w.progress else [])

    def _for_trainer(self, assignment: Assignment) -> dict[str, Any]:
        from essaim.client.trainer_protocol import assignment_for_trainer

        assert self.link is not None
        description = assignment_for_trainer(
            assignment,
            volunteer_id=self.link.snapshot().volunteer_id,
            identity_key_path=str(self.paths.identity_file),
            device=None if self.cfg.use_gpu else "cpu",
            host_maddrs=[f"/ip4/0.0.0.0/tcp/{int(self.settings['network.listen_port'])}"],
            client_mode=str(self.settings["network.client_mode"]),
        )
        return description.model_dump(mode="json")

    def _load_job_file(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            self.fatal = f"cannot read the job file {path} ({exc}); fix volunteer.job_file"
            return
        self.worker.assign(data)

    # ---- status ----

    def _effective(self, d: Decision) -> tuple[str, str]:
        w = self.worker
        if self.fatal:
            return "error", f"error: {self.fatal}"
        link = self.link.snapshot() if self.link is not None else None
        if link is not None and link.banned:
            return "error", "stopped: the coordinator has banned this volunteer"
        if d.action not in ("train", "throttle") or w.running:
            return d.state, d.reason
        if w.assignment is not None and w.restart_at > self._clock():
            return "error", f"error: {w.last_error}; restarting in {w.restart_at - self._clock():.0f}s"
        if link is None and not self.settings["volunteer.job_file"]:
            return (
                "error",
                "not connected: no coordinator set (`essaim config set coordinator.address HOST:PORT`)",
            )
        if link is not None and link.last_error:
            left = max(link.retry_at - time.time(), 0)
            return (
                "waiting",
                f"waiting: the coordinator is unavailable ({link.last_error}); retrying in {left:.0f}s",
            )
        if w.assignment is None and self.assignment_problem:
            return "error", f"error: {self.assignment_problem}"
        if w.assignment is None:
            done = [j for j in w.completed if w.saw_complete(j, self._clock())]
            if done:
                return "waiting", f"waiting: job {done[-1][:8]} completed; asking the coordinator for the next one"
            if link is not None and link.no_job_reason:  # a job waits that this machine cannot run
                return "waiting", f"waiting: no job this machine can train; {link.no_job_reason}"
            return "waiting", "waiting: no job to train right now; asking the coordinator again soon"
        return "training", "starting the trainer"

    def _temperature(self) -> dict[str, Any]:
        obs = self._observations()
        watch = temperature_watch(obs, self.cfg)
        if watch.note and watch.note != self._temperature_note:
            logger.info("%s", watch.note)
        self._temperature_note = watch.note
        return {
            "cpu_c": obs.cpu_temp_c,
            "gpu_c": obs.gpu_temp_c,
            "cpu_rule": watch.cpu,
            "gpu_rule": watch.gpu,
            "note": watch.note,
        }

    def _make_status(self, d: Decision) -> dict[str, Any]:
        state, reason = self._effective(d)
        w = self.worker
        return {
            "state": state,
            "reason": reason,
            "action": d.action,
            "threads": d.threads,
            "duty_cycle": d.duty_cycle,
            "pid": os.getpid(),
            "version": __version__,
            "job": {"id": w.job_id, "name": w.job_name} if w.assignment is not None else None,
            "trainer": {
                "pid": w.handle.pid if w.handle is not None and w.running else None,
                "state": w.trainer_state,
                "crashes": w.crashes,
                "last_error": w.last_error,
            },
            "trainer_pid": w.handle.pid if w.handle is not None and w.running else None,
            "progress": dataclasses.asdict(w.progress) if w.progress else None,
            "swarm": {**w.swarm, "summary": swarm_line(w.swarm)} if w.swarm else None,
            "idle_seconds": None if self.idle_seconds is None else round(self.idle_seconds, 1),
            "idle_source": self._idle_source.name if self._idle_source else "",
            "pause_until": self.pstate.pause_until if self.pstate.manual == "paused" else None,
            "manual": self.pstate.manual,
            "coordinator": self.link.snapshot().to_json() if self.link is not None else None,
            "contribution": self.contribution.to_json(),
            "network_today_bytes": self.traffic.today_bytes(),
            "temperature": self._temperature(),
            "config_file": str(self.paths.config_file),
            "config_problems": list(self.settings.problems),
            "settings": {k: self.settings[k] for k in ("policy.intensity", "policy.only_when_idle")},
        }

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def add_listener(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """``fn(status)`` after every tick (the tray's icon and tooltip); called on the loop thread."""
        self._listeners.append(fn)

    def _publish(self, status: dict[str, Any]) -> None:
        with self._lock:
            self._status = status
        for fn in self._listeners:
            try:
                fn(status)
            except Exception:
                logger.exception("status listener failed")

    # ---- commands (any thread) ----

    def command(self, request: dict[str, Any], *, timeout: float = 5.0) -> dict[str, Any]:
        """Run ``request`` on the loop thread and return its reply (the control endpoint's handler)."""
        reply_box: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        self._commands.put((request, reply_box))
        self._wake.set()
        try:
            return reply_box.get(timeout=timeout)
        except queue.Empty:
            return {"ok": False, "error": "the app is busy; try again in a moment"}

    def _run_commands(self) -> None:
        while True:
            try:
                request, box = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                reply = self._handle(request)
            except ClientError as exc:
                reply = {"ok": False, "error": str(exc)}
            box.put(reply)

    def _handle(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        now = self._clock()
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "pause":
            seconds = req.get("seconds")
            if isinstance(seconds, str):
                seconds = parse_duration(seconds)
            until = now + float(seconds) if seconds else None
            self.pstate = dataclasses.replace(self.pstate, manual="paused", pause_until=until)
        elif cmd == "resume":
            self.pstate = dataclasses.replace(self.pstate, manual="", pause_until=None)
        elif cmd == "finish":
            self.pstate = dataclasses.replace(self.pstate, manual="finish", pause_until=None)
        elif cmd == "config_set":
            key, value = str(req.get("key", "")), req.get("value")
            parsed = save_value(self.paths.config_file, key, value)
            self._flags.pop(key, None)  # the user's latest choice wins over a start-up flag
            self._reload()
            return {"ok": True, "key": key, "value": parsed, "source": self.settings.source(key)}
        elif cmd == "config_show":
            return {"ok": True, "text": render(self.settings), "values": self.settings.values}
        else:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        decision = decide(self._observations(), self.cfg, self.pstate, datetime.fromtimestamp(now))
        self.pstate, self.decision = decision.new_state, decision
        self._apply(decision, now)
        self._publish(self._make_status(decision))
        return {"ok": True, "status": self.status()}

    # ---- settings ----

    def _mtime(self) -> float:
        try:
            return self.paths.config_file.stat().st_mtime
        except OSError:
            return 0.0

    def _reload_if_changed(self) -> None:
        if self._mtime() != self._config_mtime:
            self._reload()

    def _reload(self) -> None:
        self._config_mtime = self._mtime()
        try:
            self.settings = load_settings(self.paths, flags=self._flags, env=self._env)
            self.cfg = PolicyConfig.from_settings(self.settings.values)
        except ConfigError as exc:
            logger.error("settings not reloaded: %s", exc)
            return
        for problem in self.settings.problems:
            logger.error("%s", problem)
        self._connect()

    def _trainer_command(self) -> list[str]:
        command = self.settings["volunteer.trainer_command"]
        return shlex.split(command) if command else default_trainer_command()

    def _coordinator_for_trainer(self) -> tuple[str, str]:
        if self.link is None:
            return "", ""
        return self.link.address, self.link.token

    def _trainer_env(self) -> dict[str, str]:
        caps = NetCaps(
            upload_kbps=self.settings["limits.upload_kbps"],
            download_kbps=self.settings["limits.download_kbps"],
            daily_mb=self.settings["limits.daily_mb"],
        )
        env = caps.to_env(remaining_bytes=self.traffic.remaining(caps))
        env["ESSAIM_IDENTITY_FILE"] = str(self.paths.identity_file)
        env["ESSAIM_DATA_DIR"] = str(self.paths.data_dir)
        if not self.cfg.use_gpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
        env["ESSAIM_MIN_FREE_RAM_MB"] = str(self.cfg.min_free_ram_mb)  # the trainer's micro-batches fit above it
        if self.cfg.max_ram_mb:
            env["ESSAIM_MAX_RAM_MB"] = str(self.cfg.max_ram_mb)  # and under it
        if self.cfg.gpu_max_vram_mb:
            env["ESSAIM_GPU_MAX_VRAM_MB"] = str(self.cfg.gpu_max_vram_mb)
        return env

    # ---- contribution ----

    def _load_contribution(self) -> Contribution:
        try:
            data = json.loads((self.paths.data_dir / "contribution.json").read_text())
            return Contribution(int(data["samples"]), float(data["compute_seconds"]), tuple(data["jobs"]))
        except (OSError, ValueError, KeyError, TypeError):
            return Contribution()

    def _add_contribution(self, samples: int, compute_seconds: float, job_id: str) -> None:
        c = self.contribution
        c.samples += samples
        c.compute_seconds += compute_seconds
        if job_id and job_id not in c.jobs:
            c.jobs = (*c.jobs, job_id)

    def _save_contribution(self) -> None:
        path = self.paths.data_dir / "contribution.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.contribution.to_json()))
        except OSError as exc:
            logger.warning("cannot save %s: %s", path, exc)
