"""A blocking client for the coordinator's gRPC API, used by the CLI and the volunteer app.

    with CoordinatorClient("127.0.0.1:50051", token=token) as client:
        job = client.submit_recipe_file(Path("recipe.yaml"))
        client.download(job.id, FileKind.ARTIFACT, Path("out"))

Every call sends ``authorization: Bearer <token>`` and a RequestHeader, has a timeout, and raises
only :mod:`essaim.protocol.errors` classes (never ``grpc.RpcError``). Idempotent calls are retried
on Unavailable through :mod:`essaim.protocol.retry`; SubmitJob, CancelJob and ApproveJob are not
(a retry could act twice). Files move in 1 MiB chunks, content-addressed by sha256; downloads are
written atomically and checked before they are renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from essaim.protocol import serde
from essaim.protocol.auth_metadata import bearer_metadata
from essaim.protocol.errors import EssaimError, InvalidArgument, Unavailable, from_grpc_status
from essaim.protocol.retry import RetryPolicy
from essaim.protocol.tls import resolve
from essaim.protocol.types import (
    FileChunk,
    FileKind,
    Job,
    JobFile,
    JobStatus,
    Volunteer,
)
from essaim.protocol.v1 import coordinator_pb2 as pb
from essaim.protocol.v1 import coordinator_pb2_grpc as pb_grpc
from essaim.protocol.volunteer_calls import VolunteerCalls

if TYPE_CHECKING:
    from essaim.protocol.recipe import Recipe

T = TypeVar("T")
Progress = Callable[[str, int, int], None]
"""``progress(label, done_bytes, total_bytes)``, called as a transfer advances."""

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def translate_rpc_error(err: grpc.RpcError, address: str) -> EssaimError:
    """The essaim error for a failed gRPC call; unreachable coordinators name their address."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else None
    return from_grpc_status(code.name, details or "", address)


CHUNK_BYTES = 1024 * 1024
MAX_PATH_CHARS = 1024  # a job file's path, as the recipe names it


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while block := f.read(CHUNK_BYTES):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest(), size


