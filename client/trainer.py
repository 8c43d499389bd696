"""The trainer process: trains one job as one peer of its swarm, driven over a pipe by the app.

    ESSAIM_TRAINER_TOKEN=T python -m essaim.client.trainer --assignment job.json --work-dir DIR [--coordinator HOST:PORT]
    python -m essaim.client.trainer --assignment job.json --work-dir DIR --headless

It reads commands as JSON lines on stdin and writes events as JSON lines on stdout
(:mod:`essaim.client.trainer_protocol`); logs go to stderr and ``DIR/trainer.log``, never stdout.
Job files come from the coordinator into a content cache (sha256-checked), or from local paths
named in the assignment (headless runs, tests). SIGTERM or SIGINT stop it gracefully; when driven
by an app (not ``--headless``), the end of stdin means the app is gone and the trainer stops too.
It stops itself (reason "network-limit") once its swarm traffic reaches what was left of the
volunteer's daily network limit when the app started it (``ESSAIM_NET_REMAINING_BYTES``).

Exit status: 0 when it stopped, finished or completed the job; 1 on an error (an ``error`` event
says which); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from essaim.client.netlimit import MB, NETWORK_LIMIT, NetCaps, NetPacer, TrafficBudget, TrafficMeter
from essaim.client.trainer_protocol import (
    EpochEvent,
    ErrorEvent,
    FinishCommand,
    JoinedEvent,
    PauseCommand,
    PausedEvent,
    ProgressEvent,
    ProtocolError,
    ResumeCommand,
    ResumedEvent,
    StartedEvent,
    StopCommand,
    StoppedEvent,
    ThrottleCommand,
    TokenCommand,
    TrainerAssignment,
    encode,
    parse_command,
    peer_ids,
)
from pydantic import BaseModel, ValidationError

logger = logging.getLogger("essaim.client.trainer")

STOP_GRACE_S = 1.0
HARD_EXIT_S = 15.0
HAND_OVER_S = 60.0  # after the last epoch, how long to wait for the keeper to take the final state
TOKEN_FILE = "swarm_token"
REVOKED_FILE = "revoked.json"  # the swarm's newest revocation list, re-read by the DHT's authorizer
ENV_MIN_FREE_RAM_MB = "ESSAIM_MIN_FREE_RAM_MB"  # the volunteer's free-memory floor, set by the app
ENV_MAX_RAM_MB = "ESSAIM_MAX_RAM_MB"  # the volunteer's cap on the trainer's RAM, set by the app
ENV_MAX_VRAM_MB = "ESSAIM_GPU_MAX_VRAM_MB"  # the volunteer's cap on GPU memory, set by the app
BUDGET_CHECK_S = 0.25
"""How often the trainer reads its traffic against what is left of the daily network limit: the
limit is overrun by at most what the swarm moves in this time (plus the stop's own traffic)."""
CUDA_CONTEXT_GUESS_MB = 500
"""What CUDA's own context is taken to hold (outside PyTorch's allocator) where NVML cannot measure it."""


class EventWriter:
    """Writes events as JSON lines to the real stdout (fd 1 itself is pointed at stderr)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.stopped_sent = False

    def send(self, message: BaseModel) -> None:
        with self._lock:
            if self.stopped_sent:
                return  # "stopped" is the last event, whatever happens after it
            self.stopped_sent = isinstance(message, StoppedEvent)
            try:
                self._stream.write(encode(message))
                self._stream.flush()
            except (OSError, ValueError):
                pass  # the app is gone; the stdin watcher stops the trainer


def _claim_stdout() -> IO[str]:
    """Keep the real stdout for events and send everything else written to fd 1 to stderr."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", buffering=1, encoding="utf-8")


