"""How a recipe maps onto hivemind's optimizer, and what one epoch of each averaging mode does."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import pytest
import torch
from essaim.protocol.recipe import OptimizerSpec, Recipe, parse_recipe
from essaim.swarm.errors import TrainingError
from essaim.swarm.optimizer import (
    OUTER_MOMENTUM,
    compression_for,
    lr_factor,
    optimizer_settings,
    torch_optimizer_factory,
)
from hivemind.compression import Float16Compression, NoCompression, SizeAdaptiveCompression


def _recipe(**training: Any) -> Recipe:
    return parse_recipe({
        "name": "t",
        "model": {"name_or_path": "model"},
        "dataset": {"files": ["data/train.txt"]},
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "training": {"target_batch_size": 64, "batch_size": 8, "epochs": 4, **training},
    })


def test_settings_follow_the_recipe() -> None:
    recipe = _recipe(averaging="local", outer_lr=0.5, compression="none", matchmaking_time=3.0,
                     averaging_timeout=20.0)
    s = optimizer_settings(recipe, run_id="job-9")
    assert (s.run_id, s.mode, s.target_batch_size, s.batch_size_per_step, s.epochs) == ("job-9", "local", 64, 8, 4)
    assert (s.matchmaking_time, s.averaging_timeout, s.outer_lr) == (3.0, 20.0, 0.5)
    assert s.outer_momentum == OUTER_MOMENTUM and s.max_grad_norm == 1.0
    assert isinstance(s.compression, NoCompression)
    assert s.load_state_timeout >= 2 * s.averaging_timeout


def test_compression_names() -> None:
    assert isinstance(compression_for("none"), NoCompression)
    assert isinstance(compression_for("fp16"), Float16Compression)
    assert isinstance(compression_for("8bit"), SizeAdaptiveCompression)
    with pytest.raises(TrainingError):
        compression_for("4bit")


def test_lr_schedules_follow_swarm_epochs() -> None:
    constant = lr_factor(OptimizerSpec(schedule="constant"), 10)
    assert [constant(e) for e in (0, 5, 9)] == [1.0, 1.0, 1.0]
    linear = lr_factor(OptimizerSpec(schedule="linear"), 10)
    assert linear(0) == 1.0 and linear(5) == pytest.approx(0.5) and linear(10) == 0.0
    cosine = lr_factor(OptimizerSpec(schedule="cosine", warmup_epochs=2), 12)
    assert cosine(0) == pytest.approx(1 / 3) and cosine(1) == pytest.approx(2 / 3)
    assert cosine(2) == pytest.approx(1.0) and cosine(7) == pytest.approx(0.5) and cosine(12) == pytest.approx(0.0)
    assert all(0.0 <= cosine(e) <= 1.0 for e in range(20))


def test_inner_optimizers() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(torch_optimizer_factory(OptimizerSpec(name="adamw"))(params), torch.optim.AdamW)
    assert isinstance(torch_optimizer_factory(OptimizerSpec(name="adam"))(params), torch.optim.Adam)
    sgd = torch_optimizer_factory(OptimizerSpec(name="sgd", lr=0.1, betas=(0.8, 0.9)))(params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8


class _Tiny:
    """The slice of LoadedModel the optimizer uses: trainable parameters, a frozen one left out."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        self.model[0].bias.requires_grad_(False)
        self.device = "cpu"

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


@pytest.fixture
def dht() -> Any:
    from essaim.swarm.dht import shutdown_dht, start_dht

    # hivemind shares tensors through torch_shm_manager ("file_system"); the session's child reaper
    # stops that daemon before the interpreter frees them, so share by file descriptor here
    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_descriptor")
    node = start_dht(initial_peers=[], identity_path=None, authorizer=None, client_mode=False)
    try:
        yield node
    finally:
        shutdown_dht(node)
        torch.multiprocessing.set_sharing_strategy(strategy)


def _release(opt: Any) -> None:
    """Shut the optimizer down and free its shared-memory tensors while torch can still do it."""
    opt.shutdown()
    del opt
    gc.collect()


def _steps(opt: Any, tiny: _Tiny, steps: int) -> None:
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    for _ in range(steps):
        torch.nn.functional.mse_loss(tiny.model(x), y).backward()
        opt.step(8)


def _until_next_epoch(opt: Any, tiny: _Tiny, timeout: float = 60.0) -> int:
    """Train until the epoch ends; a lone peer ends it once a look at the swarm confirms it is alone."""
    epoch, deadline, steps = opt.local_epoch, time.monotonic() + timeout, 0
    while opt.local_epoch == epoch:
        assert time.monotonic() < deadline, "the epoch did not end"
        _steps(opt, tiny, 1)
        steps += 1
        time.sleep(0.05)
    return steps


