"""The recipe validator: the example validates, every error names its field, nothing crashes it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from essaim.protocol.errors import RecipeError
from essaim.protocol.recipe import (
    MAX_RECIPE_BYTES,
    Recipe,
    dump_recipe,
    example_recipe_text,
    is_hub_id,
    load_recipe,
    parse_recipe,
    paths_named,
    refuse_local_source,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLE: dict[str, Any] = yaml.safe_load(example_recipe_text())


def _errors(data: Any) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(data)
    return info.value.problems


def test_example_recipe_validates_and_round_trips() -> None:
    recipe = load_recipe(example_recipe_text())
    assert recipe.name == "tinyllama-alpaca-lora"
    assert recipe.training.averaging == "local"
    again = load_recipe(dump_recipe(recipe))
    assert again == recipe


def test_minimal_recipe_gets_defaults() -> None:
    recipe = load_recipe("name: x\nmodel: {name_or_path: gpt2}\ndataset: {hub_name: wikitext}\n")
    assert recipe.adapter.type == "lora"
    assert recipe.training.compression == "fp16"
    assert recipe.eval is None


def test_unknown_field_is_an_error_with_its_path() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["training"]["epochz"] = 3
    assert _errors(data) == ["training.epochz: unknown field (check its spelling and nesting)"]


def test_wrong_value_names_path_value_and_expectation() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["adapter"]["r"] = -4
    (problem,) = _errors(data)
    assert problem.startswith("adapter.r: got -4; expected")
    assert "greater than or equal to 1" in problem


def test_every_problem_is_listed() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["name"] = "has spaces"
    data["optimizer"]["lr"] = "fast"
    del data["model"]
    problems = _errors(data)
    assert len(problems) == 3
    assert any(p.startswith("name:") for p in problems)
    assert any(p.startswith("optimizer.lr:") for p in problems)
    assert "model: missing; this field is required" in problems


def test_list_items_are_indexed() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["dataset"]["files"] = ["ok.jsonl", 7]
    (problem,) = _errors(data)
    assert problem.startswith("dataset.files[1]: got 7")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"dataset": {"hub_name": "x", "files": ["a.txt"]}}, "not both"),
        ({"dataset": {"files": []}}, "not neither"),
        ({"training": {"batch_size": 4096 * 2}}, "larger than training.target_batch_size"),
        ({"hardware": {"gpu": "none", "min_vram_gb": 8}}, "gpu is 'none'"),
        ({"optimizer": {"betas": [0.9, 1.5]}}, "each beta"),
    ],
)
def test_cross_field_rules(change: dict[str, Any], needle: str) -> None:
    data = copy.deepcopy(EXAMPLE)
    for section, values in change.items():
        data[section] = {**data[section], **values}
    problems = _errors(data)
    assert any(needle in p for p in problems), problems


def test_yaml_is_loaded_safely() -> None:
    evil = "!!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(evil)
    assert "not valid YAML" in str(info.value)


def test_oversized_and_binary_input_are_refused() -> None:
    with pytest.raises(RecipeError, match="at most"):
        load_recipe(b"#" * (MAX_RECIPE_BYTES + 1))
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_recipe(b"name: \xff\xfe")


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A few hundred bytes of nested YAML aliases that expand to width**levels strings."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"name: *a{levels}", "model: {name_or_path: gpt2}", "dataset: {hub_name: w}", ""])


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    import time
    import tracemalloc

    bomb = alias_bomb()
    assert len(bomb) < 1000  # 9**10 strings once expanded
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(RecipeError, match="aliases") as info:
            load_recipe(bomb)
        took = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < 1.0 and peak < 5 * 1024**2, (took, peak)
    assert len(str(info.value)) < 500  # the message quotes no expanded input


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: a\nname: b\n", "the key 'name' is given twice"),
        ("training: {seed: 1, seed: 2}\n", "the key 'seed' is given twice"),
        ("name: " + "[" * 40 + "]" * 40 + "\n", "nested more than"),
        ("name: [" + ", ".join(["1"] * 30_000) + "]\n", "more than 20000 values"),
    ],
)
def test_yaml_beyond_what_a_recipe_needs_is_refused(text: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle):
        load_recipe(text)


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("adapter", {"alpha": float("inf")}, "adapter.alpha"),
        ("optimizer", {"lr": float("nan")}, "optimizer.lr"),
        ("training", {"outer_lr": float("inf")}, "training.outer_lr"),
        ("training", {"seed": 10**24}, "training.seed"),
        ("training", {"seed": -1}, "training.seed"),
        ("optimizer", {"warmup_epochs": 10**21}, "optimizer.warmup_epochs"),
        ("training", {"checkpoint_every_epochs": 10**21}, "training.checkpoint_every_epochs"),
        ("optimizer", {"max_grad_norm": float("inf")}, "optimizer.max_grad_norm"),
        ("hardware", {"min_ram_gb": float("nan")}, "hardware.min_ram_gb"),
    ],
)
def test_every_number_is_finite_and_bounded(section: str, values: dict[str, Any], field: str) -> None:
    data = copy.deepcopy(EXAMPLE)
    data[section] = {**data.get(section, {}), **values}
    assert any(p.startswith(field) for p in _errors(data)), _errors(data)


def test_warmup_longer_than_the_job_is_refused() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["optimizer"] = {**data["optimizer"], "warmup_epochs": data["training"]["epochs"] + 1}
    assert any("warmup_epochs is longer" in p for p in _errors(data))


def test_a_huge_value_is_quoted_short() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["name"] = [list(range(1000))] * 1000
    problems = _errors(data)
    assert all(len(p) < 200 for p in problems), problems


@pytest.mark.parametrize(
    ("name", "hub"),
    [("gpt2", True), ("org/model-1.5", True), ("models/tiny", True), ("/etc", False), ("../up", False),
     ("~/models", False), ("a/b/c", False), ("./model", False), ("C:\\models", False), ("org/..", False)],
)
def test_hub_ids_and_paths(name: str, hub: bool) -> None:
    assert is_hub_id(name) is hub


def test_paths_named_are_those_neither_shipped_nor_hub_ids() -> None:
    recipe = parse_recipe({**copy.deepcopy(EXAMPLE), "model": {"name_or_path": "/srv/models/x", "tokenizer": "gpt2"}})
    assert paths_named(recipe, []) == [("model.name_or_path", "/srv/models/x")]
    shipped = parse_recipe({**copy.deepcopy(EXAMPLE), "model": {"name_or_path": "my model/v1"}})
    assert paths_named(shipped, ["my model/v1/config.json"]) == []
    assert paths_named(shipped, []) == [("model.name_or_path", "my model/v1")]


def test_a_local_source_is_refused_outside_the_allowed_directories(tmp_path: Any) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    (allowed / "m").mkdir(parents=True)
    other.mkdir()
    assert refuse_local_source("model.name_or_path", str(other), None) is None  # a library user's own
    assert refuse_local_source("model.name_or_path", str(allowed / "m"), [allowed]) is None
    assert "names a path on this machine" in refuse_local_source("model.name_or_path", str(other), [allowed])
    assert "names a path on this machine" in refuse_local_source("model.name_or_path", str(other), [])
    (allowed / "link").symlink_to(other)  # a link out of the allowed directory does not count
    assert refuse_local_source("model.name_or_path", str(allowed / "link"), [allowed]) is not None
    assert refuse_local_source("model.name_or_path", "org/not-here", []) is None  # a hub id, not a path here


def test_not_a_mapping() -> None:
    with pytest.raises(RecipeError, match="expected a mapping"):
        load_recipe("- just\n- a list\n")


def test_referenced_files_in_order_without_repeats() -> None:
    data = copy.deepcopy(EXAMPLE)
    data["eval"]["files"] = ["data/train.jsonl", "data/eval.jsonl"]
    assert parse_recipe(data).referenced_files() == ["data/train.jsonl", "data/eval.jsonl"]


# ---- property tests: the validator never crashes; it accepts, or rejects with messages ----

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _check(data: Any) -> None:
    try:
        recipe = parse_recipe(data)
    except RecipeError as exc:
        assert exc.problems, "a rejection must say why"
        assert all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert isinstance(recipe, Recipe)
        assert load_recipe(dump_recipe(recipe)) == recipe


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_values)
def test_random_documents_never_crash(data: Any) -> None:
    _check(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


_EXAMPLE_PATHS = _paths(EXAMPLE)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(_EXAMPLE_PATHS), st.sampled_from(["set", "delete", "rename"]), _values),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_example_never_crashes(mutations: list[tuple[tuple[Any, ...], str, Any]]) -> None:
    data = copy.deepcopy(EXAMPLE)
    for path, action, value in mutations:
        parent: Any = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            last = path[-1]
            if action == "set":
                parent[last] = value
            elif action == "delete":
                del parent[last]
            elif isinstance(parent, dict):
                parent[f"{last}_x"] = parent.pop(last)
        except (KeyError, IndexError, TypeError):
            continue
    _check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_random_text_never_crashes(text: str) -> None:
    try:
        load_recipe(text)
    except RecipeError as exc:
        assert exc.problems