class Trainer:
    """Owns the build steps and the control state; the heavy imports happen in :meth:`run`."""

    def __init__(self, assignment: TrainerAssignment, work_dir: Path, events: EventWriter, *,
                 coordinator: str | None = None, token: str | None = None, headless: bool = False,
                 cache_dir: Path | None = None, verbose: bool = False) -> None:
        self.assignment, self.work_dir, self.events = assignment, work_dir, events
        self.coordinator, self.token, self.headless = coordinator, token, headless
        self.cache_dir = cache_dir or work_dir / "cache"
        self.verbose = verbose
        self.stop_requested = threading.Event()
        self.stop_reason = "stopped"
        self.peer: Any = None
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._exit_timer: threading.Timer | None = None
        self.traffic = TrafficMeter()  # the swarm traffic of this process's libp2p daemon

    # ---- control (stdin thread, signal handler) ----
    def handle(self, command: Any) -> None:
        if isinstance(command, TokenCommand):
            self._write_token(command.token)
            return
        if isinstance(command, StopCommand):
            self.request_stop("stopped")
            return
        with self._lock:
            peer = self.peer
            if peer is None:
                self._pending.append(command)
                return
        self._apply(peer, command)

    def _apply(self, peer: Any, command: Any) -> None:
        if isinstance(command, PauseCommand):
            peer.pause()
        elif isinstance(command, ResumeCommand):
            peer.resume()
        elif isinstance(command, FinishCommand):
            peer.finish()
        elif isinstance(command, ThrottleCommand):
            peer.throttle(threads=command.threads, duty_cycle=command.duty_cycle)

    def request_stop(self, reason: str) -> None:
        if self.stop_requested.is_set():
            return
        self.stop_reason = reason
        self.stop_requested.set()
        with self._lock:
            peer = self.peer
        if peer is not None and not peer.stop(timeout=STOP_GRACE_S):
            logger.info("the training loop is inside an averaging round; leaving without waiting for it")
        self.arm_exit_timer()

    def arm_exit_timer(self) -> None:
        """Exit for sure within HARD_EXIT_S seconds, even if hivemind's shutdown hangs."""
        with self._lock:
            if self._exit_timer is not None:
                return
            self._exit_timer = threading.Timer(HARD_EXIT_S, self._hard_exit)
            self._exit_timer.daemon = True
            self._exit_timer.start()

    def _hard_exit(self) -> None:
        logger.warning("shutdown is taking too long; exiting now")
        self.events.send(StoppedEvent(reason=self.stop_reason, **self._traffic()))
        logging.shutdown()
        os._exit(0)  # hivemind's helpers watch this process and leave with it

    def watch_traffic(self, budget: TrafficBudget, *, every: float = BUDGET_CHECK_S) -> None:
        """Stop the trainer (reason "network-limit") once its traffic reaches ``budget``; returns then,
        or when the trainer stops for another reason."""
        while True:
            if budget.spent():
                logger.warning("this trainer moved %.1f MB, what was left of today's network limit; stopping",
                               (budget.remaining or 0) / MB)
                self.request_stop(NETWORK_LIMIT)
                return
            if self.stop_requested.wait(every):
                return

    def _write_token(self, token: str) -> None:
        path = self.work_dir / TOKEN_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(token)
        tmp.chmod(0o600)
        os.replace(tmp, path)
        logger.info("received a fresh swarm token")

    # ---- the job ----
    def run(self) -> int:
        from essaim.protocol.errors import EssaimError

        try:
            return self._run()
        except EssaimError as exc:
            logger.error("%s", exc)
            self.events.send(ErrorEvent(message=str(exc), kind=type(exc).__name__))
            self.events.send(StoppedEvent(reason="error"))
            return 1
        except Exception as exc:
            logger.exception("the trainer failed")
            self.events.send(ErrorEvent(message=f"{type(exc).__name__}: {exc}", kind=type(exc).__name__))
            self.events.send(StoppedEvent(reason="error"))
            return 1

    def _stopped_early(self) -> int:
        self.events.send(StoppedEvent(reason=self.stop_reason))
        return 0

    def _run(self) -> int:
        import torch
        from essaim.protocol.recipe import load_recipe
        from essaim.protocol.types import shards_for_slots
        from essaim.swarm.admission import keep_membership
        from essaim.swarm.auth import SwarmAuthorizer, token_file_refresher, watch_resets, watch_revocations
        from essaim.swarm.data import build_train_dataset
        from essaim.swarm.dht import shutdown_dht, start_dht, visible_maddrs
        from essaim.swarm.identity import ensure_p2p_identity, load_or_create_private_key
        from essaim.swarm.optimizer import build_optimizer
        from essaim.swarm.peer import TrainingPeer
        from essaim.swarm.records import progress_validators

        a = self.assignment
        if a.threads:
            torch.set_num_threads(a.threads)
        pacer = NetPacer(NetCaps.from_env(), self.traffic)
        budget = TrafficBudget.from_env(self.traffic)
        if budget.active:
            threading.Thread(target=self.watch_traffic, args=(budget,), name="trainer-traffic", daemon=True).start()
        recipe = load_recipe(a.recipe_yaml, source=f"job {a.job_id} recipe")
        key_path = Path(a.identity_key_path)
        key = load_or_create_private_key(key_path)
        identity = ensure_p2p_identity(key, a.p2p_identity_path or key_path.with_suffix(".p2p"))
        self._write_token(a.swarm_token)
        authorizer = SwarmAuthorizer(
            key, a.swarm_token, a.coordinator_key_bytes(), a.job_id,
            refresh=token_file_refresher(self.work_dir / TOKEN_FILE),
            revocations_path=self.work_dir / REVOKED_FILE,
        )
        files = self._job_files(recipe)
        if self.stop_requested.is_set():
            return self._stopped_early()

        # a coordinator's job never loads a model, tokenizer or dataset from a path on the
        # volunteer's disk; a local run (its own files: the demo, a benchmark) may
        local_dirs = None if a.local_files or a.base_dir else ()
        loaded = _load_model(a, recipe, files, local_dirs)
        dataset = build_train_dataset(recipe, loaded.tokenizer, files=files, local_dirs=local_dirs)
        shard_ids = shards_for_slots(list(a.shard_ids), dataset.num_shards)
        if self.stop_requested.is_set():
            return self._stopped_early()

        client_mode, host_maddrs, announce_maddrs, seen = _network_mode(a)
        dht = start_dht(initial_peers=a.initial_peers, identity_path=identity, authorizer=authorizer,
                        host_maddrs=host_maddrs, announce_maddrs=announce_maddrs or None,
                        client_mode=client_mode, record_validators=progress_validators(a.job_id), private_key=key)
        optimizer = None
        watching = threading.Event()
        try:
            watch_revocations(dht, a.job_id, a.coordinator_key_bytes(), self.work_dir / REVOKED_FILE, watching)
            keep_membership(dht, a.job_id, a.swarm_token, key, watching,
                            current_token=token_file_refresher(self.work_dir / TOKEN_FILE))
            optimizer = build_optimizer(loaded, recipe, dht=dht, run_id=a.job_id, private_key=key,
                                        reducers=a.reducers or None, verbose=self.verbose)
            # the coordinator rolled the job back (a degraded checkpoint): reload its state
            watch_resets(dht, a.job_id, a.coordinator_key_bytes(), watching, optimizer.request_resync)
            peer = TrainingPeer(job_id=a.job_id, recipe=recipe, loaded=loaded, dataset=dataset,
                                shard_ids=shard_ids, optimizer=optimizer, dht=dht, volunteer_id=a.volunteer_id,
                                on_event=self._on_event, state_dir=self.work_dir,
                                pacer=pacer if pacer.active else None,
                                coordinator_peers=peer_ids(a.initial_peers), ram_budget=_ram_budget())
            peer.throttle(threads=a.threads, duty_cycle=a.duty_cycle)
            if a.paused:
                peer.pause()
            with self._lock:
                self.peer = peer
                pending, self._pending = self._pending, []
            for command in pending:
                self._apply(peer, command)
            self.events.send(StartedEvent(
                job_id=a.job_id, volunteer_id=a.volunteer_id, peer_id=str(dht.peer_id),
                maddrs=visible_maddrs(dht), mode=recipe.training.averaging, device=loaded.device, pid=os.getpid(),
                client_mode=dht.client_mode, reachability=seen.label if seen is not None else "",
                observed=seen.observed if seen is not None else "",
                reachability_reason=seen.reason if seen is not None else "",
            ))
            if self.stop_requested.is_set():
                peer.stop(timeout=0)
            reason = peer.run()
            if reason == "completed":
                _hand_over(dht, a.job_id, a.initial_peers, optimizer.local_epoch, self.stop_requested)
            if reason == "stopped":
                reason = self.stop_reason
            self.events.send(StoppedEvent(reason=reason, **_final(peer), **self._traffic()))
            return 0
        finally:
            watching.set()
            self.arm_exit_timer()
            if optimizer is not None:
                optimizer.shutdown()
            shutdown_dht(dht)

    def _on_event(self, kind: str, data: dict[str, Any]) -> None:
        classes = {"joined": JoinedEvent, "progress": ProgressEvent, "epoch": EpochEvent,
                   "paused": PausedEvent, "resumed": ResumedEvent}
        cls = classes.get(kind)
        if cls is not None:
            if issubclass(cls, (ProgressEvent, EpochEvent)):
                data = {**data, **self._traffic()}
            self.events.send(cls(**data))

    def _traffic(self) -> dict[str, int]:
        sent, received = self.traffic.totals()
        return {"bytes_sent": sent, "bytes_received": received}

    def _job_files(self, recipe: Any) -> dict[str, Path]:
        """Recipe path -> local file: from the assignment (headless) or the coordinator via the cache."""
        from essaim.swarm.cache import collect_job_files
        from essaim.swarm.errors import DataError

        a = self.assignment
        if a.local_files or a.base_dir:
            files = collect_job_files(recipe, Path(a.base_dir)) if a.base_dir else {}
            files.update({path: Path(local) for path, local in a.local_files.items()})
            missing = [p for p, local in files.items() if not local.is_file()]
            if missing:
                raise DataError(f"job files missing locally: {', '.join(missing[:5])}; check the assignment")
            return files
        if not self.coordinator:
            raise DataError("no local job files and no --coordinator to download them from; pass one of them")
        return _download(a, self.coordinator, self.token, self.cache_dir)


