"""The coordinator's service over a real SQLite store, without gRPC: scheduling and live-job caching."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from essaim.coordinator.auth import Principal
from essaim.coordinator.service import CoordinatorService
from essaim.coordinator.settings import CoordinatorSettings
from essaim.coordinator.store import open_store, sqlite_url
from essaim.protocol.auth_metadata import registration_message
from essaim.protocol.types import (
    SHARD_SLOTS,
    HeartbeatReport,
    JobProgress,
    JobStatus,
    RegistrationRequest,
    Role,
)


@pytest.fixture
def service(tmp_path: Path):
    settings = CoordinatorSettings(data_dir=tmp_path, grpc_port=0, http_port=0)
    store = open_store(sqlite_url(tmp_path / "c.db"))
    svc = CoordinatorService(store, settings)
    svc.startup()
    yield svc
    store.close()


def _register(service: CoordinatorService, kit, name: str) -> Principal:
    ident = kit.Identity()
    ts = time.time()
    nonce, _ = service.registration_challenge()
    req = RegistrationRequest(
        public_key=ident.public_key,
        peer_id=f"Qm{name}",
        name=name,
        timestamp=ts,
        signature=ident.sign(registration_message(f"Qm{name}", name, ts, nonce)),
        hardware=kit.HARDWARE,
        nonce=nonce,
    )
    reg = service.register(req, None)
    return Principal(Role.VOLUNTEER, reg.volunteer_id)


def test_volunteers_of_a_job_split_its_shard_slots(service, kit) -> None:
    admin = Principal(Role.ADMIN, "admin")
    job = service.submit_job(kit.hub_recipe("split"), principal=admin)
    vols = [_register(service, kit, f"v{i}") for i in range(3)]
    slots = [service.get_assignment(v.subject, kit.HARDWARE, v).shard_ids for v in vols]
    assert service.get_job(job.id).status == JobStatus.RUNNING
    # the last one to join sees all three; its share is a third of the slots
    assert len(slots[-1]) in (SHARD_SLOTS // 3, SHARD_SLOTS // 3 + 1)
    # asking again (a fresh swarm token) while still on the job keeps the slots its trainer trains
    # on, and the store holds them: its updates are validated on that data
    again = [service.get_assignment(v.subject, kit.HARDWARE, v).shard_ids for v in vols]
    assert again == slots
    assert service.store.assigned_slots(job.id) == {v.subject: sorted(s) for v, s in zip(vols, slots, strict=True)}
    report = HeartbeatReport(volunteer_id=vols[0].subject, progress=[JobProgress(job_id=job.id)])
    assert service.heartbeat(report, vols[0]).stop_job_ids == []
    unknown = HeartbeatReport(volunteer_id=vols[0].subject, progress=[JobProgress(job_id="gone")])
    assert service.heartbeat(unknown, vols[0]).stop_job_ids == ["gone"]


def test_a_refresh_does_not_forget_jobs_changed_while_it_read(service, kit, monkeypatch) -> None:
    admin = Principal(Role.ADMIN, "admin")
    vol = _register(service, kit, "late")
    job = service.submit_job(kit.hub_recipe("meanwhile"), principal=admin)
    report = HeartbeatReport(volunteer_id=vol.subject, progress=[JobProgress(job_id=job.id)])
    assert service.heartbeat(report, vol).stop_job_ids == [job.id]  # queued: not to be trained yet
    real_list = service.store.list_jobs

    def snapshot_then_start(**kwargs):
        jobs = real_list(**kwargs)  # the refresh reads the job as queued...
        monkeypatch.setattr(service.store, "list_jobs", real_list)
        service.get_assignment(vol.subject, kit.HARDWARE, vol)  # ...while a volunteer starts it
        return jobs

    monkeypatch.setattr(service.store, "list_jobs", snapshot_then_start)
    service.refresh_jobs()
    assert service.heartbeat(report, vol).stop_job_ids == []  # still known as running
    service.cancel_job(job.id, "", admin)
    service.refresh_jobs()
    assert service.heartbeat(report, vol).stop_job_ids == [job.id]
