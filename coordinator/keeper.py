"""The checkpoint keeper: the state of the job's averaging peer, saved, evaluated and served.

The job's averaging peer (:mod:`.averaging`) takes part in every round and applies its outer step,
so it holds the swarm's state without downloading it; the keeper loads it from peers only when the
averaging peer fell behind (a restarted runner whose volunteers went on). It saves it every
``training.checkpoint_every_epochs`` epochs (model weights as safetensors, optimizer state beside
them), evaluates it on the job's eval set, and offers it to newcomers, so a job survives all its
volunteers leaving: the first one back loads the keeper's state instead of starting over. When the
swarm reaches the recipe's epochs, it writes the artifact and the provenance.

No worse model is adopted: each checkpoint is first written beside the adopted one and evaluated;
one whose eval is not a number or clearly degraded (:func:`degraded`) is not adopted, and the
averaging peer rolls back to the adopted checkpoint, at the swarm's current epoch
(:meth:`Keeper.roll_back`; the job runner then tells the volunteers to reload its state). Every
rollback is kept in the record, the job's status and its provenance.

Used by :mod:`essaim.coordinator.jobrunner` (one keeper per running job, in the job's own process).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.evaluate import EvalResult, evaluate, generate_samples
from essaim.swarm.state import load_state, save_state

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
OPTIMIZER_STATE = "optimizer.pt"
CANDIDATE = "checkpoint.next.safetensors"  # a checkpoint saved, not adopted yet
OPTIMIZER_CANDIDATE = "optimizer.next.pt"
KEEPER_STATE = "keeper.json"
SAMPLES = "samples.json"  # the recipe's sample prompts, continued by the base model and the adopted checkpoint
HISTORY = "checkpoints"  # every adopted checkpoint, epoch-N.safetensors and epoch-N.pt: what an undo goes back to
# A checkpoint is degraded when its health loss (EvalResult.loss: the eval loss, or the answers' loss
# for exact_match) rose by more than LOSS_RISE nats over the best adopted one (the base model's at
# first; x7.4 in perplexity), or its accuracy fell under ACCURACY_FALL of the best once that was at
# least MIN_ACCURACY (one x1000 update leaves the demo job's exact match at 0.0 for good). Measured
# on the demo job's answers: one x1000 update took the loss from 3.03 to 228,563; honest swarms rose
# by up to 1.1 nats between checkpoints (2.77 to 3.87 once the volunteers joined with fresh
# optimizer states; 3.03 to 3.40 in the first epochs after a rollback).
LOSS_RISE = 2.0
ACCURACY_FALL = 0.5
MIN_ACCURACY = 0.2


def degraded(result: EvalResult, *, best_value: float | None, best_loss: float | None) -> str:
    """Why ``result`` is clearly worse than the best adopted checkpoint ("" when it is not)."""
    if not math.isfinite(result.value):
        return f"its {result.metric} is not a number"
    if not math.isfinite(result.loss):
        return "its eval loss is not a number"
    if best_loss is not None and result.loss > best_loss + LOSS_RISE:
        return f"its eval loss rose from {best_loss:.3f} to {result.loss:.3f}"
    if (result.metric == "exact_match" and best_value is not None and best_value >= MIN_ACCURACY
            and result.value < ACCURACY_FALL * best_value):
        return f"its exact match fell from {best_value:.3f} to {result.value:.3f}"
    return ""


@dataclass(slots=True)
class KeeperRecord:
    """What the keeper remembers across restarts (``keeper.json`` in the job's directory)."""

    started_at: float = field(default_factory=time.time)
    eval_metric: str = ""
    eval_before: float | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    checkpoint_epoch: int = -1  # the adopted checkpoint's epoch
    followed_epoch: int = 0
    saved_epoch: int = -1  # the last checkpoint saved (adopted or not)
    best_value: float | None = None  # the best eval of an adopted checkpoint
    best_loss: float | None = None  # its lowest health loss
    loss_before: float | None = None  # the base model's health loss
    # each rollback (a checkpoint not adopted, or a banned volunteer's rounds undone):
    # {epoch, value, loss, reason, to_epoch, at, volunteers}
    rollbacks: list[dict[str, Any]] = field(default_factory=list)
    # the adopted checkpoints kept in HISTORY: epoch (as text, JSON keys) -> {value, loss}
    history: dict[str, dict[str, float | None]] = field(default_factory=dict)
    undone: list[str] = field(default_factory=list)  # banned volunteers whose rounds were undone
    samples_before: list[str] = field(default_factory=list)  # the base model's continuations of eval.sample_prompts
    samples: list[str] = field(default_factory=list)  # the adopted checkpoint's
    samples_epoch: int = -1

    @classmethod
    def load(cls, path: Path) -> KeeperRecord:
        try:
            data = json.loads(path.read_text())
            return cls(**{k: v for k, v in data.items() if k in cls.__slots__})  # type: ignore[attr-defined]
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError) as exc:
            logger.warning("ignoring unreadable keeper state %s: %s", path, exc)
            return cls()

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)


