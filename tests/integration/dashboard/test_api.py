"""The dashboard's JSON API, downloads and /metrics against a real coordinator with a demo swarm.

Reads need no token while public pages are on; admin POSTs with an admin bearer token act through
the same service as gRPC (checked over gRPC); a ledger row tampered with in the SQLite file is
reported by /api/v1/ledger/verify, and the downloads let anyone re-check what a job was trained on.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
import yaml
from essaim.coordinator.store.ledger import SignedHead, head_signature_ok, verify_against_head, verify_chain
from essaim.coordinator.swarm_keys import SWARM_KEY, load_or_create_swarm_key, public_key_der
from essaim.protocol.errors import EssaimError
from essaim.protocol.recipe import load_recipe
from essaim.protocol.types import JobMetrics, JobStatus, LedgerEntry, VolunteerStatus

pytestmark = pytest.mark.timeout(240)


def test_volunteers_with_hardware_state_and_totals(swarm, demo):
    admin = {"Authorization": f"Bearer {swarm.coord.admin_token}"}
    data = demo.get_json(f"{swarm.url}/api/v1/volunteers", headers=admin)
    assert data["total"] == len(swarm.members)
    by_id = {v["id"]: v for v in data["items"]}
    ada = by_id[swarm.member("ada").volunteer_id]
    assert ada["status"] == "online" and ada["state"] == "training" and not ada["private"]
    assert ada["current_job_id"] == swarm.running.id and ada["client_version"] == "0.1.0"
    assert ada["hardware"]["gpu_name"] == "NVIDIA RTX 4090"
    assert "CUDA" in ada["hardware"]["summary"] and "24 GB" in ada["hardware"]["summary"]
    assert ada["samples_per_second"] == pytest.approx(4.0)
    assert ada["samples"] == sum(40 + e for e in range(6))  # from the ledger
    # what the pages call its speed is what the ledger accepted, not what it reports
    assert ada["measured_samples_per_second"] == pytest.approx(ada["samples"] / (6 * 120.0))
    linus = by_id[swarm.member("linus").volunteer_id]
    assert linus["state"] == "idle" and linus["current_job_id"] == "" and linus["samples"] == 0

    one = demo.get_json(f"{swarm.url}/api/v1/volunteers/{ada['id']}")
    assert one["name"] == "ada" and one["team"] == "lyon"
    assert demo.request("GET", f"{swarm.url}/api/v1/volunteers/nobody").status == 404
    page = demo.get_json(f"{swarm.url}/api/v1/volunteers?limit=2&offset=2")
    assert page["total"] == len(swarm.members) and len(page["items"]) == 2


@pytest.mark.parametrize("who", ["anyone", "researcher", "another volunteer"])
def test_a_volunteers_live_state_reason_and_hardware_are_for_it_and_admins(swarm, demo, who):
    ada = swarm.member("ada")
    token = {"anyone": None, "researcher": swarm.researcher_token,
             "another volunteer": swarm.member("grace").token}[who]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    seen = demo.get_json(f"{swarm.url}/api/v1/volunteers/{ada.volunteer_id}", headers=headers)
    listed = {v["id"]: v for v in demo.get_json(f"{swarm.url}/api/v1/volunteers", headers=headers)["items"]}
    for v in (seen, listed[ada.volunteer_id]):
        assert v["private"] and v["name"] == "ada" and v["team"] == "lyon" and v["status"] == "online"
        assert (v["state"], v["reason"], v["client_version"], v["current_job_id"]) == ("", "", "", "")
        assert v["hardware"]["summary"] == "" and v["hardware"]["gpu_name"] == "" and v["samples_per_second"] == 0
        assert v["samples"] == sum(40 + e for e in range(6)) and v["measured_samples_per_second"] > 0
    detail = demo.get_json(f"{swarm.url}/api/v1/jobs/{swarm.running.id}", headers=headers)
    # who trains a job now is private: a volunteer sees only itself there
    mine = {swarm.member("grace").volunteer_id} if who == "another volunteer" else set()
    assert {v["id"] for v in detail["volunteers"]} == mine and detail["volunteers_online"] == 3
    page = demo.request("GET", f"{swarm.url}/volunteers/{ada.volunteer_id}", headers=headers).text
    assert "RTX 4090" not in page and "private" in page
    # the volunteer itself sees all of it
    own = demo.get_json(f"{swarm.url}/api/v1/volunteers/{ada.volunteer_id}",
                        headers={"Authorization": f"Bearer {ada.token}"})
    assert not own["private"] and own["hardware"]["gpu_name"] == "NVIDIA RTX 4090" and own["state"] == "training"


def test_jobs_list_detail_and_progress(swarm, demo):
    jobs = {j["id"]: j for j in demo.get_json(f"{swarm.url}/api/v1/jobs")["items"]}
    running = jobs[swarm.running.id]
    assert running["status"] == "running" and running["volunteers_online"] == 3
    assert running["metrics"]["target_epochs"] == 12 and running["metrics"]["epoch"] == 5
    assert running["metrics"]["eta_seconds"] > 0  # (12 - 5) epochs * 64 samples / throughput
    assert running["description"] == demo.XSS_DESCRIPTION
    assert jobs[swarm.awaiting.id]["status"] == "awaiting_approval"
    only = demo.get_json(f"{swarm.url}/api/v1/jobs?status=awaiting_approval")["items"]
    assert {j["id"] for j in only} == {swarm.awaiting.id, swarm.files_job.id}

    detail = demo.get_json(f"{swarm.url}/api/v1/jobs/{swarm.running.id}",
                           headers={"Authorization": f"Bearer {swarm.coord.admin_token}"})
    assert {v["id"] for v in detail["volunteers"]} == {m.volunteer_id for m in swarm.members[:3]}
    assert detail["recipe"]["training"]["epochs"] == 12 and detail["recipe"]["eval"]["metric"] == "perplexity"
    assert [c["rank"] for c in detail["contributors"]] == [1, 2, 3]
    assert detail["has_provenance"] is False and detail["has_model_card"] is False

    progress = demo.get_json(f"{swarm.url}/api/v1/jobs/{swarm.running.id}/progress")
    assert len(progress["points"]) == swarm.progress_points
    assert sum(p["eval_metric"] is not None for p in progress["points"]) == swarm.eval_points
    assert progress["eval_metric_name"] == "perplexity"
    times = [p["at"] for p in progress["points"]]
    assert times == sorted(times)
    assert demo.request("GET", f"{swarm.url}/api/v1/jobs/unknown/progress").status == 404


def test_leaderboards_overall_per_job_and_per_team(swarm, demo):
    board = demo.get_json(f"{swarm.url}/api/v1/contributions")
    assert board["job_id"] is None and len(board["volunteers"]) == 3
    samples = [c["samples"] for c in board["volunteers"]]
    assert samples == sorted(samples, reverse=True) and board["total_samples"] == sum(samples)
    teams = {t["team"]: t for t in board["teams"]}
    assert teams["lyon"]["members"] == 2  # ada and grace
    lyon = [c for c in board["volunteers"] if c["team"] == "lyon"]
    assert teams["lyon"]["samples"] == sum(c["samples"] for c in lyon)
    assert teams[demo.XSS_TEAM]["members"] == 1

    by_compute = demo.get_json(f"{swarm.url}/api/v1/contributions?order=compute")["volunteers"]
    hours = [c["compute_hours"] for c in by_compute]
    assert hours == sorted(hours, reverse=True)
    assert hours[0] == pytest.approx(6 * 180 / 3600)

    per_job = demo.get_json(f"{swarm.url}/api/v1/contributions?job_id={swarm.running.id}")
    assert per_job["total_samples"] == board["total_samples"]
    empty = demo.get_json(f"{swarm.url}/api/v1/contributions?job_id={swarm.awaiting.id}")
    assert empty["volunteers"] == [] and empty["teams"] == []


def test_ledger_pages_verify_and_downloads_recheck(swarm, demo):
    rows = demo.get_json(f"{swarm.url}/api/v1/ledger?limit=5")
    assert [r["seq"] for r in rows["items"]] == [1, 2, 3, 4, 5] and rows["next_after_seq"] == 5
    rest = demo.get_json(f"{swarm.url}/api/v1/ledger?after_seq=5&limit=1000")
    assert len(rest["items"]) == swarm.ledger_rows - 5 and rest["next_after_seq"] is None
    verdict = demo.get_json(f"{swarm.url}/api/v1/ledger/verify")
    assert verdict["ok"] and verdict["checked"] == swarm.ledger_rows and verdict["head_seq"] == swarm.ledger_rows

    jsonl = demo.request("GET", f"{swarm.url}/api/v1/ledger.jsonl")
    assert jsonl.status == 200 and "attachment" in jsonl.headers["Content-Disposition"]
    entries = [LedgerEntry(**json.loads(line)) for line in jsonl.text.splitlines()]
    assert len(entries) == swarm.ledger_rows and verify_chain(entries).ok

    job_ledger = demo.request("GET", f"{swarm.url}/api/v1/jobs/{swarm.running.id}/ledger.json").json()
    assert job_ledger["verification"]["ok"] and len(job_ledger["rows"]) == swarm.ledger_rows

    # the head, signed with the coordinator's swarm key (the same in the verification and the page)
    head = SignedHead.from_dict(demo.get_json(f"{swarm.url}/api/v1/ledger/head"))
    key = load_or_create_swarm_key(swarm.coord.data_dir / SWARM_KEY)
    assert head.seq == swarm.ledger_rows and head.hash == entries[-1].hash
    assert head_signature_ok(head, public_key_der(key)) and verify_against_head(entries, head).ok
    assert verdict["signed_head"]["signature"] == head.signature
    page = demo.request("GET", f"{swarm.url}/ledger")
    assert 'href="/api/v1/ledger/head"' in page.text


def test_transparency_downloads(swarm, demo):
    base = f"{swarm.url}/api/v1/jobs"
    recipe = demo.request("GET", f"{base}/{swarm.files_job.id}/recipe.yaml")
    assert recipe.status == 200 and recipe.headers["Content-Type"].startswith("application/yaml")
    assert 'filename="files-job-recipe.yaml"' in recipe.headers["Content-Disposition"]
    assert recipe.text == demo.FILES_RECIPE
    full = demo.request("GET", f"{base}/{swarm.files_job.id}/recipe.json").json()
    assert load_recipe(yaml.safe_dump(full)).name == "files-job" and full["training"]["seed"] == 0
    files = demo.request("GET", f"{base}/{swarm.files_job.id}/files.json").json()
    assert files["files"] == [{"path": "data/train.jsonl", "sha256": swarm.data_file_sha256, "size": files["files"][0]["size"]}]

    job_id = swarm.running.id
    assert demo.request("GET", f"{base}/{job_id}/provenance.json").status == 404
    assert demo.request("GET", f"{base}/{job_id}/model-card.md").status == 404
    root = swarm.coord.data_dir / "artifacts" / job_id
    (root / "artifact").mkdir(parents=True)
    (root / "artifact" / "README.md").write_text("# demo-llama\n\nTrained by <b>volunteers</b>.\n")
    (root / "provenance.json").write_text(json.dumps({"job_id": job_id, "contributors": ["ada"], "epochs": 12}))
    provenance = demo.request("GET", f"{base}/{job_id}/provenance.json")
    assert provenance.status == 200 and provenance.json()["contributors"] == ["ada"]
    card = demo.request("GET", f"{base}/{job_id}/model-card.md")
    assert card.status == 200 and card.headers["Content-Type"].startswith("text/markdown")
    assert "Trained by <b>volunteers</b>." in card.text
    detail = demo.get_json(f"{base}/{job_id}")
    assert detail["has_provenance"] and detail["has_model_card"]
    page = demo.request("GET", f"{swarm.url}/jobs/{job_id}/transparency").text
    assert "Trained by &lt;b&gt;volunteers&lt;/b&gt;." in page and "provenance.json" in page


def test_swarm_online_series_is_sampled(swarm, demo):
    online = demo.get_json(f"{swarm.url}/api/v1/volunteers?status=online")["total"]
    deadline = time.monotonic() + 10
    while True:
        series = demo.get_json(f"{swarm.url}/api/v1/swarm/online")
        points = series["points"]
        if (len(points) >= 3 and points[-1]["online"] == online) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert series["interval_seconds"] == pytest.approx(0.5)
    assert len(points) >= 3 and points[-1]["online"] == online
    assert points[-1]["samples_per_second"] > 0
    assert [p["at"] for p in points] == sorted(p["at"] for p in points)


def test_openapi_describes_the_dashboard_api(swarm, demo):
    spec = demo.get_json(f"{swarm.url}/openapi.json")
    for path in (
        "/api/v1/volunteers", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/progress", "/api/v1/contributions",
        "/api/v1/ledger", "/api/v1/ledger/verify", "/api/v1/jobs/{job_id}/approve", "/api/v1/volunteers/{volunteer_id}/ban",
    ):
        assert path in spec["paths"], path
    schemas = spec["components"]["schemas"]
    assert {"VolunteerList", "JobDetail", "ProgressOut", "Leaderboard", "LedgerVerificationOut"} <= set(schemas)
    approve = spec["paths"]["/api/v1/jobs/{job_id}/approve"]["post"]
    assert "403" in approve["responses"]
    assert "/" not in spec["paths"] and "/signin" not in spec["paths"]  # pages stay out of the API description


def test_metrics_in_prometheus_format(swarm, demo):
    text = demo.request("GET", f"{swarm.url}/metrics").text
    assert f'essaim_volunteers{{status="online"}} {len(swarm.members)}' in text
    assert 'essaim_jobs{status="running"} 1' in text
    assert f'essaim_job_samples_per_second{{job="{swarm.running.id}"}}' in text
    assert "essaim_heartbeat_latency_seconds_count" in text and 'essaim_heartbeat_latency_seconds_bucket{le="+Inf"}' in text
    assert "essaim_store_errors_total 0" in text


def test_admin_actions_with_an_admin_bearer_token(swarm, demo):
    admin = {"Authorization": f"Bearer {swarm.coord.admin_token}"}
    job = swarm.files_job.id
    answer = demo.request("POST", f"{swarm.url}/api/v1/jobs/{job}/priority", headers=admin, json_body={"priority": 7})
    assert answer.status == 200 and answer.json()["priority"] == 7
    answer = demo.request("POST", f"{swarm.url}/api/v1/jobs/{job}/approve", headers=admin)
    assert answer.status == 200 and answer.json()["status"] == "queued"
    again = demo.request("POST", f"{swarm.url}/api/v1/jobs/{job}/approve", headers=admin)
    assert again.status == 409 and "not awaiting approval" in again.json()["detail"]
    assert demo.request("POST", f"{swarm.url}/api/v1/jobs/{job}/pause", headers=admin).json()["status"] == "paused"
    assert demo.request("POST", f"{swarm.url}/api/v1/jobs/{job}/resume", headers=admin).json()["status"] == "queued"
    bad = demo.request("POST", f"{swarm.url}/api/v1/jobs/{job}/priority", headers=admin, json_body={"priority": 10**6})
    assert bad.status == 422
    with swarm.coord.client(swarm.coord.admin_token) as client:
        seen = client.get_job(job)
        assert seen.status == JobStatus.QUEUED and seen.priority == 7
    store = swarm.open_store()
    try:  # what its runner would have written while it trained
        store.update_job_metrics(job, JobMetrics(epoch=1, samples=640, samples_per_second=9.0, loss=2.0, live_peers=2))
    finally:
        store.close()
    live = demo.get_json(f"{swarm.url}/api/v1/jobs/{job}")["metrics"]
    assert (live["samples_per_second"], live["live_peers"], live["loss"]) == (9.0, 2, 2.0)
    cancelled = demo.request(
        "POST", f"{swarm.url}/api/v1/jobs/{job}/cancel", headers=admin, json_body={"reason": "duplicate of demo-llama"}
    )
    assert cancelled.status == 200 and cancelled.json()["status_reason"] == "duplicate of demo-llama"
    ended = demo.get_json(f"{swarm.url}/api/v1/jobs/{job}")["metrics"]  # no throughput, no peers: it ended
    assert (ended["samples_per_second"], ended["live_peers"], ended["loss"], ended["epoch"]) == (0.0, 0, 2.0, 1)
    with swarm.coord.client(swarm.coord.admin_token) as client:
        assert client.get_job(job).status == JobStatus.CANCELLED
    assert demo.request("POST", f"{swarm.url}/api/v1/jobs/nope/cancel", headers=admin).status == 404


def test_ban_through_the_api_stops_the_volunteer(swarm, demo):
    member = swarm.member("linus")
    admin = {"Authorization": f"Bearer {swarm.coord.admin_token}"}
    answer = demo.request(
        "POST", f"{swarm.url}/api/v1/volunteers/{member.volunteer_id}/ban", headers=admin,
        json_body={"reason": "bad gradients", "undo": True},
    )
    assert answer.status == 200 and answer.json()["status"] == "banned" and answer.json()["reason"] == "bad gradients"
    with swarm.coord.client(swarm.coord.admin_token) as client:
        status = {v.id: v.status for v in client.list_volunteers()}
    assert status[member.volunteer_id] == VolunteerStatus.BANNED
    with swarm.coord.client(member.token) as client, pytest.raises(EssaimError):
        client.heartbeat(volunteer_id=member.volunteer_id, state="idle")
    # and every running job's runner is asked to undo its rounds (read from the store)
    with sqlite3.connect(swarm.coord.data_dir / "coordinator.db") as conn:
        (requests,) = conn.execute("SELECT value FROM settings WHERE key = 'undo_requests'").fetchone()
    assert member.volunteer_id in json.loads(requests)


def test_tampered_ledger_row_is_detected(swarm, demo):
    db = swarm.coord.data_dir / "coordinator.db"
    with sqlite3.connect(db) as conn:
        (original,) = conn.execute("SELECT samples FROM ledger WHERE seq = 4").fetchone()
        conn.execute("UPDATE ledger SET samples = samples + 1000 WHERE seq = 4")
    try:
        verdict = demo.get_json(f"{swarm.url}/api/v1/ledger/verify")
        assert not verdict["ok"] and verdict["first_bad_seq"] == 4 and verdict["checked"] == 3
        assert "row 4 was altered" in verdict["message"]
        page = demo.request("GET", f"{swarm.url}/ledger").text
        assert 'data-ok="false"' in page and "FAILED at row 4" in page
        assert 'id="ledger-row-4" data-seq="4" class="bad"' in page
        job_page = demo.request("GET", f"{swarm.url}/jobs/{swarm.running.id}/transparency").text
        assert 'data-first-bad-seq="4"' in job_page
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE ledger SET samples = ? WHERE seq = 4", (original,))
    assert demo.get_json(f"{swarm.url}/api/v1/ledger/verify")["ok"]


def test_openapi_says_who_may_call_each_operation(swarm, demo):
    spec = demo.get_json(f"{swarm.url}/openapi.json")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {**schemes["bearerToken"], "type": "http", "scheme": "bearer"}
    assert schemes["adminSession"]["in"] == "cookie" and schemes["csrfToken"]["name"] == "X-CSRF-Token"
    read = [{}, {"bearerToken": []}, {"adminSession": []}]  # public pages: no credential needed to read
    act = [{"bearerToken": []}, {"adminSession": [], "csrfToken": []}]
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    assert operations and all("security" in op for _, _, op in operations), operations
    for path, method, op in operations:
        if path in ("/healthz", "/metrics", "/api/v1/status"):
            assert op["security"] == [], path
        elif method == "get":
            assert op["security"] == read, path
        else:
            assert op["security"] == act, (method, path)
    # and the server holds to it: an action without a credential is refused (with one: the admin tests)
    job = f"/api/v1/jobs/{swarm.awaiting.id}/priority"
    assert demo.request("POST", swarm.url + job, json_body={"priority": 2}).status == 403


def test_the_docs_page_shows_every_operation_of_the_description(swarm, demo):
    spec = demo.get_json(f"{swarm.url}/openapi.json")
    page = demo.request("GET", f"{swarm.url}/docs")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    for path, item in spec["paths"].items():
        for method in item:
            assert f'data-method="{method.upper()}" data-path="{path}"' in page.text, (method, path)
    assert "Authorization: Bearer" in page.text and "X-CSRF-Token" in page.text
    assert "an admin: bearer token, or sign-in cookie with its CSRF token" in page.text
    assert 'href="/docs"' in demo.request("GET", f"{swarm.url}/jobs").text  # every page's footer links it
