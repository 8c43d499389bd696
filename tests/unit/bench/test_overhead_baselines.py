"""bench/overhead.py compares each essaim variant with a plain loop that steps its optimizer alike."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def overhead(bench) -> ModuleType:
    return bench("overhead")


def test_each_variant_has_the_baseline_that_steps_alike(overhead):
    assert overhead.baseline_of("local") == "plain"  # the inner optimizer steps every micro-batch
    assert overhead.baseline_of("sync") == "plain-accum"  # one step per swarm epoch
    assert overhead.baseline_of("local-pair") == "plain-pair"  # two processes sharing the cores
    assert overhead.baseline_of("sync-pair") == "plain-accum-pair"


def _run(variant: str, rate: float, cpu: float, processes: int = 1) -> list[dict]:
    return [{"variant": variant, "samples_per_second": rate, "cpu_s_per_1k_samples": cpu,
             "optimizer_steps_per_1k_samples": 1.0, "epochs": 2} for _ in range(processes)]


def test_ratios_are_against_the_baseline(overhead):
    runs = [_run("plain", 40.0, 25.0), _run("plain-accum", 44.0, 23.0), _run("sync", 41.8, 24.15),
            _run("local", 38.0, 26.25), _run("plain-pair", 20.0, 25.0, 2), _run("local-pair", 15.0, 30.0, 2)]
    variants = ["plain", "plain-accum", "sync", "local", "plain-pair", "local-pair"]
    summary = overhead.summarize(runs, variants)
    assert summary["sync"]["ratio_to_baseline"] == pytest.approx(41.8 / 44.0, abs=1e-4)  # not 41.8 / 40
    assert summary["sync"]["cpu_per_sample_over_baseline"] == pytest.approx(24.15 / 23.0, abs=1e-4)
    assert summary["local"]["ratio_to_baseline"] == pytest.approx(38.0 / 40.0, abs=1e-4)
    assert summary["local-pair"]["ratio_to_baseline"] == pytest.approx(15.0 / 20.0, abs=1e-4)


@pytest.mark.parametrize(("variant", "steps_per_sample"), [("plain", 1 / 16), ("plain-accum", 1 / 64)])
def test_the_plain_loops_step_on_the_schedule_they_stand_for(overhead, tmp_path: Path, monkeypatch,
                                                              variant: str, steps_per_sample: float):
    """``plain`` steps every micro-batch of 16, ``plain-accum`` once per target batch (64 here), as
    local and sync mode do; counted over the measured window."""
    import torch
    from essaim.swarm.data import build_train_dataset
    from essaim.swarm.model import load_model

    torch.set_num_threads(1)
    recipe, files = overhead._job(tmp_path, "demo", "sync", 64)
    loaded = load_model(recipe, files=files, device="cpu", seed=recipe.training.seed)
    dataset = build_train_dataset(recipe, loaded.tokenizer, files=files)
    monkeypatch.setattr(overhead, "_wait_go", time.time)
    result = overhead.run_plain(recipe, loaded, dataset, list(range(dataset.num_shards)), 0.3, 1.5,
                                accumulate=variant == "plain-accum")
    assert result["samples"] >= 128
    expected = result["samples"] * steps_per_sample
    assert abs(result["optimizer_steps"] - expected) <= 1