class Keeper:
    """Holds one job's state in an auxiliary hivemind optimizer; see the module docstring."""

    def __init__(self, *, recipe: Recipe, loaded: Any, optimizer: Any, eval_set: Any, job_dir: Path) -> None:
        self.recipe = recipe
        self.loaded = loaded
        self.optimizer = optimizer
        self.eval_set = eval_set
        self.job_dir = job_dir
        self.record = KeeperRecord.load(job_dir / KEEPER_STATE)
        self._record_lock = threading.Lock()  # save() and score() run on different threads
        self._replica: Any = None

    # ---- start ----
    def restore(self, epoch: int | None = None) -> int:
        """Load the adopted checkpoint (or the one of ``epoch`` kept in HISTORY), if any, before the
        keeper offers its state; returns its epoch."""
        if epoch is None:
            path, opt_path = self.job_dir / CHECKPOINT, self.job_dir / OPTIMIZER_STATE
        else:
            path, opt_path = self._history(epoch)
        if not path.exists():
            return 0
        meta = load_state(path, self.loaded)
        if opt_path.exists():
            state = torch.load(opt_path, map_location="cpu", weights_only=False)
            self.optimizer.load_state_dict(state)
        epoch = int(meta.get("epoch", self.optimizer.local_epoch))
        logger.info("restored the checkpoint of epoch %d", epoch)
        return epoch

    def _history(self, epoch: int) -> tuple[Path, Path]:
        return self.job_dir / HISTORY / f"epoch-{epoch}.safetensors", self.job_dir / HISTORY / f"epoch-{epoch}.pt"

    def _keep(self, epoch: int, result: EvalResult | None) -> None:
        """Keep the adopted checkpoint as the one of ``epoch`` in HISTORY (a hard link where it can)."""
        (self.job_dir / HISTORY).mkdir(exist_ok=True)
        for source, target in zip((CHECKPOINT, OPTIMIZER_STATE), self._history(epoch), strict=True):
            target.unlink(missing_ok=True)
            try:
                os.link(self.job_dir / source, target)
            except OSError:
                shutil.copyfile(self.job_dir / source, target)
        self.record.history[str(epoch)] = {"value": None if result is None else result.value,
                                           "loss": None if result is None else result.loss}

    def undo_epoch(self, first_epoch: int) -> int:
        """The newest kept checkpoint from before the round of ``first_epoch`` (the state no update
        of that round or later is in)."""
        kept = [int(e) for e in self.record.history if int(e) <= first_epoch]
        return max(kept, default=0)

    def evaluate_now(self, loaded: Any = None) -> EvalResult | None:
        if self.eval_set is None or self.recipe.eval is None:
            return None
        result = evaluate(loaded or self.loaded, self.eval_set, self.recipe.eval)
        self.record.eval_metric = result.metric
        return result

    def evaluate_before(self) -> None:
        """The base model's score, once per job (the provenance's ``eval.before``)."""
        if self.record.eval_before is not None or self.recipe.eval is None:
            return
        result = self.evaluate_now()
        if result is not None:
            self.record.eval_before = result.value
            self.record.best_value, self.record.best_loss = result.value, result.loss
            self.record.loss_before = result.loss
            self.record.curve.append({"epoch": 0, "value": result.value})
            self.record.samples_before = self._samples(self.loaded)
            self.record.save(self.job_dir / KEEPER_STATE)
            self._write_samples()
            logger.info("eval before training: %s = %.4f", result.metric, result.value)

    def _samples(self, loaded: Any) -> list[str]:
        spec = self.recipe.eval
        if spec is None or not spec.sample_prompts:
            return []
        try:
            return generate_samples(loaded, list(spec.sample_prompts), max_new_tokens=spec.sample_tokens)
        except (RuntimeError, ValueError) as exc:  # a sample is for reading: never what fails a checkpoint
            logger.warning("could not generate the sample continuations: %s", exc)
            return []

    def _write_samples(self) -> None:
        """``samples.json``, for the job page: each sample prompt with the base model's continuation
        and the adopted checkpoint's (and its epoch)."""
        rows = self.sample_rows()
        if not rows:
            return
        tmp = self.job_dir / (SAMPLES + ".tmp")
        tmp.write_text(json.dumps({"epoch": self.record.samples_epoch, "samples": rows}, indent=1))
        os.replace(tmp, self.job_dir / SAMPLES)

    def sample_rows(self) -> list[dict[str, str | None]]:
        """Each of the recipe's sample prompts with its continuations: ``prompt``, ``before`` (the base
        model's) and ``after`` (the adopted checkpoint's), None where there is none yet."""
        spec, r = self.recipe.eval, self.record

        def at(texts: list[str], i: int) -> str | None:
            return texts[i] if i < len(texts) else None

        return [{"prompt": p, "before": at(r.samples_before, i), "after": at(r.samples, i)}
                for i, p in enumerate(spec.sample_prompts if spec is not None else [])]

    # ---- following the swarm ----
    def follow(self, swarm_epoch: int) -> bool:
        """Load the swarm's state from the peers when it is further on than ``swarm_epoch`` says
        this keeper is; True when the state changed."""
        if swarm_epoch <= self.optimizer.local_epoch:
            return False
        self.optimizer.serve_state(False)  # do not serve a state while it is being replaced
        try:
            epoch = self._join()
        finally:
            self.optimizer.serve_state(True)
        if epoch < swarm_epoch:
            logger.warning(
                "no peer sent the state of epoch %d (NAT-ed volunteers serve none): the averaging peer takes "
                "up the swarm at epoch %d with the state of epoch %d", swarm_epoch, swarm_epoch, epoch)
            self.optimizer.take_up_epoch(swarm_epoch)
            epoch = swarm_epoch
        if epoch <= self.record.followed_epoch:
            return False
        self.record.followed_epoch = epoch
        logger.info("keeper follows the swarm at epoch %d", epoch)
        return True

    def _join(self) -> int:
        """Load the newest state the peers offer; returns the epoch of the state now held.

        hivemind's ``load_state_from_peers`` moves a peer one epoch behind the swarm on to the
        swarm's epoch even when no peer sent a newer state (a trainer then simply goes on training).
        The keeper must not: it would save, serve and finally publish the previous epoch's weights
        as the next epoch's, e.g. when the last volunteers leave right after the last epoch. So the
        epoch the state averager set from the state it received is kept, and the bump undone.
        """
        averager = self.optimizer.hv.state_averager
        held = [averager.local_epoch]
        load = averager.load_state_from_peers

        def load_and_note(**kwargs: Any) -> Any:
            result = load(**kwargs)
            held.append(averager.local_epoch)  # the received state's epoch, or unchanged
            return result

        averager.load_state_from_peers = load_and_note
        try:
            self.optimizer.join()
        finally:
            del averager.load_state_from_peers  # back to the class's method
        if averager.local_epoch != held[-1]:
            logger.info("no peer sent the state of epoch %d yet; keeping epoch %d", averager.local_epoch, held[-1])
            averager.local_epoch = held[-1]
        return held[-1]

    def due(self) -> bool:
        every = self.recipe.training.checkpoint_every_epochs
        epoch = self.optimizer.local_epoch
        return epoch > 0 and epoch - max(self.record.saved_epoch, self.record.checkpoint_epoch, 0) >= every

    def checkpoint(self) -> EvalResult | None:
        """Save the current state and evaluate it (:meth:`save`, then :meth:`score`); returns the
        evaluation (None without an eval set). Only where no averaging loop runs any more."""
        return self.score(*self.save())

    def save(self) -> tuple[int, Any]:
        """Save the state beside the adopted checkpoint (weights as safetensors, optimizer state
        beside them) and copy the model for its evaluation; returns the epoch and that copy. Run on
        the averaging peer's thread (:meth:`essaim.coordinator.averaging.AveragingLoop.submit`): a
        round never lands half-way."""
        self.optimizer.settle()  # a round still running in the background lands first
        epoch = self.optimizer.local_epoch
        self._write(CANDIDATE, OPTIMIZER_CANDIDATE, epoch)
        replica = self._copy_for_eval()
        with self._record_lock:
            self.record.saved_epoch = epoch
            self.record.save(self.job_dir / KEEPER_STATE)
        logger.info("checkpoint of epoch %d saved", epoch)
        if replica is None:  # nothing to judge it by
            self.adopt(epoch, None)
        return epoch, replica

    def _write(self, weights: str, optimizer: str, epoch: int) -> None:
        save_state(self.job_dir / weights, self.loaded, metadata={"epoch": str(epoch)})
        tmp = self.job_dir / (optimizer + ".tmp")
        torch.save(self.optimizer.state_dict(), tmp)
        os.replace(tmp, self.job_dir / optimizer)

    def score(self, epoch: int, replica: Any) -> EvalResult | None:
        """Evaluate the copy :meth:`save` made (any thread), and adopt the checkpoint unless it is
        degraded; then :attr:`rollback_due` says why, until :meth:`roll_back` runs."""
        result = self.evaluate_now(replica) if replica is not None else None
        if result is None:
            return None
        with self._record_lock:
            problem = degraded(result, best_value=self.record.best_value, best_loss=self.record.best_loss)
        if problem:
            logger.warning("the checkpoint of epoch %d is not adopted: %s (%s = %.4f)", epoch, problem,
                           result.metric, result.value)
            with self._record_lock:
                self.record.rollbacks.append({
                    "epoch": epoch, "value": result.value, "loss": result.loss, "reason": problem,
                    "to_epoch": max(self.record.checkpoint_epoch, 0), "at": time.time()})
                self.record.save(self.job_dir / KEEPER_STATE)
                self.rollback_due = self.record.rollbacks[-1]
            return result
        self.adopt(epoch, result)
        logger.info("eval of epoch %d: %s = %.4f (loss %.4f)", epoch, result.metric, result.value, result.loss)
        samples = self._samples(replica)
        if samples:
            with self._record_lock:
                self.record.samples, self.record.samples_epoch = samples, epoch
                self.record.save(self.job_dir / KEEPER_STATE)
                self._write_samples()
        return result

    rollback_due: dict[str, Any] | None = None

    def adopt(self, epoch: int, result: EvalResult | None) -> None:
        """Make the checkpoint saved at ``epoch`` the adopted one (and its eval the curve's)."""
        for candidate, adopted in ((CANDIDATE, CHECKPOINT), (OPTIMIZER_CANDIDATE, OPTIMIZER_STATE)):
            if (self.job_dir / candidate).exists():
                os.replace(self.job_dir / candidate, self.job_dir / adopted)
        with self._record_lock:
            self.record.checkpoint_epoch = epoch
            self._keep(epoch, result)
            if result is not None:
                self.record.curve = [p for p in self.record.curve if p["epoch"] != epoch]
                self.record.curve.append({"epoch": epoch, "value": result.value})
                if math.isfinite(result.loss):
                    best = self.record.best_loss
                    self.record.best_loss = result.loss if best is None else min(result.loss, best)
                better = max if result.metric == "exact_match" else min
                self.record.best_value = (result.value if self.record.best_value is None
                                          else better(result.value, self.record.best_value))
            self.record.save(self.job_dir / KEEPER_STATE)

    def save_initial(self) -> None:
        """Adopt the state the job starts from as the checkpoint of epoch 0 when there is none:
        what a degraded first checkpoint rolls back to."""
        if (self.job_dir / CHECKPOINT).exists() or self.optimizer.local_epoch > 0:
            return
        self._write(CHECKPOINT, OPTIMIZER_STATE, 0)
        with self._record_lock:
            self.record.checkpoint_epoch = max(self.record.checkpoint_epoch, 0)
            self._keep(0, None)
            self.record.history["0"] = {"value": self.record.eval_before, "loss": self.record.loss_before}
            self.record.save(self.job_dir / KEEPER_STATE)

    def roll_back(self, to_epoch: int | None = None) -> int:
        """Load the adopted checkpoint (or the one of ``to_epoch`` kept in HISTORY: an undo) into
        the averaging peer at the swarm's current epoch (it stays in the rounds, and a newcomer
        gets this state); returns the checkpoint's epoch. Run on the averaging peer's thread. The
        next checkpoint is due at once: the state now held, saved and evaluated at this epoch, is
        adopted as the current one, judged against the checkpoint gone back to."""
        self.optimizer.serve_state(False)
        try:
            self.optimizer.settle()
            epoch = self.optimizer.local_epoch
            to_epoch = self.restore(to_epoch)
            self.optimizer.take_up_epoch(epoch)
        finally:
            self.optimizer.serve_state(True)
        (self.job_dir / CANDIDATE).unlink(missing_ok=True)
        (self.job_dir / OPTIMIZER_CANDIDATE).unlink(missing_ok=True)
        with self._record_lock:
            self.rollback_due = None
            kept = self.record.history.get(str(to_epoch))
            if kept is not None and to_epoch < self.record.checkpoint_epoch:  # an undo: the bar is that state's
                self.record.best_value, self.record.best_loss = kept.get("value"), kept.get("loss")
                self.record.checkpoint_epoch = to_epoch
                for source, adopted in zip(self._history(to_epoch), (CHECKPOINT, OPTIMIZER_STATE), strict=True):
                    shutil.copyfile(source, self.job_dir / (adopted + ".tmp"))  # a restart restores it
                    os.replace(self.job_dir / (adopted + ".tmp"), self.job_dir / adopted)
            self.record.saved_epoch = self.record.checkpoint_epoch
            self.record.save(self.job_dir / KEEPER_STATE)
        logger.warning("the averaging peer rolled back to the checkpoint of epoch %d at epoch %d", to_epoch, epoch)
        return to_epoch

    @torch.no_grad()
    def _copy_for_eval(self) -> Any:
        """The model as it is now, in a replica the rounds do not touch (made once, then refreshed)."""
        if self.eval_set is None or self.recipe.eval is None:
            return None
        if self._replica is None:
            self._replica = replace(self.loaded, model=copy.deepcopy(self.loaded.model))
        else:
            replica = dict(self._replica.trainable_parameters())
            for name, param in self.loaded.trainable_parameters():
                replica[name].copy_(param)
        return self._replica
