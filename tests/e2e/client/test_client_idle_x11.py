"""Real idle detection: the app under an X server; xdotool plays the user coming back."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.display, pytest.mark.timeout(120)]


def test_user_activity_stops_the_trainer_and_idle_resumes_it(
    tmp_path, xdisplay, launch_app, client_kit, time_the_yield
):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(tmp_path / "app", "--job-file", str(job), "--idle-minutes", "0.05", display=xdisplay)
    st = app.wait(lambda s: s["state"] == "training" and s["trainer"]["state"] == "running", "training", 60)
    assert st["idle_source"] == "x11"
    assert st["reason"].startswith("training: machine idle")
    pid = st["trainer_pid"]
    client_kit.wait_cpu(pid, above=20)

    # the README's "within a second of your return", counted from the input the X server recorded
    took = time_the_yield(app, xdisplay, pid, lambda: client_kit.xdotool(xdisplay, "mousemove", "200", "150"))
    assert took.reaction_s <= 1.0, str(took)
    st = app.status()  # before the 3 s threshold resumes it
    assert st["trainer"]["state"] in ("paused", "suspended"), st
    status = app.cli("status", "--json").stdout
    assert '"reason": "waiting: user active (idle 0:0' in status
    assert f'"trainer_pid": {pid}' in status

    # the user keeps working: the trainer stays paused
    for x in range(3):
        client_kit.xdotool(xdisplay, "mousemove", str(300 + x * 10), "150")
        time.sleep(0.5)
        assert app.status()["action"] == "pause"

    # the user leaves: after the 3 s threshold training resumes in the same trainer
    st = app.wait(
        lambda s: s["state"] == "training" and s["trainer"]["state"] == "running", "resume", timeout=15
    )
    assert st["trainer_pid"] == pid
    client_kit.wait_cpu(pid, above=20)


def test_keyboard_activity_counts_too(tmp_path, xdisplay, launch_app, client_kit, time_the_yield):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(tmp_path / "app", "--job-file", str(job), "--idle-minutes", "0.05", display=xdisplay)
    pid = app.wait(lambda s: s["state"] == "training" and s["trainer"]["state"] == "running", "training", 60)[
        "trainer_pid"
    ]
    client_kit.wait_cpu(pid, above=20)
    took = time_the_yield(app, xdisplay, pid, lambda: client_kit.xdotool(xdisplay, "key", "shift"))
    assert took.reaction_s <= 1.0, str(took)
    st = app.status()
    assert st["action"] == "pause", st
    assert st["reason"].startswith("waiting: user active")
