"""Saving and loading the trained parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.errors import StateError
from essaim.swarm.model import load_model
from essaim.swarm.state import load_state, save_state, trainable_state_dict

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def test_round_trip_restores_weights_and_metadata(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                  tmp_path: Path) -> None:
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    with torch.no_grad():
        for _, p in loaded.trainable_parameters():
            p.add_(torch.randn_like(p))
    saved = trainable_state_dict(loaded)
    path = tmp_path / "state" / "epoch-3.safetensors"
    save_state(path, loaded, metadata={"job_id": "j1", "epoch": "3"})
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left

    fresh = load_model(demo_recipe, files=demo_files, device="cpu")
    assert not torch.equal(next(iter(trainable_state_dict(fresh).values())), next(iter(saved.values())))
    assert load_state(path, fresh) == {"job_id": "j1", "epoch": "3"}
    restored = trainable_state_dict(fresh)
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[k], saved[k]) for k in saved)


def test_a_state_of_another_adapter_is_refused(demo_recipe: Recipe, demo_files: dict[str, Path],
                                               tmp_path: Path, recipe_with) -> None:
    full = load_model(demo_recipe, files=demo_files, device="cpu")
    path = tmp_path / "full.safetensors"
    save_state(path, full, metadata={})
    lora = load_model(recipe_with(demo_recipe, adapter=LORA), files=demo_files, device="cpu")
    with pytest.raises(StateError, match=r"does not fit this model.*full adapter"):
        load_state(path, lora)
    with pytest.raises(StateError, match="missing or damaged"):
        load_state(tmp_path / "absent.safetensors", full)
    with pytest.raises(StateError, match="str to str"):
        save_state(path, full, metadata={"epoch": 3})  # type: ignore[dict-item]
