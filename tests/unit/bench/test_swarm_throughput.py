"""bench/swarm.py judges a swarm by its peers' throughput against the same peers with averaging off."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import yaml


@pytest.fixture
def swarm(bench) -> ModuleType:
    return bench("swarm")


def _peer(index: int, *, samples: int, seconds: float, unblocked: float, cpu: float = 20.0, epochs: int = 3) -> dict:
    return {"peer": index, "samples": samples, "seconds": seconds, "epochs": epochs, "unblocked_fraction": unblocked,
            "cpu_s_per_1k_samples": cpu}


def test_throughput_is_each_peer_against_itself_with_averaging_off(swarm):
    row = {"peers": [_peer(0, samples=960, seconds=40.0, unblocked=0.99, cpu=25.0),
                     _peer(1, samples=960, seconds=32.0, unblocked=0.99, cpu=22.0)]}
    solo = {"peers": [_peer(0, samples=960, seconds=30.0, unblocked=0.995),
                      _peer(1, samples=960, seconds=30.0, unblocked=0.995)],
            "rounds": 0, "unblocked_fraction_min": 0.995}
    out = swarm.versus_solo(row, solo)
    assert [p["throughput_vs_solo"] for p in out["versus_solo"]] == [0.75, 0.9375]
    assert out["throughput_vs_solo_min"] == 0.75
    assert out["throughput_vs_solo_mean"] == pytest.approx((0.75 + 0.9375) / 2, abs=1e-4)
    assert out["solo_samples_per_second_per_peer"] == pytest.approx(32.0)
    assert out["solo_epoch_s_mean"] == pytest.approx(10.0)
    assert out["solo_rounds"] == 0
    assert out["cpu_per_sample_vs_solo_mean"] == pytest.approx((25.0 / 20.0 + 22.0 / 20.0) / 2)
    assert "solo_error" in swarm.versus_solo(row, {"error": "peer 1 exited"})


def test_the_target_is_the_throughput_not_the_unblocked_fraction(swarm):
    """A peer never blocked on a round (unblocked 0.995) but slowed to 0.8 of its speed with
    averaging off, by rounds competing for the cores, fails the target."""
    row = {"mode": "local", "unblocked_fraction_min": 0.995, "throughput_vs_solo_min": 0.8}
    assert swarm.targets(row) == {"throughput_ge_0.90": False}
    assert swarm.targets({**row, "throughput_vs_solo_min": 0.93}) == {"throughput_ge_0.90": True}
    assert swarm.targets({"mode": "local", "unblocked_fraction_min": 0.995}) == {}  # no baseline: no verdict


def test_averaging_off_runs_the_same_peers_each_in_a_swarm_of_its_own(swarm, tmp_path: Path):
    """Each process of the baseline has a job of its own, and an epoch of its share of the samples
    (sync mode then steps its optimizer as often per sample as in the swarm)."""
    job = tmp_path / "job"
    job.mkdir()
    (job / "recipe.yaml").write_text(yaml.safe_dump({"training": {"target_batch_size": 4800}}))
    args = swarm.parse(["--target", "640"])
    tag = "4-loopback-sync-lora"
    cfg: dict[str, object] = {"n": 4, "link": "loopback", "mode": "sync", "adapter": "lora", "tag": tag}
    solo = {**cfg, "tag": f"{tag}-solo", "solo": True}
    assert yaml.safe_load(swarm.make_recipe(job, cfg, args).read_text())["training"]["target_batch_size"] == 640
    assert yaml.safe_load(swarm.make_recipe(job, solo, args).read_text())["training"]["target_batch_size"] == 160

    def job_id(config: dict[str, object], index: int) -> str:
        cmd = swarm._process_cmd("peer", index, config, job, job / "r.yaml", tmp_path, args, None)
        return cmd[cmd.index("--job-id") + 1]

    assert len({job_id(cfg, i) for i in range(4)}) == 1
    assert len({job_id(solo, i) for i in range(4)}) == 4
