"""The whole volunteer path with the real trainer: a coordinator (with its swarm services) serves the
demo job, the app registers, starts ``python -m essaim.client.trainer``, which trains; the user comes
back (xdotool) and the trainer stops computing; the user leaves and it trains again."""

from __future__ import annotations

import time
from functools import partial

import psutil
import pytest

pytestmark = [pytest.mark.display, pytest.mark.slow, pytest.mark.timeout(600)]
QUIET = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def test_the_real_trainer_yields_to_the_user(
    tmp_path, xdisplay, launch_app, launch_coordinator, client_kit, time_the_yield
):
    from essaim.swarm.demo_task import make_demo_job

    demo = tmp_path / "demo"
    make_demo_job(demo, train_lines=2000)
    coord = launch_coordinator(tmp_path / "coordinator", "--heartbeat-interval", "2")
    with coord.client(coord.admin_token) as admin:
        job = admin.submit_recipe_file(demo / "recipe.yaml", priority=10)
    app = launch_app(
        tmp_path / "app",
        "--coordinator",
        coord.grpc_address,
        "--idle-minutes",
        "0.1",
        "--cpu-max-cores",
        "1",
        display=xdisplay,
        trainer=False,
        extra_env=QUIET,
    )

    st = app.wait(lambda s: (s["progress"] or {}).get("samples", 0) > 0, "the real trainer's progress", 400)
    assert st["job"]["id"] == job.id and st["state"] == "training"
    pid = st["trainer_pid"]
    assert "essaim.client.trainer" in " ".join(psutil.Process(pid).cmdline())

    # the README's "within a second of your return": the trainer pauses between two steps, or is
    # suspended when it has not confirmed within policy.yield_grace_seconds (0.5 s)
    move = partial(client_kit.xdotool, xdisplay, "mousemove", "222", "111")
    took = time_the_yield(app, xdisplay, pid, move, below=10)
    assert took.reaction_s <= 1.0, str(took)
    st = app.status()
    assert st["trainer"]["state"] in ("paused", "suspended"), st
    assert st["reason"].startswith("waiting: user active")
    used = client_kit.tree_cpu_percent(pid, 0.5)
    assert used < 10, f"the paused trainer still used {used:.0f}% of a core"

    st = app.wait(
        lambda s: s["trainer"]["state"] == "running" and s["action"] == "train", "resume", timeout=30
    )
    assert st["trainer_pid"] == pid
    samples = st["progress"]["samples"]
    app.wait(lambda s: s["progress"]["samples"] > samples, "more progress after resuming", timeout=120)

    assert app.stop() == 0
    deadline = time.monotonic() + 15
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the trainer outlived the app"
        time.sleep(0.2)
