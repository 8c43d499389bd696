"""The training loop one peer runs for one job, and the controls the volunteer app drives it with.

    peer = TrainingPeer(job_id=job.id, recipe=recipe, loaded=loaded, dataset=data, shard_ids=mine,
                        optimizer=opt, dht=dht, volunteer_id=vid, on_event=print, state_path=p)
    reason = peer.run()         # on the main thread; "completed", "finished" or "stopped"
    # from another thread (the trainer's control pipe):
    peer.pause(); peer.resume(); peer.throttle(threads=1, duty_cycle=0.25); peer.finish(); peer.stop()

The loop trains micro-batch after micro-batch over the peer's shards and steps the swarm
optimizer; a micro-batch that does not fit in the GPU's memory is computed in slices
(:class:`MicroBatches`). Between micro-batches it obeys the controls, so ``stop``/``pause`` take effect within
one micro-batch (the duty-cycle sleep is interruptible); the one call that can take longer is an
epoch's averaging round inside hivemind, bounded by ``training.averaging_timeout`` (the trainer
process does not wait for it when told to stop). It publishes a signed progress record
(:mod:`essaim.swarm.records`) every ``publish_every_s`` seconds and at each new epoch, and saves a
local state file so a restarted trainer resumes where it was (unless the swarm is further on).

Events passed to ``on_event(kind, data)``: ``joined`` (epoch, source), ``progress`` and ``epoch``
(epoch, samples, loss, samples_per_second, compute_seconds, peers), ``paused``, ``resumed``.
Counters (samples, compute seconds) are totals since the volunteer started the job, kept across
restarts in the state file and a small counters file (written before each record is published, so
published totals never go back).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hivemind
import psutil
import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.data import PackedDataset, iterate_batches
from essaim.swarm.errors import DHTError, StateError, TrainingError
from essaim.swarm.hardware import peak_memory, reset_peak_memory, resident_memory
from essaim.swarm.optimizer import SwarmOptimizer
from essaim.swarm.records import ProgressRecord, publish_progress

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]
STATE_FILE = "swarm_state.pt"
COUNTERS_FILE = "counters.json"


@dataclass(slots=True)
class Counters:
    """Totals since the volunteer started this job (kept across trainer restarts)."""

    samples: int = 0
    compute_seconds: float = 0.0

    @classmethod
    def load(cls, path: Path | None) -> Counters:
        if path is None or not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(samples=int(data["samples"]), compute_seconds=float(data["compute_seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable counters file %s", path)
            return cls()

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)


def save_local_state(path: Path, loaded: Any, optimizer: SwarmOptimizer, counters: Counters) -> None:
    """Write the trainable weights, the optimizer's state and the counters to ``path`` (atomically)."""
    trainable = {name: p.detach().to("cpu").clone() for name, p in loaded.trainable_parameters()}
    payload = {"version": 1, "trainable": trainable, "optimizer": optimizer.state_dict(), "counters": asdict(counters)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def load_local_state(path: Path, loaded: Any, optimizer: SwarmOptimizer) -> Counters:
    """Restore what :func:`save_local_state` wrote; raises StateError when it does not fit."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        params = dict(loaded.trainable_parameters())
        saved = payload["trainable"]
        if set(saved) != set(params):
            raise StateError(f"{path} was saved for another model or adapter; delete it to start over")
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))
        optimizer.load_state_dict(payload["optimizer"])
        return Counters(**payload.get("counters", {}))
    except StateError:
        raise
    except (OSError, RuntimeError, KeyError, TypeError, ValueError, TrainingError) as exc:
        raise StateError(f"cannot resume from {path}: {exc}; delete it to start over") from None


class MicroBatches:
    """Forward and backward of one micro-batch, in slices of fewer rows once the GPU ran out of memory,
    or as many rows at once as fit in the RAM the volunteer leaves the trainer on the CPU (:meth:`_fit`).

    On a CUDA out-of-memory error (the volunteer's cap on GPU memory, or a smaller GPU than the
    recipe was written for) the attempt's gradients are zeroed, PyTorch's cache is emptied and the
    batch is computed again in slices of half as many rows, their gradients accumulated: each
    slice's mean loss is weighted by its share of the rows (packed rows are all the same length),
    so the optimizer gets the gradient of the whole batch, as before. The smaller slices are kept
    for the batches after it. Raises TrainingError when even one row does not fit.
    """

    def __init__(self, model: torch.nn.Module, *, ram_budget: int | None = None) -> None:
        self.model = model
        self.rows: int | None = None  # rows per slice; None: the whole batch at once
        # the resident memory this process may reach while it trains on the CPU (what the volunteer's
        # free-RAM floor leaves it); None: micro-batches are computed whole
        self.ram_budget = ram_budget if ram_budget is not None and reset_peak_memory() else None
        self._last: tuple[int, int, int] | None = None  # rows, peak and a row's cost of the last fitted batch
        self._settled = False

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward and backward of ``batch`` (already on the model's device); its mean loss, detached."""
        rows = int(batch["input_ids"].shape[0])
        if self.ram_budget is not None and not self._settled:
            return self._fit(batch, rows)
        return self._compute(batch, rows)

    def _compute(self, batch: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
        while True:
            size = min(self.rows or rows, rows)
            try:
                return self._accumulate(batch, rows, size)
            except torch.cuda.OutOfMemoryError:
                pass  # handled below: the error's traceback holds the attempt's tensors
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            torch.cuda.empty_cache()
            if size <= 1:
                raise TrainingError(
                    "out of GPU memory with a single sequence per micro-batch; raise the GPU memory cap "
                    "(policy.gpu_max_vram_mb, 0: no cap), close programs that use the GPU, or train on the CPU"
                )
            self.rows = size // 2
            logger.warning("out of GPU memory with micro-batches of %d rows; computing them %d rows at a time",
                           size, self.rows)

    def _fit(self, batch: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
        """A micro-batch while the rows computed at once are fitted to the RAM budget (the same
        gradient whatever they are). The first is computed a row at a time: what this process's peak
        grew by is taken as a row's cost (an overestimate: it holds all that is done once). Each next
        one takes as many more rows as the room left under the budget holds at that cost, and the
        cost is measured again from how much the peak grew with them; a peak past the budget takes
        rows back. It settles when the count stops changing, or at the whole batch."""
        assert self.ram_budget is not None
        if self.rows is None:
            self.rows = 1
        reset_peak_memory()
        before = resident_memory() or 0
        loss = self._compute(batch, rows)
        peak = peak_memory() or before
        first = self._last is None
        if first:
            cost = max(peak - before, 2**20)
        else:
            assert self._last is not None
            last_rows, last_peak, last_cost = self._last
            cost = max((peak - last_peak) // max(self.rows - last_rows, 1), 2**20) if self.rows != last_rows \
                else last_cost
        self._last = (self.rows, peak, cost)
        if peak > self.ram_budget:
            back = -(-(peak - self.ram_budget) // cost)  # the excess in rows, rounded up
            wanted, self._settled = max(self.rows - max(back, 1), 1), True
        elif first and self.ram_budget - peak >= cost // 2:
            wanted = min(2, rows)  # the first cost holds the one-off too: two rows tell what a row takes
        else:
            wanted = min(self.rows + (self.ram_budget - peak) // cost, rows)
        if wanted == self.rows or wanted >= rows:
            self._settled = True
        self.rows = int(wanted)
        if self._settled:
            if self.rows >= rows:
                self.rows = None
            else:
                logger.info("micro-batches of %d rows computed %d at a time, to stay within %.0f MB of RAM (a row "
                            "takes about %.0f MB; the same gradient)", rows, self.rows, self.ram_budget / 2**20,
                            cost / 2**20)
        return loss

    def _accumulate(self, batch: dict[str, torch.Tensor], rows: int, size: int) -> torch.Tensor:
        total: torch.Tensor | None = None
        for start in range(0, rows, size):
            part = {k: v[start:start + size] for k, v in batch.items()}
            weight = int(part["input_ids"].shape[0]) / rows
            loss = self.model(**part).loss * weight
            loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        assert total is not None
        return total


def _process_age() -> float:
    """Seconds since this process started (model loading, the swarm's DHT and state download included)."""
    try:
        return time.time() - psutil.Process().create_time()
    except psutil.Error:
        return float("nan")


class TrainingPeer:
    """The loop of one peer on one job (see the module docstring). Build on the main thread."""

    def __init__(
        self,
        *,
        job_id: str,
        recipe: Recipe,
        loaded: Any,
        dataset: PackedDataset,
        shard_ids: Sequence[int],
        optimizer: SwarmOptimizer,
        dht: hivemind.DHT,
        volunteer_id: str,
        on_event: EventCallback | None = None,
        state_dir: Path | None = None,
        publish_every_s: float = 10.0,
        progress_every_s: float = 2.0,
        save_every_s: float = 60.0,
        join_swarm: bool = True,
        pacer: Callable[[], float] | None = None,
        coordinator_peers: Sequence[str] = (),
        log_every_s: float = 60.0,
        ram_budget: int | None = None,
    ) -> None:
        self.job_id, self.recipe, self.loaded, self.dataset = job_id, recipe, loaded, dataset
        self.shard_ids = list(shard_ids)
        self.optimizer, self.dht, self.volunteer_id = optimizer, dht, volunteer_id
        self._on_event = on_event
        self.state_path = state_dir / STATE_FILE if state_dir else None
        self.counters_path = state_dir / COUNTERS_FILE if state_dir else None
        self.publish_every_s, self.progress_every_s, self.save_every_s = publish_every_s, progress_every_s, save_every_s
        self.join_swarm = join_swarm
        self.pacer = pacer  # seconds to hold between micro-batches (the network caps), or 0
        self.micro_batches = MicroBatches(loaded.model, ram_budget=ram_budget if loaded.device == "cpu" else None)
        self.counters = Counters.load(self.counters_path)
        self.coordinator_peers = frozenset(coordinator_peers)  # not volunteers: left out of "averaged with"

        self._stop = threading.Event()
        self._paused = threading.Event()
        self._interrupt = threading.Event()
        self._done = threading.Event()
        self._finish_after: int | None = None
        self._threads: int | None = None
        self._duty_cycle = 1.0
        self._lock = threading.Lock()

        self._loss_sum: torch.Tensor | float = 0.0
        self._loss_count = 0
        self.last_loss: float | None = None
        self._rate_mark = (time.monotonic(), self.counters.samples)
        self.samples_per_second = 0.0
        self.log_every_s = log_every_s
        self._joined_at = time.monotonic()
        self._steps = 0  # micro-batches since this trainer started
        self._logged_at = 0.0

    # ---- controls (any thread) ----
    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the loop to stop; True when it stopped within ``timeout`` seconds."""
        self._stop.set()
        self._interrupt.set()
        return self._done.wait(timeout)

    def finish(self) -> None:
        """Stop after the swarm's next epoch transition (this peer's samples are then averaged in)."""
        with self._lock:
            self._finish_after = self.optimizer.local_epoch
        self._paused.clear()
        self._interrupt.set()

    def pause(self) -> None:
        """Stop computing at the next micro-batch boundary; the DHT and the model stay in memory."""
        self._paused.set()
        self._interrupt.set()

    def resume(self) -> None:
        self._paused.clear()
        self._interrupt.set()

    def throttle(self, threads: int | None = None, duty_cycle: float | None = None) -> None:
        """Use at most ``threads`` CPU threads and compute ``duty_cycle`` of the time (0 < d <= 1)."""
        if duty_cycle is not None and not 0.0 < duty_cycle <= 1.0:
            raise ValueError("duty_cycle must be in (0, 1]")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        with self._lock:
            if threads is not None:
                self._threads = threads
            if duty_cycle is not None:
                self._duty_cycle = duty_cycle
        self._interrupt.set()

    @property
    def stopped(self) -> bool:
        return self._done.is_set()

    # ---- the loop (main thread) ----
    def run(self) -> str:
        """Train until stopped, finished or the job's last epoch; returns why it ended."""
        try:
            self._join()
            reason = self._train()
            if reason in ("completed", "finished"):
                self.optimizer.settle()  # the last epoch's outer step, when it was overlapped
            self._save_state()
            self._publish(wait=True)
            return reason
        finally:
            self._done.set()

    def _join(self) -> None:
        source = "none"
        if self.state_path is not None and self.state_path.exists():
            saved = load_local_state(self.state_path, self.loaded, self.optimizer)
            self.counters = Counters(
                samples=max(saved.samples, self.counters.samples),
                compute_seconds=max(saved.compute_seconds, self.counters.compute_seconds),
            )
            source = "local"
            logger.info("resumed from %s at epoch %d", self.state_path, self.optimizer.local_epoch)
        if self.join_swarm and not self._stop.is_set():
            before = self.optimizer.local_epoch
            if self.optimizer.join() > before:
                source = "peers"
        self._rate_mark = (time.monotonic(), self.counters.samples)
        self._joined_at = time.monotonic()
        self._emit("joined", epoch=self.optimizer.local_epoch, source=source)

    def _train(self) -> str:
        batch_size = self.recipe.training.batch_size
        model = self.loaded.model
        device = self.loaded.device
        model.train()
        reason = self._should_end(self.optimizer.local_epoch)  # joined a swarm that is already done
        if reason is not None:
            return reason
        data_pass = 0
        last_progress = last_publish = last_save = self._logged_at = time.monotonic()
        shard_rows = sum(len(self.dataset.shard_rows(i)) for i in self.shard_ids) or 1
        while True:
            pass_rows = 0  # rows of this peer's shards trained in this pass over them
            for batch in iterate_batches(
                self.dataset, self.shard_ids, batch_size=batch_size, seed=self.recipe.training.seed, epoch=data_pass
            ):
                reason = self._checkpoint_controls()
                if reason is not None:
                    return reason
                started = time.perf_counter()
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = self.micro_batches(batch)
                n = int(batch["input_ids"].shape[0])
                stepping = time.perf_counter()
                result = self.optimizer.step(n)
                done = time.perf_counter()
                # an epoch's averaging round is communication, not compute
                spent = (stepping if result.new_epoch else done) - started
                self.counters.compute_seconds += spent
                if result.accepted:
                    self.counters.samples += n
                    self._add_loss(loss)
                now = time.monotonic()
                self._steps += 1
                pass_rows += n
                if self._steps == 1 or now - self._logged_at >= self.log_every_s:
                    self._log_step(n, spent, data_pass + pass_rows / shard_rows)
                    self._logged_at = now
                if result.new_epoch:
                    self._close_epoch()
                    last_progress = last_publish = now
                    reason = self._should_end(result.epoch)
                    if reason is not None:
                        return reason
                if now - last_progress >= self.progress_every_s:
                    self._emit_progress("progress")
                    last_progress = now
                if now - last_publish >= self.publish_every_s:
                    self._publish()
                    last_publish = now
                if now - last_save >= self.save_every_s:
                    self._save_state()
                    last_save = now
                self._duty_sleep(spent)
                self._pace()
            data_pass += 1

    def _log_step(self, rows: int, spent: float, passes: float) -> None:
        """The first micro-batch (how long the trainer took to get there), then one line every
        ``log_every_s``: epoch, samples, loss, rate and passes over this peer's shards."""
        loss = self.current_loss()
        shown = f"{loss:.4f}" if loss is not None else "n/a"
        if self._steps == 1:
            logger.info("first micro-batch: %d sequences of %d tokens in %.2f s, loss %s; %.1f s after this "
                        "process started (%.1f s after joining the swarm)", rows, self.dataset.sequence_length,
                        spent, shown, _process_age(), time.monotonic() - self._joined_at)
            return
        self._update_rate()
        logger.info("epoch %d of %d: %d samples here, loss %s, %.2f samples/s, %.2f passes over this "
                    "volunteer's %d shard(s)", self.optimizer.local_epoch, self.recipe.training.epochs,
                    self.counters.samples, shown, self.samples_per_second, passes, len(self.shard_ids))

    def _should_end(self, epoch: int) -> str | None:
        if epoch >= self.recipe.training.epochs:
            return "completed"
        with self._lock:
            if self._finish_after is not None and epoch > self._finish_after:
                return "finished"
        return None

    def _add_loss(self, loss: torch.Tensor) -> None:
        """Sum losses on the device: reading each one back would stall a GPU every micro-batch."""
        self._loss_sum = loss.float() if self._loss_count == 0 else self._loss_sum + loss.float()
        self._loss_count += 1

    def _close_epoch(self) -> None:
        self._update_rate()
        self.last_loss = self.current_loss()
        self._loss_sum, self._loss_count = 0.0, 0
        self._emit_progress("epoch")
        self._publish()

    def _checkpoint_controls(self) -> str | None:
        """Between micro-batches: apply throttle settings, wait out a pause, report a stop."""
        if self._stop.is_set():
            return "stopped"
        if self._interrupt.is_set():
            self._interrupt.clear()
            with self._lock:
                threads = self._threads
            if threads is not None and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
                logger.info("using %d CPU threads", threads)
        if self._paused.is_set():
            self._update_rate()
            self._emit("paused", epoch=self.optimizer.local_epoch)
            self.optimizer.quiesce()
            paused_at = time.monotonic()
            try:
                while self._paused.is_set() and not self._stop.is_set():
                    self._interrupt.wait(0.5)
                    self._interrupt.clear()
            finally:
                self.optimizer.wake()
            if self._stop.is_set():
                return "stopped"
            mark_time, mark_samples = self._rate_mark
            self._rate_mark = (mark_time + time.monotonic() - paused_at, mark_samples)
            self._emit("resumed", epoch=self.optimizer.local_epoch)
        return None

    def _duty_sleep(self, spent: float) -> None:
        with self._lock:
            duty = self._duty_cycle
        if duty < 1.0:
            self._hold(spent * (1.0 - duty) / duty)

    def _pace(self) -> None:
        if self.pacer is not None:
            self._hold(min(self.pacer(), 60.0))  # re-asked after each micro-batch: a long hold comes in parts

    def _hold(self, seconds: float) -> None:
        """Sleep ``seconds``; a stop, a pause or any other control ends it early."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and not self._paused.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or self._interrupt.wait(left):
                return

    # ---- reporting ----
    def _update_rate(self) -> None:
        now = time.monotonic()
        mark_time, mark_samples = self._rate_mark
        if now - mark_time >= 1.0:
            self.samples_per_second = (self.counters.samples - mark_samples) / (now - mark_time)
            self._rate_mark = (now, self.counters.samples)

    def current_loss(self) -> float | None:
        """Mean loss of this epoch's micro-batches so far (the last epoch's right after one ends)."""
        if not self._loss_count:
            return self.last_loss
        mean = float(self._loss_sum) / self._loss_count
        if not math.isfinite(mean):
            raise TrainingError("the loss is not finite; lower optimizer.lr or check the data")
        return mean

    def snapshot(self) -> dict[str, Any]:
        loss = self.current_loss()
        return {
            "epoch": self.optimizer.local_epoch,
            "samples": self.counters.samples,
            "loss": loss if loss is not None and math.isfinite(loss) else None,
            "samples_per_second": round(self.samples_per_second, 3),
            "compute_seconds": round(self.counters.compute_seconds, 3),
            **self.round_summary(),
        }

    def round_summary(self) -> dict[str, Any]:
        """The last averaging round: ``peers`` volunteers in it (this one included; 0 before the
        first round), ``round_peers`` the others, ``round_error`` why it averaged with nobody."""
        last = self.optimizer.last_round
        if last is None:
            return {"peers": 0, "round_epoch": None, "round_peers": None, "round_error": ""}
        others = 0 if last.error else last.others(me=str(self.dht.peer_id), exclude=self.coordinator_peers)
        return {"peers": others + 1 if not last.error else 1, "round_epoch": last.epoch,
                "round_peers": others, "round_error": last.error}

    def _emit_progress(self, kind: str) -> None:
        self._update_rate()
        try:  # what the app is told is on disk first: a SIGKILL loses at most one report's samples
            self.counters.save(self.counters_path)
        except OSError as exc:
            logger.warning("could not save the counters to %s: %s", self.counters_path, exc)
        self._emit(kind, **self.snapshot())

    def _emit(self, kind: str, **data: Any) -> None:
        if self._on_event is not None:
            try:
                self._on_event(kind, data)
            except Exception:  # a broken listener must not stop training
                logger.exception("event listener failed on %s", kind)

    def _publish(self, *, wait: bool = False) -> None:
        snap = self.snapshot()
        self.counters.save(self.counters_path)  # before publishing: published totals never go back
        record = ProgressRecord(
            epoch=snap["epoch"],
            loss=snap["loss"],
            samples=snap["samples"],
            samples_per_second=snap["samples_per_second"],
            compute_seconds=snap["compute_seconds"],
            volunteer_id=self.volunteer_id,
            updated_at=time.time(),
        )
        try:
            publish_progress(self.dht, self.job_id, record, wait=wait, timeout=5.0)
        except DHTError as exc:
            logger.warning("%s", exc)

    def _save_state(self) -> None:
        if self.state_path is None:
            return
        try:
            save_local_state(self.state_path, self.loaded, self.optimizer, self.counters)
            self.counters.save(self.counters_path)
        except (OSError, RuntimeError) as exc:
            logger.warning("could not save the local state to %s: %s", self.state_path, exc)
