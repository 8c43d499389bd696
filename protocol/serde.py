"""The only converter between protobuf messages (``essaim.v1``) and the domain types.

Every ``*_to_proto`` has a ``*_from_proto`` partner, and ``x_from_proto(x_to_proto(v)) == v`` for
every value the domain types allow (``tests/unit/protocol/test_serde.py`` checks it). The client,
the coordinator's servicer and the bench use these functions; nothing else touches ``pb2`` fields.

Enum values unknown to this version (a newer peer) decode to a clear InvalidArgument rather than
a crash; requests carry a RequestHeader built by :func:`request_header`.
"""

from __future__ import annotations

from collections.abc import Iterable

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
from essaim.protocol.version import PROTOCOL_VERSION, __version__

# ---- enums ----

_JOB_STATUS_TO_PB = {status: pb.JobStatus.Value(f"JOB_STATUS_{status.name}") for status in JobStatus}
_JOB_STATUS_FROM_PB = {v: k for k, v in _JOB_STATUS_TO_PB.items()}
_FILE_KIND_TO_PB = {kind: pb.FileKind.Value(f"FILE_KIND_{kind.name}") for kind in FileKind}
_FILE_KIND_FROM_PB = {v: k for k, v in _FILE_KIND_TO_PB.items()}


def job_status_to_proto(status: JobStatus) -> int:
    return _JOB_STATUS_TO_PB[JobStatus(status)]


def job_status_from_proto(value: int) -> JobStatus:
    try:
        return _JOB_STATUS_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"unknown job status {value}; expected one of {sorted(_JOB_STATUS_FROM_PB)}"
        ) from None


def file_kind_to_proto(kind: FileKind) -> int:
    return _FILE_KIND_TO_PB[FileKind(kind)]


def file_kind_from_proto(value: int) -> FileKind:
    try:
        return _FILE_KIND_FROM_PB[value]
    except KeyError:
        raise InvalidArgument(
            f"unknown file kind {value}; expected job_file (1), artifact (2) or provenance (3)"
        ) from None


def volunteer_status_from_proto(value: str) -> VolunteerStatus:
    try:
        return VolunteerStatus(value)
    except ValueError:
        raise InvalidArgument(f"unknown volunteer status {value!r}") from None


# ---- header ----


def request_header(client_version: str = __version__) -> pb.RequestHeader:
    """The header every request carries: this side's protocol and package versions."""
    return pb.RequestHeader(protocol_version=PROTOCOL_VERSION, client_version=client_version)


# ---- hardware, progress ----


def hardware_to_proto(hw: Hardware) -> pb.Hardware:
    return pb.Hardware(
        os=hw.os,
        arch=hw.arch,
        cpu_cores=hw.cpu_cores,
        ram_bytes=hw.ram_bytes,
        accelerator=hw.accelerator,
        gpu_name=hw.gpu_name,
        gpu_vram_bytes=hw.gpu_vram_bytes,
        gpu_count=hw.gpu_count,
    )


def hardware_from_proto(msg: pb.Hardware) -> Hardware:
    return Hardware(
        os=msg.os,
        arch=msg.arch,
        cpu_cores=msg.cpu_cores,
        ram_bytes=msg.ram_bytes,
        accelerator=msg.accelerator or "cpu",
        gpu_name=msg.gpu_name,
        gpu_vram_bytes=msg.gpu_vram_bytes,
        gpu_count=msg.gpu_count,
    )


def job_progress_to_proto(p: JobProgress) -> pb.JobProgress:
    return pb.JobProgress(
        job_id=p.job_id,
        epoch=p.epoch,
        samples=p.samples,
        compute_seconds=p.compute_seconds,
        samples_per_second=p.samples_per_second,
        loss=p.loss,
    )


def job_progress_from_proto(msg: pb.JobProgress) -> JobProgress:
    return JobProgress(
        job_id=msg.job_id,
        epoch=msg.epoch,
        samples=msg.samples,
        compute_seconds=msg.compute_seconds,
        samples_per_second=msg.samples_per_second,
        loss=msg.loss,
    )


# ---- volunteers ----


def registration_request_to_proto(r: RegistrationRequest) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        header=request_header(),
        public_key=r.public_key,
        peer_id=r.peer_id,
        name=r.name,
        hardware=hardware_to_proto(r.hardware),
        team=r.team,
        timestamp=r.timestamp,
        signature=r.signature,
        nonce=r.nonce,
    )


