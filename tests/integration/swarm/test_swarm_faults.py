"""Faults and controls: refused tokens, a late joiner, a peer killed and restarted, pause and stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from essaim.swarm.identity import load_or_create_private_key as load_key


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in the session ``sid`` (a trainer and everything it started)."""
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getsid(proc.pid) == sid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return alive


def _probe(swarm: Any, *, key: str, trust: str, token: str | None, as_job: str | None = None) -> dict[str, Any]:
    """Run join_probe.py: a peer with ``key`` that trusts ``trust`` as coordinator tries to join."""
    assert swarm.bootstrap is not None
    command = [sys.executable, str(Path(__file__).with_name("join_probe.py")), "--peer", swarm.bootstrap.maddrs[0],
               "--job-id", swarm.job_id, "--key", str(swarm.keys_dir / f"{key}.pem"),
               "--trust", str(swarm.keys_dir / f"{trust}.pem")]
    if token is not None:
        command += ["--token", token]
    if as_job is not None:
        command += ["--as-job", as_job]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, start_new_session=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"the probe failed:\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_peer_without_a_valid_token_cannot_join(swarm: Any) -> None:
    bootstrap = swarm.start_bootstrap()
    # a token its holder signed itself (trusting its own "coordinator"): the swarm refuses it
    forged = swarm.token("mallory", signer=load_key(swarm.keys_dir / "rogue.pem"))
    for attempt in (
        _probe(swarm, key="mallory", trust="rogue", token=forged),
        _probe(swarm, key="mallory", trust="coordinator", token=None),  # no token at all
    ):
        assert attempt["joined"] is False and "refused this peer's swarm token" in attempt["error"], attempt
    # a real token, but for another job
    other_job = swarm.token("mallory", job_id="another-job")
    refused = _probe(swarm, key="mallory", trust="coordinator", token=other_job, as_job="another-job")
    assert refused["joined"] is False and "expired, or for another job" in refused["error"], refused
    assert bootstrap.records() == {}

    # the same peer with a valid token joins, and its signed record reaches the bootstrap peer
    joined = _probe(swarm, key="mallory", trust="coordinator", token=swarm.token("mallory"))
    assert joined == {"joined": True, "published": True}
    assert [r["volunteer_id"] for r in bootstrap.records().values()] == ["probe"]

    # a trainer given an expired token says so and leaves
    expired = swarm.start_trainer("eve", swarm.recipe(), token=swarm.token("eve", ttl_s=0.001))
    error = expired.wait_for(lambda e: e["event"] == "error", 120, "an error")
    assert error["kind"] == "AuthError" and "expired" in error["message"]
    assert expired.wait_for(lambda e: e["event"] == "stopped", 30)["reason"] == "error"
    assert expired.proc.wait(30) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_late_joiner_loads_state_and_a_killed_peer_rejoins(swarm: Any) -> None:
    swarm.start_bootstrap()
    recipe = swarm.recipe(averaging="sync")
    alice = swarm.start_trainer("alice", recipe, slots=[0])
    alice.wait_epoch(2, 240)

    # a late joiner takes the swarm's state (and epoch) before it contributes anything
    carol = swarm.start_trainer("carol", recipe, slots=[1])
    joined = carol.wait_for(lambda e: e["event"] == "joined", 240, "joining")
    assert joined["source"] == "peers" and joined["epoch"] >= 2
    first = carol.wait_for(lambda e: e["event"] in ("progress", "epoch"), 120, "progress")
    assert first["epoch"] >= joined["epoch"]
    peer_id = carol.wait_for(lambda e: e["event"] == "started", 10)["peer_id"]
    carol.wait_epoch(joined["epoch"] + 2, 180)

    # SIGKILL mid-epoch: its helpers (DHT, averagers, p2pd) leave with it, the others go on
    killed_at = max(e.get("epoch", 0) for e in alice.events)
    samples_before = max(e.get("samples", 0) for e in carol.events)
    carol.kill()
    deadline = time.monotonic() + 20
    while _session_processes(carol.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _session_processes(carol.proc.pid), "the killed trainer left processes behind"
    alice.wait_epoch(killed_at + 1, 180)

    # restarted with the same identity: same peer id, state loaded from the swarm, totals kept
    swarm_epoch = max(e.get("epoch", 0) for e in alice.events)
    again = swarm.restart_trainer(carol)
    started = again.wait_for(lambda e: e["event"] == "started", 240, "restart")
    assert started["peer_id"] == peer_id
    rejoined = again.wait_for(lambda e: e["event"] == "joined", 120, "rejoining")
    assert rejoined["epoch"] >= swarm_epoch
    after = again.wait_for(lambda e: e["event"] in ("progress", "epoch") and e["samples"] > 0, 120, "progress")
    assert after["samples"] >= samples_before * 0.5  # counters resumed from the state file, not from zero
    again.wait_epoch(rejoined["epoch"] + 1, 180)

    again.send({"cmd": "stop"})
    alice.proc.send_signal(signal.SIGTERM)
    assert again.wait_for(lambda e: e["event"] == "stopped", 60)["reason"] == "stopped"
    assert alice.wait_for(lambda e: e["event"] == "stopped", 60)["reason"] == "signal"
    assert again.proc.wait(30) == 0 and alice.proc.wait(30) == 0


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_pause_resume_throttle_and_finish_over_the_pipe(swarm: Any) -> None:
    swarm.start_bootstrap()
    # alone in its swarm, an epoch is a few seconds (progress events come every 2 s, and at each epoch)
    trainer = swarm.start_trainer("alice", swarm.recipe(averaging="local", target_batch_size=1600))
    trainer.wait_for(lambda e: e["event"] in ("progress", "epoch"), 240, "training")

    def cpu_rate(seconds: float = 3.0) -> float:
        start = trainer.cpu_seconds()
        time.sleep(seconds)
        return (trainer.cpu_seconds() - start) / seconds

    busy = cpu_rate()
    assert busy > 0.3, f"the trainer should be computing ({busy:.2f} CPU)"

    sent = time.monotonic()
    trainer.send({"cmd": "pause"})
    paused = trainer.wait_for(lambda e: e["event"] == "paused", 10, "the pause")
    assert paused["received"] - sent < 5.0  # generous: the loop checks between micro-batches
    time.sleep(0.5)
    idle = cpu_rate()
    assert idle < 0.3 * busy and idle < 0.3, f"paused trainer still uses {idle:.2f} CPU (busy: {busy:.2f})"
    samples = max(e.get("samples", 0) for e in trainer.events)

    trainer.send({"cmd": "throttle", "threads": 1, "duty_cycle": 0.5})
    trainer.send({"cmd": "resume"})
    trainer.wait_for(lambda e: e["event"] == "resumed", 10, "the resume")
    trainer.wait_for(lambda e: e["event"] in ("progress", "epoch") and e["samples"] > samples, 60,
                     "progress after resume")
    assert not [e for e in trainer.events if e["event"] == "error"]

    # finish: complete the current epoch (its averaging included), then stop
    epoch = max(e.get("epoch", 0) for e in trainer.events)
    trainer.send({"cmd": "finish"})
    stopped = trainer.wait_for(lambda e: e["event"] == "stopped", 120, "the end of the epoch")
    # the epoch it was in when the command arrived (it may have moved on since the last event) ends
    assert stopped["reason"] == "finished" and epoch + 1 <= stopped["epoch"] <= epoch + 2, (epoch, stopped)
    assert stopped["samples"] > samples
    assert trainer.proc.wait(30) == 0
