"""The benchmarks' own accounting: bench/*.py are scripts, loaded here by path as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (registered in sys.modules, as its dataclasses and pickling need)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> Callable[[str], ModuleType]:
    """``bench("swarm")``: load a benchmark module."""
    return load_bench