def _download(a: TrainerAssignment, address: str, token: str | None, cache_dir: Path) -> dict[str, Path]:
    """Fetch the job's files through the coordinator into the content cache (sha256-checked); a
    download cut short (a network outage, a laptop put to sleep, the trainer stopped) resumes where
    it stopped, on a retry or in the next trainer."""
    from essaim.protocol.client import CoordinatorClient
    from essaim.protocol.types import JobFile
    from essaim.swarm.cache import ContentCache

    job_files = [JobFile(path=f.path, sha256=f.sha256, size=f.size) for f in a.job_files]
    sizes = {f.path: f.size for f in job_files}
    with CoordinatorClient(address, token=token) as client:

        def fetcher(path: str, dest: Path) -> None:
            client.download_job_file(a.job_id, path, dest, size=sizes[path])

        cache_dir.mkdir(parents=True, exist_ok=True)
        return ContentCache(cache_dir).fetch_all(job_files, fetcher)


def _network_mode(a: TrainerAssignment) -> tuple[bool, list[str], list[str], Any]:
    """Full or client mode, the addresses to listen on and to announce, and what the coordinator
    saw (None when the assignment set the mode by hand).

    ``auto`` asks the job's coordinator peer to dial this machine back
    (:mod:`essaim.swarm.reachability`): reachable, it joins as a full peer (and announces the
    address the coordinator saw when that is a router's, i.e. a port forward); not reachable, in
    client mode, averaging through the coordinator's averaging peer; no answer, the guess of
    :func:`essaim.swarm.dht.decide_client_mode`, which says client mode unless it is sure.

    Reachable through a port its router mapped on request (UPnP, NAT-PMP), it joins as a full
    peer too, and its DHT's daemon maps a port of its own and announces it (the probe's mapping
    goes with the probe). In the NAT lab, a full peer behind a mapping among two NAT-ed ones left the
    demo job at a held-out exact match of 0.905 (three NAT-ed: 0.89), and 0.805 beside two busy
    processes, every round with all three (tests/integration/nat/test_nat_swarm.py with
    ESSAIM_TEST_NAT_UPNP=carol). Before only the job's averaging peers reduced and led rounds, the
    same swarm reached 0.09-0.56, and this mode waited for that to be understood."""
    from essaim.swarm.dht import decide_client_mode
    from essaim.swarm.reachability import MAPPED, check_reachability, is_local_address, pin_ports

    if a.client_mode != "auto":
        return a.client_mode == "on", list(a.host_maddrs), list(a.announce_maddrs), None
    host_maddrs = pin_ports(a.host_maddrs)
    seen = check_reachability(a.initial_peers, host_maddrs=host_maddrs)
    client_mode = decide_client_mode(a.initial_peers) if seen.reachable is None else not seen.reachable
    announce = list(a.announce_maddrs)
    if seen.reachable and seen.address and seen.observed and not is_local_address(seen.observed) and not announce \
            and not client_mode and seen.via != MAPPED:
        announce = [seen.address]  # the router forwards this port to us: that is our address for others
    logger.info("reachability: %s%s%s; joining in %s mode", seen.label,
                f" (seen from {seen.observed})" if seen.observed else "",
                f": {seen.reason}" if seen.reason else "", "client" if client_mode else "full")
    return client_mode, host_maddrs, announce, seen