def registration_request_from_proto(msg: pb.RegisterRequest) -> RegistrationRequest:
    return RegistrationRequest(
        public_key=msg.public_key,
        peer_id=msg.peer_id,
        name=msg.name,
        timestamp=msg.timestamp,
        signature=msg.signature,
        hardware=hardware_from_proto(msg.hardware),
        team=msg.team,
        nonce=msg.nonce,
    )


def registration_to_proto(r: Registration) -> pb.RegisterResponse:
    return pb.RegisterResponse(
        volunteer_id=r.volunteer_id, token=r.token, heartbeat_interval_seconds=r.heartbeat_interval_seconds
    )


def registration_from_proto(msg: pb.RegisterResponse) -> Registration:
    return Registration(
        volunteer_id=msg.volunteer_id,
        token=msg.token,
        heartbeat_interval_seconds=msg.heartbeat_interval_seconds,
    )


def heartbeat_report_to_proto(r: HeartbeatReport) -> pb.HeartbeatRequest:
    msg = pb.HeartbeatRequest(
        header=request_header(),
        volunteer_id=r.volunteer_id,
        state=r.state,
        reason=r.reason,
        progress=[job_progress_to_proto(p) for p in r.progress],
        client_version=r.client_version,
    )
    if r.hardware is not None:
        msg.hardware.CopyFrom(hardware_to_proto(r.hardware))
    if r.name is not None:
        msg.profile.CopyFrom(pb.VolunteerProfile(name=r.name, team=r.team))
    return msg


def heartbeat_report_from_proto(msg: pb.HeartbeatRequest) -> HeartbeatReport:
    return HeartbeatReport(
        volunteer_id=msg.volunteer_id,
        state=msg.state,
        reason=msg.reason,
        hardware=hardware_from_proto(msg.hardware) if msg.HasField("hardware") else None,
        progress=[job_progress_from_proto(p) for p in msg.progress],
        client_version=msg.client_version,
        name=msg.profile.name if msg.HasField("profile") else None,
        team=msg.profile.team,
    )


def heartbeat_reply_to_proto(r: HeartbeatReply) -> pb.HeartbeatResponse:
    return pb.HeartbeatResponse(
        heartbeat_interval_seconds=r.heartbeat_interval_seconds, stop_job_ids=r.stop_job_ids, banned=r.banned
    )


def heartbeat_reply_from_proto(msg: pb.HeartbeatResponse) -> HeartbeatReply:
    return HeartbeatReply(
        heartbeat_interval_seconds=msg.heartbeat_interval_seconds,
        stop_job_ids=list(msg.stop_job_ids),
        banned=msg.banned,
    )


def volunteer_to_proto(v: Volunteer) -> pb.Volunteer:
    """The public view of a volunteer (the public key stays on the coordinator)."""
    return pb.Volunteer(
        id=v.id,
        name=v.name,
        peer_id=v.peer_id,
        status=str(v.status),
        state=v.state,
        reason=v.reason,
        hardware=hardware_to_proto(v.hardware),
        last_seen=v.last_seen,
        registered_at=v.registered_at,
        client_version=v.client_version,
        team=v.team,
        samples=v.samples,
        compute_seconds=v.compute_seconds,
        samples_per_second=v.samples_per_second,
        current_job_id=v.current_job_id,
    )


def volunteer_from_proto(msg: pb.Volunteer) -> Volunteer:
    return Volunteer(
        id=msg.id,
        name=msg.name,
        peer_id=msg.peer_id,
        status=volunteer_status_from_proto(msg.status),
        state=msg.state,
        reason=msg.reason,
        hardware=hardware_from_proto(msg.hardware),
        last_seen=msg.last_seen,
        registered_at=msg.registered_at,
        client_version=msg.client_version,
        team=msg.team,
        samples=msg.samples,
        compute_seconds=msg.compute_seconds,
        samples_per_second=msg.samples_per_second,
        current_job_id=msg.current_job_id,
    )


def volunteers_to_proto(vs: Iterable[Volunteer]) -> pb.ListVolunteersResponse:
    return pb.ListVolunteersResponse(volunteers=[volunteer_to_proto(v) for v in vs])


def volunteers_from_proto(msg: pb.ListVolunteersResponse) -> list[Volunteer]:
    return [volunteer_from_proto(v) for v in msg.volunteers]


# ---- jobs ----


def job_metrics_to_proto(m: JobMetrics) -> pb.JobMetrics:
    return pb.JobMetrics(
        epoch=m.epoch,
        target_epochs=m.target_epochs,
        samples=m.samples,
        samples_per_second=m.samples_per_second,
        loss=m.loss,
        eval_metric=m.eval_metric,
        eval_metric_name=m.eval_metric_name,
        live_peers=m.live_peers,
        eta_seconds=m.eta_seconds,
    )


