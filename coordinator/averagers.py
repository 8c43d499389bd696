"""A job's averaging peers beyond the first: processes of their own that reduce a share of every round.

The job runner's own averaging peer (:mod:`.averaging`) is the job's first: it leads every round,
holds the state the keeper saves, evaluates and rolls back. A round's all-reduce splits the
averaged vector between the group's reducers (hivemind's load balancing, by bandwidth), so every
further averaging peer takes its share of what the volunteers send and of the reduction's CPU,
and checks its slice of the updates it keeps (:mod:`essaim.swarm.validation`). Each joins the
first one's groups (it never leads: two leaders would split a round in two), applies the same
outer step, so it holds the same state, and serves it to newcomers; a round that went on without
it, or a rollback, has it load the first one's state again.

How many (:func:`averaging_peer_count`): the recipe's ``training.averaging_peers``, or one more per
``SLICE_BYTES`` of trainable float32 parameters (a LoRA adapter: one; a full fine-tune of a
135M-parameter model: three), at most the coordinator's ``max_averaging_peers``. The count is
fixed when a job first starts (``averagers.json``): every volunteer of a job must agree on the set
of reducers, which it takes from the addresses the coordinator hands out.

    peers = AveragingPeers(job_dir, count=2, command=[...])  # keys made now: their peer ids are known
    peers.start(join=first_peer_maddrs)                      # processes; they join the first one's DHT
    peers.wait_in(timeout=120)                               # their addresses, once each is in
    peers.check()                                            # restart one that died
    peers.stop()

    python -m essaim.coordinator.averagers --job-id ID --data-dir DIR --db-url URL --index K \\
        --join MADDR [--join MADDR ...] --reducer PEER_ID [...]

Each runs in ``DATA_DIR/jobs/ID/averagers/K/`` (key, p2p identity, port, token, ``peer.json`` with
its addresses once in, its own ``rounds.jsonl`` of verdicts and checks, which the job runner
counts with its own). Each refuses the volunteers the job runner dropped after failing validation,
counted across every averaging peer's checks (``dropped.json`` in the job's directory). The
processes stay in the job runner's process group and leave when it does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from essaim.coordinator.jobrunner import DROPPED_FILE, JobRunner, _write_json
from essaim.coordinator.jobrunner import job_dir as directory_of_job
from essaim.coordinator.rounds import AVERAGERS_DIR, ROUNDS_FILE, RoundBook
from essaim.coordinator.store import open_store
from essaim.protocol.errors import EssaimError
from essaim.protocol.recipe import Recipe, load_recipe
from essaim.protocol.types import FINAL_JOB_STATUSES, JobStatus

logger = logging.getLogger("essaim.coordinator.averagers")

COUNT_FILE = "averagers.json"  # the job's number of averaging peers, fixed at its first start
PEER_FILE = "peer.json"
SLICE_BYTES = 256 * 2**20  # one averaging peer per this much of the trainable parameters in float32
DEFAULT_MAX_AVERAGING_PEERS = 4
STATUS_EVERY_S = 2.0
MAX_RESTARTS = 5
STOP_WAIT_S = 30.0


def averaging_peer_count(recipe: Recipe, trainable_parameters: int, *,
                         max_peers: int = DEFAULT_MAX_AVERAGING_PEERS) -> int:
    """How many averaging peers a job gets (see the module docstring): at least 1."""
    asked = recipe.training.averaging_peers
    derived = 1 + (4 * max(0, trainable_parameters) - 1) // SLICE_BYTES if trainable_parameters > 0 else 1
    return max(1, min(asked if asked is not None else derived, max(1, max_peers)))


def fixed_count(job_dir: Path, count: int) -> int:
    """The count noted when the job first started (volunteers under way know that set of reducers),
    else ``count``, noted now."""
    path = job_dir / COUNT_FILE
    with contextlib.suppress(OSError, ValueError, TypeError):
        noted = int(json.loads(path.read_text())["count"])
        if noted >= 1:
            return noted
    _write_json(path, {"count": count})
    return count


def _peer_dir(job_dir: Path, index: int) -> Path:
    return job_dir / AVERAGERS_DIR / str(index)


def peer_id_of(job_dir: Path, index: int) -> str:
    """The peer id of averaging peer ``index`` (its key is made when missing)."""
    from essaim.swarm.identity import ensure_p2p_identity, load_or_create_private_key, peer_id_for_identity

    directory = _peer_dir(job_dir, index)
    directory.mkdir(parents=True, exist_ok=True)
    key = load_or_create_private_key(directory / "key.pem")
    return peer_id_for_identity(ensure_p2p_identity(key, directory / "peer.p2p"))


class AveragingPeers:
    """The job runner's handle on averaging peers 2..count (indexes 1..count-1)."""

    def __init__(self, job_dir: Path, count: int, command: Sequence[str]) -> None:
        self.job_dir = job_dir
        self.indexes = list(range(1, max(1, count)))
        self.command = list(command)
        self.peer_ids = {i: peer_id_of(job_dir, i) for i in self.indexes}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._restarts: dict[int, int] = {}
        self._join: list[str] = []
        self._reducers: list[str] = []
        self.given_up: set[int] = set()

    def start(self, *, join: Sequence[str], reducers: Sequence[str]) -> None:
        self._join, self._reducers = list(join), list(reducers)
        for index in self.indexes:
            (_peer_dir(self.job_dir, index) / PEER_FILE).unlink(missing_ok=True)
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        directory = _peer_dir(self.job_dir, index)
        cmd = [*self.command, "--index", str(index)]
        for maddr in self._join:
            cmd += ["--join", maddr]
        for reducer in self._reducers:
            cmd += ["--reducer", reducer]
        with open(directory / "averager.log", "ab") as log:
            self._procs[index] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        logger.info("averaging peer %d of the job: pid %d", index + 1, self._procs[index].pid)

    def maddrs(self) -> dict[int, list[str]]:
        """The addresses of each averaging peer that is in the swarm (``peer.json`` written)."""
        out = {}
        for index in self.indexes:
            try:
                info = json.loads((_peer_dir(self.job_dir, index) / PEER_FILE).read_text())
            except (OSError, ValueError):
                continue
            proc = self._procs.get(index)
            if isinstance(info, dict) and info.get("maddrs") and proc is not None and proc.poll() is None:
                out[index] = [str(m) for m in info["maddrs"]]
        return out

    def wait_in(self, timeout: float, stop: threading.Event | None = None) -> dict[int, list[str]]:
        """Wait until every averaging peer is in the swarm, or has died, or ``timeout`` s; one that
        is not in by then is stopped for good (volunteers then get the others as reducers)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            found = self.maddrs()
            pending = [i for i in self.indexes if i not in found and self._procs[i].poll() is None]
            if not pending:
                break
            time.sleep(0.5)
        found = self.maddrs()
        for index in self.indexes:
            if index not in found:
                logger.warning("averaging peer %d did not come up (see %s); the job goes on without it", index + 1,
                               _peer_dir(self.job_dir, index) / "averager.log")
                self.given_up.add(index)
                self._terminate(index)
        return found

    def check(self) -> None:
        """Restart an averaging peer that died (the same key and port: the same reducer for the
        volunteers), at most ``MAX_RESTARTS`` times."""
        for index, proc in list(self._procs.items()):
            if index in self.given_up or proc.poll() is None:
                continue
            self._restarts[index] = self._restarts.get(index, 0) + 1
            if self._restarts[index] > MAX_RESTARTS:
                logger.warning("averaging peer %d ended %d times; the job goes on without it", index + 1,
                               self._restarts[index])
                self.given_up.add(index)
                continue
            logger.warning("averaging peer %d ended (exit %s); restarting it", index + 1, proc.returncode)
            self._spawn(index)

    def _terminate(self, index: int) -> None:
        proc = self._procs.get(index)
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def stop(self) -> None:
        for index in self.indexes:
            self._terminate(index)
        deadline = time.monotonic() + STOP_WAIT_S
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class AveragingPeer(JobRunner):
    """One further averaging peer of a job, in its own process (see the module docstring)."""

    def __init__(self, *, index: int, join: Sequence[str], reducers: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.join = list(join)
        self.reducers = list(reducers)
        self.job_root: Path = directory_of_job(self.data_dir, self.job_id)  # where the runner writes the revocation list
        self.dir = _peer_dir(self.job_root, index)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rounds = RoundBook(self.dir / ROUNDS_FILE)
        self._parent = os.getppid()

    def run(self) -> int:
        from essaim.coordinator.averaging import AveragingLoop
        from essaim.coordinator.swarm_keys import public_key_der
        from essaim.swarm.admission import keep_membership
        from essaim.swarm.auth import token_file_refresher, watch_resets
        from essaim.swarm.dht import maddrs_for_others, shutdown_dht, start_dht, visible_maddrs
        from essaim.swarm.errors import DHTError
        from essaim.swarm.model import load_model
        from essaim.swarm.optimizer import build_optimizer
        from essaim.swarm.reachability import free_port
        from essaim.swarm.records import progress_validators

        job = self.store.get_job(self.job_id)
        recipe = load_recipe(job.recipe_yaml, source=f"job {job.id} recipe")
        key, identity, token_path, authorizer = self._credentials("key.pem", "peer.p2p", self.job_root)
        remembered = int(self._dht_memory().get("port") or 0)
        for port in dict.fromkeys([remembered or free_port(self.host), free_port(self.host)]):
            # its port of before where it is free (volunteers know that address), else another one:
            # its peer id, not its address, makes it one of the job's reducers
            announce = [f"/ip4/{self.announce_host}/tcp/{port}"] if self.announce_host else None
            try:
                dht = start_dht(initial_peers=self.join, identity_path=identity, authorizer=authorizer,
                                host_maddrs=[f"/ip4/{self.host}/tcp/{port}"], announce_maddrs=announce,
                                client_mode=False, record_validators=progress_validators(self.job_id),
                                private_key=key, startup_timeout=30.0)
                break
            except DHTError as exc:
                logger.warning("averaging peer %d: cannot listen on port %d: %s", self.index + 1, port, exc)
        else:
            raise DHTError("no port to listen on")
        _write_json(self.dir / "dht.json", {"port": port})
        self._own_peer = str(dht.peer_id)
        optimizer = None
        stop = threading.Event()
        keep_membership(dht, self.job_id, token_path.read_text(), key, stop,
                        current_token=token_file_refresher(token_path))
        try:
            files = self._files(job)
            loaded = load_model(recipe, files=files, seed=recipe.training.seed, local_dirs=self.model_dirs)
            optimizer = build_optimizer(loaded, recipe, dht=dht, run_id=self.job_id, private_key=key, auxiliary=True,
                                        reducers=self.reducers, leads=False, state_from=self.reducers[:1])
            self._start_validation(optimizer, loaded, recipe, files)
            optimizer.hv.drifted = True  # the first one's state, whatever epoch the job is at, before any round
            watch_resets(dht, self.job_id, public_key_der(self._coordinator_key), stop, optimizer.request_resync)
            averaging = AveragingLoop(optimizer)
            averaging.start()
            _write_json(self.dir / PEER_FILE, {"pid": os.getpid(), "peer_id": self._own_peer,
                                               "maddrs": maddrs_for_others(visible_maddrs(dht),
                                                                            announce_host=self.announce_host)})
            logger.info("job %s: averaging peer %d in the swarm", self.job_id, self.index + 1)
            try:
                return self._follow(averaging)
            finally:
                averaging.stop()
        finally:
            stop.set()
            (self.dir / PEER_FILE).unlink(missing_ok=True)
            if optimizer is not None:
                optimizer.shutdown()
            shutdown_dht(dht)

    def _follow(self, averaging: Any) -> int:
        """Until the job ends or the job runner is gone: note the rounds, refuse the volunteers the
        runner dropped, pause with the job."""
        last_token = time.time()
        while not self.stop_event.wait(STATUS_EVERY_S):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                dropped = json.loads((self.job_root / DROPPED_FILE).read_text())
                averaging.optimizer.exclude({str(p): str(why) for p, why in dropped.items()})
            if os.getppid() != self._parent:
                logger.warning("the job runner is gone: averaging peer %d stops", self.index + 1)
                return 0
            if time.time() - last_token > 600:
                self._refresh_token()
                last_token = time.time()
            self._note_rounds(averaging.new_rounds())
            try:
                status = self.store.get_job(self.job_id).status
            except EssaimError as exc:
                logger.warning("cannot read the job's status: %s", exc)
                continue
            if status in FINAL_JOB_STATUSES:
                return 0
            (averaging.pause if status == JobStatus.PAUSED else averaging.resume)()
        return 0

    def _note_rounds(self, outcomes: list[Any], job: Any = None) -> None:
        """Its own verdicts and checks, by volunteer, in its own ``rounds.jsonl`` (the job runner
        counts them); the job's status line is the job runner's."""
        self._book_rounds(outcomes)


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the job runner that started it dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m essaim.coordinator.averagers",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--index", type=int, required=True, help="1 for the job's second averaging peer, ...")
    parser.add_argument("--join", action="append", default=[], help="the first averaging peer's addresses")
    parser.add_argument("--reducer", action="append", default=[],
                        help="the peer ids of all of the job's averaging peers, the first one first")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--announce-host", default=None)
    parser.add_argument("--model-dir", type=Path, action="append", default=[])
    parser.add_argument("--log-level", default=os.environ.get("ESSAIM_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.index < 1 or not args.join or len(args.reducer) < 2:
        parser.error("--index must be 1 or more, with the first peer's --join addresses and every --reducer")
    _die_with_parent()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    store = open_store(args.db_url)
    peer = AveragingPeer(index=args.index, join=args.join, reducers=args.reducer, job_id=args.job_id,
                         data_dir=args.data_dir, store=store, host=args.host, announce_host=args.announce_host,
                         model_dirs=args.model_dir)

    def on_signal(signum: int, _frame: Any) -> None:
        peer.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return peer.run()
    except EssaimError as exc:
        logger.error("job %s: averaging peer %d: %s", args.job_id, args.index + 1, exc)
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
