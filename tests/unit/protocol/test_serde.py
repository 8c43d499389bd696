"""Round trips through essaim.protocol.serde: domain -> protobuf -> bytes -> protobuf -> domain."""

from __future__ import annotations

import pytest
from essaim.protocol import serde
from essaim.protocol.errors import InvalidArgument
from essaim.protocol.types import (
    Assignment,
    FileChunk,
    FileKind,
    Hardware,
    HeartbeatReply,
    HeartbeatReport,
    Job,
    JobFile,
    JobMetrics,
    JobProgress,
    JobStatus,
    Registration,
    RegistrationRequest,
    Volunteer,
    VolunteerStatus,
)
from essaim.protocol.v1 import coordinator_pb2 as pb
from essaim.protocol.version import PROTOCOL_VERSION
from hypothesis import given, settings
from hypothesis import strategies as st

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
floats = st.floats(allow_nan=False)
text = st.text(max_size=20)

hardware = st.builds(
    Hardware,
    os=text,
    arch=text,
    cpu_cores=u32,
    ram_bytes=u64,
    accelerator=st.sampled_from(["cpu", "cuda", "mps", "rocm"]),
    gpu_name=text,
    gpu_vram_bytes=u64,
    gpu_count=u32,
)
progress = st.builds(
    JobProgress,
    job_id=text,
    epoch=u32,
    samples=u64,
    compute_seconds=floats,
    samples_per_second=floats,
    loss=floats,
)
metrics = st.builds(
    JobMetrics,
    epoch=u32,
    target_epochs=u32,
    samples=u64,
    samples_per_second=floats,
    loss=floats,
    eval_metric=floats,
    eval_metric_name=text,
    live_peers=u32,
    eta_seconds=floats,
)
job_file = st.builds(JobFile, path=text, sha256=text, size=u64)
job = st.builds(
    Job,
    id=text,
    name=text,
    status=st.sampled_from(list(JobStatus)),
    recipe_yaml=text,
    owner=text,
    priority=i32,
    status_reason=text,
    created_at=floats,
    updated_at=floats,
    metrics=metrics,
    has_artifact=st.booleans(),
    files=st.lists(job_file, max_size=3),
)
volunteer = st.builds(
    Volunteer,
    id=text,
    name=text,
    peer_id=text,
    public_key=st.just(b""),  # never leaves the coordinator
    status=st.sampled_from(list(VolunteerStatus)),
    state=text,
    reason=text,
    hardware=hardware,
    last_seen=floats,
    registered_at=floats,
    client_version=text,
    team=text,
    samples=u64,
    compute_seconds=floats,
    samples_per_second=floats,
    current_job_id=text,
)
assignment = st.builds(
    Assignment,
    job=st.none() | job,
    initial_peers=st.lists(text, max_size=3),
    swarm_token=text,
    swarm_token_expires_at=floats,
    shard_ids=st.lists(u32, max_size=5),
    retry_after_seconds=u32,
    coordinator_public_key=st.binary(max_size=40),
)


def _wire(msg):
    """Serialize and parse again, as the network would."""
    return type(msg).FromString(msg.SerializeToString())


@settings(max_examples=60, deadline=None)
@given(job)
def test_job_round_trip(value: Job) -> None:
    assert serde.job_from_proto(_wire(serde.job_to_proto(value))) == value


@settings(max_examples=60, deadline=None)
@given(volunteer)
def test_volunteer_round_trip(value: Volunteer) -> None:
    assert serde.volunteer_from_proto(_wire(serde.volunteer_to_proto(value))) == value


@settings(max_examples=60, deadline=None)
@given(assignment)
def test_assignment_round_trip(value: Assignment) -> None:
    back = serde.assignment_from_proto(_wire(serde.assignment_to_proto(value)))
    assert back == value
    assert back.has_job == (value.job is not None)


@settings(max_examples=60, deadline=None)
@given(
    st.builds(
        HeartbeatReport,
        volunteer_id=text,
        state=text,
        reason=text,
        hardware=st.none() | hardware,
        progress=st.lists(progress, max_size=3),
        client_version=text,
    )
)
def test_heartbeat_report_round_trip(value: HeartbeatReport) -> None:
    msg = _wire(serde.heartbeat_report_to_proto(value))
    assert msg.header.protocol_version == PROTOCOL_VERSION
    assert serde.heartbeat_report_from_proto(msg) == value


@settings(max_examples=40, deadline=None)
@given(
    st.builds(
        RegistrationRequest,
        public_key=st.binary(max_size=64),
        peer_id=text,
        name=text,
        timestamp=floats,
        signature=st.binary(max_size=64),
        hardware=hardware,
        team=text,
    ),
    st.builds(Registration, volunteer_id=text, token=text, heartbeat_interval_seconds=u32),
    st.builds(
        HeartbeatReply,
        heartbeat_interval_seconds=u32,
        stop_job_ids=st.lists(text, max_size=3),
        banned=st.booleans(),
    ),
)
def test_volunteer_messages_round_trip(
    req: RegistrationRequest, reg: Registration, reply: HeartbeatReply
) -> None:
    assert serde.registration_request_from_proto(_wire(serde.registration_request_to_proto(req))) == req
    assert serde.registration_from_proto(_wire(serde.registration_to_proto(reg))) == reg
    assert serde.heartbeat_reply_from_proto(_wire(serde.heartbeat_reply_to_proto(reply))) == reply


@settings(max_examples=40, deadline=None)
@given(
    st.builds(
        FileChunk,
        path=text,
        offset=u64,
        data=st.binary(max_size=64),
        size=u64,
        sha256=text,
        last=st.booleans(),
    )
)
def test_file_chunk_round_trip(value: FileChunk) -> None:
    msg = _wire(serde.file_chunk_to_proto(value, header=True))
    assert msg.header.protocol_version == PROTOCOL_VERSION
    assert serde.file_chunk_from_proto(msg) == value


def test_lists_and_enums_round_trip() -> None:
    jobs = [Job(id="a", name="a", status=JobStatus.QUEUED, recipe_yaml="x")]
    assert serde.jobs_from_proto(_wire(serde.jobs_to_proto(jobs))) == jobs
    vols = [Volunteer(id="v", name="n", peer_id="p")]
    assert serde.volunteers_from_proto(_wire(serde.volunteers_to_proto(vols))) == vols
    for status in JobStatus:
        assert serde.job_status_from_proto(serde.job_status_to_proto(status)) is status
    for kind in FileKind:
        assert serde.file_kind_from_proto(serde.file_kind_to_proto(kind)) is kind
    assert serde.upload_result_from_proto(_wire(serde.upload_result_to_proto("ab", 3, True))) == (
        "ab",
        3,
        True,
    )


def test_unknown_enum_values_are_clear_errors() -> None:
    with pytest.raises(InvalidArgument, match="unknown job status 99"):
        serde.job_status_from_proto(99)
    with pytest.raises(InvalidArgument, match="unknown file kind"):
        serde.file_kind_from_proto(0)
    with pytest.raises(InvalidArgument, match="unknown volunteer status"):
        serde.volunteer_from_proto(pb.Volunteer(status="sleepy"))


def test_hardware_absent_from_heartbeat_means_unchanged() -> None:
    msg = serde.heartbeat_report_to_proto(HeartbeatReport(volunteer_id="v"))
    assert not msg.HasField("hardware")
    assert serde.heartbeat_report_from_proto(msg).hardware is None