@pytest.mark.timeout(120)
def test_local_mode_is_diloco_with_a_nesterov_outer_step(dht: Any) -> None:
    from essaim.swarm.optimizer import build_optimizer

    tiny = _Tiny()
    recipe = _recipe(averaging="local", outer_lr=0.5, compression="none", target_batch_size=32, batch_size=8,
                     matchmaking_time=1.0, overlap_averaging=False)
    opt = build_optimizer(tiny, recipe, dht=dht, run_id="unit-local")
    try:
        assert opt.names == ["0.weight", "1.weight", "1.bias"]  # the frozen bias is not averaged
        start = [p.detach().clone() for p in opt.params]
        _steps(opt, tiny, 3)  # 24 samples: still inside epoch 0, local steps only
        assert opt.local_epoch == 0
        assert any(not torch.equal(a, b) for a, b in zip(start, opt.params, strict=True))
        assert all(torch.equal(a, s) for a, s in zip(opt.anchors, start, strict=True))
        assert _until_next_epoch(opt, tiny) >= 1  # 32+ samples: the epoch ends with an outer step
        assert opt.local_epoch == 1
        with opt.hv.grad_averager.get_tensors() as pseudo_gradients:
            pseudo = [g.clone() for g in pseudo_gradients]  # anchor - local weights, as averaged
        assert any(g.abs().max() > 0 for g in pseudo)
        for param, anchor, s, g in zip(opt.params, opt.anchors, start, pseudo, strict=True):
            # Nesterov SGD, first step: anchor' = anchor - lr * (1 + momentum) * pseudo-gradient
            assert torch.allclose(anchor, s - 0.5 * (1 + OUTER_MOMENTUM) * g, atol=1e-6)
            assert torch.allclose(param, anchor)  # every peer restarts from the new anchor
    finally:
        _release(opt)


@pytest.mark.timeout(120)
def test_overlapped_local_mode_keeps_training_and_takes_the_outer_step_one_epoch_late(dht: Any) -> None:
    from essaim.swarm.optimizer import build_optimizer

    tiny = _Tiny()
    recipe = _recipe(averaging="local", outer_lr=0.5, compression="none", target_batch_size=32, batch_size=8,
                     matchmaking_time=1.0)
    assert recipe.training.overlap_averaging  # the default
    opt = build_optimizer(tiny, recipe, dht=dht, run_id="unit-overlap")
    try:
        assert opt.overlap
        start = [p.detach().clone() for p in opt.params]
        _until_next_epoch(opt, tiny)
        assert opt.local_epoch == 1
        boundary = opt.hv.grad_averager.boundary
        assert boundary is not None
        # the epoch ended, yet the peer was not sent back to an anchor: it goes on from where it is
        assert all(torch.equal(p, b) for p, b in zip(opt.params, boundary, strict=True))
        pseudo = [s - b for s, b in zip(start, boundary, strict=True)]
        assert any(g.abs().max() > 0 for g in pseudo)
        opt.hv.state_averager.step(wait_for_delayed_updates=True, apply_delayed_updates=False)
        assert all(torch.equal(a, s) for a, s in zip(opt.anchors, start, strict=True))  # not applied yet
        _steps(opt, tiny, 2)  # two more local steps; the first one's hivemind step applies the update
        assert opt.hv.grad_averager.boundary is None
        # replay: the update landed at the start of the first step's hivemind part, after its inner step
        for anchor, s, g in zip(opt.anchors, start, pseudo, strict=True):
            assert torch.allclose(anchor, s - 0.5 * (1 + OUTER_MOMENTUM) * g, atol=1e-6)
        assert opt.local_epoch == 1 and opt.state_dict()["epoch"] == 1
    finally:
        _release(opt)


@pytest.mark.timeout(120)
def test_the_overlapped_update_moves_the_parameters_by_the_new_anchor_minus_the_boundary(dht: Any) -> None:
    from essaim.swarm.optimizer import build_optimizer

    tiny = _Tiny()
    recipe = _recipe(averaging="local", outer_lr=0.5, compression="none", target_batch_size=32, batch_size=8,
                     matchmaking_time=1.0)
    opt = build_optimizer(tiny, recipe, dht=dht, run_id="unit-overlap-merge")
    try:
        _until_next_epoch(opt, tiny)
        boundary = [b.clone() for b in opt.hv.grad_averager.boundary]
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        torch.nn.functional.mse_loss(tiny.model(x), y).backward()
        opt.inner.step()  # local progress made while the round runs (no hivemind step yet)
        opt.inner.zero_grad(set_to_none=True)
        before = [p.detach().clone() for p in opt.params]
        assert any(not torch.equal(p, b) for p, b in zip(before, boundary, strict=True))
        opt.hv.state_averager.step(wait_for_delayed_updates=True)  # the outer step lands
        for param, prior, anchor, b in zip(opt.params, before, opt.anchors, boundary, strict=True):
            assert torch.allclose(param, prior + (anchor - b), atol=1e-6)
        assert opt.hv.grad_averager.boundary is None
    finally:
        _release(opt)


