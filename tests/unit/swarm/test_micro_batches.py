"""A micro-batch that does not fit in the GPU's memory is computed in slices, with the same gradient.

There is no GPU here: the demo model stands behind a wrapper that raises CUDA's out-of-memory error
the way a GPU under the volunteer's memory cap does, for batches of more rows than it holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.data import build_train_dataset, iterate_batches
from essaim.swarm.errors import TrainingError
from essaim.swarm.hardware import peak_memory, reset_peak_memory, resident_memory
from essaim.swarm.model import LoadedModel, load_model
from essaim.swarm.optimizer import StepResult
from essaim.swarm.peer import MicroBatches, TrainingPeer


class _SmallGpu(torch.nn.Module):
    """The model on a GPU that holds ``rows`` rows at a time; ``fail_calls``: forward calls that run
    out of memory whatever their size (another program took the memory for a moment)."""

    def __init__(self, model: torch.nn.Module, rows: int, fail_calls: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.inner, self.rows, self.fail_calls = model, rows, fail_calls
        self.seen: list[int] = []

    def forward(self, **batch: torch.Tensor) -> Any:
        n = int(batch["input_ids"].shape[0])
        self.seen.append(n)
        if n > self.rows or len(self.seen) in self.fail_calls:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(**batch)


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _whole_batch_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


class _Optimizer:
    """SwarmOptimizer's face to the loop: records what each step got; the loop stops after ``steps``."""

    local_epoch = 0
    last_round = None

    def __init__(self, model: torch.nn.Module, steps: int) -> None:
        self.model, self.steps = model, steps
        self.got: list[tuple[int, list[torch.Tensor]]] = []
        self.peer: TrainingPeer | None = None

    def step(self, batch_size: int) -> StepResult:
        self.got.append((batch_size, _grads(self.model)))
        self.model.zero_grad(set_to_none=True)
        if len(self.got) >= self.steps and self.peer is not None:
            self.peer.stop(timeout=0)
        return StepResult(new_epoch=False, accepted=True, epoch=0)


def _demo_and_whole_batch_grads(recipe: Recipe, files: dict[str, Path], count: int) -> tuple[Any, ...]:
    """The demo model and data, and the loss and gradients of its first ``count`` whole micro-batches."""
    torch.manual_seed(0)
    loaded = load_model(recipe, files=files, device="cpu")
    data = build_train_dataset(recipe, loaded.tokenizer, files=files)
    shards = list(range(data.num_shards))
    batch_size = recipe.training.batch_size
    batches = iterate_batches(data, shards, batch_size=batch_size, seed=recipe.training.seed, epoch=0)
    return loaded, data, shards, batch_size, [_whole_batch_grads(loaded.model, next(batches)) for _ in range(count)]


