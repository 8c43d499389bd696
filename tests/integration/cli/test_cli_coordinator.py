"""The real `essaim` command against a real coordinator: a researcher's and an admin's workflow,
the errors they can meet (wrong token, unknown id) and their exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from essaim.protocol.client import CoordinatorClient
from essaim.protocol.recipe import load_recipe_file
from essaim.protocol.types import Hardware

pytestmark = pytest.mark.timeout(240)


def _no_traceback(proc) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


def test_submit_list_status_cancel(coordinator, researcher_token, recipe_factory) -> None:
    recipe = recipe_factory("submit-me")
    submitted = coordinator.essaim("job", "submit", str(recipe), "--priority", "2", token=researcher_token)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    assert job_id and " " not in job_id

    listed = coordinator.essaim("job", "list", "--json", token=researcher_token)
    assert listed.returncode == 0, listed.stderr
    jobs = {j["id"]: j for j in json.loads(listed.stdout)}
    assert jobs[job_id]["status"] == "queued"
    assert jobs[job_id]["priority"] == 2

    queued = coordinator.essaim("job", "list", "--status", "queued", token=researcher_token)
    assert queued.returncode == 0 and job_id in queued.stdout

    shown = coordinator.essaim("job", "status", job_id, "--json", token=researcher_token)
    job = json.loads(shown.stdout)
    assert job["name"] == "submit-me"
    assert job["metrics"]["target_epochs"] == 2
    assert job["metrics"]["loss"] is None  # no volunteer reported one yet: not 0.0
    expected = {
        p: hashlib.sha256((recipe.parent / p).read_bytes()).hexdigest()
        for p in ("data/train.txt", "data/eval.jsonl")
    }
    assert {f["path"]: f["sha256"] for f in job["files"]} == expected

    human = coordinator.essaim("job", "status", job_id, token=researcher_token)
    assert human.returncode == 0 and job_id in human.stdout and "queued" in human.stdout
    # the short ids the demo and the dashboard show (the start of the id, as git takes a commit's)
    short = coordinator.essaim("job", "status", job_id[:8], "--json", token=researcher_token)
    assert short.returncode == 0 and json.loads(short.stdout)["id"] == job_id, short.stderr
    unknown = coordinator.essaim("job", "status", "0" * 8 if not job_id.startswith("0") else "f" * 8,
                                 token=researcher_token)
    assert unknown.returncode == 3 and "no job with id" in unknown.stderr

    cancelled = coordinator.essaim("job", "cancel", job_id, "--reason", "changed my mind", token=researcher_token)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == job_id
    again = coordinator.essaim("job", "cancel", job_id, token=researcher_token)
    assert again.returncode == 2
    assert again.stderr.startswith("error: ")
    _no_traceback(again)

    followed = coordinator.essaim("job", "status", job_id, "--follow", "--interval", "0.2", token=researcher_token)
    assert followed.returncode == 1
    assert f"job {job_id} cancelled" in followed.stdout

    no_artifact = coordinator.essaim("job", "download", job_id, "-o", "out", token=researcher_token)
    assert no_artifact.returncode == 2
    assert "no artifact" in no_artifact.stderr


def test_invalid_recipe_is_refused_with_field_paths(coordinator, researcher_token, recipe_factory) -> None:
    recipe = recipe_factory("bad-one")
    recipe.write_text(recipe.read_text().replace("epochs: 2", "epochs: -1\n  warp_speed: true"))
    proc = coordinator.essaim("job", "submit", str(recipe), token=researcher_token)
    assert proc.returncode == 2
    assert "training.epochs: got -1" in proc.stderr
    assert "training.warp_speed: unknown field" in proc.stderr
    _no_traceback(proc)


def test_wrong_or_missing_token_exits_4(coordinator) -> None:
    wrong = coordinator.essaim("job", "list", token="essaim_not-a-real-token")
    assert wrong.returncode == 4
    assert wrong.stderr.startswith("error: ")
    assert "essaim_not-a-real-token" not in wrong.stderr
    _no_traceback(wrong)

    missing = coordinator.essaim("job", "list")
    assert missing.returncode == 4
    assert "ESSAIM_TOKEN" in missing.stderr


def test_flags_beat_environment(coordinator, researcher_token) -> None:
    proc = coordinator.essaim(
        "job", "list", "--json", "--coordinator", coordinator.address, "--token", researcher_token,
        ESSAIM_COORDINATOR="127.0.0.1:9", ESSAIM_TOKEN="essaim_wrong",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)


def test_unknown_ids_exit_3(coordinator, researcher_token) -> None:
    for args in (("job", "status", "no-such-job"), ("job", "cancel", "no-such-job")):
        proc = coordinator.essaim(*args, token=researcher_token)
        assert proc.returncode == 3, (args, proc.stderr)
        assert proc.stderr.startswith("error: ")
        _no_traceback(proc)
    ban = coordinator.essaim("coordinator", "ban", "no-such-volunteer", token=coordinator.admin_token)
    assert ban.returncode == 3


def test_approval_flow(approval_coordinator, recipe_factory) -> None:
    c = approval_coordinator
    researcher = c.create_token("researcher", "bob")
    first = c.essaim("job", "submit", str(recipe_factory("wait-for-me")), token=researcher)
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip().splitlines()[-1]
    status = json.loads(c.essaim("job", "status", job_id, "--json", token=researcher).stdout)
    assert status["status"] == "awaiting_approval"

    refused = c.essaim("job", "approve", job_id, token=researcher)
    assert refused.returncode == 4
    _no_traceback(refused)

    approved = c.essaim("job", "approve", job_id, "--json", token=c.admin_token)
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["status"] == "queued"

    prio = c.essaim("job", "priority", job_id, "5", "--json", token=c.admin_token)
    assert prio.returncode == 0, prio.stderr
    assert json.loads(prio.stdout)["priority"] == 5

    second = c.essaim("job", "submit", str(recipe_factory("reject-me")), token=researcher)
    other_id = second.stdout.strip().splitlines()[-1]
    rejected = c.essaim("job", "approve", other_id, "--reject", "--reason", "not now", token=c.admin_token)
    assert rejected.returncode == 0, rejected.stderr
    followed = c.essaim("job", "status", other_id, "--follow", "--json", token=researcher)
    assert followed.returncode == 1
    assert json.loads(followed.stdout.splitlines()[-1])["status"] == "rejected"


def _register_volunteer(address: str, name: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    peer_id = "QmCliTest" + hashlib.sha256(public).hexdigest()[:20]
    with CoordinatorClient(address, timeout=10) as client:
        registration = client.register_with_key(
            sign=key.sign,
            public_key=public,
            peer_id=peer_id,
            name=name,
            hardware=Hardware(os="linux", arch="x86_64", cpu_cores=4, ram_bytes=8 * 2**30),
        )
    return registration.volunteer_id


def test_volunteers_and_ban(coordinator, researcher_token) -> None:
    volunteer_id = _register_volunteer(coordinator.address, "cli-test-bee")

    listed = coordinator.essaim("coordinator", "volunteers", "--json", token=coordinator.admin_token)
    assert listed.returncode == 0, listed.stderr
    found = {v["id"]: v for v in json.loads(listed.stdout)}
    assert found[volunteer_id]["name"] == "cli-test-bee"
    assert found[volunteer_id]["hardware"]["cpu_cores"] == 4

    table = coordinator.essaim("coordinator", "volunteers", token=coordinator.admin_token)
    assert table.returncode == 0 and "cli-test-bee" in table.stdout and volunteer_id in table.stdout

    not_admin = coordinator.essaim("coordinator", "ban", volunteer_id, token=researcher_token)
    assert not_admin.returncode == 4

    banned = coordinator.essaim("coordinator", "ban", volunteer_id, "--reason", "bad updates", token=coordinator.admin_token)
    assert banned.returncode == 0, banned.stderr
    assert banned.stdout.strip() == volunteer_id

    after = json.loads(coordinator.essaim("coordinator", "volunteers", "--json", token=coordinator.admin_token).stdout)
    assert {v["id"]: v["status"] for v in after}[volunteer_id] == "banned"

    assert coordinator.essaim("coordinator", "unban", volunteer_id, token=researcher_token).returncode == 4
    lifted = coordinator.essaim("coordinator", "unban", volunteer_id, "--reason", "appeal upheld",
                                token=coordinator.admin_token)
    assert lifted.returncode == 0 and lifted.stdout.strip() == volunteer_id, lifted.stderr
    again = coordinator.essaim("coordinator", "unban", volunteer_id, token=coordinator.admin_token)
    assert again.returncode == 2 and "not banned" in again.stderr
    after = json.loads(coordinator.essaim("coordinator", "volunteers", "--json", token=coordinator.admin_token).stdout)
    assert {v["id"]: v["status"] for v in after}[volunteer_id] == "offline"


def test_init_output_submits_once_its_data_exists(coordinator, researcher_token, tmp_path: Path) -> None:
    """`job init` writes the documented example; with its data files present it validates and submits."""
    recipe = tmp_path / "recipe.yaml"
    assert coordinator.essaim("job", "init", "--output", str(recipe)).returncode == 0
    missing = coordinator.essaim("job", "validate", str(recipe))
    assert missing.returncode == 2 and "data/train.jsonl' but" in missing.stderr and "is not a file" in missing.stderr, missing.stderr
    for name in load_recipe_file(recipe).referenced_files():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text('{"text": "one", "prompt": "1+1=", "answer": "2"}\n')
    assert coordinator.essaim("job", "validate", str(recipe)).returncode == 0
    proc = coordinator.essaim("job", "submit", str(recipe), token=researcher_token)
    assert proc.returncode == 0, proc.stderr
    job = json.loads(coordinator.essaim("job", "status", proc.stdout.split()[-1], "--json", token=researcher_token).stdout)
    assert job["name"] == "tinyllama-alpaca-lora"
