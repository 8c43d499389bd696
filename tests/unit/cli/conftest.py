"""Fixtures for the CLI unit tests: an isolated environment, a CliRunner, and a fake coordinator client.

The fake client stands in for a coordinator only where a real one cannot produce the situation
cheaply (a job progressing through epochs for ``--follow``, exact objects for JSON shapes); the
integration tests in tests/integration/cli/ run the same commands against a real coordinator.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from essaim.protocol.errors import NotFound
from essaim.protocol.types import (
    FileKind,
    Hardware,
    Job,
    JobFile,
    JobMetrics,
    JobStatus,
    Volunteer,
    VolunteerStatus,
)
from typer.testing import CliRunner

NOW = 1_700_000_000.0


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ESSAIM_* variable from the outside; the config file lives in tmp_path (absent at first)."""
    for name in ("ESSAIM_COORDINATOR", "ESSAIM_TOKEN", "ESSAIM_TIMEOUT", "ESSAIM_RETRIES", "ESSAIM_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config" / "config.toml"
    monkeypatch.setenv("ESSAIM_CONFIG", str(config))
    return config


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """The root command configures logging; give the root logger back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def make_job(job_id: str = "job-1", status: JobStatus = JobStatus.QUEUED, **metrics: Any) -> Job:
    return Job(
        id=job_id,
        name="tiny-lora",
        status=status,
        recipe_yaml="version: 1\n",
        owner="alice",
        priority=0,
        created_at=NOW - 120,
        updated_at=NOW - 5,
        metrics=JobMetrics(**{"target_epochs": 4, **metrics}),
        files=[JobFile(path="data/train.jsonl", sha256="ab" * 32, size=2048)],
    )


def make_volunteer(volunteer_id: str = "vol-1", **fields: Any) -> Volunteer:
    base: dict[str, Any] = {
        "name": "busy-bee",
        "peer_id": "12D3KooWpeer",
        "public_key": b"\x01\x02\xff",
        "status": VolunteerStatus.ONLINE,
        "state": "training",
        "hardware": Hardware(os="linux", arch="x86_64", cpu_cores=8, ram_bytes=16 * 2**30),
        "last_seen": NOW,
        "client_version": "0.1.0",
        "samples_per_second": 12.5,
    }
    base.update(fields)
    return Volunteer(id=volunteer_id, **base)


class FakeClient:
    """Answers like a coordinator from a script of job states; records every call."""

    instances: list[FakeClient] = []

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 10.0, retries: int = 3,
                 ca_file: str | None = None):
        self.address, self.token, self.timeout, self.retries = address, token, timeout, retries
        self.ca_file = ca_file
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.job_states: list[Any] = [make_job()]
        self.volunteers: list[Volunteer] = [make_volunteer()]
        FakeClient.instances.append(self)

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def _job(self, job_id: str) -> Job:
        if job_id != self.job_states[0].id:
            raise NotFound(f"no job {job_id}; list jobs with `essaim job list`")
        return self.job_states[0]

    def get_job(self, job_id: str) -> Job:
        """The next scripted state; a scripted exception is raised once, as a failing call would."""
        self._record("get_job", job_id)
        if isinstance(self.job_states[0], Exception):
            raise self.job_states.pop(0)
        job = self._job(job_id)
        if len(self.job_states) > 1:
            self.job_states.pop(0)
        return job

    def list_jobs(self, statuses: Any = None, limit: int = 0) -> list[Job]:
        self._record("list_jobs", statuses, limit=limit)
        return [self.job_states[0]]

    def submit_recipe_file(self, path: Path, *, priority: int = 0, progress: Any = None) -> Job:
        self._record("submit_recipe_file", path, priority=priority)
        if progress is not None:
            progress("data/train.jsonl", 1024, 2048)
            progress("data/train.jsonl", 2048, 2048)
        return dataclasses.replace(self.job_states[0], priority=priority)

    def cancel_job(self, job_id: str, reason: str = "") -> Job:
        self._record("cancel_job", job_id, reason)
        return dataclasses.replace(self._job(job_id), status=JobStatus.CANCELLED, status_reason=reason)

    def approve_job(self, job_id: str, *, reject: bool = False, reason: str = "") -> Job:
        self._record("approve_job", job_id, reject=reject, reason=reason)
        status = JobStatus.REJECTED if reject else JobStatus.QUEUED
        return dataclasses.replace(self._job(job_id), status=status)

    def set_job_priority(self, job_id: str, priority: int) -> Job:
        self._record("set_job_priority", job_id, priority)
        return dataclasses.replace(self._job(job_id), priority=priority)

    def list_volunteers(self, *, online_only: bool = False, limit: int = 0) -> list[Volunteer]:
        self._record("list_volunteers", online_only=online_only, limit=limit)
        return self.volunteers

    def ban_volunteer(self, volunteer_id: str, reason: str = "", *, undo: bool = False) -> Volunteer:
        self._record("ban_volunteer", volunteer_id, reason, **({"undo": True} if undo else {}))
        return dataclasses.replace(self.volunteers[0], status=VolunteerStatus.BANNED)

    provenance: dict[str, Any] | None = None  # what the artifact's provenance.json holds (default: a stub)

    def download(self, job_id: str, kind: FileKind, dest: Path, *, path: str = "", progress: Any = None) -> list[Path]:
        self._record("download", job_id, kind, dest)
        self._job(job_id)
        dest.mkdir(parents=True, exist_ok=True)
        if kind == FileKind.PROVENANCE:
            out = dest / "provenance.json"
            out.write_text(json.dumps({"job": job_id}))
            return [out]
        # the coordinator's artifacts/ID/ tree: the adapter under artifact/, provenance.json beside it
        (dest / "artifact").mkdir(exist_ok=True)
        files = [dest / "artifact/adapter_config.json", dest / "artifact/adapter_model.safetensors"]
        for f in files:
            f.write_bytes(b"x" * 100)
            if progress is not None:
                progress(f.name, 100, 100)
        (dest / "provenance.json").write_text(json.dumps(self.provenance or {"job": job_id}))
        return [p.resolve() for p in [*files, dest / "provenance.json"]]


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeClient]]:
    """Every remote command gets a FakeClient; ``FakeClient.instances[-1]`` is the last one made."""
    import essaim.protocol.client

    FakeClient.instances = []
    monkeypatch.setattr(essaim.protocol.client, "CoordinatorClient", FakeClient)
    monkeypatch.setattr("essaim.job.time.sleep", lambda _s: None)
    yield FakeClient
    FakeClient.instances = []


@pytest.fixture
def job_factory() -> Any:
    return make_job


@pytest.fixture
def volunteer_factory() -> Any:
    return make_volunteer