@pytest.mark.timeout(120)
def test_out_of_gpu_memory_halves_the_micro_batch_and_keeps_the_batch(demo_recipe: Recipe,
                                                                       demo_files: dict[str, Path]) -> None:
    loaded, data, shards, batch_size, expected = _demo_and_whole_batch_grads(demo_recipe, demo_files, 2)

    gpu = _SmallGpu(loaded.model, rows=batch_size // 4 - 1)  # 16 rows: 8 and 4 do not fit, 2 do
    small = LoadedModel(model=gpu, tokenizer=loaded.tokenizer, device="cpu", dtype=loaded.dtype, adapter="full")
    optimizer = _Optimizer(loaded.model, steps=2)
    peer = TrainingPeer(job_id="job", recipe=demo_recipe, loaded=small, dataset=data, shard_ids=shards,
                        optimizer=optimizer, dht=None, volunteer_id="v", join_swarm=False)  # type: ignore[arg-type]
    optimizer.peer = peer

    assert peer._train() == "stopped"
    assert peer.micro_batches.rows == batch_size // 8
    assert gpu.seen[:4] == [batch_size, batch_size // 2, batch_size // 4, batch_size // 8]
    assert set(gpu.seen[3:]) == {batch_size // 8}  # the second batch went straight to the size that fits
    for (n, got), (_, want) in zip(optimizer.got, expected, strict=True):
        assert n == batch_size  # the optimizer counts the whole micro-batch's samples
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert peer.current_loss() == pytest.approx(sum(loss for loss, _ in expected) / 2, rel=1e-5)


def test_an_error_in_a_later_slice_drops_the_slices_before_it(demo_recipe: Recipe,
                                                             demo_files: dict[str, Path]) -> None:
    torch.manual_seed(0)
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    data = build_train_dataset(demo_recipe, loaded.tokenizer, files=demo_files)
    batch = next(iterate_batches(data, [0], batch_size=8, seed=0, epoch=0))
    loss, want = _whole_batch_grads(loaded.model, batch)

    micro = MicroBatches(_SmallGpu(loaded.model, rows=8, fail_calls=(2,)))
    micro.rows = 4  # two slices; the second runs out of memory after the first's backward
    got_loss = micro(batch)
    assert micro.rows == 2
    assert float(got_loss) == pytest.approx(loss, rel=1e-5)
    for g, w in zip(_grads(loaded.model), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_when_even_one_row_does_not_fit_it_says_what_to_change(demo_recipe: Recipe,
                                                              demo_files: dict[str, Path]) -> None:
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    data = build_train_dataset(demo_recipe, loaded.tokenizer, files=demo_files)
    batch = next(iterate_batches(data, [0], batch_size=4, seed=0, epoch=0))
    gpu = _SmallGpu(loaded.model, rows=0)
    with pytest.raises(TrainingError, match=r"policy\.gpu_max_vram_mb"):
        MicroBatches(gpu)(batch)
    assert gpu.seen == [4, 2, 1]


@pytest.mark.timeout(120)
def test_the_loop_logs_its_first_step_and_then_its_progress(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A researcher reads from the trainer's log when it first computed and how far it went: epoch,
    samples, loss, rate and the passes over its shards (an epoch is target_batch_size samples, not
    a pass over the data)."""
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    data = build_train_dataset(demo_recipe, loaded.tokenizer, files=demo_files)
    shards = [0]
    optimizer = _Optimizer(loaded.model, steps=3)
    peer = TrainingPeer(job_id="job", recipe=demo_recipe, loaded=loaded, dataset=data, shard_ids=shards,
                        optimizer=optimizer, dht=None, volunteer_id="v", join_swarm=False,  # type: ignore[arg-type]
                        log_every_s=0.0)
    optimizer.peer = peer
    with caplog.at_level(logging.INFO, logger="essaim.swarm.peer"):
        assert peer._train() == "stopped"
    lines = [r.getMessage() for r in caplog.records if r.name == "essaim.swarm.peer"]
    bs, rows = demo_recipe.training.batch_size, len(data.shard_rows(0))
    assert lines[0].startswith(f"first micro-batch: {bs} sequences of {data.sequence_length} tokens in ")
    assert "after this process started" in lines[0]
    assert len(lines) == 3, lines
    assert lines[-1].startswith(f"epoch 0 of {demo_recipe.training.epochs}: {3 * bs} samples here, loss ")
    assert f"{3 * bs / rows:.2f} passes over this volunteer's 1 shard(s)" in lines[-1], (lines[-1], rows)


needs_peak = pytest.mark.skipif(not reset_peak_memory(), reason="the peak memory can be reset on Linux only")


@needs_peak
def test_the_peak_memory_is_measured_afresh() -> None:
    before = resident_memory()
    assert before and reset_peak_memory()
    block = torch.ones(50 * 2**20)  # 200 MB, touched
    del block
    peak = peak_memory()
    assert peak is not None and peak - before >= 190 * 2**20
    assert reset_peak_memory() and (peak_memory() or 0) < peak


@needs_peak
@pytest.mark.parametrize("spare, whole", [(0, False), (64 * 2**30, True)])
def test_micro_batches_fit_the_ram_budget(demo_recipe: Recipe, demo_files: dict[str, Path], spare: int,
                                          whole: bool) -> None:
    """The first micro-batch is computed a row at a time, the next ones with as many rows at once as
    the measured peak leaves room for in the budget: with no memory to spare it stays at one row,
    with plenty it goes to the whole batch. The optimizer gets the whole batch's gradient either way."""
    loaded, data, shards, batch_size, expected = _demo_and_whole_batch_grads(demo_recipe, demo_files, 3)

    counted = _SmallGpu(loaded.model, rows=10**6)  # holds any batch: only counts the rows of each call
    wrapped = LoadedModel(model=counted, tokenizer=loaded.tokenizer, device="cpu", dtype=loaded.dtype, adapter="full")
    optimizer = _Optimizer(loaded.model, steps=batch_size + 1)
    peer = TrainingPeer(job_id="job", recipe=demo_recipe, loaded=wrapped, dataset=data, shard_ids=shards,
                        optimizer=optimizer, dht=None, volunteer_id="v", join_swarm=False,  # type: ignore[arg-type]
                        ram_budget=(resident_memory() or 0) + spare)
    optimizer.peer = peer
    assert peer._train() == "stopped"
    calls = iter(counted.seen)
    slices = []  # the rows of each slice, per micro-batch
    for _ in range(batch_size + 1):
        got: list[int] = []
        while sum(got) < batch_size:
            got.append(next(calls))
        slices.append(got[0])
    if whole:
        assert slices == [1, 2] + [batch_size] * (batch_size - 1)  # two rows tell a row's cost: then all fit
        assert peer.micro_batches.rows is None
    else:
        assert slices == [1] * (batch_size + 1) and peer.micro_batches.rows == 1
    for (n, got_grads), (_, want) in zip(optimizer.got[:3], expected, strict=True):
        assert n == batch_size
        for g, w in zip(got_grads, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spare_mb, settles_at", [(100, [1]), (800, [1]), (1500, [2, 2]), (2500, [2, 4, 4]),
                                                  (10_000, [2, None])])
def test_the_rows_follow_what_memory_a_row_takes(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch, spare_mb: int,
                                                 settles_at: list[int | None]) -> None:
    """The counting alone, on a process whose memory is made up as SmolLM2-135M's measured (a plain
    loop peaks at 1.8 GB with 2 rows and 4.5 GB with 8 over 0.43 GB held: 0.49 GB done once and
    0.45 GB a row): the first row's cost holds the one-off, so two rows are tried when half of it
    fits; then as many as fit, by what the last rows added (the rows after each micro-batch)."""
    mb = 2**20
    held, once, per_row = 430 * mb, 490 * mb, 450 * mb
    box: list[MicroBatches] = []
    monkeypatch.setattr("essaim.swarm.peer.reset_peak_memory", lambda: True)
    monkeypatch.setattr("essaim.swarm.peer.resident_memory", lambda: held)
    monkeypatch.setattr("essaim.swarm.peer.peak_memory", lambda: held + once + per_row * (box[0].rows or 8))
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    fit = MicroBatches(loaded.model, ram_budget=held + spare_mb * mb)
    box.append(fit)
    data = build_train_dataset(demo_recipe, loaded.tokenizer, files=demo_files)
    batches = iterate_batches(data, list(range(data.num_shards)), batch_size=8, seed=0, epoch=0)
    seen: list[int | None] = []
    for _ in range(5):
        fit(next(batches))
        loaded.model.zero_grad(set_to_none=True)
        seen.append(fit.rows)
        if fit._settled:
            break
    assert seen == settles_at, seen
