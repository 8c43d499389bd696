"""Fixtures of the dashboard's integration tests: a coordinator with a demo swarm, and HTTP helpers.

``demo`` is the helper module ``demo_swarm.py`` beside this file (loaded by path: test folders are
not packages); ``swarm`` is one demo swarm for a whole test module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def load_demo_module() -> ModuleType:
    name = "essaim_tests_dashboard_demo_swarm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("demo_swarm.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def demo() -> ModuleType:
    return load_demo_module()


@pytest.fixture(scope="module")
def swarm(demo: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return demo.start_demo_swarm(module_launcher, tmp_path_factory.mktemp("dashboard") / "coord")
