"""Fixtures for the volunteer app's desktop tests: a real X server (Xvfb), xdotool, a tray host, and
``time_the_yield`` (how long the trainer computes after the user comes back).

Every test here needs Debian's ``xvfb``, ``xdotool``, ``trayer`` and ``imagemagick``; it is skipped,
saying which program is missing, where they are not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
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


@dataclass(frozen=True)
class Yield:
    event_s: float  # from the call that plays the user (xdotool) to the input the X server recorded
    reaction_s: float  # from that input to the trainer's last CPU use: the app's part

    def __str__(self) -> str:
        return (
            f"input recorded {self.event_s:.3f} s after xdotool was called, "
            f"trainer quiet {self.reaction_s:.3f} s later"
        )


def time_the_yield(
    app: Any, display: str, pid: int, act: Callable[[], object], *, below: float = 5.0, watch_s: float = 2.5
) -> Yield:
    """Call ``act`` (the user comes back) just after the app's loop last read the idle time, then
    sample the CPU time of ``pid`` and its children every 10 ms until they use under ``below`` % of a
    core over 200 ms.

    The loop reads the idle time on its own period, and at once when a status request wakes it: so
    ``act`` comes 0.1 s after such a request, the worst moment (the whole period to wait), and no
    request is sent while the clock runs. The app's part starts at the input the X server recorded
    (read as the app reads it, from the MIT-SCREEN-SAVER idle time), which leaves xdotool's own
    start-up out; it ends at the sample before the quiet 200 ms (the trainer still ran then), so this
    sampling's own delays count in the app's favour, never against it."""
    from essaim.client.idle import X11Idle

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]

    def cpu_seconds() -> float:
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    idle = X11Idle(display)
    try:
        samples: list[tuple[float, float]] = []
        app.status()
        time.sleep(0.1)  # the tick the request woke has read the idle time
        t0 = time.monotonic()
        act()
        event_at = None
        while time.monotonic() < t0 + watch_s:
            now = time.monotonic()
            samples.append((now, cpu_seconds()))
            if event_at is None:
                seconds = idle.idle_seconds()
                if seconds is not None and seconds < 0.5:
                    event_at = time.monotonic() - seconds
            elif _quiet_from(samples, event_at, below) is not None:
                break
            time.sleep(0.01)
    finally:
        idle.close()
    assert event_at is not None, "the X server recorded no input from xdotool"
    last_busy = _quiet_from(samples, event_at, below)
    rates = [f"{t - event_at:+.2f}s:{c:.2f}" for t, c in samples[::10]]
    assert last_busy is not None, f"the trainer kept computing {watch_s} s after the user came back: {rates}"
    return Yield(event_s=event_at - t0, reaction_s=max(last_busy - event_at, 0.0))


def _quiet_from(samples: list[tuple[float, float]], since: float, below: float) -> float | None:
    """The last sample before the first 200 ms (from ``since`` on) with CPU use under ``below`` %."""
    for i, (t, used) in enumerate(samples):
        if t < since:
            continue
        end = next(((t2, u2) for t2, u2 in samples[i:] if t2 - t >= 0.2), None)
        if end is None:
            return None
        if 100 * (end[1] - used) / (end[0] - t) < below:
            return samples[i - 1][0] if i > 0 else t
    return None


@pytest.fixture(name="time_the_yield")
def time_the_yield_fixture() -> Callable[..., Yield]:
    """:func:`time_the_yield`: ``time_the_yield(app, display, trainer_pid, lambda: xdotool(...))``."""
    return time_the_yield
