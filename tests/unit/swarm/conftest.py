"""Fixtures of the swarm unit tests: the demo job, built once per session, and its tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from essaim.protocol.recipe import Recipe, load_recipe_file

DEMO_TRAIN_LINES = 3000


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def demo_job_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo job (model/, data/, recipe.yaml) in a session-wide temp dir; do not modify it."""
    from essaim.swarm.demo_task import make_demo_job

    out = tmp_path_factory.mktemp("demo-job")
    make_demo_job(out, train_lines=DEMO_TRAIN_LINES, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_recipe(demo_job_dir: Path) -> Recipe:
    return load_recipe_file(demo_job_dir / "recipe.yaml")


@pytest.fixture(scope="session")
def demo_files(demo_job_dir: Path, demo_recipe: Recipe) -> dict[str, Path]:
    """Recipe path -> local file for every file of the demo job (as the trainer gets them from its cache)."""
    from essaim.swarm.cache import collect_job_files

    return collect_job_files(demo_recipe, demo_job_dir)


def with_changes(recipe: Recipe, **sections: dict) -> Recipe:
    """A copy of ``recipe`` with some fields of some sections replaced, validated again."""
    data = recipe.model_dump(mode="json")
    for section, changes in sections.items():
        data[section] = {**(data.get(section) or {}), **changes}
    return Recipe.model_validate(data)


@pytest.fixture
def recipe_with():
    return with_changes
