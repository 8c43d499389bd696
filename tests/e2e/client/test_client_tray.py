"""The tray icon in a real X server with a tray host (Xvfb + trayer): the icon is drawn in the tray,
shows the state, a click pauses and resumes, and every menu item does what it says."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.display, pytest.mark.timeout(180)]
AMBER, GREY = (242, 169, 0), (128, 128, 128)


def _start_trayer(display: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                "trayer",
                "--edge",
                "top",
                "--align",
                "right",
                "--widthtype",
                "pixel",
                "--width",
                "120",
                "--heighttype",
                "pixel",
                "--height",
                "32",
            ],
            env={**os.environ, "DISPLAY": display},
            stdout=out,
            stderr=out,
        )


def _panel_shown(display: str) -> bool:
    found = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--name", "^panel$"],
        capture_output=True,
        text=True,
        env={**os.environ, "DISPLAY": display},
        timeout=10,
    ).stdout.split()
    return bool(found)


@pytest.fixture
def tray_display(xdisplay, need, tmp_path) -> Iterator[str]:
    """Xvfb with trayer running as the tray host (started again if it fails to start the first time)."""
    need("trayer", "import", "xwininfo")
    log = tmp_path / "trayer.log"
    proc = _start_trayer(xdisplay, log)
    try:
        deadline = time.monotonic() + 20
        tries = 1
        while not _panel_shown(xdisplay):
            if proc.poll() is not None and tries < 3:
                tries += 1
                proc = _start_trayer(xdisplay, log)
            assert proc.poll() is None or tries < 3, (
                f"trayer did not start: {log.read_text(errors='replace')}"
            )
            assert time.monotonic() < deadline, "trayer's panel never showed"
            time.sleep(0.2)
        time.sleep(0.5)
        yield xdisplay
    finally:
        proc.terminate()
        proc.wait(5)


def _icon_window(display: str, client_kit, timeout: float = 20.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            wid = client_kit.xdotool(display, "search", "--classname", "essaimSystemTrayIcon").split()[0]
            geometry = client_kit.xdotool(display, "getwindowgeometry", "--shell", wid)
            g = dict(line.split("=", 1) for line in geometry.split())
            if int(g["WIDTH"]) > 1 and int(g["X"]) >= 0:
                return {"id": int(wid), **{k: int(v) for k, v in g.items() if k != "WINDOW"}}
        except (subprocess.CalledProcessError, IndexError):
            pass
        time.sleep(0.2)
    tree = subprocess.run(
        ["xwininfo", "-root", "-tree"],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "DISPLAY": display},
    ).stdout
    raise AssertionError(f"the tray icon never docked into the tray; windows:\n{tree}")


def _screenshot(display: str, path: Path, box: dict[str, int]):
    from PIL import Image

    subprocess.run(
        ["import", "-window", "root", str(path)],
        env={**os.environ, "DISPLAY": display},
        check=True,
        timeout=30,
    )
    with Image.open(path) as img:
        return img.convert("RGB").crop(
            (box["X"], box["Y"], box["X"] + box["WIDTH"], box["Y"] + box["HEIGHT"])
        )


def _wait_for_colour(display, path, box, colour, tolerance=40, timeout=10.0):
    """Screenshots of the icon until ``colour`` fills a fifth of it (the tray redraws asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        shot = _screenshot(display, path, box)
        if _share(shot, colour, tolerance) > 0.2 or time.monotonic() > deadline:
            return shot
        time.sleep(0.3)


def _share(image, colour, tolerance=40) -> float:
    pixels = list(image.getdata())
    close = sum(1 for p in pixels if all(abs(a - b) <= tolerance for a, b in zip(p, colour, strict=True)))
    return close / len(pixels)


def test_the_icon_shows_the_state_and_a_click_pauses(tmp_path, tray_display, launch_app, client_kit):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(
        tmp_path / "app",
        "--job-file",
        str(job),
        "--idle-minutes",
        "0.05",
        headless=False,
        display=tray_display,
    )
    app.wait(lambda s: s["state"] == "training" and s["trainer"]["state"] == "running", "training", 60)
    box = _icon_window(tray_display, client_kit)
    shot = _wait_for_colour(tray_display, tmp_path / "training.png", box, AMBER)
    info = subprocess.run(
        ["xwininfo", "-id", str(box["id"])],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "DISPLAY": tray_display},
    ).stdout
    assert _share(shot, AMBER) > 0.2, f"no amber (training) icon in the tray:\n{info}"
    deadline = time.monotonic() + 10
    while True:  # the tooltip (the window's name on X11)
        name = client_kit.xdotool(tray_display, "getwindowname", str(box["id"])).strip()
        if name.startswith("essaim: training") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert name.startswith("essaim: training: machine idle")

    x, y = box["X"] + box["WIDTH"] // 2, box["Y"] + box["HEIGHT"] // 2
    client_kit.xdotool(tray_display, "mousemove", str(x), str(y), "click", "1")
    st = app.wait(lambda s: s["manual"] == "paused", "the click to pause", timeout=10)
    assert st["reason"] == "paused by you (resume to train again)"
    app.wait(lambda s: s["trainer"]["state"] in ("paused", "suspended"), "the trainer to pause", timeout=5)
    shot = _wait_for_colour(tray_display, tmp_path / "paused.png", box, GREY, tolerance=10)
    if _share(shot, GREY, tolerance=10) <= 0.2:
        app.proc.send_signal(__import__("signal").SIGUSR1)
        time.sleep(1)
    assert _share(shot, GREY, tolerance=10) > 0.2, "no grey (paused) icon in the tray"
    assert _share(shot, AMBER) < 0.05

    client_kit.xdotool(tray_display, "click", "1")  # the default item is now Resume
    app.wait(lambda s: s["manual"] == "", "the click to resume", timeout=10)
    assert app.stop() == 0


