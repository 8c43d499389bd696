"""Fixtures for the volunteer app's integration tests: ``client_kit`` (the helpers of client_harness),
``launch_app`` (apps that are stopped after the test, whatever happens)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_harness() -> ModuleType:
    """client_harness.py beside this file, importable by name from tests, e2e tests and benches."""
    if "client_harness" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "client_harness", Path(__file__).with_name("client_harness.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["client_harness"] = module
        spec.loader.exec_module(module)
    return sys.modules["client_harness"]


client_harness = _load_harness()


@pytest.fixture(scope="session")
def client_kit() -> ModuleType:
    return client_harness


@pytest.fixture
def launch_app() -> Iterator:
    apps: list = []

    def launch(root, *flags, **kwargs):
        app = client_harness.start_app(root, *flags, **kwargs)
        apps.append(app)
        return app

    try:
        yield launch
    finally:
        for app in apps:
            app.stop()
