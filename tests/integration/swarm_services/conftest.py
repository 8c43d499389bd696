"""Fixtures of the swarm services' integration tests: a real coordinator, its job runner and volunteer
trainers on 127.0.0.1 (see ``services_harness.py`` beside this file, loaded by path: test folders
are not packages).

Every process is killed when its module ends, pass or fail; job runners run in sessions of their
own (they outlive a killed coordinator by design), so the fixtures look for them with psutil and
kill them, then check none is left.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def load_harness() -> ModuleType:
    name = "essaim_tests_swarm_services_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("services_harness.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    return load_harness()


@pytest.fixture(scope="session", autouse=True)
def _no_runner_left(harness: ModuleType) -> Iterator[None]:
    """No job runner started by these tests may outlive them (they live in sessions of their own)."""
    yield
    left = [pid for data_dir in harness.DATA_DIRS for pid in harness.runner_pids(data_dir)]
    for pid in left:
        harness.kill_group(pid)
    assert not left, f"job runner processes left behind: {left}"
