"""Volunteers against a real coordinator: register, heartbeat, go offline, get work, get banned."""

from __future__ import annotations

import time

import pytest
from essaim.protocol.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from essaim.protocol.types import JobProgress, JobStatus, VolunteerStatus

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def coord(module_launcher, tmp_path_factory):
    return module_launcher(
        tmp_path_factory.mktemp("vol"), "--heartbeat-interval", "1", "--heartbeat-timeout", "1", "--no-swarm"
    )


def _status(coord, volunteer_id: str) -> VolunteerStatus:
    with coord.client(coord.admin_token) as admin:
        return next(v for v in admin.list_volunteers() if v.id == volunteer_id).status


def _wait_status(coord, volunteer_id: str, want: VolunteerStatus, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while _status(coord, volunteer_id) != want:
        assert time.monotonic() < deadline, f"volunteer never became {want}"
        time.sleep(0.2)


def test_register_heartbeat_then_offline_after_timeout(coord, kit) -> None:
    me = kit.Identity()
    with coord.client() as anon:
        reg = me.register(anon, "alice")
        again = me.register(anon, "alice")
    assert again.volunteer_id == reg.volunteer_id  # same key, same volunteer
    assert reg.heartbeat_interval_seconds == 1
    with coord.client(reg.token) as client:
        reply = client.heartbeat(
            volunteer_id=reg.volunteer_id, state="idle-wait", reason="user active", hardware=kit.HARDWARE
        )
        assert not reply.banned and reply.stop_job_ids == []
    _wait_status(coord, reg.volunteer_id, VolunteerStatus.OFFLINE)
    with coord.client(reg.token) as client:
        client.heartbeat(volunteer_id=reg.volunteer_id, state="training")
    _wait_status(coord, reg.volunteer_id, VolunteerStatus.ONLINE, within=5)
    with coord.client(coord.admin_token) as admin:
        (mine,) = [v for v in admin.list_volunteers() if v.id == reg.volunteer_id]
    assert mine.name == "alice" and mine.hardware.ram_bytes == kit.HARDWARE.ram_bytes


def test_a_heartbeat_renames_its_own_volunteer_only_to_a_printable_name(coord, kit) -> None:
    with coord.client() as anon:
        reg = kit.Identity().register(anon, "old-name")
    with coord.client(reg.token) as client:
        client.heartbeat(volunteer_id=reg.volunteer_id, state="idle", profile=("  Ada L. ", "lyon"))
        for bad in ("", "a" * 65, "bell\x07"):
            with pytest.raises(InvalidArgument, match="name: expected 1-64 printable characters"):
                client.heartbeat(volunteer_id=reg.volunteer_id, state="idle", profile=(bad, ""))
        with pytest.raises(InvalidArgument, match="team: expected printable"):
            client.heartbeat(volunteer_id=reg.volunteer_id, state="idle", profile=("ok", "tab\tteam"))
        client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")  # no profile: unchanged
    deadline = time.monotonic() + 10
    while True:
        with coord.client(coord.admin_token) as admin:
            (mine,) = [v for v in admin.list_volunteers() if v.id == reg.volunteer_id]
        if (mine.name, mine.team) == ("Ada L.", "lyon") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (mine.name, mine.team) == ("Ada L.", "lyon")


def test_a_volunteer_token_acts_only_for_its_volunteer(coord, kit) -> None:
    with coord.client() as anon:
        a = kit.Identity().register(anon, "a")
        b = kit.Identity().register(anon, "b")
    with coord.client(a.token) as client, pytest.raises(PermissionDenied, match="does not belong"):
        client.heartbeat(volunteer_id=b.volunteer_id, state="idle")
    with coord.client() as anon, pytest.raises(Unauthenticated):
        anon.heartbeat(volunteer_id=a.volunteer_id, state="idle")


def test_bad_registration_signature_is_refused(coord, kit) -> None:
    me, other = kit.Identity(), kit.Identity()
    ts = time.time()
    with coord.client() as anon, pytest.raises(Unauthenticated, match="signature does not verify"):
        nonce = anon.registration_challenge()
        anon.register(
            public_key=me.public_key,
            peer_id="p",
            name="n",
            hardware=kit.HARDWARE,
            timestamp=ts,
            nonce=nonce,
            signature=other.sign(b"essaim-register|p|n|" + repr(ts).encode() + b"|" + nonce.hex().encode()),
        )


def test_assignment_heartbeat_progress_and_stop(coord, kit) -> None:
    with coord.client() as anon:
        reg = kit.Identity().register(anon, "worker")
    with coord.client(coord.admin_token) as admin:
        job = admin.submit_job(kit.hub_recipe("assign-me"), priority=100)
    with coord.client(reg.token) as client:
        got = client.get_assignment(reg.volunteer_id, kit.HARDWARE)
        assert got.has_job and got.job.id == job.id
        assert got.job.status == JobStatus.RUNNING and got.shard_ids
        reply = client.heartbeat(
            volunteer_id=reg.volunteer_id,
            state="training",
            progress=[JobProgress(job_id=job.id, epoch=1, samples=64, samples_per_second=12.5)],
        )
        assert reply.stop_job_ids == []
        with coord.client(coord.admin_token) as admin:
            admin.cancel_job(job.id, "test over")
        reply = client.heartbeat(
            volunteer_id=reg.volunteer_id, state="training", progress=[JobProgress(job_id=job.id)]
        )
        assert reply.stop_job_ids == [job.id]


def test_banned_volunteer_cannot_heartbeat_or_register_again(coord, kit) -> None:
    me = kit.Identity()
    with coord.client() as anon:
        reg = me.register(anon, "mallory")
    with coord.client(coord.admin_token) as admin:
        banned = admin.ban_volunteer(reg.volunteer_id, "fake gradients")
    assert banned.status == VolunteerStatus.BANNED
    with coord.client(reg.token) as client, pytest.raises(PermissionDenied, match="banned") as info:
        client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    assert info.value.exit_code == 4
    with coord.client() as anon, pytest.raises(PermissionDenied, match="banned"):
        me.register(anon, "mallory")
    # an admin lifts the ban: the same key registers again (same volunteer, a new token); the old
    # token stays revoked
    with coord.client(coord.admin_token) as admin:
        lifted = admin.unban_volunteer(reg.volunteer_id, "appeal upheld")
        assert (lifted.status, lifted.reason) == (VolunteerStatus.OFFLINE, "appeal upheld")
        with pytest.raises(FailedPrecondition, match="not banned"):
            admin.unban_volunteer(reg.volunteer_id)
    with coord.client(reg.token) as client, pytest.raises(Unauthenticated):
        client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    with coord.client() as anon:
        again = me.register(anon, "mallory")
    assert again.volunteer_id == reg.volunteer_id and again.token != reg.token
    with coord.client(again.token) as client:
        assert not client.heartbeat(volunteer_id=reg.volunteer_id, state="idle").banned


def test_a_loaded_coordinator_tells_volunteers_to_wait_longer_and_does_not_call_them_offline_for_it(
    launch_coordinator, tmp_path, kit
) -> None:
    """A coordinator whose event loop is over its busy target (here: any work at all) lengthens
    the interval its replies hand out, up to the longest, says so on /metrics, and marks a
    volunteer offline only after the timeout grown as much (1 s for 1 s, 4 s for 4 s)."""
    import urllib.request

    coord = launch_coordinator(
        tmp_path / "c", "--heartbeat-interval", "1", "--heartbeat-interval-max", "4", "--heartbeat-timeout", "1",
        "--no-swarm", env={"ESSAIM_COORDINATOR_HEARTBEAT_BUSY_TARGET": "1e-9"})
    me = kit.Identity()
    with coord.client() as anon:
        reg = me.register(anon, "patient")
    with coord.client(reg.token) as client:
        deadline = time.monotonic() + 30
        while (reply := client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")).heartbeat_interval_seconds < 4:
            assert time.monotonic() < deadline, f"the interval stayed at {reply.heartbeat_interval_seconds} s"
            time.sleep(0.5)
        silent_from = time.monotonic()
    with urllib.request.urlopen(f"{coord.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "essaim_heartbeat_interval_seconds 4" in text
    load = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("essaim_load "))
    assert load > 1.0, text
    # told 4 s: still online after twice the configured 1 s timeout, offline once the grown one passed
    time.sleep(2.5)
    assert _status(coord, reg.volunteer_id) == VolunteerStatus.ONLINE
    _wait_status(coord, reg.volunteer_id, VolunteerStatus.OFFLINE, within=15)
    assert time.monotonic() - silent_from >= 4.0
