"""Jobs against a real coordinator that requires approval: roles, states and clear errors."""

from __future__ import annotations

import grpc
import pytest
from essaim.protocol.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from essaim.protocol.types import JobFile, JobStatus

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def coord(module_launcher, tmp_path_factory):
    return module_launcher(tmp_path_factory.mktemp("jobs"), "--require-approval", "--max-researcher-priority", "2")


def test_submit_approve_list_get_cancel(coord, kit) -> None:
    alice = kit.create_token(coord.data_dir, "researcher", "alice")
    bob = kit.create_token(coord.data_dir, "researcher", "bob")
    with coord.client(alice) as client:
        job = client.submit_job(kit.hub_recipe("needs-approval"), priority=2)
        assert job.status == JobStatus.AWAITING_APPROVAL and job.owner == "alice" and job.priority == 2
        assert job.metrics.target_epochs == 3
        with pytest.raises(PermissionDenied, match="admin"):
            client.approve_job(job.id)
    with coord.client(coord.admin_token) as admin:
        approved = admin.approve_job(job.id)
        assert approved.status == JobStatus.QUEUED
        with pytest.raises(FailedPrecondition, match="queued, not awaiting approval"):
            admin.approve_job(job.id)
        assert admin.set_job_priority(job.id, 7).priority == 7
        rejected = admin.approve_job(admin.submit_job(kit.hub_recipe("meh")).id, reject=True, reason="no")
        assert rejected.status == JobStatus.REJECTED
    with coord.client(bob) as client:
        assert job.id in [j.id for j in client.list_jobs()]
        assert [j.id for j in client.list_jobs([JobStatus.REJECTED])] == [rejected.id]
        assert client.get_job(job.id).recipe_yaml == kit.hub_recipe("needs-approval")
        with pytest.raises(PermissionDenied, match="belongs to alice"):
            client.cancel_job(job.id)
    with coord.client(alice) as client:
        cancelled = client.cancel_job(job.id, "changed my mind")
        assert cancelled.status == JobStatus.CANCELLED and cancelled.status_reason == "changed my mind"
        with pytest.raises(FailedPrecondition, match="already cancelled"):
            client.cancel_job(job.id)


def test_tokens_and_roles(coord, kit) -> None:
    researcher = kit.create_token(coord.data_dir, "researcher", "carol")
    with coord.client("essaim_not-a-real-token") as client, pytest.raises(Unauthenticated, match="not known"):
        client.list_jobs()
    with coord.client(None) as client, pytest.raises(Unauthenticated, match="needs a bearer token") as info:
        client.list_jobs()
    assert info.value.exit_code == 4
    with coord.client(researcher) as client:
        with pytest.raises(PermissionDenied):
            client.ban_volunteer("whoever")
        with pytest.raises(PermissionDenied):
            client.list_volunteers()


def test_unknown_job_is_not_found(coord) -> None:
    with coord.client(coord.admin_token) as admin:
        with pytest.raises(NotFound, match="no job with id 'nope'") as info:
            admin.get_job("nope")
        assert info.value.exit_code == 3
        with pytest.raises(NotFound):
            admin.cancel_job("nope")
        with pytest.raises(NotFound):
            admin.ban_volunteer("nope")


def test_malformed_recipes_list_every_problem_with_its_path(coord, kit) -> None:
    bad = kit.hub_recipe("bad").replace("batch_size: 4", "batch_size: 0") + "colour: blue\n"
    with coord.client(coord.admin_token) as admin:
        with pytest.raises(InvalidArgument) as info:
            admin.submit_job(bad)
        message = str(info.value)
        assert "training.batch_size" in message and "colour: unknown field" in message
        with pytest.raises(InvalidArgument, match="not valid YAML"):
            admin.submit_job("name: [unclosed")
        with pytest.raises(InvalidArgument, match="trust_remote_code"):
            admin.submit_job(
                kit.hub_recipe("remote").replace(
                    "org/tiny-model}", "org/tiny-model, trust_remote_code: true}"
                )
            )
        files_recipe = kit.hub_recipe("files").replace(
            "{hub_name: org/tiny-data}", "{files: [data/train.txt]}"
        )
        with pytest.raises(InvalidArgument, match=r"'data/train\.txt' but it was not uploaded"):
            admin.submit_job(files_recipe)
        with pytest.raises(InvalidArgument, match="was not uploaded to this coordinator"):
            admin.submit_job(files_recipe, files=[JobFile("data/train.txt", "a" * 64, 3)])


def test_grpc_codes_seen_by_a_raw_client(coord) -> None:
    """Other languages see plain gRPC codes: check one of each through the generated stub."""
    from essaim.protocol import serde
    from essaim.protocol.v1 import coordinator_pb2 as pb
    from essaim.protocol.v1 import coordinator_pb2_grpc as pb_grpc

    with grpc.insecure_channel(coord.grpc_address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        request = pb.GetJobRequest(header=serde.request_header(), job_id="nope")
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.GetJob(request, timeout=10, metadata=[("authorization", f"Bearer {coord.admin_token}")])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_queued_job_says_why_no_volunteer_has_taken_it(module_launcher, tmp_path_factory, kit) -> None:
    coord = module_launcher(tmp_path_factory.mktemp("queued"))
    big = kit.hub_recipe("big").replace("min_ram_gb: 1", "min_ram_gb: 64")
    with coord.client(coord.admin_token) as admin:
        job = admin.submit_job(kit.hub_recipe("small"))
        assert job.status == JobStatus.QUEUED
        assert admin.get_job(job.id).status_reason == "waiting for volunteers: none is online"
        with coord.client() as anonymous:
            kit.Identity().register(anonymous, name="laptop")  # 16 GB of RAM, no GPU: online, asks for nothing yet
        assert admin.get_job(job.id).status_reason.startswith("1 free volunteer(s) online can take it")
        heavy = admin.submit_job(big)
        assert admin.get_job(heavy.id).status_reason == (  # not what the volunteer's machine has: its own
            "none of the 1 volunteer(s) online can run it: it needs 64.0 GB of RAM")
        urgent = admin.submit_job(kit.hub_recipe("urgent"), priority=5)
        reason = {j.id: j.status_reason for j in admin.list_jobs([JobStatus.QUEUED])}
        assert reason[job.id] == (f"the 1 free volunteer(s) that can run it go to job {urgent.id[:8]} (urgent) first: "
                                  "its priority is higher (5 against 0)"), reason
