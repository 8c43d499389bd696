"""The trainer's own guards, without hivemind: it stops itself at what was left of the daily network
limit (read from its libp2p daemon's kernel counters), and it caps the GPU's memory before the model
is on the GPU, CUDA's own context counted (a fake ``torch.cuda``: there is no GPU here)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from essaim.client.netlimit import ENV_REMAINING, MB, TrafficBudget, TrafficMeter
from essaim.client.trainer import ENV_MAX_VRAM_MB, EventWriter, Trainer, _load_model
from essaim.client.trainer_protocol import TrainerAssignment, parse_event


def _trainer(tmp_path: Path) -> tuple[Trainer, io.StringIO]:
    assignment = TrainerAssignment(job_id="job-1", recipe_yaml="version: 1\n", swarm_token="t",
                                   coordinator_public_key="k", volunteer_id="v", identity_key_path="k.pem")
    out = io.StringIO()
    return Trainer(assignment, tmp_path, EventWriter(out)), out


class _Peer:
    def __init__(self) -> None:
        self.stopped = threading.Event()

    def stop(self, timeout: float = 1.0) -> bool:
        self.stopped.set()
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-process I/O counters are Linux's")
@pytest.mark.timeout(60)
def test_the_trainer_stops_itself_when_its_traffic_reaches_the_days_budget(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_REMAINING, str(MB // 2))
    trainer, out = _trainer(tmp_path)
    peer = trainer.peer = _Peer()
    # the trainer's libp2p daemon relays the swarm's bytes: here `cat`, a child of this process
    budget = TrafficBudget.from_env(TrafficMeter(names=("cat",)))
    relay = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    watcher = threading.Thread(target=trainer.watch_traffic, args=(budget,), kwargs={"every": 0.05}, daemon=True)
    try:
        watcher.start()
        relay.stdin.write(b"x" * (MB // 4))
        relay.stdin.flush()
        watcher.join(1.0)
        assert watcher.is_alive() and not trainer.stop_requested.is_set()  # a quarter of a MB: under budget
        relay.stdin.write(b"x" * MB)
        relay.stdin.flush()
        watcher.join(30)
        assert not watcher.is_alive(), "the trainer did not notice that its traffic reached the budget"
        assert trainer.stop_requested.is_set() and peer.stopped.is_set()
        assert trainer.stop_reason == "network-limit"
        trainer._stopped_early()  # the "stopped" event the app gets once the loop has ended
        (line,) = out.getvalue().splitlines()
        assert parse_event(line).reason == "network-limit"
    finally:
        if trainer._exit_timer is not None:
            trainer._exit_timer.cancel()
        relay.kill()
        relay.wait(5)


def test_the_budget_watcher_leaves_when_the_trainer_stops_for_another_reason(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_REMAINING, str(MB))
    trainer, _ = _trainer(tmp_path)
    watcher = threading.Thread(target=trainer.watch_traffic, kwargs={"every": 0.05},
                               args=(TrafficBudget.from_env(TrafficMeter(names=("no-such-daemon",))),))
    watcher.start()
    trainer.stop_requested.set()
    watcher.join(10)
    assert not watcher.is_alive() and trainer.stop_reason == "stopped"


class _FakeCuda:
    """``torch.cuda`` of a 16 GiB GPU, of which other programs use 1 GiB; CUDA's context takes 300 MiB."""

    total, others, context = 16 * 1024 * MB, 1024 * MB, 300 * MB

    def __init__(self, log: list[Any], *, nvml: bool = True) -> None:
        self.log, self.nvml, self.has_context = log, nvml, False

    def device_memory_used(self, index: int) -> int:
        if not self.nvml:
            raise ModuleNotFoundError("pynvml does not seem to be installed")
        return self.others + (self.context if self.has_context else 0)

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.has_context = True  # cudaMemGetInfo needs a context: the first call makes it
        return self.total - self.others - self.context, self.total

    def set_per_process_memory_fraction(self, fraction: float, index: int) -> None:
        self.log.append(("cap", fraction, index, self.has_context))


