"""How volunteers take part in a job's swarm, on the dashboard: admins see each one's reachability,
the IP it was seen from and its last round; a volunteer sees its own (without the IP); an anonymous
visitor, a researcher or another volunteer sees none of it, and no public page or answer holds the IP.

The rows are written through the store, as each job's runner writes them
(:mod:`essaim.coordinator.swarm_view`), into the demo swarm's coordinator.
"""

from __future__ import annotations

import re
from html import unescape
from urllib.parse import urlencode

import pytest
from essaim.coordinator.store import SwarmPeer

pytestmark = pytest.mark.timeout(240)

ADA_IP, GRACE_IP, XSS_IP = "203.0.113.7", "198.51.100.2", "192.0.2.66"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def peers(swarm) -> dict[str, str]:
    """Rows for three volunteers of the running job; returns pseudonym -> volunteer id."""
    job_id = swarm.running.id
    ids = {m.name: m.volunteer_id for m in swarm.members}
    store = swarm.open_store()
    try:
        store.upsert_swarm_peers([
            SwarmPeer(job_id=job_id, volunteer_id=ids["ada"], reachability="nat", observed=ADA_IP,
                      last_round_epoch=5, averaged_in_last_round=True),
            SwarmPeer(job_id=job_id, volunteer_id=ids["grace"], reachability="public", observed=GRACE_IP,
                      last_round_epoch=5, averaged_in_last_round=True),
            SwarmPeer(job_id=job_id, volunteer_id=ids["<script>alert(1)</script>"], reachability="unknown",
                      observed=XSS_IP, last_round_epoch=5, averaged_in_last_round=False),
        ])
    finally:
        store.close()
    return ids


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_cookie(swarm, demo) -> str:
    answer = demo.request("POST", f"{swarm.url}/signin", headers=FORM,
                          body=urlencode({"token": swarm.coord.admin_token, "next": "/"}))
    assert answer.status == 303, answer.text[:300]
    return answer.headers["Set-Cookie"].split(";", 1)[0]


