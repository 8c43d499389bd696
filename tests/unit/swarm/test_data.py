"""Datasets from text / jsonl / parquet files, packing, shards, per-epoch batches, eval sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from essaim.protocol.recipe import Recipe
from essaim.swarm.data import PackedDataset, build_train_dataset, iterate_batches, load_eval_set
from essaim.swarm.demo_task import build_tokenizer
from essaim.swarm.errors import DataError

TEXTS = [f"{a}+{b}={a + b}" for a in range(20) for b in range(10)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _write_sources(root: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text("\n".join(TEXTS) + "\n\n")  # a blank line is not an example
    with (root / "train.jsonl").open("w") as f:
        for i, text in enumerate(TEXTS):
            f.write(json.dumps({"id": i, "body": text}) + "\n")
    pq.write_table(pa.table({"body": TEXTS, "id": list(range(len(TEXTS)))}), root / "train.parquet")
    return {"text": root / "train.txt", "jsonl": root / "train.jsonl", "parquet": root / "train.parquet"}


def _recipe(demo_recipe: Recipe, recipe_with, path: str, **dataset) -> Recipe:
    return recipe_with(demo_recipe, dataset={"files": [path], "format": "auto", "text_field": "body",
                                             "sequence_length": 16, "shard_size": 10, **dataset})


def test_text_jsonl_and_parquet_give_the_same_sequences(tmp_path: Path, tokenizer, demo_recipe: Recipe,
                                                        recipe_with) -> None:
    sources = _write_sources(tmp_path / "src")
    packed = {}
    for fmt, path in sources.items():
        recipe = _recipe(demo_recipe, recipe_with, f"data/{path.name}")
        packed[fmt] = build_train_dataset(recipe, tokenizer, files={f"data/{path.name}": path})
    total = sum(len(t) + 2 for t in TEXTS)  # <s> text </s>
    assert packed["text"].input_ids.shape == (total // 16, 16)
    assert packed["text"].input_ids.dtype == torch.long
    assert torch.equal(packed["text"].input_ids, packed["jsonl"].input_ids)
    assert torch.equal(packed["text"].input_ids, packed["parquet"].input_ids)
    stream = packed["text"].input_ids.flatten().tolist()
    first = tokenizer(TEXTS[0])["input_ids"] + [tokenizer.eos_token_id]
    assert stream[: len(first)] == first


def test_shards_are_contiguous_and_the_last_one_is_partial(tmp_path: Path, tokenizer, demo_recipe: Recipe,
                                                            recipe_with) -> None:
    path = _write_sources(tmp_path / "src")["text"]
    recipe = _recipe(demo_recipe, recipe_with, "train.txt", shard_size=7)
    data = build_train_dataset(recipe, tokenizer, files={"train.txt": path}, cache_dir=tmp_path / "cache")
    again = build_train_dataset(recipe, tokenizer, files={"train.txt": path}, cache_dir=tmp_path / "cache")
    assert torch.equal(data.input_ids, again.input_ids)
    n = len(data)
    assert data.num_shards == -(-n // 7) and n % 7 != 0
    assert torch.equal(torch.cat([data.shard(i) for i in range(data.num_shards)]), data.input_ids)
    assert len(data.shard(data.num_shards - 1)) == n % 7
    with pytest.raises(DataError, match="does not exist"):
        data.shard(data.num_shards)


def test_batches_are_one_pass_shuffled_by_seed_and_epoch() -> None:
    data = PackedDataset(input_ids=torch.arange(40 * 4).reshape(40, 4), num_shards=4, shard_size=10)

    def rows(**kw) -> list[int]:
        batches = list(iterate_batches(data, [1, 3], batch_size=6, **kw))
        assert [len(b["input_ids"]) for b in batches] == [6, 6, 6, 2]
        for b in batches:
            assert torch.equal(b["labels"], b["input_ids"]) and bool(b["attention_mask"].all())
        return [int(r) // 4 for b in batches for r in b["input_ids"][:, 0]]

    epoch0 = rows(seed=0, epoch=0)
    assert sorted(epoch0) == [*range(10, 20), *range(30, 40)]
    assert rows(seed=0, epoch=0) == epoch0
    assert rows(seed=0, epoch=1) != epoch0
    assert rows(seed=1, epoch=0) != epoch0
    with pytest.raises(DataError, match="no shards"):
        next(iterate_batches(data, [], batch_size=2, seed=0, epoch=0))


def test_problems_are_clear_errors(tmp_path: Path, tokenizer, demo_recipe: Recipe, recipe_with) -> None:
    sources = _write_sources(tmp_path / "src")
    recipe = _recipe(demo_recipe, recipe_with, "train.jsonl", text_field="missing")
    with pytest.raises(DataError, match="no field 'missing'"):
        build_train_dataset(recipe, tokenizer, files={"train.jsonl": sources["jsonl"]})
    recipe = _recipe(demo_recipe, recipe_with, "absent.txt")
    with pytest.raises(DataError, match="not in the job's files"):
        build_train_dataset(recipe, tokenizer, files={"train.txt": sources["text"]})
    recipe = _recipe(demo_recipe, recipe_with, "train.txt", sequence_length=4096)
    with pytest.raises(DataError, match="fewer than one sequence"):
        build_train_dataset(recipe, tokenizer, files={"train.txt": sources["text"]})


def test_exact_match_eval_set(demo_recipe: Recipe, demo_files: dict[str, Path], tokenizer, recipe_with) -> None:
    eval_set = load_eval_set(demo_recipe, tokenizer, files=demo_files)
    assert eval_set is not None and eval_set.metric == "exact_match"
    assert len(eval_set) == 200 and eval_set.prompts[0].endswith("=")
    fewer = recipe_with(demo_recipe, eval={"max_samples": 5})
    assert len(load_eval_set(fewer, tokenizer, files=demo_files)) == 5
    assert load_eval_set(recipe_with(demo_recipe, eval={"files": []}), tokenizer, files=demo_files) is None


def test_loss_eval_set_is_packed(demo_recipe: Recipe, demo_files: dict[str, Path], tokenizer, recipe_with) -> None:
    recipe = recipe_with(demo_recipe, eval={"files": ["data/train.txt"], "metric": "loss", "max_samples": 3})
    eval_set = load_eval_set(recipe, tokenizer, files=demo_files)
    assert eval_set is not None and eval_set.input_ids is not None
    assert eval_set.input_ids.shape == (3, demo_recipe.dataset.sequence_length)