@pytest.mark.timeout(120)
def test_a_state_is_offered_under_the_epoch_its_parameters_belong_to(dht: Any) -> None:
    from essaim.swarm.optimizer import build_optimizer

    tiny = _Tiny()
    recipe = _recipe(averaging="local", compression="none", target_batch_size=32, batch_size=8, matchmaking_time=1.0)
    opt = build_optimizer(tiny, recipe, dht=dht, run_id="unit-overlap-offer")
    try:
        averager = opt.hv.state_averager
        assert averager.get_current_state()[0]["epoch"] == 0
        round_done = threading.Event()  # an epoch whose averaging round is still running
        averager.step(increment_epoch=True, optimizer_step=True, delay_optimizer_step=True, delay_averaging=True,
                      wait_for_trigger=round_done.wait)
        assert averager.local_epoch == 1
        assert averager.get_current_state()[0]["epoch"] == 0  # still epoch 0's parameters
        round_done.set()
        averager.step(wait_for_delayed_updates=True)
        assert averager.get_current_state()[0]["epoch"] == 1
        # asked while a step is pending, it waits a moment for the step to land rather than hand
        # out the epoch before (a newcomer would then miss that step's update for good)
        round_done.clear()
        averager.step(increment_epoch=True, optimizer_step=True, delay_optimizer_step=True, delay_averaging=True,
                      wait_for_trigger=round_done.wait)
        offered: list[int] = []
        asking = threading.Thread(target=lambda: offered.append(averager.get_current_state()[0]["epoch"]))
        asking.start()
        time.sleep(0.5)
        round_done.set()
        averager.step(wait_for_delayed_updates=True)
        asking.join(10)
        assert offered == [2]
    finally:
        _release(opt)


@pytest.mark.timeout(120)
def test_a_newcomers_fresh_inner_optimizer_ramps_its_learning_rate_up(dht: Any) -> None:
    from essaim.swarm.optimizer import INNER_WARMUP_STEPS, build_optimizer

    tiny = _Tiny()
    recipe = _recipe(averaging="local", compression="none", target_batch_size=10_000, batch_size=8,
                     matchmaking_time=1.0)
    opt = build_optimizer(tiny, recipe, dht=dht, run_id="unit-ramp")
    try:
        opt.hv.state_averager.local_epoch = 3  # as after loading the state of a job under way
        opt._set_inner_lr()
        full = opt.inner.param_groups[0]["lr"]
        _steps(opt, tiny, 1)
        # the first step's rate (or the next one's, when the step moved the epoch on)
        assert opt.inner.param_groups[0]["lr"] <= 2 * full / INNER_WARMUP_STEPS + 1e-12
        _steps(opt, tiny, INNER_WARMUP_STEPS // 2 - 1)
        assert opt.inner.param_groups[0]["lr"] == pytest.approx(full / 2, rel=0.05)
        _steps(opt, tiny, INNER_WARMUP_STEPS // 2 + 1)
        assert opt.inner.param_groups[0]["lr"] == pytest.approx(full)
    finally:
        _release(opt)


@pytest.mark.timeout(120)
def test_sync_mode_steps_once_per_epoch_on_averaged_gradients(dht: Any) -> None:
    from essaim.swarm.optimizer import build_optimizer

    tiny = _Tiny()
    recipe = _recipe(averaging="sync", compression="none", target_batch_size=32, batch_size=8, matchmaking_time=1.0)
    opt = build_optimizer(tiny, recipe, dht=dht, run_id="unit-sync")
    try:
        start = [p.detach().clone() for p in opt.params]
        _steps(opt, tiny, 3)
        assert opt.local_epoch == 0
        assert all(torch.equal(a, b) for a, b in zip(start, opt.params, strict=True))  # only accumulated
        _until_next_epoch(opt, tiny)
        assert opt.local_epoch == 1
        assert any(not torch.equal(a, b) for a, b in zip(start, opt.params, strict=True))
        state = opt.state_dict()
        assert state["epoch"] == 1 and state["mode"] == "sync"
    finally:
        _release(opt)
