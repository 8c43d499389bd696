"""The volunteer app's HTTP/2 client (essaim.protocol.lite_client) against a real coordinator:
the three calls round trip, errors arrive as essaim errors, and it rides out a coordinator restart."""

from __future__ import annotations

import socket
import threading

import pytest
from essaim.protocol import serde
from essaim.protocol.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from essaim.protocol.lite_client import LiteClient
from essaim.protocol.types import JobProgress, JobStatus

pytestmark = pytest.mark.timeout(120)
BIG = 200_000
"""Larger than HTTP/2's initial 64 KiB window and many 16 KiB frames, each way."""


@pytest.fixture(scope="module")
def coord(module_launcher, tmp_path_factory):
    return module_launcher(tmp_path_factory.mktemp("lite"), "--heartbeat-interval", "1", "--no-swarm")


def test_register_heartbeat_and_assignment_round_trip(coord, kit) -> None:
    me = kit.Identity()
    with LiteClient(coord.grpc_address) as anon:
        reg = me.register(anon, "lite")
        assert me.register(anon, "lite").volunteer_id == reg.volunteer_id  # a second call, same connection
    assert reg.token.startswith("essaim_") and reg.heartbeat_interval_seconds == 1
    with coord.client(coord.admin_token) as admin:
        recipe = kit.hub_recipe("lite-job") + "# " + "x" * BIG + "\n"
        job = admin.submit_job(recipe, priority=100)
    with LiteClient(coord.grpc_address, token=reg.token) as client:
        got = client.get_assignment(reg.volunteer_id, kit.HARDWARE)
        assert got.has_job and got.job.id == job.id and got.job.recipe_yaml == recipe
        assert got.job.status == JobStatus.RUNNING and got.shard_ids
        reply = client.heartbeat(
            volunteer_id=reg.volunteer_id,
            state="training",
            reason="r" * BIG,
            hardware=kit.HARDWARE,
            progress=[JobProgress(job_id=job.id, epoch=1, samples=64)],
        )
        assert reply.heartbeat_interval_seconds == 1 and not reply.banned and reply.stop_job_ids == []
        with coord.client(coord.admin_token) as admin:
            admin.cancel_job(job.id, "test over")
            (mine,) = [v for v in admin.list_volunteers() if v.id == reg.volunteer_id]
        assert mine.name == "lite" and mine.hardware.ram_bytes == kit.HARDWARE.ram_bytes
        reply = client.heartbeat(
            volunteer_id=reg.volunteer_id, state="training", progress=[JobProgress(job.id)]
        )
        assert reply.stop_job_ids == [job.id]


def test_refusals_are_essaim_errors(coord, kit, monkeypatch) -> None:
    with LiteClient(coord.grpc_address) as anon:
        a, b = kit.Identity().register(anon, "a"), kit.Identity().register(anon, "b")
    with LiteClient(coord.grpc_address, token="essaim_not-a-token") as client, pytest.raises(Unauthenticated):
        client.heartbeat(volunteer_id=a.volunteer_id, state="idle")
    with LiteClient(coord.grpc_address, token=a.token) as client:
        with pytest.raises(PermissionDenied, match="does not belong"):
            client.heartbeat(volunteer_id=b.volunteer_id, state="idle")
        monkeypatch.setattr(serde, "PROTOCOL_VERSION", 99)
        with pytest.raises(FailedPrecondition, match="speaks essaim protocol 1; the client sent 99"):
            client.heartbeat(volunteer_id=a.volunteer_id, state="idle")
        monkeypatch.undo()
        client.heartbeat(volunteer_id=a.volunteer_id, state="idle")  # the connection is still good


def test_an_unreachable_coordinator_is_unavailable_with_its_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    with (
        LiteClient(address) as client,
        pytest.raises(Unavailable, match=f"cannot reach the coordinator at {address}"),
    ):
        client.heartbeat(volunteer_id="v", state="idle")
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        LiteClient("no-port-here").heartbeat(volunteer_id="v", state="idle")


def test_a_silent_server_times_out() -> None:
    """A peer that accepts the connection and never answers: the call ends at its timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
        with (
            LiteClient(address, timeout=1.0) as client,
            pytest.raises(Unavailable, match="Deadline Exceeded"),
        ):
            client.heartbeat(volunteer_id="v", state="idle")
        for conn in accepted:
            conn.close()


def test_the_same_client_reconnects_after_the_coordinator_restarts(launch_coordinator, tmp_path, kit) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ("--grpc-port", str(port), "--no-swarm")
    coord = launch_coordinator(tmp_path / "c", *args)
    with LiteClient(coord.grpc_address) as anon:
        reg = kit.Identity().register(anon, "again")
    client = LiteClient(coord.grpc_address, token=reg.token)
    client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    coord.stop()  # restarted between two calls: the next one finds the old connection closed
    coord = launch_coordinator(tmp_path / "c", *args)
    client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    coord.kill()
    with pytest.raises(Unavailable, match="cannot reach the coordinator"):
        client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    launch_coordinator(tmp_path / "c", *args)
    client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    client.close()
