"""A content-addressed file cache: a job's files stored by sha256, checked before anyone uses them.

    cache = ContentCache(data_dir / "cache")
    local = cache.fetch_all(job.files, fetcher)     # recipe path -> verified cached path

``fetcher(path, dest)`` completes ``dest`` with the bytes of the job file ``path`` (as the recipe
names it), e.g. through the coordinator client's resumable download: ``dest`` may already hold the
start of the file, from a download cut short (a fetcher may also overwrite it). A download whose sha256 does not match is
deleted and fetched again, never returned; after ``attempts`` bad downloads IntegrityError is raised.
Files live at ``root/ab/abcdef...`` and are only ever renamed into place once verified, so a crash
leaves no half-written file where a good one is expected.

Used by the volunteer's trainer (model and data files of a job), the coordinator's checkpoint
keeper, and the CLI (:func:`collect_job_files` hashes a recipe's local files before submitting).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from essaim.protocol.recipe import Recipe
from essaim.protocol.types import JobFile
from essaim.swarm.errors import IntegrityError, SwarmError

logger = logging.getLogger(__name__)

Fetcher = Callable[[str, Path], None]
PARTIAL_MAX_AGE_S = 7 * 86400.0  # a download cut short and not resumed for this long is removed by trim
_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(sha256: str) -> str:
    sha = sha256.lower()
    if len(sha) != 64 or not set(sha) <= _HEX:
        raise IntegrityError(f"{sha256!r} is not a sha256 hex digest (64 hex characters)")
    return sha


class ContentCache:
    """Files keyed by their sha256 under ``root``; safe to share between processes of one user."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._verified: dict[str, tuple[int, int]] = {}  # sha -> (size, mtime_ns) hashed in this process

    def path_for(self, sha256: str) -> Path:
        sha = _check_digest(sha256)
        return self.root / sha[:2] / sha

    def get(self, sha256: str) -> Path | None:
        """The cached file, when present and its content still matches; a corrupt one is removed."""
        path = self.path_for(sha256)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        sha = sha256.lower()
        if self._verified.get(sha) == (stat.st_size, stat.st_mtime_ns):
            return path
        if sha256_file(path) != sha:
            logger.warning("cached file %s is corrupt; removing it", path)
            path.unlink(missing_ok=True)
            self._verified.pop(sha, None)
            return None
        self._verified[sha] = (stat.st_size, stat.st_mtime_ns)
        return path

    def trim(self, max_bytes: int, *, keep: Iterable[str] = ()) -> int:
        """Remove the oldest files (by when they were stored) until the cache holds at most
        ``max_bytes``, never one of ``keep`` (sha256s: the files of the job about to run); returns
        the bytes removed. Partial downloads untouched for ``PARTIAL_MAX_AGE_S`` go too. Run it
        while no trainer reads the cache."""
        kept = {k.lower() for k in keep}
        stale = time.time() - PARTIAL_MAX_AGE_S
        for part in self._tmp.glob("*.part"):  # downloads cut short and never resumed
            with contextlib.suppress(FileNotFoundError):
                if part.name.split(".", 1)[0] not in kept and part.stat().st_mtime < stale:
                    part.unlink()
        files = []
        for sub in self.root.iterdir() if self.root.exists() else ():
            if sub.is_dir() and len(sub.name) == 2 and set(sub.name) <= _HEX:
                for path in sub.iterdir():
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    files.append((stat.st_mtime_ns, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        freed = 0
        for _, size, path in sorted(files):
            if total - freed <= max_bytes:
                break
            if path.name in kept:
                continue
            path.unlink(missing_ok=True)
            self._verified.pop(path.name, None)
            freed += size
        if freed:
            logger.info("removed %.0f MB of job files from the cache %s (kept %.0f MB, at most %.0f MB)",
                        freed / 2**20, self.root, (total - freed) / 2**20, max_bytes / 2**20)
        return freed

    @contextlib.contextmanager
    def _partial(self, sha: str) -> Iterator[tuple[Path, bool]]:
        """Where a download of ``sha`` goes: ``tmp/<sha>.part``, kept when the download is cut short
        so the next one resumes it, while this process holds its lock; a private temporary file
        (not resumable) when another process is downloading the same file, or where files cannot
        be locked."""
        lock = None
        try:
            import fcntl

            lock = open(self._tmp / f"{sha}.lock", "a")  # noqa: SIM115 - held until the download ends
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (ImportError, OSError):
            if lock is not None:
                lock.close()
            lock = None
        try:
            yield (self._tmp / f"{sha}.part", True) if lock is not None else (self._temp_path(sha), False)
        finally:
            if lock is not None:
                Path(lock.name).unlink(missing_ok=True)  # the next download makes it again
                lock.close()

    def _temp_path(self, sha: str) -> Path:
        return self._tmp / f"{sha[:16]}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part"

    def _commit(self, tmp: Path, sha: str) -> Path:
        """Verify ``tmp`` (inside the cache) and rename it into place; on mismatch delete it and raise."""
        actual = sha256_file(tmp)
        if actual != sha:
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"content has sha256 {actual}, expected {sha}")
        final = self.path_for(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        stat = final.stat()
        self._verified[sha] = (stat.st_size, stat.st_mtime_ns)
        return final

    def put_file(self, src: Path, sha256: str) -> Path:
        """Copy ``src`` into the cache under ``sha256``; IntegrityError (and nothing stored) on mismatch."""
        sha = _check_digest(sha256)
        existing = self.get(sha)
        if existing is not None:
            return existing
        tmp = self._temp_path(sha)
        try:
            shutil.copyfile(src, tmp)
            return self._commit(tmp, sha)
        except IntegrityError as exc:
            raise IntegrityError(f"{src}: {exc}; the file is not the one the job announced") from None
        finally:
            tmp.unlink(missing_ok=True)

    def fetch(self, job_file: JobFile, fetcher: Fetcher, *, attempts: int = 3) -> Path:
        """The verified cached copy of ``job_file``, downloaded with ``fetcher`` when missing.

        A download with the wrong sha256 is deleted and downloaded again; after ``attempts`` bad
        downloads IntegrityError. Errors raised by ``fetcher`` itself pass through.
        """
        sha = _check_digest(job_file.sha256)
        existing = self.get(sha)
        if existing is not None:
            return existing
        for attempt in range(1, attempts + 1):
            with self._partial(sha) as (tmp, resumable):
                try:
                    fetcher(job_file.path, tmp)
                except BaseException:
                    if not resumable:
                        tmp.unlink(missing_ok=True)
                    raise  # what it got so far stays, to be completed next time
                if job_file.size and tmp.stat().st_size != job_file.size:
                    actual = f"{tmp.stat().st_size} bytes instead of {job_file.size}"
                elif (digest := sha256_file(tmp)) != sha:
                    actual = f"sha256 {digest}"
                else:
                    return self._commit(tmp, sha)
                tmp.unlink(missing_ok=True)
                logger.warning("download %d/%d of %s is corrupt (%s); fetching it again",
                               attempt, attempts, job_file.path, actual)
        raise IntegrityError(
            f"{job_file.path}: {attempts} downloads did not match sha256 {sha}; the coordinator's copy "
            "may be damaged, ask its admin to check the job's files"
        )

    def fetch_all(self, job_files: Sequence[JobFile], fetcher: Fetcher, *, attempts: int = 3) -> dict[str, Path]:
        """Every job file, verified: recipe path -> cached path."""
        return {f.path: self.fetch(f, fetcher, attempts=attempts) for f in job_files}

    def clean_temp(self) -> None:
        """Remove leftovers of interrupted downloads (call when no other process is fetching)."""
        for leftover in self._tmp.glob("*.part"):
            leftover.unlink(missing_ok=True)


def collect_job_files(recipe: Recipe, root: Path) -> dict[str, Path]:
    """The local files of a recipe whose paths are relative to ``root``: recipe path -> file.

    Covers the dataset and eval files, and every file under the model and tokenizer directories
    when those name directories below ``root`` (a hub id names none). Raises SwarmError when a
    named file is missing.
    """
    root = Path(root)
    out: dict[str, Path] = {}
    for rel in recipe.referenced_files():
        path = root / rel
        if not path.is_file():
            raise SwarmError(f"recipe file {rel!r} not found under {root}; fix the path or add the file")
        out[rel] = path
    for name in {recipe.model.name_or_path, recipe.model.tokenizer or recipe.model.name_or_path}:
        directory = root / name
        if Path(name).is_absolute() or not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                out[path.relative_to(root).as_posix()] = path
    return out


def job_files(files: Mapping[str, Path]) -> list[JobFile]:
    """``JobFile`` entries (path, sha256, size) for local files keyed by recipe path."""
    return [JobFile(path=rel, sha256=sha256_file(p), size=p.stat().st_size) for rel, p in sorted(files.items())]