def _hand_over(dht: Any, job_id: str, initial_peers: list[str], epoch: int, stop: threading.Event) -> None:
    """After the last epoch, keep serving the final state until the coordinator's keeper (the peer
    behind ``initial_peers``) offers it too, so the job's artifact is this state and not the one
    before; at most HAND_OVER_S seconds, and not at all in a swarm without a keeper."""
    import time

    from hivemind.p2p import PeerID

    keepers = set()
    for maddr in initial_peers:
        with contextlib.suppress(ValueError, IndexError):
            keepers.add(PeerID.from_base58(maddr.rsplit("/p2p/", 1)[1]).to_bytes())
    key = f"{job_id}_state_averager.all_averagers"  # where hivemind's averagers offer their state
    started = time.monotonic()
    looks_without_keeper = 0
    while not stop.is_set() and time.monotonic() - started < HAND_OVER_S:
        try:
            found = dht.get(key, latest=True, return_future=True).result(5.0)
        except Exception:  # hivemind raises many kinds; try again
            stop.wait(1.0)
            continue
        offers = found.value if found is not None and isinstance(found.value, dict) else {}
        priorities = [getattr(offers[k], "value", None) for k in keepers if k in offers]
        looks_without_keeper = 0 if priorities else looks_without_keeper + 1
        if looks_without_keeper >= 2:
            return  # no keeper in this swarm: it offers (or withdraws) its state from its start
        if any(isinstance(p, (int, float)) and p >= epoch for p in priorities):
            logger.info("the keeper has the final state of epoch %d", epoch)
            return
        stop.wait(1.0)
    if not stop.is_set():
        logger.warning("leaving without knowing that the keeper has the final state of epoch %d", epoch)


