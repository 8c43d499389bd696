"""The supervisor in-process with a fake trainer and an in-memory coordinator (the real one's swarm
services are not wired here): assignment -> trainer, training through an outage, stop orders, bans,
and user activity pausing the trainer."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
from client_harness import FakeIdle, training
from client_harness import wait_status as wait
from essaim.client.supervisor import Supervisor
from essaim.coordinator.keys import verify_registration
from essaim.protocol.errors import Unavailable
from essaim.protocol.types import Assignment, HeartbeatReply, Job, JobStatus, Registration
from essaim.protocol.volunteer_calls import VolunteerCalls

pytestmark = pytest.mark.timeout(120)


@dataclass
class FakeCoordinator:
    down: bool = False
    banned: bool = False
    stop_ids: list[str] = field(default_factory=list)
    registrations: list[dict] = field(default_factory=list)
    heartbeats: list[dict] = field(default_factory=list)
    assignments: int = 0
    same_job: bool = False  # offer job-1 every time (a job still running at the coordinator)
    no_job_reason: str = ""  # offer no job, saying why

    def factory(self, address, *, token=None):
        return _Client(self, token)


class _Client(VolunteerCalls):
    """The calls the app makes, answered in memory (register_with_key is the real one)."""

    def __init__(self, coord: FakeCoordinator, token):
        self.coord, self.token = coord, token

    def _check(self):
        if self.coord.down:
            raise Unavailable("cannot reach the coordinator at fake:1")

    def registration_challenge(self):
        self._check()
        return b"fake-challenge"

    def register(self, **kw):
        self._check()
        assert kw["nonce"] == b"fake-challenge"
        verify_registration(
            public_key=kw["public_key"],
            peer_id=kw["peer_id"],
            name=kw["name"],
            timestamp=kw["timestamp"],
            signature=kw["signature"],
            nonce=kw["nonce"],
        )
        self.coord.registrations.append(kw)
        return Registration(volunteer_id="v-1", token="essaim_vol", heartbeat_interval_seconds=1)

    def heartbeat(self, **kw):
        self._check()
        assert self.token == "essaim_vol"
        self.coord.heartbeats.append(kw)
        stop, self.coord.stop_ids = self.coord.stop_ids, []
        return HeartbeatReply(heartbeat_interval_seconds=1, stop_job_ids=stop, banned=self.coord.banned)

    def get_assignment(self, volunteer_id, hardware):
        self._check()
        if self.coord.no_job_reason:
            return Assignment(job=None, retry_after_seconds=1, no_job_reason=self.coord.no_job_reason)
        self.coord.assignments += 1
        job = Job(
            id="job-1" if self.coord.same_job else f"job-{self.coord.assignments}",
            name="tiny",
            status=JobStatus.RUNNING,
            recipe_yaml="version: 1\n",
        )
        return Assignment(
            job=job,
            initial_peers=["/ip4/127.0.0.1/tcp/1/p2p/Qm"],
            swarm_token="swarm-token",
            swarm_token_expires_at=time.time() + 3600,
            shard_ids=[1, 2],
            coordinator_public_key=b"coordinator-key",
        )

    def close(self):
        pass


@pytest.fixture
def running(request, tmp_path, client_kit, monkeypatch):
    monkeypatch.setattr("essaim.client.link.RetryPolicy.delays", lambda self, rng=None: iter([0.2] * 1000))
    coord, idle = FakeCoordinator(**getattr(request, "param", {})), FakeIdle()
    paths = client_kit.app_paths(tmp_path)
    flags = {
        "coordinator.address": "fake:1",
        "volunteer.name": "ada",
        "volunteer.trainer_command": client_kit.fake_trainer_command(),
        "policy.other_cpu_pause_percent": 0,
        "policy.min_free_ram_mb": 0,
        "policy.cpu_temp_high_c": 0.0,
        "policy.idle_minutes": 1.0,
    }
    sup = Supervisor(paths=paths, flags=flags, env={}, idle_source=idle, client_factory=coord.factory)
    with client_kit.supervisor_running(sup):
        yield sup, coord, idle


def test_registers_trains_and_reports(running):
    sup, coord, _ = running
    st = wait(sup, training, "training")
    (reg,) = coord.registrations
    assert reg["name"] == "ada" and reg["peer_id"].startswith("Qm") and reg["hardware"].cpu_cores > 0
    work = sup.paths.data_dir / "jobs" / st["job"]["id"]
    assignment = json.loads((work / "assignment.json").read_text())
    assert assignment["job_id"] == "job-1"
    assert assignment["swarm_token"] == "swarm-token"
    assert assignment["volunteer_id"] == "v-1"
    assert assignment["shard_ids"] == [1, 2]
    started = json.loads((work / "fake_trainer.jsonl").read_text().splitlines()[0])
    assert started["token"] == "essaim_vol" and "--token" not in started["argv"]  # never on a command line
    wait(sup, lambda s: (s["progress"] or {}).get("samples", 0) > 0, "progress")
    deadline = time.monotonic() + 10
    while not any(h["state"] == "training" and h["progress"] for h in coord.heartbeats):
        assert time.monotonic() < deadline, coord.heartbeats[-3:]
        time.sleep(0.1)


@pytest.fixture
def _trainers_complete(monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER_COMPLETE_AFTER", "1.0")


def test_a_job_that_completed_is_not_a_crash(_trainers_complete, running):
    """The trainer says its swarm reached the job's last epoch and exits 0: no restart, no crash.
    The coordinator offers the same job again (its runner is still publishing the result), and
    the app declines it for a while instead of starting a trainer that would load the model to
    find the job done."""
    sup, coord, _ = running
    coord.same_job = True
    st = wait(sup, lambda s: "completed" in s["reason"], "the completion to show", timeout=60)
    assert st["state"] == "waiting" and "job job-1 completed" in st["reason"], st["reason"]
    journal = sup.paths.data_dir / "jobs" / "job-1" / "fake_trainer.jsonl"
    starts = [line for line in journal.read_text().splitlines() if '"argv"' in line]
    assert len(starts) == 1
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        st = sup.status()
        assert st["state"] != "error", st["reason"]
        assert not st.get("trainer_pid"), "a trainer started again for the completed job"
        time.sleep(0.1)
    assert [line for line in journal.read_text().splitlines() if '"argv"' in line] == starts
    assert sup.worker.crashes == 0 and sup.worker.last_error == ""
    assert 1 <= coord.assignments <= 2  # offered once more at most, then asked again a minute later


@pytest.mark.parametrize("running", [{"no_job_reason": "job 1a2b3c4d (big) needs 2.0 GB of RAM\x1b[31m, "
                                                        "this machine has 1.5"}], indirect=True)
def test_the_volunteer_is_told_why_no_job_fits(running):
    """A job waits that this machine cannot run: the app says which and why (printable characters
    only: the coordinator's text reaches a terminal)."""
    sup, coord, _ = running
    st = wait(sup, lambda s: "no job this machine can train" in s["reason"], "the reason", timeout=30)
    assert st["reason"] == "waiting: no job this machine can train; job 1a2b3c4d (big) needs 2.0 GB of RAM[31m, " \
        "this machine has 1.5"
    assert st["state"] == "waiting" and coord.assignments == 0


def test_training_goes_on_through_an_outage(running):
    sup, coord, _ = running
    pid = wait(sup, training, "training")["trainer_pid"]
    coord.down = True
    st = wait(sup, lambda s: not s["coordinator"]["connected"], "the outage")
    assert "cannot reach" in st["coordinator"]["error"]
    assert st["trainer_pid"] == pid and st["state"] == "training"
    seen = len(coord.heartbeats)
    coord.down = False
    wait(sup, lambda s: s["coordinator"]["connected"], "reconnection")
    deadline = time.monotonic() + 10
    while len(coord.heartbeats) == seen:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert sup.status()["trainer_pid"] == pid
    assert len(coord.registrations) == 1


def test_a_stop_order_ends_the_job_and_a_ban_ends_everything(running):
    sup, coord, _ = running
    first = wait(sup, training, "training")
    coord.stop_ids = [first["job"]["id"]]
    st = wait(sup, lambda s: training(s) and s["job"]["id"] != first["job"]["id"], "the next job")
    assert st["trainer_pid"] != first["trainer_pid"]
    coord.banned = True
    st = wait(sup, lambda s: s["state"] == "error", "the ban")
    assert "banned" in st["reason"]
    wait(sup, lambda s: s["trainer_pid"] is None, "the trainer to stop")


def test_user_activity_pauses_the_trainer_at_once(running, client_kit):
    sup, _, idle = running
    pid = wait(sup, training, "training")["trainer_pid"]
    idle.idle = 0.5
    # within the second the README promises (status requests do not wake the supervisor's loop;
    # 0.05 s is one poll of this wait)
    st = wait(sup, lambda s: s["trainer"]["state"] == "paused", "the pause", timeout=1.05)
    assert st["reason"].startswith("waiting: user active (idle 0:00 of 1:00)")
    client_kit.wait_cpu(pid, below=5)
    idle.idle = 61
    wait(sup, training, "training again", timeout=5)
