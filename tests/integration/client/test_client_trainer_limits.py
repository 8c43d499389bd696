"""The volunteer's limits on its trainer, through the app's real worker and supervisor and real
trainer processes: the day's traffic across a trainer restart, the real trainer stopping itself at
what was left of the daily network limit, and the CPU cores it may use (``policy.cpu_max_cores``)."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from essaim.client.netlimit import ENV_REMAINING, MB, DailyTraffic
from essaim.client.supervisor import Supervisor
from essaim.client.trainer_handle import default_trainer_command
from essaim.client.worker import Worker

pytestmark = pytest.mark.timeout(120)

SCRIPTED_TRAINER = """
import json, os, sys
for event in json.loads(os.environ["SCRIPTED_EVENTS"]):
    print(json.dumps(event), flush=True)
if os.environ.get("SCRIPTED_EXIT") != "1":
    for line in sys.stdin:  # until the app says stop (or is gone)
        if json.loads(line).get("cmd") == "stop":
            break
"""


def _progress(sent: int, received: int, **extra: Any) -> dict[str, Any]:
    return {"event": "progress", "samples": 1, "bytes_sent": sent, "bytes_received": received, **extra}


def _until_exited(worker: Worker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.handle is not None:
        assert time.monotonic() < deadline, "the trainer did not exit"
        worker.poll(time.monotonic())
        time.sleep(0.02)


def test_a_restarted_trainers_traffic_adds_to_the_days_count(tmp_path: Path) -> None:
    """The old trainer's last report says 5 MB, the new one's first 8 MB (the state it downloaded on
    joining): the day counts 13 MB, then what the new one moves after, up to its "stopped" event."""
    script = tmp_path / "trainer.py"
    script.write_text(SCRIPTED_TRAINER)
    runs = [
        {"SCRIPTED_EVENTS": json.dumps([_progress(MB, MB), _progress(2 * MB, 3 * MB)])},
        {"SCRIPTED_EVENTS": json.dumps([
            _progress(2 * MB, 6 * MB),
            _progress(2 * MB, 7 * MB),
            {"event": "stopped", "reason": "network-limit", "bytes_sent": 3 * MB, "bytes_received": 7 * MB},
        ]), "SCRIPTED_EXIT": "1"},
    ]
    day = DailyTraffic(tmp_path / "traffic.json")
    worker = Worker(
        work_root=tmp_path / "jobs",
        command=lambda: [sys.executable, str(script)],
        env=lambda: runs[0],
        on_traffic=lambda sent, received: day.add_totals(sent=sent, received=received),
    )
    worker.assign({"job_id": "job-1"})
    try:
        worker.start(time.monotonic())
        deadline = time.monotonic() + 30
        while day.today_bytes() < 5 * MB:
            assert time.monotonic() < deadline, "no traffic report from the first trainer"
            worker.poll(time.monotonic())
            time.sleep(0.02)
        assert day.today_bytes() == 5 * MB
        worker.request_stop(time.monotonic())
        _until_exited(worker)

        runs.pop(0)
        worker.start(time.monotonic())
        _until_exited(worker)
        assert day.today_bytes() == 15 * MB  # 5 MB, then 10 MB: the new trainer's own count from 0
        # it stopped itself at the daily limit: no crash, no restart with backoff
        assert worker.crashes == 0 and worker.last_error == "" and worker.stop_reason == "network-limit"
    finally:
        worker.shutdown(timeout=5)


def _demo_assignment(root: Path) -> dict[str, Any]:
    """A trainer job description for the demo job, alone in its swarm (no coordinator)."""
    from essaim.swarm.auth import issue_swarm_token
    from essaim.swarm.demo_task import make_demo_job
    from essaim.swarm.identity import load_or_create_private_key, public_key_bytes

    make_demo_job(root / "demo", train_lines=400)
    coordinator = load_or_create_private_key(root / "coordinator.pem")
    key = load_or_create_private_key(root / "volunteer.pem")
    token, *_ = issue_swarm_token(coordinator, job_id="job-limit", volunteer_id="v",
                                  peer_public_key=public_key_bytes(key), ttl_s=3600)
    return {
        "job_id": "job-limit",
        "recipe_yaml": (root / "demo" / "recipe.yaml").read_text(),
        "base_dir": str(root / "demo"),
        "swarm_token": token,
        "coordinator_public_key": base64.b64encode(public_key_bytes(coordinator)).decode(),
        "volunteer_id": "v",
        "identity_key_path": str(root / "volunteer.pem"),
        "host_maddrs": ["/ip4/127.0.0.1/tcp/0"],
        "client_mode": "off",
        "threads": 1,
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the trainer's traffic meter reads /proc")
def test_the_real_trainer_stops_itself_at_what_is_left_of_the_daily_limit(tmp_path: Path) -> None:
    """Its libp2p daemon's first bytes (registering the DHT's handlers) use up a budget of 1 byte."""
    day = DailyTraffic(tmp_path / "traffic.json")
    events: list[dict[str, Any]] = []
    env = {ENV_REMAINING: "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    worker = Worker(work_root=tmp_path / "jobs", command=default_trainer_command, env=lambda: env,
                    on_traffic=lambda sent, received: day.add_totals(sent=sent, received=received))
    worker.assign(_demo_assignment(tmp_path))
    try:
        worker.start(time.monotonic())
        deadline = time.monotonic() + 90
        while worker.handle is not None:
            assert time.monotonic() < deadline, f"the trainer did not stop at the limit: {events[-3:]}"
            events += worker.poll(time.monotonic())
            time.sleep(0.05)
    finally:
        worker.shutdown(timeout=5)
    (stopped,) = [e for e in events if e["event"] == "stopped"]
    assert stopped["reason"] == "network-limit", events
    assert worker.crashes == 0 and worker.last_error == "", worker.last_error
    assert day.today_bytes() == stopped["bytes_sent"] + stopped["bytes_received"] >= 1


@pytest.mark.skipif(not hasattr(psutil.Process, "cpu_affinity"), reason="this OS has no CPU affinity (macOS)")
def test_the_trainer_runs_on_the_cores_it_is_allowed(tmp_path: Path, client_kit: Any) -> None:
    mine = sorted(psutil.Process().cpu_affinity())
    if len(mine) < 2:
        pytest.skip("needs at least 2 CPUs to tell 1 core from all of them")
    paths = client_kit.app_paths(tmp_path)
    flags = {
        **client_kit.local_job_flags(tmp_path),
        "policy.cpu_max_cores": 1,
        "policy.other_cpu_pause_percent": 0,
        "policy.min_free_ram_mb": 0,
        "policy.cpu_temp_high_c": 0.0,
    }
    sup = Supervisor(paths=paths, flags=flags, env={}, idle_source=client_kit.FakeIdle())
    with client_kit.supervisor_running(sup):
        deadline = time.monotonic() + 60
        affinity: list[int] = []
        while affinity != mine[:1]:
            assert time.monotonic() < deadline, f"the trainer runs on cores {affinity}, not {mine[:1]}"
            pid = sup.status().get("trainer_pid")
            if pid:
                with contextlib.suppress(psutil.NoSuchProcess):
                    affinity = sorted(psutil.Process(pid).cpu_affinity())
            time.sleep(0.1)
        assert sup.status()["state"] == "training"


def test_job_files_are_shared_between_jobs_within_the_disk_cap(tmp_path: Path) -> None:
    """The trainer is told to use the app's shared cache of job files; before it starts, the cache
    is trimmed to the cap (limits.cache_gb), the oldest files first, never the files of the job
    about to run; when the job completes, its resumable state goes, its counters and log stay."""
    import hashlib
    import os

    from essaim.swarm.cache import ContentCache

    cache = ContentCache(tmp_path / "cache")
    shas = []
    for i in range(3):
        src = tmp_path / f"file{i}"
        src.write_bytes(bytes([i]) * 4000)
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        os.utime(cache.put_file(src, sha), ns=(10**18 + i * 10**9,) * 2)
        shas.append(sha)
    script = tmp_path / "trainer.py"
    script.write_text(SCRIPTED_TRAINER.replace("import json, os, sys\n", "import json, os, sys\n"
                      "open('argv.json', 'w').write(json.dumps(sys.argv))\n"
                      "open('swarm_state.pt', 'wb').write(b'state'); open('counters.json', 'w').write('{}')\n"))
    worker = Worker(work_root=tmp_path / "jobs", command=lambda: [sys.executable, str(script)],
                    env=lambda: {"SCRIPTED_EVENTS": json.dumps([{"event": "stopped", "reason": "completed"}]),
                                 "SCRIPTED_EXIT": "1"},
                    cache_dir=tmp_path / "cache", cache_max_bytes=lambda: 8000)
    worker.assign({"job_id": "job-2", "job_files": [{"path": "model/w.bin", "sha256": shas[0], "size": 4000}]})
    try:
        worker.start(time.monotonic())
        work = tmp_path / "jobs" / "job-2"
        _until_exited(worker)
        argv = json.loads((work / "argv.json").read_text())
        assert argv[argv.index("--cache-dir") + 1] == str(tmp_path / "cache")
        # 12,000 bytes over a cap of 8,000: the oldest file not kept (file1) went
        assert [cache.get(s) is not None for s in shas] == [True, False, True]
        assert worker.completed and worker.crashes == 0 and worker.assignment is None
        assert not (work / "swarm_state.pt").exists()
        assert (work / "counters.json").exists() and (work / "trainer-stderr.log").exists()
    finally:
        worker.shutdown(timeout=5)
