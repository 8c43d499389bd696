"""The gRPC face of the coordinator: decode, authenticate, call the service, encode. Nothing else.

Every call goes through the same steps: a request that is not a valid protobuf message gets
INVALID_ARGUMENT; a missing or foreign protocol version gets FAILED_PRECONDITION; the bearer token
is resolved (:mod:`essaim.coordinator.auth`) and checked against the RPC; the service runs (in a
worker thread when it touches the store). Each domain error carries its own gRPC status code
(``grpc_code_name``, :mod:`essaim.protocol.errors`); any other exception is logged with its
traceback and answered INTERNAL with an id to find it in the log, never with its details. Built by :func:`build_handler` for the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from essaim.coordinator.auth import Principal, check_access
from essaim.coordinator.blobs import check_sha256, file_chunks
from essaim.coordinator.errors import (
    EssaimError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from essaim.coordinator.http import Metrics
from essaim.coordinator.service import CoordinatorService
from essaim.coordinator.signup import RateLimiter, source_of
from essaim.protocol import serde
from essaim.protocol.auth_metadata import token_from_metadata
from essaim.protocol.types import FileKind, Role
from essaim.protocol.v1 import coordinator_pb2 as pb
from essaim.protocol.version import PROTOCOL_VERSION

logger = logging.getLogger(__name__)

def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and public message for an exception raised while serving: an essaim
    error's own ``grpc_code_name``; anything else is INTERNAL, logged with an id to find it."""
    if isinstance(exc, EssaimError):
        return getattr(grpc.StatusCode, exc.grpc_code_name, grpc.StatusCode.UNKNOWN), exc.message
    error_id = uuid.uuid4().hex[:12]
    logger.error("internal error id=%s", error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (see the coordinator log, id={error_id})"


def _from_the_store(exc: BaseException) -> bool:
    """A database failure, raw or as the store's Unavailable (raised ``from`` the SQLAlchemy error)."""
    return any(
        e is not None and type(e).__module__.startswith("sqlalchemy") for e in (exc, exc.__cause__)
    )


class BadMessage:
    """Stands for a request whose bytes did not parse, so the servicer can answer it clearly."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error

    def raise_(self) -> None:
        raise InvalidArgument(
            f"the request is not a valid {self.type_name} message ({self.error}); "
            "is the client speaking the essaim protocol?"
        )


def _safe_deserializer(cls: Any) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:
            return BadMessage(cls.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)

    return deserialize


def check_header(request: Any) -> str:
    """FAILED_PRECONDITION unless the request speaks our protocol version; returns client_version."""
    if isinstance(request, BadMessage):
        request.raise_()
    sent = request.header.protocol_version if request.HasField("header") else None
    if sent != PROTOCOL_VERSION:
        raise FailedPrecondition(
            f"this coordinator speaks essaim protocol {PROTOCOL_VERSION}; the client sent "
            f"{sent if sent is not None else 'none'}: upgrade essaim on the older side"
        )
    return request.header.client_version


CHALLENGES_PER_SIGNUP = 4
"""Registration challenges without a token, per address and in all, per registration allowed."""


class CoordinatorServicer:
    """Implements essaim.v1.Coordinator over a CoordinatorService."""

    def __init__(self, service: CoordinatorService, *, metrics: Metrics | None = None) -> None:
        self.service = service
        self.metrics = metrics or Metrics()
        self.open_registration = service.settings.open_registration
        self.signups = RateLimiter(per_source=service.settings.signups_per_minute_per_source,
                                   total=service.settings.signups_per_minute)
        # a challenge costs an HMAC, a registration a signature check and a write: a client may ask
        # for a few challenges per registration (one expired, a retry), a flood is cut at that rate
        self.challenges = RateLimiter(per_source=CHALLENGES_PER_SIGNUP * service.settings.signups_per_minute_per_source,
                                      total=CHALLENGES_PER_SIGNUP * service.settings.signups_per_minute)

    async def _principal(self, rpc: str, context: grpc.aio.ServicerContext) -> Principal | None:
        token = token_from_metadata(context.invocation_metadata())
        auth = self.service.auth
        principal = auth.cached(token)
        if principal is None and token:
            principal = await asyncio.to_thread(auth.authenticate, token)
        check_access(rpc, principal, open_registration=self.open_registration)
        return principal

    async def _fail(self, rpc: str, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        code, message = status_for(exc)
        if _from_the_store(exc):
            self.metrics.store_error(exc)
        self.metrics.rpc_error(rpc, code.name)
        await context.abort(code, message)

    async def _unary(
        self,
        rpc: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Any, Principal | None, str], Awaitable[Any]],
    ) -> Any:
        try:
            client_version = check_header(request)
            principal = await self._principal(rpc, context)
            return await handler(request, principal, client_version)
        except Exception as exc:
            await self._fail(rpc, context, exc)

    @staticmethod
    async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # ---- volunteers ----

    async def RegistrationChallenge(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def handle(_: Any, who: Principal | None, ___: str) -> Any:
            if who is None and (wait := self.challenges.check(source_of(context.peer()))):
                raise ResourceExhausted(f"too many registration challenges from this address or in all: try again "
                                        f"in {max(1.0, wait):.0f} s")
            nonce, expires_at = self.service.registration_challenge()
            return pb.RegistrationChallengeResponse(nonce=nonce, expires_at=expires_at)

        return await self._unary("RegistrationChallenge", request, context, handle)

    async def Register(self, request: Any, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        async def handle(req: pb.RegisterRequest, who: Principal | None, version: str) -> pb.RegisterResponse:
            if who is None and (wait := self.signups.check(source_of(context.peer()))):
                raise ResourceExhausted(
                    f"too many registrations from this address or in all: try again in {max(1.0, wait):.0f} s")
            reg = serde.registration_request_from_proto(req)
            result = await self._run(self.service.register, reg, who, client_version=version)
            return serde.registration_to_proto(result)

        return await self._unary("Register", request, context, handle)

    async def Heartbeat(self, request: Any, context: grpc.aio.ServicerContext) -> pb.HeartbeatResponse:
        # the hot path (every volunteer, every interval): no closures, no thread hop when the token is cached
        start = time.perf_counter()
        try:
            check_header(request)
            principal = self.service.auth.cached(token_from_metadata(context.invocation_metadata()))
            if principal is None:
                principal = await self._principal("Heartbeat", context)
            elif principal.role is not Role.VOLUNTEER:
                check_access("Heartbeat", principal, open_registration=self.open_registration)
            reply = self.service.heartbeat(serde.heartbeat_report_from_proto(request), principal)
            return serde.heartbeat_reply_to_proto(reply)
        except Exception as exc:
            await self._fail("Heartbeat", context, exc)
        finally:
            self.metrics.heartbeat_latency.observe(time.perf_counter() - start)

    async def GetAssignment(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Assignment:
        async def handle(req: pb.GetAssignmentRequest, who: Principal | None, _: str) -> pb.Assignment:
            hardware = serde.hardware_from_proto(req.hardware)
            assignment = await self._run(self.service.get_assignment, req.volunteer_id, hardware, who)
            return serde.assignment_to_proto(assignment)

        return await self._unary("GetAssignment", request, context, handle)

    async def ListVolunteers(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> pb.ListVolunteersResponse:
        async def handle(
            req: pb.ListVolunteersRequest, _: Principal | None, __: str
        ) -> pb.ListVolunteersResponse:
            found = await self._run(
                self.service.list_volunteers, online_only=req.online_only, limit=req.limit
            )
            return serde.volunteers_to_proto(found)

        return await self._unary("ListVolunteers", request, context, handle)

    async def BanVolunteer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Volunteer:
        async def handle(req: pb.BanVolunteerRequest, _: Principal | None, __: str) -> pb.Volunteer:
            return serde.volunteer_to_proto(
                await self._run(self.service.ban_volunteer, req.volunteer_id, req.reason, undo=req.undo)
            )

        return await self._unary("BanVolunteer", request, context, handle)

    async def UnbanVolunteer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Volunteer:
        async def handle(req: pb.UnbanVolunteerRequest, _: Principal | None, __: str) -> pb.Volunteer:
            return serde.volunteer_to_proto(await self._run(self.service.unban_volunteer, req.volunteer_id, req.reason))

        return await self._unary("UnbanVolunteer", request, context, handle)

    async def EraseVolunteer(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Volunteer:
        async def handle(req: pb.EraseVolunteerRequest, who: Principal | None, __: str) -> pb.Volunteer:
            return serde.volunteer_to_proto(await self._run(self.service.erase_volunteer, req.volunteer_id, who))

        return await self._unary("EraseVolunteer", request, context, handle)

    # ---- jobs ----

    async def SubmitJob(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Job:
        async def handle(req: pb.SubmitJobRequest, who: Principal | None, _: str) -> pb.Job:
            files = [serde.job_file_from_proto(f) for f in req.files]
            job = await self._run(
                self.service.submit_job, req.recipe_yaml, priority=req.priority, files=files, principal=who
            )
            return serde.job_to_proto(job)

        return await self._unary("SubmitJob", request, context, handle)

    async def ListJobs(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        async def handle(req: pb.ListJobsRequest, _: Principal | None, __: str) -> pb.ListJobsResponse:
            statuses = [serde.job_status_from_proto(s) for s in req.statuses]
            return serde.jobs_to_proto(await self._run(self.service.list_jobs, statuses, req.limit))

        return await self._unary("ListJobs", request, context, handle)

    async def GetJob(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Job:
        async def handle(req: pb.GetJobRequest, _: Principal | None, __: str) -> pb.Job:
            return serde.job_to_proto(await self._run(self.service.get_job, req.job_id))

        return await self._unary("GetJob", request, context, handle)

    async def CancelJob(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Job:
        async def handle(req: pb.CancelJobRequest, who: Principal | None, _: str) -> pb.Job:
            return serde.job_to_proto(await self._run(self.service.cancel_job, req.job_id, req.reason, who))

        return await self._unary("CancelJob", request, context, handle)

    async def ApproveJob(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Job:
        async def handle(req: pb.ApproveJobRequest, _: Principal | None, __: str) -> pb.Job:
            job = await self._run(self.service.approve_job, req.job_id, reject=req.reject, reason=req.reason)
            return serde.job_to_proto(job)

        return await self._unary("ApproveJob", request, context, handle)

    async def SetJobPriority(self, request: Any, context: grpc.aio.ServicerContext) -> pb.Job:
        async def handle(req: pb.SetJobPriorityRequest, _: Principal | None, __: str) -> pb.Job:
            return serde.job_to_proto(
                await self._run(self.service.set_job_priority, req.job_id, req.priority)
            )

        return await self._unary("SetJobPriority", request, context, handle)

    # ---- files ----

    async def UploadFile(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> pb.UploadFileResponse:
        writer = None
        try:
            first = await anext(request_iterator, None)
            if first is None:
                raise InvalidArgument("the upload carried no chunk; send at least one FileChunk")
            check_header(first)
            who = await self._principal("UploadFile", context)
            sha256, size = check_sha256(first.sha256), first.size
            blobs = self.service.blobs
            if size > blobs.max_bytes:
                raise ResourceExhausted(
                    f"{first.path or 'the file'} has {size} bytes, more than the coordinator accepts "
                    f"({blobs.max_bytes}); ask its admin to raise max_upload_bytes"
                )
            if blobs.has(sha256) and await self._run(self.service.store.has_blob, sha256):
                return serde.upload_result_to_proto(sha256, size, True)
            await self._run(self.service.check_upload_quota, who, size)
            writer = await self._run(blobs.writer)
            chunk, done = first, False
            while chunk is not None:
                if isinstance(chunk, BadMessage):
                    chunk.raise_()
                if chunk.sha256 != sha256 or chunk.offset != writer.size:
                    raise InvalidArgument(
                        "upload chunks must share one sha256 and arrive in order; upload again"
                    )
                if writer.size + len(chunk.data) > size:  # refused as it streams, not once it is on disk
                    raise InvalidArgument(f"the upload sent more than the {size} bytes it declared; upload again")
                await self._run(writer.write, chunk.data)
                if chunk.last:
                    done = True
                    break
                chunk = await anext(request_iterator, None)
            if not done:
                raise InvalidArgument("the upload ended before its last chunk; upload again")
            await self._run(writer.finish, sha256, size)
            writer = None
            known = await self._run(self.service.record_upload, sha256, size, who.subject if who else None)
            return serde.upload_result_to_proto(sha256, size, known)
        except Exception as exc:
            if writer is not None:
                writer.abort()
            await self._fail("UploadFile", context, exc)

    async def Download(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FileChunk]:
        try:
            check_header(request)
            who = await self._principal("Download", context)
            kind = serde.file_kind_from_proto(request.kind)
            sources = await self._run(self.service.download_sources, request.job_id, kind, request.path, who)
            # a resumed download: one job file, from the byte the caller has
            start = int(request.offset) if kind == FileKind.JOB_FILE and request.path else 0
            for name, path, sha256 in sources:
                if not path.is_file():
                    raise NotFound(f"{name} of job {request.job_id} is missing from the coordinator's disk")
                chunks = file_chunks(path, name, sha256=sha256, start=start)
                while (chunk := await self._run(next, chunks, None)) is not None:
                    yield serde.file_chunk_to_proto(chunk)
        except Exception as exc:
            await self._fail("Download", context, exc)


def build_handler(servicer: CoordinatorServicer) -> grpc.GenericRpcHandler:
    """A generic handler for every method of essaim.v1.Coordinator, with forgiving deserializers."""
    service = pb.DESCRIPTOR.services_by_name["Coordinator"]
    handlers = {}
    for method in service.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        options = {
            "request_deserializer": _safe_deserializer(request_cls),
            "response_serializer": response_cls.SerializeToString,
        }
        fn = getattr(servicer, method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(fn, **options)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(fn, **options)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(fn, **options)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
