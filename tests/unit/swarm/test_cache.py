"""The content-addressed cache: verified puts and gets, refetching corrupt downloads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from essaim.protocol.recipe import Recipe
from essaim.protocol.types import JobFile
from essaim.swarm.cache import ContentCache, collect_job_files, job_files
from essaim.swarm.errors import IntegrityError

GOOD = b"12+7=19\n3+4=7\n"
SHA = hashlib.sha256(GOOD).hexdigest()
JOB_FILE = JobFile(path="data/train.txt", sha256=SHA, size=len(GOOD))


def _leftovers(cache: ContentCache) -> list[Path]:
    return [p for p in cache.root.rglob("*") if p.is_file()]


def test_put_then_get(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "cache")
    assert cache.get(SHA) is None
    src = tmp_path / "src.txt"
    src.write_bytes(GOOD)
    stored = cache.put_file(src, SHA)
    assert stored == cache.path_for(SHA) and stored.read_bytes() == GOOD
    assert src.exists()
    assert ContentCache(tmp_path / "cache").get(SHA) == stored  # a new process sees it too


def test_put_with_the_wrong_hash_stores_nothing(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "cache")
    src = tmp_path / "src.txt"
    src.write_bytes(b"something else")
    with pytest.raises(IntegrityError, match="not the one the job announced"):
        cache.put_file(src, SHA)
    assert cache.get(SHA) is None and _leftovers(cache) == []
    with pytest.raises(IntegrityError, match="not a sha256"):
        cache.put_file(src, "abc")


def test_a_corrupt_download_is_fetched_again_and_never_returned(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "cache")
    calls: list[str] = []

    def fetcher(path: str, dest: Path) -> None:
        calls.append(path)
        dest.write_bytes(b"12+7=20\n3+4=7\n" if len(calls) == 1 else GOOD)  # same size, wrong content first

    path = cache.fetch(JOB_FILE, fetcher)
    assert calls == ["data/train.txt", "data/train.txt"]
    assert path.read_bytes() == GOOD
    assert cache.fetch(JOB_FILE, fetcher) == path and len(calls) == 2  # cached now
    assert _leftovers(cache) == [path]


def test_persistent_corruption_raises_and_leaves_nothing(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "cache")
    calls = []

    def fetcher(path: str, dest: Path) -> None:
        calls.append(path)
        dest.write_bytes(b"truncated")

    with pytest.raises(IntegrityError, match="3 downloads did not match"):
        cache.fetch(JOB_FILE, fetcher)
    assert len(calls) == 3
    assert _leftovers(cache) == []


def test_a_file_corrupted_in_the_cache_is_dropped(tmp_path: Path) -> None:
    cache = ContentCache(tmp_path / "cache")
    stored = cache.fetch_all([JOB_FILE], lambda _path, dest: dest.write_bytes(GOOD))["data/train.txt"]
    stored.write_bytes(b"bit rot!")
    assert ContentCache(tmp_path / "cache").get(SHA) is None
    assert not stored.exists()


def test_collect_job_files_covers_data_and_the_model_directory(demo_job_dir: Path, demo_recipe: Recipe) -> None:
    files = collect_job_files(demo_recipe, demo_job_dir)
    assert {"data/train.txt", "data/eval.jsonl", "model/config.json", "model/model.safetensors"} <= set(files)
    entries = {f.path: f for f in job_files(files)}
    assert entries["data/train.txt"].sha256 == hashlib.sha256(files["data/train.txt"].read_bytes()).hexdigest()
    assert entries["data/train.txt"].size == files["data/train.txt"].stat().st_size


def test_trim_removes_the_oldest_files_but_never_the_ones_kept(tmp_path: Path) -> None:
    import os

    cache = ContentCache(tmp_path / "cache")
    stored = []
    for i in range(4):  # 4 files of 1,000 bytes, stored one after the other
        src = tmp_path / f"f{i}"
        src.write_bytes(bytes([i]) * 1000)
        sha = hashlib.sha256(src.read_bytes()).hexdigest()
        path = cache.put_file(src, sha)
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
        stored.append(sha)
    assert cache.trim(10_000) == 0 and all(cache.get(s) for s in stored)
    # at most 2,000 bytes, keeping the oldest (the job about to run uses it): the next two go
    assert cache.trim(2000, keep=[stored[0].upper()]) == 2000
    assert [cache.get(s) is not None for s in stored] == [True, False, False, True]
    assert cache.trim(0, keep=stored) == 0  # what is kept stays even over the cap
    assert ContentCache(tmp_path / "empty").trim(0) == 0
    old, fresh, wanted = (cache.root / "tmp" / f"{c * 64}.part" for c in "abc")
    for part in (old, fresh, wanted):
        part.write_bytes(b"the start of a file")
    os.utime(old, (1, 1))
    os.utime(wanted, (1, 1))
    cache.trim(10**9, keep=["c" * 64])  # a partial download untouched for a week goes, unless it is wanted
    assert (old.exists(), fresh.exists(), wanted.exists()) == (False, True, True)


def test_a_download_cut_short_resumes_where_it_stopped(tmp_path: Path) -> None:
    """The fetcher is handed the same partial file again after a failure (here: the connection
    dropped after 5 bytes), so it sends only the rest; the result is checked as any download."""
    cache = ContentCache(tmp_path / "cache")
    asked_from: list[int] = []

    def fetcher(path: str, dest: Path) -> None:
        have = dest.stat().st_size if dest.exists() else 0
        asked_from.append(have)
        with dest.open("ab") as f:
            if not asked_from[:-1]:
                f.write(GOOD[:5])
                raise ConnectionError("the connection dropped")
            f.write(GOOD[have:])

    with pytest.raises(ConnectionError):
        cache.fetch(JOB_FILE, fetcher)
    assert cache.get(SHA) is None and [p.name for p in _leftovers(cache)] == [f"{SHA}.part"]
    path = ContentCache(tmp_path / "cache").fetch(JOB_FILE, fetcher)  # another process: a new trainer
    assert asked_from == [0, 5] and path.read_bytes() == GOOD and _leftovers(cache) == [path]