def _load_model(a: TrainerAssignment, recipe: Any, files: dict[str, Path], local_dirs: Any) -> Any:
    """The job's model on this machine's device, under the volunteer's GPU memory cap (set first)."""
    from essaim.swarm.hardware import pick_device
    from essaim.swarm.model import load_model

    device = pick_device(a.device)
    _cap_vram(device, os.environ.get(ENV_MAX_VRAM_MB))
    return load_model(recipe, files=files, device=device, allow_remote_code=a.allow_remote_code,
                      seed=recipe.training.seed, local_dirs=local_dirs)


def _cap_vram(device: str, max_mb: str | None) -> None:
    """Keep this process's memory on GPU ``device`` under ``max_mb`` MiB; call it before anything is there.

    The cap is set on PyTorch's allocator: an allocation past it raises an out-of-memory error,
    which the training loop answers with smaller micro-batches (essaim.swarm.peer.MicroBatches).
    CUDA's own context lives outside that allocator: it is created here, and what it took (the
    device's used memory before it, through NVML, and after it) comes off the allocator's share.
    Libraries that CUDA loads later (cuBLAS, cuDNN kernels) add a little on top.
    """
    if not max_mb or not str(device).startswith("cuda"):
        return
    import torch
    from essaim.swarm.errors import HardwareError

    index = torch.device(device).index or 0
    cap = int(max_mb) * MB
    before = _device_memory_used(index)
    free, total = torch.cuda.mem_get_info(index)  # creates this process's CUDA context on the device
    context = max(total - free - before, 0) if before is not None else CUDA_CONTEXT_GUESS_MB * MB
    share = cap - context
    if share <= 0:
        raise HardwareError(
            f"the GPU memory cap of {max_mb} MiB leaves nothing for training once CUDA's own context "
            f"({context // MB} MiB) is on {device}; raise policy.gpu_max_vram_mb, or set it to 0 (no cap)"
        )
    fraction = min(share / total, 1.0)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    logger.info("GPU memory capped at %s MiB on %s: %d MiB for PyTorch (%.1f%%), %d MiB for CUDA's context",
                max_mb, device, share // MB, 100 * fraction, context // MB)


def _device_memory_used(index: int) -> int | None:
    """Bytes in use on GPU ``index`` by all processes, read through NVML without a CUDA context
    (None where NVML is not installed: ``pip install 'essaim[gpu]'``)."""
    import torch

    try:
        return int(torch.cuda.device_memory_used(index))
    except Exception:  # no pynvml, no NVML library, an old driver: each raises its own kind
        return None


def _final(peer: Any) -> dict[str, Any]:
    snap = peer.snapshot()
    return {k: snap[k] for k in ("epoch", "samples", "loss", "samples_per_second", "compute_seconds", "peers",
                                 "round_epoch", "round_peers", "round_error")}


def _claim_stdin() -> int:
    """A private descriptor for the command pipe; fd 0 and sys.stdin become /dev/null.

    hivemind starts its helpers with multiprocessing, whose children close ``sys.stdin`` first
    thing: a buffered stdin being read by our command thread at that moment would deadlock them.
    """
    commands_fd = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    return commands_fd


def _lines(fd: int) -> Iterator[str]:
    """Lines read from ``fd`` with plain os.read calls (no buffered-reader lock to inherit)."""
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            if pending.strip():
                yield pending.decode("utf-8", "replace")
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")


def _read_commands(trainer: Trainer, commands_fd: int, *, headless: bool) -> None:
    for line in _lines(commands_fd):
        if not line.strip():
            continue
        try:
            command = parse_command(line)
        except ProtocolError as exc:
            trainer.events.send(ErrorEvent(message=str(exc), kind="ProtocolError", fatal=False))
            continue
        try:
            trainer.handle(command)
        except (ValueError, OSError) as exc:
            trainer.events.send(ErrorEvent(message=str(exc), kind=type(exc).__name__, fatal=False))
    if not headless:
        logger.info("stdin closed: the app is gone; stopping")
        trainer.request_stop("stdin-closed")


def _configure_logging(work_dir: Path, level: int) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    with contextlib.suppress(OSError):
        handlers.append(logging.FileHandler(work_dir / "trainer.log"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m essaim.client.trainer", description=__doc__.split("\n")[0])
    parser.add_argument("--assignment", required=True, type=Path, help="the job description (JSON)")
    parser.add_argument("--work-dir", required=True, type=Path, help="state, token, log and cache of this job")
    parser.add_argument("--coordinator", help="HOST:PORT of the coordinator, to download the job's files")
    parser.add_argument("--token", help="the volunteer's bearer token for the coordinator (better: the "
                        "ESSAIM_TRAINER_TOKEN environment variable, which other users of the machine cannot read)")
    parser.add_argument("--headless", action="store_true", help="run without an app (stdin may be closed)")
    parser.add_argument("--cache-dir", type=Path, help="content cache of job files (default: WORK_DIR/cache)")
    parser.add_argument("--client-mode", choices=("auto", "on", "off"),
                        help="DHT client mode (outgoing connections only); default: the assignment's")
    parser.add_argument("--verbose", action="store_true", help="log hivemind's averaging rounds")
    return parser.parse_args(argv)


def _ram_budget() -> int | None:
    """How far this process may grow while it trains on the CPU: what it holds now and what the
    machine has free beyond the volunteer's free-memory floor (``ESSAIM_MIN_FREE_RAM_MB``), and at
    most the volunteer's cap (``ESSAIM_MAX_RAM_MB``); the app sets both. Neither set: no budget,
    micro-batches are computed whole."""
    import psutil
    from essaim.swarm.hardware import resident_memory

    limits = []
    for name in (ENV_MIN_FREE_RAM_MB, ENV_MAX_RAM_MB):
        raw = os.environ.get(name)
        try:
            limits.append(None if raw is None else max(int(raw), 0) * 2**20)
        except ValueError:
            logger.warning("ignoring %s=%r: not a number of MB", name, raw)
            limits.append(None)
    floor, cap = limits
    now = resident_memory()
    if now is None or (floor is None and not cap):
        return None
    budgets = [now + max(int(psutil.virtual_memory().available) - floor, 0)] if floor is not None else []
    return min([*budgets, *([cap] if cap else [])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    events = EventWriter(_claim_stdout())
    commands_fd = _claim_stdin()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    _configure_logging(args.work_dir, logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("essaim").setLevel(logging.INFO)
    try:
        assignment = TrainerAssignment.model_validate_json(args.assignment.read_bytes())
    except (OSError, ValidationError) as exc:
        events.send(ErrorEvent(message=f"cannot read the assignment {args.assignment}: {exc}", kind="InvalidArgument"))
        events.send(StoppedEvent(reason="error"))
        return 2
    if args.client_mode:
        assignment = assignment.model_copy(update={"client_mode": args.client_mode})
    token = args.token or os.environ.pop("ESSAIM_TRAINER_TOKEN", None)  # not handed down to its children
    trainer = Trainer(assignment, args.work_dir, events, coordinator=args.coordinator, token=token,
                      headless=args.headless, cache_dir=args.cache_dir, verbose=args.verbose)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=trainer.request_stop, args=("signal",),
                                                          daemon=True).start())
    threading.Thread(target=_read_commands, args=(trainer, commands_fd), kwargs={"headless": args.headless},
                     name="trainer-commands", daemon=True).start()
    code = trainer.run()
    logging.shutdown()
    os._exit(code)  # hivemind leaves non-daemon helpers behind; its children exit with us


if __name__ == "__main__":
    sys.exit(main())