def job_metrics_from_proto(msg: pb.JobMetrics) -> JobMetrics:
    return JobMetrics(
        epoch=msg.epoch,
        target_epochs=msg.target_epochs,
        samples=msg.samples,
        samples_per_second=msg.samples_per_second,
        loss=msg.loss if msg.HasField("loss") else None,
        eval_metric=msg.eval_metric,
        eval_metric_name=msg.eval_metric_name,
        live_peers=msg.live_peers,
        eta_seconds=msg.eta_seconds,
    )


def job_file_to_proto(f: JobFile) -> pb.JobFile:
    return pb.JobFile(path=f.path, sha256=f.sha256, size=f.size)


def job_file_from_proto(msg: pb.JobFile) -> JobFile:
    return JobFile(path=msg.path, sha256=msg.sha256, size=msg.size)


def job_to_proto(j: Job) -> pb.Job:
    return pb.Job(
        id=j.id,
        name=j.name,
        status=job_status_to_proto(j.status),
        status_reason=j.status_reason,
        owner=j.owner,
        priority=j.priority,
        recipe_yaml=j.recipe_yaml,
        created_at=j.created_at,
        updated_at=j.updated_at,
        metrics=job_metrics_to_proto(j.metrics),
        has_artifact=j.has_artifact,
        files=[job_file_to_proto(f) for f in j.files],
    )


def job_from_proto(msg: pb.Job) -> Job:
    return Job(
        id=msg.id,
        name=msg.name,
        status=job_status_from_proto(msg.status),
        recipe_yaml=msg.recipe_yaml,
        owner=msg.owner,
        priority=msg.priority,
        status_reason=msg.status_reason,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
        metrics=job_metrics_from_proto(msg.metrics),
        has_artifact=msg.has_artifact,
        files=[job_file_from_proto(f) for f in msg.files],
    )


def jobs_to_proto(jobs: Iterable[Job]) -> pb.ListJobsResponse:
    return pb.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])


def jobs_from_proto(msg: pb.ListJobsResponse) -> list[Job]:
    return [job_from_proto(j) for j in msg.jobs]


def assignment_to_proto(a: Assignment) -> pb.Assignment:
    msg = pb.Assignment(
        has_job=a.job is not None,
        initial_peers=a.initial_peers,
        swarm_token=a.swarm_token,
        swarm_token_expires_at=a.swarm_token_expires_at,
        shard_ids=a.shard_ids,
        retry_after_seconds=a.retry_after_seconds,
        coordinator_public_key=a.coordinator_public_key,
        no_job_reason=a.no_job_reason,
    )
    if a.job is not None:
        msg.job.CopyFrom(job_to_proto(a.job))
    return msg


def assignment_request_to_proto(volunteer_id: str, hardware: Hardware) -> pb.GetAssignmentRequest:
    return pb.GetAssignmentRequest(
        header=request_header(), volunteer_id=volunteer_id, hardware=hardware_to_proto(hardware)
    )


def assignment_from_proto(msg: pb.Assignment) -> Assignment:
    return Assignment(
        job=job_from_proto(msg.job) if msg.has_job else None,
        initial_peers=list(msg.initial_peers),
        swarm_token=msg.swarm_token,
        swarm_token_expires_at=msg.swarm_token_expires_at,
        shard_ids=list(msg.shard_ids),
        retry_after_seconds=msg.retry_after_seconds,
        coordinator_public_key=msg.coordinator_public_key,
        no_job_reason=msg.no_job_reason[:500],
    )


# ---- files ----


def file_chunk_to_proto(c: FileChunk, *, header: bool = False) -> pb.FileChunk:
    """A chunk; ``header=True`` adds the RequestHeader (the first chunk of an upload)."""
    msg = pb.FileChunk(path=c.path, offset=c.offset, data=c.data, size=c.size, sha256=c.sha256, last=c.last)
    if header:
        msg.header.CopyFrom(request_header())
    return msg


def file_chunk_from_proto(msg: pb.FileChunk) -> FileChunk:
    return FileChunk(
        path=msg.path, offset=msg.offset, data=msg.data, size=msg.size, sha256=msg.sha256, last=msg.last
    )


def upload_result_to_proto(sha256: str, size: int, already_present: bool) -> pb.UploadFileResponse:
    return pb.UploadFileResponse(sha256=sha256, size=size, already_present=already_present)


def upload_result_from_proto(msg: pb.UploadFileResponse) -> tuple[str, int, bool]:
    return msg.sha256, msg.size, msg.already_present