def text(html: str) -> str:
    """A page's visible text, tags dropped and entities decoded, with whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_an_admin_gets_every_volunteers_part_in_the_job_through_the_api(swarm, demo, peers):
    data = demo.get_json(f"{swarm.url}/api/v1/jobs/{swarm.running.id}/peers", headers=bearer(swarm.coord.admin_token))
    rows = {p["volunteer_name"]: p for p in data["items"]}
    assert set(rows) == {"ada", "grace", "<script>alert(1)</script>"}
    ada = rows["ada"]
    assert ada["volunteer_id"] == peers["ada"] and ada["job_name"] == "demo-llama"
    assert (ada["reachability"], ada["reachability_text"]) == ("nat", "NAT-ed (via the coordinator's peer)")
    assert ada["observed"] == ADA_IP
    assert (ada["last_round_epoch"], ada["averaged_in_last_round"], ada["last_round_text"]) == (
        5, True, "averaged in epoch 5")
    assert rows["grace"]["reachability_text"] == "public" and rows["grace"]["observed"] == GRACE_IP
    xss = rows["<script>alert(1)</script>"]
    assert (xss["reachability_text"], xss["last_round_text"]) == ("unknown", "not in the last round (epoch 5)")
    assert demo.request("GET", f"{swarm.url}/api/v1/jobs/nope/peers", headers=bearer(swarm.coord.admin_token)).status == 404

    mine = demo.get_json(f"{swarm.url}/api/v1/volunteers/{peers['ada']}/peers", headers=bearer(swarm.coord.admin_token))
    assert [(p["job_id"], p["observed"]) for p in mine["items"]] == [(swarm.running.id, ADA_IP)]


def test_an_admin_sees_reachability_ip_and_last_round_on_the_pages(swarm, demo, peers):
    cookie = {"Cookie": admin_cookie(swarm, demo)}
    job_html = demo.request("GET", f"{swarm.url}/jobs/{swarm.running.id}", headers=cookie).text
    assert 'id="swarm-peers-table"' in job_html and "<script>alert" not in job_html
    row = re.search(rf'<tr data-volunteer-id="{peers["ada"]}">(.*?)</tr>', job_html, re.S)
    assert row is not None
    assert text(row.group(1)).startswith(f"ada NAT-ed (via the coordinator's peer) {ADA_IP} averaged in epoch 5")
    page = text(job_html)
    assert f"grace public {GRACE_IP} averaged in epoch 5" in page
    assert f"unknown {XSS_IP} not in the last round (epoch 5)" in page

    swarm_html = demo.request("GET", f"{swarm.url}/", headers=cookie).text
    row = re.search(rf'<tr data-volunteer-id="{peers["grace"]}">(.*?)</tr>', swarm_html, re.S)
    assert row is not None and f"public averaged in epoch 5 {GRACE_IP}" in text(row.group(1))

    volunteer_html = demo.request("GET", f"{swarm.url}/volunteers/{peers['ada']}", headers=cookie).text
    assert f"demo-llama NAT-ed (via the coordinator's peer) {ADA_IP} averaged in epoch 5" in text(volunteer_html)


def test_a_volunteer_sees_its_own_part_without_the_ip(swarm, demo, peers):
    ada = bearer(swarm.member("ada").token)
    page = demo.request("GET", f"{swarm.url}/volunteers/{peers['ada']}", headers=ada).text
    assert "demo-llama NAT-ed (via the coordinator's peer) averaged in epoch 5" in text(page)
    assert ADA_IP not in page and "only you see this" in page
    other = demo.request("GET", f"{swarm.url}/volunteers/{peers['grace']}", headers=ada).text
    assert 'id="swarm"' not in other and GRACE_IP not in other

    mine = demo.get_json(f"{swarm.url}/api/v1/volunteers/{peers['ada']}/peers", headers=ada)["items"]
    assert [(p["reachability"], p["averaged_in_last_round"], p["observed"]) for p in mine] == [("nat", True, None)]
    assert demo.request("GET", f"{swarm.url}/api/v1/volunteers/{peers['grace']}/peers", headers=ada).status == 403
    assert demo.request("GET", f"{swarm.url}/api/v1/jobs/{swarm.running.id}/peers", headers=ada).status == 403


@pytest.mark.parametrize("who", ["anonymous", "researcher"])
def test_nobody_else_sees_it_and_public_pages_never_show_the_ip(swarm, demo, peers, who):
    headers = {} if who == "anonymous" else bearer(swarm.researcher_token)
    job = swarm.running.id
    for path in (f"/api/v1/jobs/{job}/peers", f"/api/v1/volunteers/{peers['ada']}/peers"):
        answer = demo.request("GET", swarm.url + path, headers=headers)
        assert answer.status == 403, (who, path, answer.status)
    paths = ["/", f"/jobs/{job}", f"/jobs/{job}/transparency", "/contributions", "/ledger",
             *(f"/volunteers/{vid}" for vid in peers.values()),
             "/api/v1/volunteers", f"/api/v1/jobs/{job}", "/api/v1/jobs", "/api/v1/contributions"]
    for path in paths:
        answer = demo.request("GET", swarm.url + path, headers=headers)
        assert answer.status == 200, (who, path, answer.status)
        for ip in (ADA_IP, GRACE_IP, XSS_IP):
            assert ip not in answer.text, (who, path)
        assert "NAT-ed" not in answer.text and "swarm-peers" not in answer.text, (who, path)
        assert "averaged in epoch" not in answer.text, (who, path)


def test_openapi_describes_the_peers_reads(swarm, demo):
    spec = demo.get_json(f"{swarm.url}/openapi.json")
    for path in ("/api/v1/jobs/{job_id}/peers", "/api/v1/volunteers/{volunteer_id}/peers"):
        assert "403" in spec["paths"][path]["get"]["responses"], path
    fields = spec["components"]["schemas"]["SwarmPeerOut"]["properties"]
    assert {"reachability", "observed", "last_round_epoch", "averaged_in_last_round"} <= set(fields)
    assert "admins only" in fields["observed"]["description"]
