"""Files on the coordinator's disk: uploaded blobs (content-addressed) and job artifacts.

    data_dir/blobs/<sha256>            every file researchers uploaded (datasets, model files)
    data_dir/blobs/tmp/                uploads in progress (a crash leaves only junk here)
    data_dir/artifacts/<job_id>/...    a job's trained result; provenance.json beside it

An upload is written to a temp file, hashed as it arrives, checked against the sha256 and size
the client declared, then renamed into place: a blob file is always complete. Used by the
servicer's UploadFile and Download.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from essaim.coordinator.errors import InvalidArgument, NotFound, ResourceExhausted
from essaim.protocol.types import FileChunk

CHUNK_BYTES = 1024 * 1024
PROVENANCE_FILE = "provenance.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise InvalidArgument(f"{sha256!r} is not a sha256 digest: expected 64 lowercase hex characters")
    return sha256


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class BlobWriter:
    """One upload in progress; ``finish`` verifies and publishes it, ``abort`` drops it."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=blobs.tmp_dir)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._blobs.max_bytes:
            raise ResourceExhausted(
                f"the upload is larger than the coordinator accepts ({self._blobs.max_bytes} bytes); "
                "ask its admin to raise max_upload_bytes or use a dataset hub name"
            )
        self._file.write(data)
        self._digest.update(data)

    def finish(self, expected_sha256: str, expected_size: int) -> tuple[str, int]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        sha256 = self._digest.hexdigest()
        if sha256 != expected_sha256 or self.size != expected_size:
            self.abort()
            raise InvalidArgument(
                f"the uploaded file does not match what the client declared (sha256 {sha256[:12]}..., "
                f"{self.size} bytes; declared {expected_sha256[:12]}..., {expected_size} bytes); upload it again"
            )
        os.replace(self._tmp, self._blobs.path(sha256))
        return sha256, self.size

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class BlobStore:
    """The blob and artifact directories of one coordinator."""

    def __init__(self, blobs_dir: Path, artifacts_dir: Path, *, max_bytes: int) -> None:
        self.root = blobs_dir
        self.tmp_dir = blobs_dir / "tmp"
        self.artifacts_dir = artifacts_dir
        self.max_bytes = max_bytes
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        artifacts_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.glob("upload-*.part"):
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def artifact_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
            raise InvalidArgument(f"{job_id!r} is not a job id")
        return self.artifacts_dir / job_id

    def artifact_files(self, job_id: str) -> list[tuple[str, Path]]:
        """(relative path, file) of every file of a job's artifact, provenance included."""
        root = self.artifact_dir(job_id)
        if not root.is_dir():
            raise NotFound(f"job {job_id} has no artifact yet; wait for it to complete")
        files = [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]
        return [(rel, p) for rel, p in files if not p.is_symlink()]

    def provenance_file(self, job_id: str) -> Path:
        path = self.artifact_dir(job_id) / PROVENANCE_FILE
        if not path.is_file():
            raise NotFound(f"job {job_id} has no provenance report yet; it is written when the job completes")
        return path


def file_chunks(path: Path, name: str, *, sha256: str | None = None, start: int = 0) -> Iterator[FileChunk]:
    """A file as Download chunks of 1 MiB from byte ``start`` on (one empty chunk for an empty file,
    or from its end)."""
    size = path.stat().st_size
    if not 0 <= start <= size:
        raise InvalidArgument(f"{name} has {size} bytes: cannot resume it at byte {start}; download it whole")
    sha256 = sha256 or hash_file(path)
    offset = start
    with path.open("rb") as f:
        f.seek(start)
        while True:
            data = f.read(CHUNK_BYTES)
            last = offset + len(data) >= size
            yield FileChunk(path=name, offset=offset, data=data, size=size, sha256=sha256, last=last)
            offset += len(data)
            if last or not data:
                return
