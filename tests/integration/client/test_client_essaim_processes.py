"""essaim's own processes are not "other programs": the CPU of another volunteer's trainer, a
coordinator's job runner and their children (hivemind's ``p2pd``) on the same machine does not pause
this app's trainer. Real busy processes, measured through the app's real Observer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from essaim.client.observe import Observer, essaim_processes, is_essaim_command

pytestmark = pytest.mark.timeout(60)

BUSY = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
# an essaim process as the observer sees it, `python .../essaim ...` (a console script run by its
# interpreter): it burns a core and starts a child that burns another, as a trainer's p2pd is its child
ESSAIM_LIKE = "import subprocess, sys\n" f"subprocess.Popen([sys.executable, '-c', {BUSY!r}])\n" + BUSY


@pytest.fixture
def processes() -> Iterator[list[psutil.Process]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started  # type: ignore[misc]
    for proc in started:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        except psutil.NoSuchProcess:
            pass
        proc.kill()
        proc.wait()


def test_command_lines_of_essaim() -> None:
    assert is_essaim_command(["/usr/bin/python3", "-m", "essaim.client.trainer", "--assignment", "a.json"])
    assert is_essaim_command(["/usr/bin/python3", "-m", "essaim.coordinator.jobrunner", "--job-id", "x"])
    assert is_essaim_command(["/home/ada/.local/share/essaim/venv/bin/essaim", "run", "--headless"])
    assert is_essaim_command(["C:\\Users\\ada\\essaim\\Scripts\\essaim.exe", "tray"])
    assert is_essaim_command(["/usr/bin/python3", "/venv/bin/essaim", "coordinator", "serve"])
    assert not is_essaim_command(["/usr/bin/python3", "-m", "essaimer"])
    assert not is_essaim_command(["/usr/bin/python3", "train.py", "--out", "essaim"])
    assert not is_essaim_command(["/usr/bin/python3", "-m", "pytest", "tests", "-k", "essaim"])
    assert not is_essaim_command(["/usr/bin/python3", "-c", "print(1)", "-m", "essaim.client.trainer"])
    assert not is_essaim_command([])


def test_another_essaim_process_and_its_children_are_not_other_programs(processes: list, tmp_path: Path) -> None:
    script = tmp_path / "essaim"
    script.write_text(ESSAIM_LIKE)
    stranger = subprocess.Popen([sys.executable, "-c", BUSY])
    kin = subprocess.Popen([sys.executable, str(script), "run", "--headless"])
    processes.extend([stranger, kin])
    deadline = time.monotonic() + 20
    while not psutil.Process(kin.pid).children():
        assert time.monotonic() < deadline, "the essaim-like process started no child"
        time.sleep(0.05)
    (child,) = psutil.Process(kin.pid).children()
    found = essaim_processes()
    assert kin.pid in found and child.pid in found
    assert stranger.pid not in found
    assert essaim_processes(exclude=kin.pid) == found - {kin.pid}

    # the same seconds seen by the app's observer and by one that takes every process for another
    # program: the difference is the essaim processes' CPU (up to two cores' worth)
    stranger.kill()
    stranger.wait()
    mine, naive = Observer(), Observer()
    naive._essaim_pids = lambda now: frozenset()  # type: ignore[method-assign]
    mine.sample(), naive.sample()
    time.sleep(3.0)
    seen, everything = mine.sample(), naive.sample()
    cores = psutil.cpu_count() or 1
    assert everything.other_cpu_percent - seen.other_cpu_percent >= min(30.0, 100.0 / cores), (seen, everything)
    assert seen.trainer_cpu_percent == 0.0  # they are essaim's, but not this app's trainer
