"""Bad bytes, big messages and foreign protocol versions get clear errors; the server keeps serving."""

from __future__ import annotations

import grpc
import pytest
from essaim.protocol import serde
from essaim.protocol.v1 import coordinator_pb2 as pb
from essaim.protocol.v1 import coordinator_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def channel(shared_coordinator):
    with grpc.insecure_channel(
        shared_coordinator.grpc_address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as ch:
        yield ch


def _auth(coord) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {coord.admin_token}")]


def _still_serving(coord) -> None:
    with coord.client(coord.admin_token) as client:
        assert isinstance(client.list_jobs(), list)


@pytest.mark.parametrize("version", [None, 0, 2, 99])
def test_protocol_version_mismatch_is_failed_precondition(shared_coordinator, channel, version) -> None:
    request = pb.ListJobsRequest()
    if version is not None:
        request.header.protocol_version = version
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.CoordinatorStub(channel).ListJobs(request, timeout=10, metadata=_auth(shared_coordinator))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    sent = "none" if version is None else str(version)
    assert info.value.details() == (
        f"this coordinator speaks essaim protocol 1; the client sent {sent}: upgrade essaim on the older side"
    )
    _still_serving(shared_coordinator)


@pytest.mark.parametrize("method", ["Heartbeat", "SubmitJob", "Register"])
def test_garbage_bytes_are_invalid_argument(shared_coordinator, channel, method) -> None:
    raw = channel.unary_unary(
        f"/essaim.v1.Coordinator/{method}", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff\xff garbage \x00\x01", timeout=10, metadata=_auth(shared_coordinator))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid essaim.v1." in info.value.details()
    _still_serving(shared_coordinator)


def test_garbage_upload_stream_is_invalid_argument(shared_coordinator, channel) -> None:
    raw = channel.stream_unary(
        "/essaim.v1.Coordinator/UploadFile", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        raw(iter([b"\xff\xff\xff"]), timeout=10, metadata=_auth(shared_coordinator))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _still_serving(shared_coordinator)


def test_oversized_message_is_resource_exhausted(shared_coordinator, channel) -> None:
    request = pb.SubmitJobRequest(header=serde.request_header(), recipe_yaml="x" * (5 * 1024 * 1024))
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.CoordinatorStub(channel).SubmitJob(request, timeout=20, metadata=_auth(shared_coordinator))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    _still_serving(shared_coordinator)


def test_unknown_enum_is_invalid_argument(shared_coordinator, channel) -> None:
    request = pb.DownloadRequest(header=serde.request_header(), job_id="x", kind=42)
    with pytest.raises(grpc.RpcError) as info:
        list(
            pb_grpc.CoordinatorStub(channel).Download(request, timeout=10, metadata=_auth(shared_coordinator))
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown file kind 42" in info.value.details()
    _still_serving(shared_coordinator)
