"""Building the recipe's model: full fine-tune, LoRA, seeded init, files from the cache."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.errors import ModelError
from essaim.swarm.model import load_model

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def test_full_fine_tune_trains_every_weight(demo_recipe: Recipe, demo_files: dict[str, Path]) -> None:
    loaded = load_model(demo_recipe, files=demo_files, device="cpu")
    assert loaded.adapter == "full" and loaded.device == "cpu" and loaded.dtype is torch.float32
    names = [name for name, _ in loaded.trainable_parameters()]
    assert len(names) == len(list(loaded.model.parameters()))
    assert loaded.model.training
    assert loaded.tokenizer.pad_token is not None


def test_lora_trains_only_the_adapter(demo_recipe: Recipe, demo_files: dict[str, Path], recipe_with) -> None:
    loaded = load_model(recipe_with(demo_recipe, adapter=LORA), files=demo_files, device="cpu")
    trainable = loaded.trainable_parameters()
    assert loaded.adapter == "lora" and trainable
    assert all("lora_" in name for name, _ in trainable)
    # 2 layers x (q_proj, v_proj) x (A, B)
    assert len(trainable) == 8
    assert loaded.num_parameters(trainable_only=True) < loaded.num_parameters() / 5


def test_lora_init_is_identical_for_the_same_seed(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                   recipe_with) -> None:
    recipe = recipe_with(demo_recipe, adapter=LORA)
    torch.manual_seed(123)  # whatever the global RNG state was, the seed decides
    a = dict(load_model(recipe, files=demo_files, device="cpu", seed=7).trainable_parameters())
    torch.manual_seed(456)
    b = dict(load_model(recipe, files=demo_files, device="cpu", seed=7).trainable_parameters())
    c = dict(load_model(recipe, files=demo_files, device="cpu", seed=8).trainable_parameters())
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_from_cached_files_and_never_writes_to_them(demo_recipe: Recipe, demo_files: dict[str, Path],
                                                           tmp_path: Path) -> None:
    # the cache names files by hash, not by name: the model directory is rebuilt from the mapping
    cached = {}
    for rel, path in demo_files.items():
        digest = _sha(path)
        shutil.copyfile(path, tmp_path / digest)
        cached[rel] = tmp_path / digest
    loaded = load_model(demo_recipe, files=cached, device="cpu")
    optimizer = torch.optim.SGD([p for _, p in loaded.trainable_parameters()], lr=1.0)
    batch = torch.tensor([[1, 5, 6, 14, 5, 16, 6, 7, 2]])
    loaded.model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    assert all(_sha(path) == path.name for path in cached.values())


def test_a_local_directory_works_without_a_file_map(demo_recipe: Recipe, demo_job_dir: Path,
                                                    recipe_with) -> None:
    recipe = recipe_with(demo_recipe, model={"name_or_path": str(demo_job_dir / "model")})
    assert load_model(recipe, device="cpu").adapter == "full"


def test_a_missing_model_is_a_clear_error(demo_recipe: Recipe, tmp_path: Path, recipe_with) -> None:
    (tmp_path / "empty").mkdir()
    recipe = recipe_with(demo_recipe, model={"name_or_path": str(tmp_path / "empty")})
    with pytest.raises(ModelError, match="cannot load the model"):
        load_model(recipe, device="cpu")


def test_bad_lora_targets_are_a_clear_error(demo_recipe: Recipe, demo_files: dict[str, Path], recipe_with) -> None:
    recipe = recipe_with(demo_recipe, adapter={**LORA, "target_modules": ["no_such_module"]})
    with pytest.raises(ModelError, match="target_modules"):
        load_model(recipe, files=demo_files, device="cpu")
