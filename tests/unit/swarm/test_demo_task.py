"""The built-in demo job: valid recipe, char-level tokenizer, held-out eval pairs."""

from __future__ import annotations

import json
from pathlib import Path

from essaim.protocol.recipe import Recipe
from essaim.swarm.demo_task import CHARACTERS, build_tokenizer


def test_the_demo_job_is_complete_and_valid(demo_job_dir: Path, demo_recipe: Recipe) -> None:
    assert demo_recipe.model.name_or_path == "model"
    assert demo_recipe.dataset.files == ["data/train.txt"]
    assert demo_recipe.eval is not None and demo_recipe.eval.metric == "exact_match"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (demo_job_dir / "model" / name).is_file(), name
    lines = (demo_job_dir / "data" / "train.txt").read_text().splitlines()
    assert len(lines) == 3000
    a, rest = lines[0].split("+")
    b, total = rest.split("=")
    assert int(a) + int(b) == int(total)


def test_eval_pairs_are_correct_and_never_in_training(demo_job_dir: Path) -> None:
    train = set((demo_job_dir / "data" / "train.txt").read_text().splitlines())
    rows = [json.loads(line) for line in (demo_job_dir / "data" / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 200
    for row in rows:
        a, b = row["prompt"].rstrip("=").split("+")
        assert int(a) + int(b) == int(row["answer"])
        assert row["prompt"] + row["answer"] not in train


def test_the_tokenizer_is_character_level_and_round_trips() -> None:
    tokenizer = build_tokenizer()
    ids = tokenizer("12+7=19")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == 1 + len("12+7=19")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "12+7=19"
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) == 1 for c in CHARACTERS)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    from essaim.swarm.demo_task import make_demo_job

    make_demo_job(tmp_path / "a", train_lines=50, seed=3)
    make_demo_job(tmp_path / "b", train_lines=50, seed=3)
    for rel in ("data/train.txt", "data/eval.jsonl", "model/model.safetensors", "recipe.yaml"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
