"""Fixtures for the volunteer app's desktop tests: a real X server (Xvfb), xdotool, a tray host.

Every test here needs Debian's ``xvfb``, ``xdotool``, ``trayer`` and ``imagemagick``; it is skipped,
saying which program is missing, where they are not installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


def _load_harness() -> ModuleType:
    if "client_harness" not in sys.modules:
        path = Path(__file__).parents[2] / "integration" / "client" / "client_harness.py"
        spec = importlib.util.spec_from_file_location("client_harness", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["client_harness"] = module
        spec.loader.exec_module(module)
    return sys.modules["client_harness"]


client_harness = _load_harness()


def need(*programs: str) -> None:
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: apt-get install xvfb xdotool trayer imagemagick)")


@pytest.fixture(name="need")
def need_fixture():
    """``need("trayer", ...)``: skip the test, naming what is missing, unless these programs exist."""
    return need


@pytest.fixture(scope="session")
def client_kit() -> ModuleType:
    return client_harness


@pytest.fixture
def xdisplay() -> Iterator[str]:
    """DISPLAY of a fresh Xvfb server."""
    need("Xvfb", "xdotool")
    with client_harness.xvfb() as display:
        yield display


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
