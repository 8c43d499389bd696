"""Fixtures of the dashboard's browser tests: headless Chromium (Debian's ``chromium``) driven by
Playwright, a coordinator with a demo swarm, and screenshots kept as test artifacts.

Screenshots go to the test's tmp dir and are copied to ``bench/results/screenshots/`` (ignored by
git); their paths are printed. Without /usr/bin/chromium or the playwright package the tests are
skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[3]
SCREENSHOTS = REPO / "bench" / "results" / "screenshots"


def _load_demo_module() -> ModuleType:
    name = "essaim_tests_dashboard_demo_swarm"
    if name not in sys.modules:
        path = REPO / "tests" / "integration" / "dashboard" / "demo_swarm.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def demo() -> ModuleType:
    return _load_demo_module()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def swarm(browser: Any, demo: ModuleType, module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return demo.start_demo_swarm(module_launcher, tmp_path_factory.mktemp("dashboard-e2e") / "coord")


class PageWatch:
    """A page plus what it said: console errors (CSP violations land there), dialogs, page errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def watch(browser: Any) -> Iterator[PageWatch]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    watched = PageWatch(context.new_page())
    try:
        yield watched
    finally:
        context.close()


@pytest.fixture
def screenshot(tmp_path: Path) -> Any:
    """``screenshot(page, "name")`` saves a full-page PNG and returns its path in bench/results."""

    def take(page: Any, name: str, *, full_page: bool = True) -> Path:
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        kept = SCREENSHOTS / path.name
        shutil.copyfile(path, kept)
        print(f"screenshot: {path} (copy: {kept})")
        return kept

    return take