def upload_chunks(
    path: Path, sha256: str, size: int, *, progress: Progress | None = None, label: str = ""
) -> Iterator[pb.FileChunk]:
    """The UploadFile request stream: 1 MiB chunks, the header on the first, ``last`` on the final."""
    label = label or path.name
    offset = 0
    with path.open("rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            last = offset + len(data) >= size
            chunk = FileChunk(path=path.name, offset=offset, data=data, size=size, sha256=sha256, last=last)
            yield serde.file_chunk_to_proto(chunk, header=offset == 0)
            offset += len(data)
            if progress:
                progress(label, offset, size)
            if last or not data:
                return


def safe_relative_path(path: str, *, what: str = "path") -> PurePosixPath:
    """``path`` as a relative POSIX path that cannot climb out of its base; InvalidArgument otherwise."""
    rel = PurePosixPath(path.replace("\\", "/"))
    if (
        not path
        or len(path) > MAX_PATH_CHARS
        or any(ord(c) < 32 or ord(c) == 127 for c in path)  # NUL, newlines, escapes: no file is named so
        or rel.is_absolute()
        or ".." in rel.parts
        or (rel.parts and ":" in rel.parts[0])
        or not rel.parts
    ):
        raise InvalidArgument(
            f"{what} {path!r} is not a relative path inside the job; name files relative to the recipe"
        )
    return rel


def recipe_file_problems(recipe: Recipe, base_dir: Path) -> list[str]:
    """One line for each data or eval file the recipe names that is not a file under ``base_dir``
    (or names no relative path inside the job): what ``job validate`` lists and ``submit`` refuses."""
    problems = []
    for name in recipe.referenced_files():
        try:
            safe_relative_path(name, what="recipe file")
        except InvalidArgument as err:
            problems.append(str(err))
            continue
        if not (base_dir / name).is_file():
            problems.append(f"the recipe names {name!r} but {base_dir / name} is not a file; fix the path")
    return problems


def local_files_of_recipe(recipe: Recipe, base_dir: Path) -> list[tuple[str, Path]]:
    """(path as the recipe names it, local file) for every local file a recipe needs uploaded."""
    problems = recipe_file_problems(recipe, base_dir)
    if problems:
        raise InvalidArgument(problems[0])
    out: dict[str, Path] = {name: base_dir / name for name in recipe.referenced_files()}
    for value in (recipe.model.name_or_path, recipe.model.tokenizer):
        if not value or not (base_dir / value).is_dir():
            continue
        root = safe_relative_path(value, what="model directory")
        local_dir = base_dir / value
        for file in sorted(local_dir.rglob("*")):
            rel = file.relative_to(local_dir)
            if file.is_file() and not any(part.startswith(".") for part in rel.parts):
                out.setdefault(f"{root.as_posix()}/{rel.as_posix()}", file)
    return list(out.items())


def receive_files(chunks: Iterable[FileChunk], dest: Path, *, progress: Progress | None = None) -> list[Path]:
    """Write a Download stream under ``dest``: temp file, sha256 check, atomic rename, per file."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    current: _Incoming | None = None
    try:
        for chunk in chunks:
            if current is None or current.name != chunk.path:
                if current is not None:
                    raise EssaimError(f"download of {current.name} was cut short; try again")
                current = _Incoming(root, chunk)
            current.write(chunk)
            if progress:
                progress(chunk.path, current.received, chunk.size)
            if chunk.last:
                written.append(current.finish())
                current = None
        if current is not None:
            raise EssaimError(f"download of {current.name} was cut short; try again")
    finally:
        if current is not None:
            current.discard()
    return written


class _Incoming:
    """One file being received: a temp file next to its final place, hashed as it is written."""

    def __init__(self, root: Path, first: FileChunk) -> None:
        self.name = first.path
        self.target = root / safe_relative_path(first.path, what="downloaded file")
        if not self.target.resolve().is_relative_to(root):
            raise InvalidArgument(f"refusing to write {first.path!r} outside {root}")
        self.size, self.sha256 = first.size, first.sha256
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".part", dir=self.target.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.received = 0

    def write(self, chunk: FileChunk) -> None:
        if chunk.offset != self.received:
            raise EssaimError(f"download of {self.name} skipped bytes at offset {self.received}; try again")
        self.file.write(chunk.data)
        self.digest.update(chunk.data)
        self.received += len(chunk.data)

    def finish(self) -> Path:
        self.file.close()
        if self.received != self.size or self.digest.hexdigest() != self.sha256:
            self.tmp.unlink(missing_ok=True)
            raise EssaimError(
                f"downloaded {self.name} does not match its sha256 or size "
                f"({self.received} of {self.size} bytes); try again"
            )
        os.replace(self.tmp, self.target)
        return self.target

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class CoordinatorClient(VolunteerCalls):
    """Blocking client of one coordinator. ``retries`` is how many times idempotent calls are retried.
    TLS unless ``address`` is loopback or ``http://...``; ``ca_file`` pins the CA (see :mod:`.tls`)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        stream_timeout: float = 3600.0,
        ca_file: str | Path | None = None,
    ) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        self._retry = RetryPolicy(attempts=retries + 1, base=0.2, cap=5.0, retry_on=(Unavailable,))
        self.endpoint = resolve(address, ca_file=ca_file)
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
        ]
        if self.endpoint.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.endpoint.root_certificates())
            self._channel = grpc.secure_channel(self.endpoint.target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.endpoint.target, options=options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    # ---- plumbing ----

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return bearer_metadata(self.token)

    def translate(self, err: grpc.RpcError) -> EssaimError:
        return translate_rpc_error(err, self.address)

    def _unary(self, method: str, request: Any, *, idempotent: bool = True) -> Any:
        rpc = getattr(self._stub, method)

        def once() -> Any:
            try:
                return rpc(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                raise self.translate(err) from None

        return self._retry.call(once) if idempotent else once()

    def _retrying(self, fn: Callable[[], T]) -> T:
        return self._retry.call(fn)

    # ---- volunteers (register, heartbeat, get_assignment: VolunteerCalls) ----

    def _volunteer_call(self, method: str, request: Any, reply_type: type) -> Any:
        # a signed registration is accepted once: a retry of it would be refused as a replay
        return self._unary(method, request, idempotent=method != "Register")

    def list_volunteers(self, *, online_only: bool = False, limit: int = 0) -> list[Volunteer]:
        request = pb.ListVolunteersRequest(
            header=serde.request_header(), online_only=online_only, limit=limit
        )
        return serde.volunteers_from_proto(self._unary("ListVolunteers", request))

    def ban_volunteer(self, volunteer_id: str, reason: str = "", *, undo: bool = False) -> Volunteer:
        """Ban a volunteer; with ``undo``, also take each running job back to before its first round."""
        request = pb.BanVolunteerRequest(
            header=serde.request_header(), volunteer_id=volunteer_id, reason=reason, undo=undo
        )
        return serde.volunteer_from_proto(self._unary("BanVolunteer", request))

    def unban_volunteer(self, volunteer_id: str, reason: str = "") -> Volunteer:
        """Lift a volunteer's ban; its app registers again by itself."""
        request = pb.UnbanVolunteerRequest(header=serde.request_header(), volunteer_id=volunteer_id, reason=reason)
        return serde.volunteer_from_proto(self._unary("UnbanVolunteer", request, idempotent=False))

    # ---- jobs ----

    def submit_job(self, recipe_yaml: str, *, priority: int = 0, files: Iterable[JobFile] = ()) -> Job:
        """Submit recipe text whose files were uploaded already (see :meth:`submit_recipe_file`)."""
        request = pb.SubmitJobRequest(
            header=serde.request_header(),
            recipe_yaml=recipe_yaml,
            priority=priority,
            files=[serde.job_file_to_proto(f) for f in files],
        )
        return serde.job_from_proto(self._unary("SubmitJob", request, idempotent=False))

    def submit_recipe_file(self, path: Path, *, priority: int = 0, progress: Progress | None = None) -> Job:
        """Validate a recipe file here, upload every local file it references, then submit it.

        Dataset and eval files are resolved relative to the recipe file; ``model.name_or_path`` and
        ``model.tokenizer`` are uploaded too when they name an existing local directory.
        """
        from essaim.protocol.recipe import load_recipe_file  # pydantic: only when submitting

        path = Path(path)
        recipe = load_recipe_file(path)
        files = []
        for recipe_path, local in local_files_of_recipe(recipe, path.parent):
            sha256, size, _ = self.upload_file(local, progress=progress, label=recipe_path)
            files.append(JobFile(path=recipe_path, sha256=sha256, size=size))
        return self.submit_job(path.read_text(encoding="utf-8"), priority=priority, files=files)

    def list_jobs(self, statuses: Iterable[JobStatus] | None = None, limit: int = 0) -> list[Job]:
        request = pb.ListJobsRequest(
            header=serde.request_header(),
            statuses=[serde.job_status_to_proto(s) for s in statuses or ()],
            limit=limit,
        )
        return serde.jobs_from_proto(self._unary("ListJobs", request))

    def get_job(self, job_id: str) -> Job:
        request = pb.GetJobRequest(header=serde.request_header(), job_id=job_id)
        return serde.job_from_proto(self._unary("GetJob", request))

    def cancel_job(self, job_id: str, reason: str = "") -> Job:
        request = pb.CancelJobRequest(header=serde.request_header(), job_id=job_id, reason=reason)
        return serde.job_from_proto(self._unary("CancelJob", request, idempotent=False))

    def approve_job(self, job_id: str, *, reject: bool = False, reason: str = "") -> Job:
        request = pb.ApproveJobRequest(
            header=serde.request_header(), job_id=job_id, reject=reject, reason=reason
        )
        return serde.job_from_proto(self._unary("ApproveJob", request, idempotent=False))

    def set_job_priority(self, job_id: str, priority: int) -> Job:
        request = pb.SetJobPriorityRequest(header=serde.request_header(), job_id=job_id, priority=priority)
        return serde.job_from_proto(self._unary("SetJobPriority", request))

    # ---- files ----

    def upload_file(
        self, path: Path, *, progress: Progress | None = None, label: str | None = None
    ) -> tuple[str, int, bool]:
        """Upload one file (content-addressed); returns (sha256, size, already_present)."""
        path = Path(path)
        sha256, size = hash_file(path)

        def once() -> tuple[str, int, bool]:
            chunks = upload_chunks(path, sha256, size, progress=progress, label=label or path.name)
            try:
                reply = self._stub.UploadFile(chunks, timeout=self.stream_timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                raise self.translate(err) from None
            return serde.upload_result_from_proto(reply)

        return self._retrying(once)

    def download_job_file(self, job_id: str, path: str, part: Path, *, size: int,
                          progress: Progress | None = None) -> Path:
        """Download the job file ``path`` into ``part``, resuming from the bytes ``part`` already holds
        (a download cut short, by this process or an earlier one, goes on where it stopped; each retry
        too). The caller checks the sha256 of the result (:class:`essaim.swarm.cache.ContentCache`)."""

        def once() -> Path:
            have = part.stat().st_size if part.exists() else 0
            if have > size:  # not this file's beginning: start over
                part.unlink()
                have = 0
            request = pb.DownloadRequest(header=serde.request_header(), job_id=job_id,
                                         kind=serde.file_kind_to_proto(FileKind.JOB_FILE), path=path, offset=have)
            try:
                stream = self._stub.Download(request, timeout=self.stream_timeout, metadata=self.metadata)
                with part.open("ab") as out:
                    for msg in stream:
                        chunk = serde.file_chunk_from_proto(msg)
                        if chunk.path != path or chunk.offset != have:
                            raise EssaimError(f"download of {path} went wrong at byte {have}; try again")
                        out.write(chunk.data)
                        have += len(chunk.data)
                        if progress:
                            progress(path, have, chunk.size)
                        if chunk.last:
                            return part
            except grpc.RpcError as err:
                raise self.translate(err) from None
            raise Unavailable(f"download of {path} was cut short at byte {have}; it resumes from there")

        return self._retrying(once)

    def download(
        self, job_id: str, kind: FileKind, dest: Path, *, path: str = "", progress: Progress | None = None
    ) -> list[Path]:
        """Download a job's files, its artifact or its provenance under ``dest``; returns the files.

        Each file is written to a temporary name, its sha256 checked, then renamed into place; a
        path that would land outside ``dest`` is refused.
        """
        request = pb.DownloadRequest(
            header=serde.request_header(), job_id=job_id, kind=serde.file_kind_to_proto(kind), path=path
        )

        def once() -> list[Path]:
            try:
                stream = self._stub.Download(request, timeout=self.stream_timeout, metadata=self.metadata)
                return receive_files(
                    (serde.file_chunk_from_proto(c) for c in stream), Path(dest), progress=progress
                )
            except grpc.RpcError as err:
                raise self.translate(err) from None

        return self._retrying(once)
