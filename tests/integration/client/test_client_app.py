"""The volunteer app as a real process, with a fake trainer and a local job file (no coordinator):
local control from the CLI, pause/resume/finish, crash restarts with backoff, a corrupted config."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(180)


def _training(s):
    return s["state"] == "training" and s["trainer"]["state"] == "running" and s["trainer_pid"]


def test_control_from_the_cli(tmp_path, launch_app, client_kit):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(tmp_path / "app", "--job-file", str(job))  # headless, no DISPLAY: counts as idle
    st = app.wait(_training, "training")
    assert st["job"]["id"] == "local-1"
    assert st["idle_source"] == "none"
    assert "no user session" in st["reason"]

    status = json.loads(app.cli("status", "--json").stdout)
    assert status["state"] == "training"
    assert status["trainer_pid"] == st["trainer_pid"]
    assert status["job"] == {"id": "local-1", "name": "local-1"}

    out = app.cli("pause").stdout
    assert "paused by you" in out
    st = app.wait(lambda s: s["trainer"]["state"] == "paused", "the trainer to confirm the pause")
    client_kit.wait_cpu(st["trainer_pid"], below=5)

    assert "until" in app.cli("pause", "--for", "1h").stdout
    st = app.status()
    assert st["pause_until"] == pytest.approx(time.time() + 3600, abs=30)
    assert app.cli("status").stdout.startswith("paused by you until")

    assert "training" in app.cli("resume").stdout
    app.wait(_training, "training again")

    out = app.cli("config", "set", "policy.intensity", "light").stdout
    assert "policy.intensity = 'light'" in out
    st = app.wait(lambda s: "light: 1 thread(s), 25%" in s["reason"], "light intensity")
    journal = (app.paths.data_dir / "jobs" / "local-1" / "fake_trainer.jsonl").read_text()
    assert '{"cmd": "throttle", "threads": 1, "duty_cycle": 0.25}' in journal
    assert 'policy.intensity = "light"' in app.cli("config", "show").stdout

    pid = st["trainer_pid"]
    assert "finishing" in app.cli("finish").stdout
    st = app.wait(lambda s: s["reason"].startswith("finished"), "the finish")
    assert st["trainer_pid"] is None and not psutil.pid_exists(pid)
    assert st["state"] == "paused"
    assert st["contribution"]["samples"] > 0

    assert app.stop() == 0


def test_status_when_the_app_is_not_running(tmp_path, client_kit):
    env = client_kit.app_env(tmp_path)
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "essaim.client.cli", "status", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 6
    assert json.loads(proc.stdout)["state"] == "not-running"
    proc = subprocess.run(
        [sys.executable, "-m", "essaim.client.cli", "config", "set", "policy.idle_minutes", "5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "saved; the app is not running" in proc.stdout


def test_a_crashed_trainer_is_restarted_with_backoff(tmp_path, launch_app, client_kit):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(
        tmp_path / "app",
        "--job-file",
        str(job),
        extra_env={"FAKE_TRAINER_CRASH_AFTER": "1", "FAKE_TRAINER_CRASH_ONCE_FILE": str(tmp_path / "c")},
    )
    first = app.wait(_training, "the first trainer")["trainer_pid"]
    st = app.wait(lambda s: s["state"] == "error", "the crash to show", timeout=30)
    assert "the trainer stopped unexpectedly (simulated crash)" in st["reason"]
    assert "restarting in" in st["reason"]
    assert st["trainer"]["crashes"] == 1
    st = app.wait(lambda s: _training(s) and s["trainer_pid"] != first, "the restarted trainer", timeout=30)
    assert st["trainer"]["crashes"] == 1
    time.sleep(2)
    assert app.status()["trainer_pid"] == st["trainer_pid"]  # this one runs on


def test_repeated_crashes_back_off_longer(tmp_path, launch_app, client_kit):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(tmp_path / "app", "--job-file", str(job), extra_env={"FAKE_TRAINER_CRASH_AFTER": "0.2"})
    delays = []
    for n in (1, 2, 3):
        st = app.wait(lambda s, n=n: s["trainer"]["crashes"] == n and s["state"] == "error", f"crash {n}", 60)
        delays.append(int(st["reason"].rsplit("restarting in ", 1)[1].rstrip("s")))
    # full jitter in [d/2, d] with d = 5, 10, 20 s: the third wait is longer than the first could be
    assert delays[2] > 5 >= delays[0]


def test_a_corrupted_config_is_reported_and_kept(tmp_path, launch_app, client_kit):
    config = tmp_path / "app" / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[policy\nthis is not toml")
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(tmp_path / "app", "--job-file", str(job))
    st = app.wait(_training, "training with defaults")
    (problem,) = st["config_problems"]
    assert "is not valid TOML" in problem and "defaults are used" in problem
    (backup,) = config.parent.glob("config.toml.bad-*")
    assert backup.read_text() == "[policy\nthis is not toml"
    assert "config: " in app.cli("status").stdout


def test_a_trainer_that_ignores_pause_is_suspended(tmp_path, launch_app, client_kit):
    job = client_kit.write_job_file(tmp_path / "job.json")
    app = launch_app(tmp_path / "app", "--job-file", str(job), extra_env={"FAKE_TRAINER_IGNORE_PAUSE": "1"})
    pid = app.wait(_training, "training")["trainer_pid"]
    app.cli("pause")
    app.wait(lambda s: s["trainer"]["state"] == "suspended", "the trainer to be suspended", timeout=10)
    deadline = time.monotonic() + 5  # SIGSTOP is delivered asynchronously
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, psutil.Process(pid).status()
        time.sleep(0.05)
    client_kit.wait_cpu(pid, below=5)
    app.cli("resume")
    app.wait(_training, "training again")
    assert psutil.Process(pid).status() != psutil.STATUS_STOPPED
    client_kit.wait_cpu(pid, above=20)


def test_without_a_display_the_tray_says_so_and_suggests_headless(tmp_path, client_kit):
    import subprocess

    env = client_kit.app_env(tmp_path)  # no DISPLAY, no WAYLAND_DISPLAY
    for argv in (["-m", "essaim"], ["-m", "essaim.client.cli", "run"]):  # `essaim` alone starts the tray
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "no graphical display to show the tray icon (DISPLAY is not set)" in proc.stderr
        assert "essaim run --headless" in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_running_app_holds_neither_the_cli_libraries_nor_grpcio(tmp_path, launch_app, launch_coordinator):
    """`run` parses its flags with the CLI, then becomes the app's own module (same pid): a registered,
    heartbeating app has loaded neither grpcio's core nor pydantic's."""
    coord = launch_coordinator(tmp_path / "coordinator")
    app = launch_app(
        tmp_path / "app", "--coordinator", coord.grpc_address, "--idle-minutes", "7", trainer=False
    )
    st = app.wait(lambda s: s["coordinator"]["connected"], "registration and a heartbeat", timeout=60)
    assert st["coordinator"]["volunteer_id"]
    assert "policy.idle_minutes = 7.0    # flag" in app.ask({"cmd": "config_show"})["text"]
    argv = Path(f"/proc/{app.proc.pid}/cmdline").read_bytes().decode().split("\0")
    assert "essaim.client.entry" in argv
    assert "cli.py run --other-cpu-pause-percent 0" in " ".join(argv)  # as typed, for ps and pkill -f
    maps = Path(f"/proc/{app.proc.pid}/maps").read_text()
    assert "grpc/_cython" not in maps and "pydantic_core" not in maps
    assert app.stop() == 0
