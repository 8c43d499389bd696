"""How many averaging peers a job gets (essaim.coordinator.averagers), and that the count holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from essaim.coordinator.averagers import SLICE_BYTES, averaging_peer_count, fixed_count, peer_id_of
from essaim.protocol.recipe import Recipe

BASE = {"version": 1, "name": "t", "model": {"name_or_path": "m"}, "dataset": {"files": ["d.txt"]}}


def _recipe(**training: object) -> Recipe:
    return Recipe.model_validate({**BASE, "training": training})


def test_one_averaging_peer_per_slice_of_trainable_parameters() -> None:
    per_peer = SLICE_BYTES // 4  # float32 values in one slice
    assert averaging_peer_count(_recipe(), 5_000_000) == 1  # a LoRA adapter
    assert averaging_peer_count(_recipe(), per_peer) == 1
    assert averaging_peer_count(_recipe(), per_peer + 1) == 2
    assert averaging_peer_count(_recipe(), 135_000_000) == 3  # a full fine-tune of SmolLM2-135M
    assert averaging_peer_count(_recipe(), 7_000_000_000) == 4  # capped by the coordinator's setting
    assert averaging_peer_count(_recipe(), 7_000_000_000, max_peers=16) == 16
    assert averaging_peer_count(_recipe(), 0) == 1


def test_the_recipe_asks_and_the_coordinator_caps() -> None:
    assert averaging_peer_count(_recipe(averaging_peers=2), 1000) == 2
    assert averaging_peer_count(_recipe(averaging_peers=9), 1000, max_peers=3) == 3
    with pytest.raises(ValueError):
        _recipe(averaging_peers=0)


def test_the_count_is_fixed_at_the_jobs_first_start(tmp_path: Path) -> None:
    """Volunteers under way know the reducers the first start handed out: a restart keeps them."""
    assert fixed_count(tmp_path, 3) == 3
    assert fixed_count(tmp_path, 1) == 3
    (tmp_path / "averagers.json").write_text("not json")
    assert fixed_count(tmp_path, 2) == 2


def test_an_averaging_peer_keeps_its_peer_id(tmp_path: Path) -> None:
    first = peer_id_of(tmp_path, 1)
    assert first == peer_id_of(tmp_path, 1) and first != peer_id_of(tmp_path, 2)
    assert first.startswith("Qm")
