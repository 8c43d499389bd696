"""The volunteer app against a real coordinator: it waits out a coordinator that is not up yet,
registers, gets a job and starts the trainer, and trains on while the coordinator dies and comes back."""

from __future__ import annotations

import json
import socket

import pytest

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

# the job's runner loads the model and evaluates it before it hands out the swarm's address
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _demo_recipe(out_dir):
    from essaim.swarm.demo_task import DemoConfig, make_demo_job

    return make_demo_job(out_dir, train_lines=300, config=DemoConfig(epochs=3, target_batch_size=64, eval_size=8))


@pytest.fixture(autouse=True)
def _no_runner_left(tmp_path):
    """The coordinator's job runner lives in a session of its own (it outlives a killed
    coordinator by design): kill the ones this test started, with their hivemind processes."""
    yield
    import contextlib
    import os
    import signal

    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "essaim.coordinator.jobrunner" in cmdline and any(str(tmp_path) in part for part in cmdline):
            with contextlib.suppress(OSError):  # gone already
                os.killpg(os.getsid(proc.info["pid"]), signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_outages_are_ridden_out(tmp_path, launch_app, launch_coordinator, client_kit):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    app = launch_app(tmp_path / "app", "--coordinator", address, "--name", "ada")
    st = app.wait(lambda s: "cannot reach the coordinator" in s["reason"], "the outage to show", timeout=60)
    assert st["state"] == "waiting"
    assert st["coordinator"]["connected"] is False

    data = tmp_path / "coordinator"
    args = ("--grpc-port", str(port), "--heartbeat-interval", "1")
    coord = launch_coordinator(data, *args, env=OFFLINE)
    with coord.client(coord.admin_token) as admin:
        job = admin.submit_recipe_file(_demo_recipe(tmp_path / "job"))
    st = app.wait(
        lambda s: s["state"] == "training" and s["trainer"]["state"] == "running",
        "a job from the coordinator",
        120,
    )
    assert st["job"]["id"] == job.id
    assert st["coordinator"]["connected"] and st["coordinator"]["volunteer_id"]
    volunteer_id = st["coordinator"]["volunteer_id"]
    work = app.paths.data_dir / "jobs" / job.id
    started = json.loads((work / "fake_trainer.jsonl").read_text().splitlines()[0])
    argv = started["argv"]
    assert argv[argv.index("--coordinator") + 1] == address
    assert started["token"].startswith("essaim_") and "--token" not in argv  # in its environment only
    assignment = json.loads((work / "assignment.json").read_text())  # what the real trainer reads
    assert assignment["job_id"] == job.id
    assert assignment["volunteer_id"] == volunteer_id
    assert assignment["swarm_token"] and assignment["coordinator_public_key"] and assignment["initial_peers"]
    assert assignment["identity_key_path"] == str(app.paths.identity_file)
    assert (app.paths.identity_file.stat().st_mode & 0o777) == 0o600

    trainer = st["trainer_pid"]
    coord.kill()
    st = app.wait(lambda s: not s["coordinator"]["connected"], "the app to notice the outage", timeout=60)
    assert st["coordinator"]["error"]
    assert st["trainer_pid"] == trainer and st["state"] == "training"  # training goes on peer-to-peer

    coord = launch_coordinator(data, *args, env=OFFLINE)
    st = app.wait(lambda s: s["coordinator"]["connected"], "the app to reconnect", timeout=90)
    assert st["trainer_pid"] == trainer
    assert st["coordinator"]["volunteer_id"] == volunteer_id  # the saved registration is reused
    with coord.client(coord.admin_token) as admin:
        (me,) = [v for v in admin.list_volunteers() if v.id == volunteer_id]
    assert me.name == "ada"
    assert me.hardware.cpu_cores > 0
