"""The swarm services of one running job, in a process of their own:

- a DHT bootstrap peer, the ``initial_peers`` volunteers get with their assignment;
- the monitor (:mod:`.monitor`): signed progress records -> job metrics, progress curve, ledger;
- the checkpoint keeper (:mod:`.keeper`): follows, saves, evaluates and serves the job's state,
  and writes the artifact and provenance when the swarm reaches the recipe's epochs.

    python -m essaim.coordinator.jobrunner --job-id ID --data-dir DIR --db-url URL

The coordinator's gateway (:mod:`.gateway`) starts one per running job and stops it when the job
ends; the API process stays free of torch and hivemind. The runner writes ``runner.json`` (its pid
and the DHT's addresses) in ``DATA_DIR/jobs/ID/`` once the DHT listens, and keeps its own state
there too, so a restarted runner (or coordinator) carries on where it was: same peer id, same
port and back in touch with the volunteers it knew (``dht.json``), last checkpoint, eval curve,
ledger totals. The job completes only from a state the keeper received at the recipe's last epoch
(the trainers wait for it to take that state before they leave). SIGTERM stops it after a last
checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from essaim.coordinator.monitor import Accepted, MonitorState, PeerReport, claims, swarm_metrics
from essaim.coordinator.rounds import ROUNDS_FILE, RoundBook, averager_books
from essaim.coordinator.store import LedgerDraft, Store, open_store
from essaim.coordinator.swarm_view import PUBLISH_EVERY_S, publish_swarm_view
from essaim.protocol.errors import EssaimError
from essaim.protocol.recipe import Recipe, load_recipe
from essaim.protocol.types import FINAL_JOB_STATUSES, Job, JobMetrics, JobStatus, VolunteerStatus
from essaim.swarm.reachability import read_checks
from essaim.swarm.rounds import RoundOutcome

logger = logging.getLogger("essaim.coordinator.jobrunner")

RUNNER_FILE = "runner.json"
DHT_FILE = "dht.json"  # the bootstrap peer's port and the peers it knew, for a restarted runner
REMEMBER_PEERS_S = 15.0
MAX_REMEMBERED_PEERS = 32
TOKEN_TTL_S = 3600.0
POLL_S = 2.0
REVOKED_FILE = "revoked.json"
DROPPED_FILE = "dropped.json"  # peer id -> why, for the job's further averaging peers (essaim.coordinator.averagers)
REACHABILITY_FILE = "reachability.json"  # how the job's peer saw each volunteer (essaim.swarm.reachability)
SLOTS_EVERY_S = 10.0  # how often the volunteers' assignments are read again for validation
REVOCATIONS_EVERY_S = 4.0  # how often bans are read from the store (peers fetch the list every 5 s)
REVOCATIONS_REPUBLISH_S = 120.0
COORDINATOR_ID = "coordinator"
OTHERS_WAIT_S = 180.0  # how long the job's further averaging peers have to come up before volunteers are let in


def job_dir(data_dir: Path, job_id: str) -> Path:
    return data_dir / "jobs" / job_id


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class JobRunner:
    """Runs the bootstrap peer, the monitor and the keeper of one job until it ends or is told to stop."""

    def __init__(self, *, job_id: str, data_dir: Path, store: Store, host: str = "127.0.0.1",
                 announce_host: str | None = None, model_dirs: Sequence[Path] = (),
                 max_averaging_peers: int = 4, store_url: str = "",
                 reachability_second_address: str | None = None) -> None:
        self.job_id = job_id
        self.reachability_second_address = reachability_second_address
        self.max_averaging_peers = max_averaging_peers
        self.store_url = store_url  # the store's URL, for the further averaging peers' processes
        self.model_dirs = tuple(model_dirs)  # where on this disk the recipe may name its model
        self.data_dir = data_dir
        self.store = store
        self.host = host
        self.announce_host = announce_host
        self.dir = job_dir(data_dir, job_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stop_event = threading.Event()
        self.monitor = MonitorState()
        self._peer_owners: dict[str, tuple[str, bool]] = {}  # peer id -> (volunteer id, banned)
        self._own_peer = ""  # the averaging peer's own peer id, once its DHT runs
        self._revoked_keys: frozenset[bytes] | None = None
        self._revocations_read_at = self._revocations_published_at = 0.0
        self._owners_read_at = 0.0
        self._view_at = 0.0  # when the swarm view (essaim.coordinator.swarm_view) was last stored
        self.rounds = RoundBook(self.dir / ROUNDS_FILE)
        self._behind_since: float | None = None
        self._following: Future[Any] | None = None
        self._behind_from = 0
        self._scoring: ThreadPoolExecutor | None = None  # evaluations, off the runner's loop

    # ---- set up ----
    def _files(self, job: Job) -> dict[str, Path]:
        blobs = self.data_dir / "blobs"  # CoordinatorSettings.blobs_dir
        return {f.path: blobs / f.sha256 for f in job.files}

    def _credentials(self, key_file: str, identity_file: str, job_root: Path) -> tuple[Any, Path, Path, Any]:
        """This peer's key (``key_file`` in its directory, made if missing), p2p identity, swarm token
        file (kept fresh) and authorizer (refusing the keys in ``job_root``'s revocation list)."""
        from essaim.coordinator.swarm_keys import SWARM_KEY, load_or_create_swarm_key, public_key_der
        from essaim.swarm.auth import SwarmAuthorizer, token_file_refresher
        from essaim.swarm.identity import ensure_p2p_identity, load_or_create_private_key, public_key_bytes

        key = load_or_create_private_key(self.dir / key_file)
        identity = ensure_p2p_identity(key, self.dir / identity_file)
        token_path = self._token_refresher(key, public_key_bytes(key))
        self._coordinator_key = load_or_create_swarm_key(self.data_dir / SWARM_KEY)
        authorizer = SwarmAuthorizer(
            key, token_path.read_text(), public_key_der(self._coordinator_key), self.job_id,
            refresh=token_file_refresher(token_path), revocations_path=job_root / REVOKED_FILE,
        )
        return key, identity, token_path, authorizer

    def _token_refresher(self, key: Any, volunteer_der: bytes) -> Path:
        from essaim.coordinator.swarm_keys import SWARM_KEY, issue_swarm_token, load_or_create_swarm_key

        coordinator_key = load_or_create_swarm_key(self.data_dir / SWARM_KEY)
        path = self.dir / "swarm_token"

        def refresh() -> None:
            token, _ = issue_swarm_token(
                coordinator_key, job_id=self.job_id, volunteer_id=COORDINATOR_ID,
                peer_public_key_der=volunteer_der, ttl_s=TOKEN_TTL_S,
            )
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(token)
            tmp.chmod(0o600)
            os.replace(tmp, path)

        refresh()
        self._refresh_token = refresh
        return path

    def run(self) -> int:
        from essaim.coordinator.averaging import AveragingLoop
        from essaim.coordinator.keeper import Keeper
        from essaim.swarm.admission import keep_membership
        from essaim.swarm.auth import token_file_refresher
        from essaim.swarm.data import load_eval_set
        from essaim.swarm.dht import maddrs_for_others, shutdown_dht, start_dht, visible_maddrs
        from essaim.swarm.model import load_model
        from essaim.swarm.optimizer import build_auxiliary_optimizer
        from essaim.swarm.records import progress_validators

        job = self.store.get_job(self.job_id)
        recipe = load_recipe(job.recipe_yaml, source=f"job {job.id} recipe")
        key, identity, token_path, authorizer = self._credentials("keeper-key.pem", "keeper.p2p", self.dir)
        self._keeper_key = key
        dht = self._start_dht(
            start_dht, identity=identity, authorizer=authorizer, validators=progress_validators(self.job_id), key=key,
        )
        self._own_peer = str(dht.peer_id)
        optimizer = None
        membership = threading.Event()
        keep_membership(dht, self.job_id, token_path.read_text(), key, membership,
                        current_token=token_file_refresher(token_path))
        try:
            maddrs = visible_maddrs(dht)
            self._serve_reachability(dht)
            handed = maddrs_for_others(maddrs, announce_host=self.announce_host)
            # alive, but no address to hand out yet: volunteers join once the averaging peer is in
            # the swarm (one that came first would end its first epochs alone, out of step with it)
            _write_json(self.dir / RUNNER_FILE, {"pid": os.getpid(), "maddrs": [], "job_id": self.job_id})
            self._remember_dht(dht, maddrs)
            files = self._files(job)
            loaded = load_model(recipe, files=files, seed=recipe.training.seed, local_dirs=self.model_dirs)
            others = self._averaging_peers(recipe, loaded, maddrs)  # they load the model meanwhile
            eval_set = load_eval_set(recipe, loaded.tokenizer, files=files)
            keeper = Keeper(recipe=recipe, loaded=loaded, optimizer=None, eval_set=eval_set, job_dir=self.dir)
            keeper.evaluate_before()  # the base model, before the averaging peer is in the swarm
            optimizer = build_auxiliary_optimizer(loaded, recipe, dht=dht, run_id=self.job_id, private_key=key,
                                                  reducers=[self._own_peer, *others.peer_ids.values()])
            keeper.optimizer = optimizer
            self._start_validation(optimizer, loaded, recipe, files)
            keeper.restore()
            keeper.save_initial()  # what a degraded first checkpoint rolls back to
            optimizer.serve_state(True)
            self._load_ledger_totals(job)
            averaging = AveragingLoop(optimizer)
            averaging.start()
            # every averaging peer that came up is handed out, the first one first (volunteers take
            # the set of reducers from these addresses, and load states in their order)
            for _index, theirs in sorted(others.wait_in(OTHERS_WAIT_S, self.stop_event).items()):
                handed += theirs
            _write_json(self.dir / RUNNER_FILE, {"pid": os.getpid(), "maddrs": handed, "job_id": self.job_id})
            logger.info("job %s: bootstrap and averaging peer at %s", self.job_id, ", ".join(handed))
            try:
                return self._loop(dht, recipe, keeper, optimizer, averaging)
            finally:
                averaging.stop()
                if self._scoring is not None:
                    self._scoring.shutdown(wait=True, cancel_futures=True)
        finally:
            if self._others is not None:
                self._others.stop()
            membership.set()
            if optimizer is not None:
                optimizer.shutdown()
            shutdown_dht(dht)
            (self.dir / RUNNER_FILE).unlink(missing_ok=True)

    _others: Any = None  # the job's further averaging peers (essaim.coordinator.averagers.AveragingPeers)

    def _averaging_peers(self, recipe: Recipe, loaded: Any, maddrs: list[str]) -> Any:
        """Start the job's averaging peers beyond this one (none under mean aggregation, where any
        full peer reduces), joined to this runner's DHT at ``maddrs``."""
        from essaim.coordinator.averagers import AveragingPeers, averaging_peer_count, fixed_count

        count = 1
        if recipe.training.aggregation == "robust":
            trainable = sum(p.numel() for _, p in loaded.trainable_parameters())
            count = fixed_count(self.dir, averaging_peer_count(recipe, trainable, max_peers=self.max_averaging_peers))
        command = [sys.executable, "-m", "essaim.coordinator.averagers", "--job-id", self.job_id,
                   "--data-dir", str(self.data_dir), "--db-url", self.store_url, "--host", self.host]
        if self.announce_host:
            command += ["--announce-host", self.announce_host]
        for directory in self.model_dirs:
            command += ["--model-dir", str(directory)]
        self._others = AveragingPeers(self.dir, count, command)
        if count > 1:
            logger.info("job %s: %d averaging peers", self.job_id, count)
            self._others.start(join=maddrs, reducers=[self._own_peer, *self._others.peer_ids.values()])
        return self._others

    def _start_validation(self, optimizer: Any, loaded: Any, recipe: Recipe, files: Any) -> None:
        """Give the averaging peer a validator of volunteers' updates (essaim.swarm.validation),
        when it keeps updates to check (robust aggregation, local averaging)."""
        from essaim.swarm.validation import Validator

        if not getattr(optimizer.hv.grad_averager, "validating", False):
            return
        try:
            dataset = self._dataset(recipe, loaded, files)
            optimizer.hv.validator = Validator.for_job(loaded, dataset, partial(self._shards_of, dataset.num_shards))
            self._validating = True
        except EssaimError as exc:
            logger.warning("job %s: volunteers' updates will not be validated: %s", self.job_id, exc)

    def _dataset(self, recipe: Recipe, loaded: Any, files: Any) -> Any:
        """The job's training data as the volunteers pack it; notes and logs how many sequences it holds
        (how many passes over it the job's epochs make: an epoch is target_batch_size samples)."""
        from essaim.swarm.data import build_train_dataset

        dataset = build_train_dataset(recipe, loaded.tokenizer, files=files, local_dirs=self.model_dirs)
        self._sequences = len(dataset)
        t = recipe.training
        logger.info("job %s: the data holds %d sequences of %d tokens; an epoch is %d samples (%.2f passes over the "
                    "data), the job's %d epochs %.2f passes", self.job_id, len(dataset), dataset.sequence_length,
                    t.target_batch_size, t.target_batch_size / max(len(dataset), 1), t.epochs,
                    t.epochs * t.target_batch_size / max(len(dataset), 1))
        return dataset

    def _sequences_of(self, recipe: Recipe, keeper: Any, job: Job) -> int | None:
        if self._sequences is None:
            try:
                self._dataset(recipe, keeper.loaded, self._files(job))
            except EssaimError as exc:
                logger.warning("job %s: cannot count the data's sequences: %s", self.job_id, exc)
        return self._sequences

    _slots: dict[str, list[int]] = {}
    _slots_at = 0.0
    _validating = False  # the averaging peer checks volunteers' updates (credit waits for a passed check)
    _sequences: int | None = None  # the job's training sequences, where the runner built its dataset

    def _shards_of(self, num_shards: int, peer_id: str) -> list[int] | None:
        """The shards assigned to the volunteer behind ``peer_id`` (None: not known), from the
        assignments in the store (read again at most every ``SLOTS_EVERY_S``)."""
        from essaim.protocol.types import shards_for_slots

        owner = self._owner(peer_id)
        if owner is None:
            return None
        if owner[0] not in self._slots or time.time() - self._slots_at > SLOTS_EVERY_S:
            try:
                self._slots, self._slots_at = self.store.assigned_slots(self.job_id), time.time()
            except EssaimError as exc:
                logger.warning("job %s: cannot read the volunteers' assignments: %s", self.job_id, exc)
        slots = self._slots.get(owner[0])
        return shards_for_slots(slots, num_shards) if slots else None

    def _start_dht(self, start_dht: Any, *, identity: Path, authorizer: Any, validators: Any, key: Any) -> Any:
        """The job's bootstrap peer, as it was before a restart where possible: the same peer id
        (``keeper.p2p``), the same port when it is free, and in touch with the volunteers it knew.

        Volunteers drop a peer that stops answering from their routing tables, so a restarted
        runner, even at the same address, would stay alone (no records to read, no state to
        follow) until they ask the coordinator again; it dials them instead."""
        from essaim.swarm.errors import DHTError
        from essaim.swarm.reachability import free_port

        memory = self._dht_memory()
        port = int(memory.get("port") or 0)
        peers = [str(p) for p in memory.get("peers", []) if isinstance(p, str) and "/p2p/" in p]
        tried: list[tuple[int, list[str]]] = []
        for attempt, initial in [(port, peers), (port, []), (0, peers), (0, [])]:
            if (attempt, initial) in tried:
                continue
            tried.append((attempt, initial))
            announce = None
            if self.announce_host:  # libp2p announces no port 0: pick the port now
                attempt = attempt or free_port(self.host)
                announce = [f"/ip4/{self.announce_host}/tcp/{attempt}"]
            try:
                return start_dht(
                    initial_peers=initial, identity_path=identity, authorizer=authorizer,
                    host_maddrs=[f"/ip4/{self.host}/tcp/{attempt}"], announce_maddrs=announce, client_mode=False,
                    record_validators=validators, private_key=key, startup_timeout=30.0,
                )
            except DHTError as exc:
                if tried[-1][0] == 0 and not initial:
                    raise
                logger.warning("job %s: could not start the DHT on port %d with %d known peers (%s); trying "
                               "otherwise", self.job_id, attempt, len(initial), exc)
        raise AssertionError("unreachable: the last attempt raises")

    def _serve_reachability(self, dht: Any) -> None:
        """Answer the volunteers' "can you dial me back?" checks (:mod:`essaim.swarm.reachability`)."""
        from essaim.swarm.reachability import serve_reachability_checks

        try:
            serve_reachability_checks(dht, listen_host=self.host, record=str(self.dir / REACHABILITY_FILE),
                                      second_address=self.reachability_second_address)
        except Exception as exc:  # volunteers then fall back to client mode, which always works
            logger.warning("job %s: cannot serve reachability checks: %s", self.job_id, exc)

    def _dht_memory(self) -> dict[str, Any]:
        try:
            data = json.loads((self.dir / DHT_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _remember_dht(self, dht: Any, maddrs: list[str] | None = None) -> None:
        """Note the port and the peers this runner is connected to (read back by :meth:`_start_dht`)."""
        memory = self._dht_memory()
        if maddrs is not None:
            memory["port"] = _tcp_port(maddrs)
        try:
            peers = dht.run_coroutine(_connected_peers, return_future=True).result(5.0)
        except Exception as exc:  # hivemind raises many kinds; the memory is best effort
            logger.debug("cannot list the DHT's peers: %s", exc)
            peers = []
        if peers:
            memory["peers"] = peers[:MAX_REMEMBERED_PEERS]
        _write_json(self.dir / DHT_FILE, memory)

    def _load_ledger_totals(self, job: Job) -> None:
        """What the ledger holds already: each volunteer's totals and the time of its last row (the
        throughput cap of a claim counts from there, so work done while the runner was down is
        credited), and the job's start for volunteers with no row yet."""
        if job.created_at:
            self.monitor.started_at = min(self.monitor.started_at, job.created_at)
        last_row: dict[str, float] = {}
        claimed: dict[str, list[float]] = {}  # samples, compute claimed; samples, compute refused
        for entry in self.store.list_ledger(job_id=self.job_id):
            last_row[entry.volunteer_id] = entry.created_at
            sums = claimed.setdefault(entry.volunteer_id, [0, 0.0, 0, 0.0])
            samples = entry.samples if entry.claimed_samples is None else entry.claimed_samples
            compute = entry.compute_seconds if entry.claimed_compute_seconds is None else entry.claimed_compute_seconds
            sums[0] += samples
            sums[1] += compute
            if entry.note.startswith("refused"):
                sums[2] += samples - entry.samples
                sums[3] += compute - entry.compute_seconds
        granted = {c.volunteer_id: c for c in self.store.contributions(job_id=self.job_id)}
        for volunteer in set(granted) | set(claimed):  # a volunteer whose every row was refused has no contribution
            at = last_row.get(volunteer, self.monitor.started_at)
            cs, cc, rs, rc = claimed.get(volunteer, [0, 0.0, 0, 0.0])
            c = granted.get(volunteer)
            self.monitor.accepted[volunteer] = Accepted(c.samples if c else 0, c.compute_seconds if c else 0.0, at,
                                                        int(rs), rc, int(cs), cc)

    # ---- the loop ----
    def _loop(self, dht: Any, recipe: Recipe, keeper: Any, optimizer: Any, averaging: Any) -> int:
        """Until the job ends: bans, tokens, metrics and ledger every ``POLL_S``; checkpoints saved on
        the averaging peer's thread and evaluated on another, so this loop never waits for a round."""
        target = recipe.training.epochs
        last_token = last_peers = time.time()
        saving: Future[Any] | None = None
        scoring: Future[Any] | None = None
        rolling: Future[Any] | None = None
        self._scoring = evaluation_executor()
        while not self.stop_event.wait(POLL_S):
            job = self.store.get_job(self.job_id)
            if job.status in FINAL_JOB_STATUSES:
                logger.info("job %s is %s; stopping its swarm services", self.job_id, job.status)
                return 0
            if time.time() - last_token > TOKEN_TTL_S / 3:
                self._refresh_token()
                last_token = time.time()
            if time.time() - last_peers > REMEMBER_PEERS_S:
                self._remember_dht(dht)
                last_peers = time.time()
            self._revoke_banned(dht)
            if self._others is not None:
                self._others.check()
            self._note_rounds(averaging.new_rounds(), job)
            self._publish_view()
            epoch = optimizer.local_epoch
            metrics = self._monitor(dht, recipe, job, max(epoch, 0))
            self._share_drops(optimizer)
            if job.status == JobStatus.PAUSED:
                averaging.pause()
                continue
            averaging.resume()
            self._catch_up(keeper, averaging, recipe, metrics.epoch, epoch)
            keeper.record.followed_epoch = max(keeper.record.followed_epoch, epoch)
            final = epoch >= target
            if saving is None and scoring is None and rolling is None and (undo := self._undo_due(keeper)) is not None:
                rolling = averaging.submit(keeper.roll_back, undo)
            if saving is None and scoring is None and rolling is None and (
                    keeper.due() or (final and keeper.record.checkpoint_epoch < epoch)):
                saving = averaging.submit(keeper.save)
            if saving is not None and saving.done():
                done, saving = saving, None
                try:
                    scoring = self._scoring.submit(keeper.score, *done.result())
                except Exception as exc:
                    logger.warning("job %s: the checkpoint failed: %s", self.job_id, exc)
            if scoring is not None and scoring.done():
                done, scoring = scoring, None
                try:
                    result = done.result()
                except Exception as exc:
                    logger.warning("job %s: the evaluation failed: %s", self.job_id, exc)
                    result = None
                if result is not None and keeper.rollback_due is None:
                    metrics.eval_metric, metrics.eval_metric_name = result.value, result.metric
                    self.store.update_job_metrics(self.job_id, metrics)
                if keeper.rollback_due is not None:
                    rolling = averaging.submit(keeper.roll_back)
            if rolling is not None and rolling.done():
                done, rolling = rolling, None
                try:
                    done.result()
                except Exception as exc:  # the next checkpoint is judged again
                    logger.warning("job %s: the rollback failed: %s", self.job_id, exc)
                else:
                    self._rolled_back(dht, keeper, job)
            if (final and saving is None and scoring is None and rolling is None
                    and keeper.record.checkpoint_epoch >= target):
                self._note_rounds(averaging.new_rounds(), job)
                self._publish_view(force=True)
                problem = self.rounds.why_not_averaged(target)
                if problem is None:
                    self._complete(recipe, keeper, metrics)
                else:
                    self._fail(problem)
                return 0
        averaging.stop()
        if optimizer.local_epoch > max(keeper.record.checkpoint_epoch, 0):
            keeper.checkpoint()  # told to stop: keep what the swarm reached
        return 0

    def _undo_due(self, keeper: Any) -> int | None:
        """When an admin banned a volunteer with --undo (read every ``REVOCATIONS_EVERY_S``) and it
        took part in this job's rounds: note the rollback, and return the epoch of the newest kept
        checkpoint from before its first round (:meth:`Keeper.undo_epoch`) to roll back to."""
        now = time.time()
        if now - getattr(self, "_undo_read_at", 0.0) < REVOCATIONS_EVERY_S:
            return None
        self._undo_read_at = now
        try:
            requests = self.store.undo_requests()
        except EssaimError as exc:
            logger.warning("job %s: cannot read the undo requests: %s", self.job_id, exc)
            return None
        for volunteer_id in sorted(set(requests) - set(keeper.record.undone)):
            keeper.record.undone.append(volunteer_id)
            rounds = [e.epoch for e in self.rounds.entries if volunteer_id in (*e.volunteers, *e.suspects)]
            if not rounds:
                continue  # it never took part here
            to_epoch = keeper.undo_epoch(min(rounds))
            epoch = keeper.optimizer.local_epoch
            keeper.record.rollbacks.append({
                "epoch": epoch, "value": None, "loss": None, "to_epoch": to_epoch, "at": now,
                "reason": f"undoing banned volunteer {volunteer_id}: its first round was epoch {min(rounds)}"})
            logger.warning("job %s: undoing banned volunteer %s's rounds: back to the checkpoint of epoch %d",
                           self.job_id, volunteer_id, to_epoch)
            return to_epoch
        return None

    def _rolled_back(self, dht: Any, keeper: Any, job: Job) -> None:
        """After the averaging peer rolled back: tell the volunteers to reload its state (a signed
        reset in the job's DHT), name the volunteers of the rounds since the adopted checkpoint in
        the record, and say so in the job's status."""
        from essaim.coordinator.keeper import KEEPER_STATE
        from essaim.coordinator.swarm_keys import sign_reset
        from essaim.swarm.auth import publish_reset

        rollback = keeper.record.rollbacks[-1]
        epoch, to_epoch = int(rollback["epoch"]), int(rollback["to_epoch"])
        rollback["volunteers"] = sorted({v for e in self.rounds.entries if to_epoch <= e.epoch < epoch
                                         for v in (*e.volunteers, *e.suspects)})
        keeper.record.save(self.dir / KEEPER_STATE)
        value = sign_reset(self._coordinator_key, self.job_id, len(keeper.record.rollbacks), epoch)
        try:
            publish_reset(dht, self.job_id, value, owner_key=self._keeper_key)
        except Exception as exc:  # volunteers then go on from their state: the next checkpoint is judged again
            logger.warning("job %s: could not publish the state reset: %s", self.job_id, exc or type(exc).__name__)
        # a checkpoint not adopted ("its eval loss rose ...") or an undo ("undoing banned volunteer ...")
        reason = f"epoch {epoch}: rolled back to the checkpoint of epoch {to_epoch}: {rollback['reason']}"
        with contextlib.suppress(EssaimError):
            self.store.update_job_status(self.job_id, JobStatus.RUNNING, reason[:500], expect=[JobStatus.RUNNING])

    def _catch_up(self, keeper: Any, averaging: Any, recipe: Recipe, swarm_epoch: int, epoch: int) -> None:
        """Load the swarm's state from the peers when the volunteers have been further on than the
        averaging peer for longer than a round takes (a restarted runner: its rounds went on
        without it). Only peers that accept connections can send it."""
        if self._following is not None:
            if not self._following.done():
                return
            try:
                self._following.result()
            except EssaimError as exc:
                logger.warning("keeper could not load the swarm's state: %s", exc)
            self._following = None
            self._behind_since = time.time()  # the next try, if still behind, after the same patience
            for missed in range(self._behind_from, keeper.optimizer.local_epoch):
                self.rounds.add(RoundOutcome(epoch=missed, error="the coordinator's averaging peer missed this "
                                             "round; it took up the swarm's state afterwards"), [])
            return
        target = recipe.training.epochs
        if min(swarm_epoch, target) <= epoch:
            self._behind_since = None
            return
        now = time.time()
        if self._behind_since is None:
            self._behind_since = now
        patience = 2 * (recipe.training.matchmaking_time + recipe.training.averaging_timeout) + 10.0
        if now - self._behind_since >= patience:
            logger.info("job %s: the volunteers are at epoch %d, the averaging peer at %d: catching up",
                        self.job_id, swarm_epoch, epoch)
            self._behind_from = epoch
            self._following = averaging.submit(keeper.follow, min(swarm_epoch, target))

    def _note_rounds(self, outcomes: list[Any], job: Job) -> None:
        """Record the averaging peer's rounds by volunteer, and say in the job's status reason how the
        last one went (a round that averaged nobody is reported, not hidden)."""
        if not outcomes:
            return
        self._book_rounds(outcomes)
        reason = self.rounds.describe_last()
        if reason and reason != job.status_reason and job.status == JobStatus.RUNNING:
            with contextlib.suppress(EssaimError):
                self.store.update_job_status(self.job_id, JobStatus.RUNNING, reason, expect=[JobStatus.RUNNING])

    def _book_rounds(self, outcomes: list[Any]) -> None:
        """Each round in :attr:`rounds`, by volunteer: who was averaged, named a suspect (with why),
        how much of its pull was kept, what its update carried, how its check went."""
        from essaim.swarm.aggregation import suspects

        for outcome in outcomes:
            volunteers = sorted({owner[0] for owner in map(self._owner, outcome.peers) if owner is not None})
            verdicts = getattr(outcome, "verdicts", {}) or {}
            flagged, kept, checks, weights = {}, {}, {}, {}
            for peer, why in suspects(verdicts).items():
                if peer == self._own_peer:
                    continue
                owner = self._owner(peer)
                flagged[owner[0] if owner is not None else f"peer {peer}"] = why
            for peer, verdict in verdicts.items():
                owner = self._owner(peer)
                if peer != self._own_peer and owner is not None and not verdict.get("refused"):
                    kept[owner[0]] = round(float(verdict.get("kept", 1.0)), 4)
                if owner is not None and "weight" in verdict:
                    weights[owner[0]] = float(verdict["weight"])
                if owner is not None and verdict.get("check"):
                    checks[owner[0]] = dict(verdict["check"])
            self.rounds.add(outcome, volunteers, flagged, kept, checks, weights)

    def _aggregation_summary(self, recipe: Recipe) -> Any:
        """The provenance's account of the rounds: how they were reduced, and the suspects named."""
        from essaim.swarm.artifact import AggregationSummary, Suspect

        named: dict[str, list[str]] = {}
        for entry in [*self.rounds.entries, *(e for book in averager_books(self.dir) for e in book.entries)]:
            for volunteer, why in entry.suspects.items():
                named.setdefault(volunteer, []).append(why)
        return AggregationSummary(
            method=recipe.training.aggregation, rounds=len(self.rounds.entries),
            rounds_averaged=sum(1 for e in self.rounds.entries if e.averaged),
            suspects=[Suspect(volunteer=v, rounds=len(whys), last_reason=whys[-1]) for v, whys in sorted(named.items())],
        )

    def _publish_view(self, *, force: bool = False) -> None:
        """Store how each volunteer takes part in the swarm (reachability, last round), every
        ``PUBLISH_EVERY_S`` seconds (:mod:`essaim.coordinator.swarm_view`)."""
        if not force and time.time() - self._view_at < PUBLISH_EVERY_S:
            return
        self._view_at = time.time()
        try:
            publish_swarm_view(self.store, self.job_id, rounds=self.rounds,
                               checks=read_checks(self.dir / REACHABILITY_FILE), owner=self._owner)
        except EssaimError as exc:
            logger.warning("job %s: could not store how volunteers take part in the swarm: %s", self.job_id, exc)

    def _fail(self, problem: str) -> None:
        logger.error("job %s: %s", self.job_id, problem)
        with contextlib.suppress(EssaimError):
            self.store.update_job_status(self.job_id, JobStatus.FAILED, problem[:500],
                                         expect=[JobStatus.RUNNING, JobStatus.PAUSED])

    def _revoke_banned(self, dht: Any) -> None:
        """Publish the coordinator-signed list of banned volunteers' keys: peers refuse their tokens."""
        from essaim.coordinator.swarm_keys import sign_revocations
        from essaim.swarm.auth import publish_revocations, write_revocations

        now = time.time()
        if now - self._revocations_read_at < REVOCATIONS_EVERY_S:
            return
        self._revocations_read_at = now
        banned = self.store.list_volunteers(status=VolunteerStatus.BANNED, limit=1_000_000)
        keys = frozenset(v.public_key for v in banned if v.public_key)
        if keys == self._revoked_keys and now - self._revocations_published_at < REVOCATIONS_REPUBLISH_S:
            return
        value = sign_revocations(self._coordinator_key, self.job_id, sorted(keys), now=now)
        write_revocations(self.dir / REVOKED_FILE, value)  # this peer refuses them at once
        try:
            publish_revocations(dht, self.job_id, value, owner_key=self._keeper_key)
        except Exception as exc:  # the DHT may be briefly unreachable: try again next time
            logger.warning("could not publish the revocation list: %s", exc or type(exc).__name__)
            return
        if keys != (self._revoked_keys or frozenset()):
            logger.info("job %s: %d banned volunteer key(s) revoked in the swarm", self.job_id, len(keys))
        self._revoked_keys, self._revocations_published_at = keys, now

    _dropped: dict[str, str] = {}  # volunteer id -> why: dropped after failing validation (all averaging peers' checks)

    def _share_drops(self, optimizer: Any) -> None:
        """Every averaging peer of the job refuses a dropped volunteer's parts: this one at once, the
        others from ``DROPPED_FILE`` (each counts only the checks of its own slice)."""
        if not self._dropped:
            return
        peers = {peer: f"excluded for the rest of the job after failing validation: {why}"
                 for peer, (volunteer, _) in self._peer_owners.items() if (why := self._dropped.get(volunteer))}
        if not peers:
            return
        optimizer.exclude(peers)
        path = self.dir / DROPPED_FILE
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()) == peers:
                return
        _write_json(path, peers)

    def _owner(self, peer_id: str) -> tuple[str, bool] | None:
        found = self._peer_owners.get(peer_id)
        if found is None and time.time() - self._owners_read_at > 10:
            from essaim.swarm.identity import peer_id_for_public_key

            self._owners_read_at = time.time()
            for v in self.store.list_volunteers(limit=1_000_000):
                if v.public_key:
                    try:
                        pid = peer_id_for_public_key(v.public_key)
                    except EssaimError:
                        continue
                    self._peer_owners[pid] = (v.id, v.status == VolunteerStatus.BANNED)
            found = self._peer_owners.get(peer_id)
        return found

    def _monitor(self, dht: Any, recipe: Recipe, job: Job, swarm_epoch: int) -> JobMetrics:
        from essaim.swarm.records import read_progress

        try:
            records = read_progress(dht, self.job_id, timeout=10.0)
        except EssaimError as exc:
            logger.warning("monitor: %s", exc)
            records = {}
        reports: dict[str, PeerReport] = {}
        for peer_id, rec in records.items():
            owner = self._owner(peer_id)
            if owner is None:
                continue  # the keeper itself, or a key no volunteer registered
            volunteer_id, _ = owner
            banned = self.store.get_volunteer(volunteer_id).status == VolunteerStatus.BANNED
            reports[volunteer_id] = PeerReport(
                volunteer_id=volunteer_id, epoch=rec.epoch, samples=rec.samples,
                compute_seconds=rec.compute_seconds, samples_per_second=rec.samples_per_second,
                loss=rec.loss, updated_at=rec.updated_at, banned=banned,
            )
        metrics = swarm_metrics(
            reports, target_epochs=recipe.training.epochs, target_batch_size=recipe.training.target_batch_size,
            swarm_epoch=swarm_epoch, previous=job.metrics, averaged=self.rounds.averaged_volunteers() or set(),
        )
        others = averager_books(self.dir)  # the checks of the job's further averaging peers count too
        held, dropped = self.rounds.standing(others)
        self._dropped = dropped
        if self._validating:  # credit from checked work: none before a volunteer's first check passes
            held |= set(reports) - self.rounds.verified(others) - set(dropped)
        new = claims(reports, self.monitor, target_batch_size=recipe.training.target_batch_size,
                     round_seconds=2 * recipe.training.matchmaking_time,
                     swarm_epoch=metrics.epoch, held=held, refused=dropped, carried=self.rounds.carried(),
                     unobserved_epochs=self.rounds.unobserved(metrics.epoch))
        if new:
            self.store.append_ledger([
                LedgerDraft(job_id=self.job_id, volunteer_id=c.volunteer_id, epoch=c.epoch,
                            samples=c.samples, compute_seconds=c.compute_seconds, note=c.note,
                            claimed_samples=c.claimed_samples, claimed_compute_seconds=c.claimed_compute_seconds)
                for c in new
            ])
        # the job's public figure is what the ledger granted, never what the records claim
        metrics.samples = sum(a.samples for a in self.monitor.accepted.values())
        def shown(m: JobMetrics) -> tuple[Any, ...]:
            return m.epoch, m.live_peers, None if m.loss is None else round(m.loss, 4), int(m.samples_per_second)

        changed = shown(metrics) != shown(job.metrics)
        if changed or new:
            self.store.update_job_metrics(self.job_id, metrics)
        return metrics

    def _complete(self, recipe: Recipe, keeper: Any, metrics: JobMetrics) -> None:
        from essaim.coordinator.store.ledger import GENESIS_HASH, sign_head
        from essaim.coordinator.training_log import ROUNDS_LOG, TRAINING_LOG, rounds_csv, training_log_csv
        from essaim.protocol.version import __version__
        from essaim.swarm.artifact import (
            Contributor,
            DataFile,
            DataSummary,
            EvalPoint,
            EvalSummary,
            Provenance,
            Rollback,
            Sample,
            base_model_record,
            write_artifact,
        )

        job = self.store.get_job(self.job_id)
        record = keeper.record
        curve = [EvalPoint(epoch=int(p["epoch"]), value=float(p["value"])) for p in sorted(
            record.curve, key=lambda p: p["epoch"])]
        head = self.store.ledger_head()
        signer = getattr(self, "_coordinator_key", None)  # set once the runner's swarm services run
        local = self._files(job)
        base = base_model_record(recipe, {f.path: (f.sha256, local[f.path]) for f in job.files},
                                 loaded=keeper.loaded, local_dirs=self.model_dirs)
        contributions = self.store.contributions(job_id=job.id)
        trained = sum(c.samples for c in contributions)
        sequences = self._sequences_of(recipe, keeper, job)
        provenance = Provenance(
            job_id=job.id,
            base_model=base.name,
            base=base,
            recipe=recipe.model_dump(mode="json"),
            dataset=[DataFile(file=f.path, sha256=f.sha256) for f in job.files
                     if f.path in recipe.referenced_files()],
            code_version=__version__,
            epochs=keeper.optimizer.local_epoch,
            eval=EvalSummary(metric=record.eval_metric or (recipe.eval.metric if recipe.eval else ""),
                             before=record.eval_before, after=curve[-1].value if curve else None,
                             curve=curve) if recipe.eval else None,
            data=DataSummary(sequences=sequences, samples=trained, passes=round(trained / sequences, 3))
            if sequences else None,
            samples=[Sample(**row) for row in keeper.sample_rows()],
            contributors=[Contributor(volunteer=c.volunteer_name or c.volunteer_id, samples=c.samples,
                                      compute_seconds=round(c.compute_seconds, 3))
                          for c in contributions],
            aggregation=self._aggregation_summary(recipe),
            rollbacks=[Rollback(epoch=int(r["epoch"]), to_epoch=int(r["to_epoch"]), reason=str(r["reason"]),
                                value=r.get("value") if isinstance(r.get("value"), float) and math.isfinite(r["value"])
                                else None, volunteers=list(r.get("volunteers", [])))
                       for r in record.rollbacks],
            ledger_final_hash=head.hash if head else "",
            ledger_head=sign_head(signer, head.seq if head else 0, head.hash if head else GENESIS_HASH,
                                  time.time()).to_dict() if signer is not None else None,
            started_at=job.created_at,
            finished_at=time.time(),
        )
        metrics.epoch = max(metrics.epoch, keeper.optimizer.local_epoch)
        metrics.eta_seconds = 0.0
        metric = provenance.eval.metric if provenance.eval else "metric"
        logs = {TRAINING_LOG: training_log_csv(self.store.list_progress(job.id), metric,
                                               final=(provenance.finished_at, metrics)),
                ROUNDS_LOG: rounds_csv(self.rounds.entries)}
        write_artifact(self.data_dir / "artifacts" / job.id, keeper.loaded, provenance, logs)
        self.store.set_job_artifact(job.id, True)
        self.store.update_job_metrics(job.id, metrics)
        after = provenance.eval.after if provenance.eval else None
        self.store.update_job_status(
            job.id, JobStatus.COMPLETED,
            f"trained {provenance.epochs} epochs" + (f"; {provenance.eval.metric} {after:.4f}" if after is not None
                                                     and provenance.eval else ""),
            expect=[JobStatus.RUNNING, JobStatus.PAUSED],
        )
        logger.info("job %s completed; artifact in %s", job.id, self.data_dir / "artifacts" / job.id)


EVAL_NICE = 10
"""How much lower than the runner's other threads the keeper's evaluations run (Linux nice)."""


def evaluation_executor() -> ThreadPoolExecutor:
    """The thread the keeper evaluates checkpoints on, at a lower priority (``EVAL_NICE``) on Linux,
    where a thread's priority is its own and the threads it starts inherit it (torch's OpenMP
    workers for that thread's work): an evaluation then takes the CPU the averaging peer's rounds
    and, on a host shared with volunteers, their training leave."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="essaim-eval", initializer=_lower_priority)


def _lower_priority() -> None:
    if not sys.platform.startswith("linux"):
        return  # elsewhere a thread id is no process id: setpriority would renice the whole runner, or fail
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       min(os.getpriority(os.PRIO_PROCESS, 0) + EVAL_NICE, 19))
    except OSError as exc:
        logger.debug("cannot lower the evaluation thread's priority: %s", exc)


async def _connected_peers(_dht: Any, node: Any) -> list[str]:
    """The multiaddrs (with /p2p/) of the peers the DHT's libp2p daemon is connected to (run in the DHT)."""
    return [f"{addr}/p2p/{info.peer_id}" for info in await node.p2p.list_peers() for addr in info.addrs]


def _tcp_port(maddrs: list[str]) -> int:
    for maddr in maddrs:
        parts = maddr.split("/")
        if "tcp" in parts:
            try:
                return int(parts[parts.index("tcp") + 1])
            except (IndexError, ValueError):
                continue
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m essaim.coordinator.jobrunner", description=__doc__.splitlines()[0])
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--host", default="127.0.0.1", help="address the job's DHT peer listens on")
    parser.add_argument("--announce-host", default=None, help="address volunteers reach it at, if different")
    parser.add_argument("--model-dir", type=Path, action="append", default=[],
                        help="a directory the recipe may name its model in (the coordinator's --allow-model-dir)")
    parser.add_argument("--max-averaging-peers", type=int, default=4,
                        help="the most averaging peers (processes) the job gets (the coordinator's setting)")
    parser.add_argument("--reachability-second-address", default=None,
                        help="another IP of this host, from which volunteers' reachability is tested too")
    parser.add_argument("--log-level", default=os.environ.get("ESSAIM_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    store = open_store(args.db_url)
    runner = JobRunner(job_id=args.job_id, data_dir=args.data_dir, store=store, host=args.host,
                       announce_host=args.announce_host, model_dirs=args.model_dir,
                       max_averaging_peers=args.max_averaging_peers, store_url=args.db_url,
                       reachability_second_address=args.reachability_second_address)

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("signal %d: stopping the swarm services of job %s", signum, args.job_id)
        runner.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return runner.run()
    except EssaimError as exc:
        logger.error("job %s: %s", args.job_id, exc)
        with contextlib.suppress(EssaimError):
            store.update_job_status(args.job_id, JobStatus.FAILED, str(exc)[:500],
                                    expect=[JobStatus.RUNNING, JobStatus.PAUSED])
        return 1
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