def _load(tmp_path: Path, monkeypatch: Any, cuda: _FakeCuda, max_mb: str) -> None:
    import torch
    from essaim.swarm import hardware, model

    monkeypatch.setattr(hardware, "cuda_available", lambda: True)  # "auto" picks the (fake) GPU
    for name in ("device_memory_used", "mem_get_info", "set_per_process_memory_fraction"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
    monkeypatch.setattr(model, "load_model", lambda recipe, **kw: cuda.log.append(("model", kw["device"])))
    monkeypatch.setenv(ENV_MAX_VRAM_MB, max_mb)
    trainer, _ = _trainer(tmp_path)
    recipe = SimpleNamespace(training=SimpleNamespace(seed=0))
    _load_model(trainer.assignment, recipe, {}, None)


def test_the_gpu_memory_cap_is_set_before_the_model_is_on_the_gpu_and_counts_cudas_context(tmp_path, monkeypatch):
    log: list[Any] = []
    _load(tmp_path, monkeypatch, _FakeCuda(log), "4096")
    assert [entry[0] for entry in log] == ["cap", "model"]  # the model comes to the GPU under the cap
    (_, fraction, index, after_context), moved = log
    assert moved == ("model", "cuda") and index == 0 and after_context
    assert fraction * _FakeCuda.total == pytest.approx(4096 * MB - _FakeCuda.context)


def test_without_nvml_the_cap_keeps_room_for_a_typical_context(tmp_path, monkeypatch):
    from essaim.client.trainer import CUDA_CONTEXT_GUESS_MB

    log: list[Any] = []
    _load(tmp_path, monkeypatch, _FakeCuda(log, nvml=False), "4096")
    ((_, fraction, _, _),) = [entry for entry in log if entry[0] == "cap"]
    assert fraction * _FakeCuda.total == pytest.approx((4096 - CUDA_CONTEXT_GUESS_MB) * MB)


def test_a_cap_below_cudas_context_is_refused_with_the_setting_to_change(tmp_path, monkeypatch):
    from essaim.swarm.errors import HardwareError

    log: list[Any] = []
    with pytest.raises(HardwareError, match=r"policy\.gpu_max_vram_mb"):
        _load(tmp_path, monkeypatch, _FakeCuda(log), "256")
    assert log == []  # neither a cap that cannot hold, nor the model


def test_the_trainers_ram_budget_comes_from_the_volunteers_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor leaves the trainer what it holds and what is free above the floor; the cap bounds
    it; without either the trainer computes whole micro-batches; a value that is no number is
    ignored with a warning."""
    import psutil
    from essaim.client import trainer

    monkeypatch.setattr("essaim.swarm.hardware.resident_memory", lambda: 3 * 2**30)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 5 * 2**30})())
    for name in (trainer.ENV_MIN_FREE_RAM_MB, trainer.ENV_MAX_RAM_MB):
        monkeypatch.delenv(name, raising=False)
    assert trainer._ram_budget() is None
    monkeypatch.setenv(trainer.ENV_MIN_FREE_RAM_MB, "1024")
    assert trainer._ram_budget() == (3 + 5 - 1) * 2**30
    monkeypatch.setenv(trainer.ENV_MIN_FREE_RAM_MB, "8192")  # less free than the floor: what it holds
    assert trainer._ram_budget() == 3 * 2**30
    monkeypatch.setenv(trainer.ENV_MAX_RAM_MB, "2048")
    assert trainer._ram_budget() == 2 * 2**30
    monkeypatch.setenv(trainer.ENV_MIN_FREE_RAM_MB, "lots")
    assert trainer._ram_budget() == 2 * 2**30
    monkeypatch.setenv(trainer.ENV_MAX_RAM_MB, "0")  # 0: no cap
    assert trainer._ram_budget() is None