def _items(menu, prefix=()):
    for item in menu.items:
        if item is menu.SEPARATOR:
            continue
        path = (*prefix, item.text)
        yield path, item
        if item.submenu:
            yield from _items(item.submenu, path)


def _find(tray, *path):
    for where, item in _items(tray.icon.menu):
        if where == path:
            return item
    raise AssertionError(f"no menu item {' > '.join(path)}")


def test_every_menu_item(tmp_path, tray_display, monkeypatch, client_kit):
    monkeypatch.setenv("DISPLAY", tray_display)
    from essaim.client.supervisor import Supervisor
    from essaim.client.tray import Tray

    paths = client_kit.app_paths(tmp_path)
    flags = {
        **client_kit.local_job_flags(tmp_path),
        "policy.other_cpu_pause_percent": 0,
        "policy.min_free_ram_mb": 0,
        "policy.cpu_temp_high_c": 0.0,
        "policy.headless_counts_as_idle": True,
    }
    sup = Supervisor(paths=paths, flags=flags, env={}, idle_source=client_kit_idle())
    stop, opened = threading.Event(), []
    tray = Tray(sup, paths=paths, stop=stop, opener=opened.append)
    thread = threading.Thread(target=tray.run, name="tray-test")
    thread.start()
    try:

        def wait(predicate, what, timeout=20.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if predicate(sup.status()):
                    return sup.status()
                time.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}: {sup.status()['reason']}")

        def click(*path):
            item = _find(tray, *path)
            assert item.enabled, path
            item(tray.icon)

        wait(lambda s: s["state"] == "training" and s["trainer"]["state"] == "running", "training")
        texts = [" > ".join(p) for p, _ in _items(tray.icon.menu)]
        for expected in (
            "Pause",
            "Pause for 1 hour",
            "Finish and stop",
            "Intensity > Light",
            "Only when idle",
            "My contribution",
            "Settings > Schedule > Nights only (22:00-07:00)",
            "Open dashboard",
            "Open logs",
            "Quit",
        ):
            assert expected in texts, expected
        assert texts[0].startswith("training: no user session")  # the status line

        click("Pause for 1 hour")
        st = wait(lambda s: s["pause_until"], "the snooze")
        assert st["pause_until"] == pytest.approx(time.time() + 3600, abs=30)
        assert "Resume" in [" > ".join(p) for p, _ in _items(tray.icon.menu)]
        click("Resume")
        wait(lambda s: s["manual"] == "" and s["state"] == "training", "resume")

        click("Intensity", "Light")
        wait(lambda s: "light: 1 thread(s), 25%" in s["reason"], "light intensity")
        assert _find(tray, "Intensity", "Light").checked
        click("Only when idle")
        wait(lambda _: sup.settings["policy.only_when_idle"] is False, "the toggle")
        assert not _find(tray, "Only when idle").checked

        click("Settings", "Daily network limit", "1 GB")
        click("Settings", "Start after idle for", "5 min")
        click("Settings", "Train on battery")
        click("Settings", "Schedule", "Nights only (22:00-07:00)")
        wait(lambda _: sup.settings["schedule.sun"] == "22:00-07:00", "the schedule")
        assert sup.settings["limits.daily_mb"] == 1024
        assert sup.settings["policy.idle_minutes"] == 5.0
        assert sup.settings["policy.train_on_battery"] is True
        saved = paths.config_file.read_text()
        assert "daily_mb = 1024" in saved and 'mon = "22:00-07:00"' in saved
        click("Settings", "Schedule", "Any time")
        wait(lambda _: sup.settings["schedule.sun"] == "all", "the schedule back")

        contribution = [p[-1] for p, _ in _items(tray.icon.menu) if p[0] == "My contribution" and len(p) == 2]
        assert [line.split(":")[0] for line in contribution[:4]] == ["Samples", "Compute", "Jobs", "Rank"]
        assert contribution[1].endswith(" hours")

        click("Open dashboard")
        click("Open logs")
        click("Settings", "Edit the settings file…")
        deadline = time.monotonic() + 5
        while len(opened) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opened == ["http://127.0.0.1:8080", paths.log_dir, paths.config_file]

        click("Finish and stop")
        wait(lambda s: s["reason"].startswith("finished"), "the finish")
        click("Quit")
        thread.join(30)
        assert not thread.is_alive()
        assert sup.status()["state"] == "stopped"
    finally:
        stop.set()
        tray.quit()
        thread.join(30)


def client_kit_idle():
    class Idle:
        name = "fake"

        def idle_seconds(self):
            return None  # no session: counts as idle (policy.headless_counts_as_idle)

        def close(self):
            pass

    return Idle()
