"""Who may see and do what on the dashboard, and that nothing unsafe gets through.

Public pages need no token; admin actions without an admin token get 403 (whatever else is
presented); the admin sign-in gives an HttpOnly, SameSite=Strict session cookie and every
cookie-authenticated POST needs its CSRF token; no token ever shows in a page, an API answer or
the coordinator's log; a volunteer named ``<script>alert(1)</script>`` and a recipe description
holding HTML are escaped; pages carry a self-only CSP and no inline script, style or handler.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import quote, urlencode

import pytest
from essaim.protocol.types import JobStatus

pytestmark = pytest.mark.timeout(240)

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def page_paths(swarm) -> list[str]:
    xss = swarm.member("<script>alert(1)</script>")
    return [
        "/", "/jobs", "/jobs?show=awaiting", f"/jobs/{swarm.running.id}", f"/jobs/{swarm.running.id}/transparency",
        f"/jobs/{swarm.files_job.id}/transparency", "/contributions", f"/contributions?job={swarm.running.id}&order=compute",
        f"/teams?{urlencode({'name': 'lyon'})}", f"/teams?{urlencode({'name': xss.team})}", f"/volunteers/{xss.volunteer_id}",
        "/ledger", "/signin",
    ]


def sign_in(swarm, demo, token: str | None = None) -> tuple[str, str]:
    """Sign in through the form; returns (Cookie header value, CSRF token of the session)."""
    answer = demo.request("POST", f"{swarm.url}/signin", headers=FORM,
                          body=urlencode({"token": token or swarm.coord.admin_token, "next": "/jobs"}))
    assert answer.status == 303, answer.text[:300]
    cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    page = demo.request("GET", f"{swarm.url}/jobs", headers={"Cookie": cookie}).text
    return cookie, CSRF_RE.search(page).group(1)


def test_public_pages_need_no_token(swarm, demo):
    for path in page_paths(swarm):
        answer = demo.request("GET", swarm.url + path)
        assert answer.status == 200, (path, answer.status)
        assert answer.headers["Content-Type"].startswith("text/html")
        assert 'action="/admin/' not in answer.text and "csrf_token" not in answer.text
    for asset in ("/static/app.css", "/static/charts.js", "/static/app.js", "/static/favicon.svg"):
        assert demo.request("GET", swarm.url + asset).status == 200, asset
    missing = demo.request("GET", f"{swarm.url}/jobs/no-such-job")
    assert missing.status == 404 and "no job with id" in missing.text


@pytest.mark.parametrize("who", ["nobody", "researcher", "volunteer", "unknown token", "not bearer"])
def test_admin_actions_without_an_admin_token_get_403(swarm, demo, who):
    headers = {
        "nobody": {},
        "researcher": {"Authorization": f"Bearer {swarm.researcher_token}"},
        "volunteer": {"Authorization": f"Bearer {swarm.member('ada').token}"},
        "unknown token": {"Authorization": "Bearer essaim_" + "x" * 43},
        "not bearer": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }[who]
    job, volunteer = swarm.awaiting.id, swarm.member("grace").volunteer_id
    posts = [(f"/api/v1/jobs/{job}/{a}", None) for a in ("approve", "reject", "pause", "resume", "cancel")]
    posts += [(f"/api/v1/jobs/{job}/priority", {"priority": 3}), (f"/api/v1/volunteers/{volunteer}/ban", {"reason": "x"})]
    for path, body in posts:
        answer = demo.request("POST", swarm.url + path, headers=headers, json_body=body)
        assert answer.status == 403, (who, path, answer.status, answer.text)
    for path in (f"/admin/jobs/{job}/approve", f"/admin/jobs/{job}/priority", f"/admin/volunteers/{volunteer}/ban"):
        answer = demo.request("POST", swarm.url + path, headers={**headers, **FORM}, body="csrf_token=guess&priority=1")
        assert answer.status == 403, (who, path, answer.status)
    with swarm.coord.client(swarm.coord.admin_token) as client:
        assert client.get_job(job).status == JobStatus.AWAITING_APPROVAL
        assert {v.id: v.status.value for v in client.list_volunteers()}[volunteer] == "online"


def test_signin_gives_a_strict_http_only_session_cookie(swarm, demo):
    wrong = demo.request("POST", f"{swarm.url}/signin", headers=FORM, body="token=essaim_not-a-real-token&next=/")
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers and "not an admin token" in wrong.text
    researcher = demo.request("POST", f"{swarm.url}/signin", headers=FORM, body=urlencode({"token": swarm.researcher_token}))
    assert researcher.status == 401 and "Set-Cookie" not in researcher.headers
    evil = demo.request("POST", f"{swarm.url}/signin", headers={**FORM, "Origin": "http://evil.example"},
                        body=urlencode({"token": swarm.coord.admin_token}))
    assert evil.status == 403

    answer = demo.request("POST", f"{swarm.url}/signin", headers=FORM,
                          body=urlencode({"token": swarm.coord.admin_token, "next": "//evil.example/x"}))
    assert answer.status == 303 and answer.headers["Location"] == "/"
    set_cookie = answer.headers["Set-Cookie"]
    flags = [part.strip().lower() for part in set_cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    name, value = set_cookie.split(";", 1)[0].split("=", 1)
    assert name == "essaim_session" and value and swarm.coord.admin_token not in set_cookie

    page = demo.request("GET", f"{swarm.url}/jobs/{swarm.awaiting.id}", headers={"Cookie": f"{name}={value}"}).text
    assert "Sign out" in page and 'action="/admin/jobs/' in page and CSRF_RE.search(page)
    reads = demo.request("GET", f"{swarm.url}/api/v1/jobs", headers={"Cookie": f"{name}={value}"})
    assert reads.status == 200
    forged = demo.request("GET", f"{swarm.url}/jobs", headers={"Cookie": "essaim_session=forged"}).text
    assert "Sign out" not in forged


def test_cookie_posts_need_the_sessions_csrf_token(swarm, demo):
    cookie, csrf = sign_in(swarm, demo)
    url = f"{swarm.url}/api/v1/jobs/{swarm.awaiting.id}/priority"
    body = {"priority": 4}
    assert demo.request("POST", url, headers={"Cookie": cookie}, json_body=body).status == 403
    assert demo.request("POST", url, headers={"Cookie": cookie, "X-CSRF-Token": "wrong"}, json_body=body).status == 403
    foreign = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert demo.request("POST", url, headers=foreign, json_body=body).status == 403
    own = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": swarm.url}
    answer = demo.request("POST", url, headers=own, json_body=body)
    assert answer.status == 200 and answer.json()["priority"] == 4

    form_url = f"{swarm.url}/admin/jobs/{swarm.awaiting.id}/priority"
    no_token = demo.request("POST", form_url, headers={"Cookie": cookie, **FORM}, body="priority=6")
    assert no_token.status == 403
    done = demo.request("POST", form_url, headers={"Cookie": cookie, **FORM},
                        body=urlencode({"csrf_token": csrf, "priority": "6"}))
    assert done.status == 303 and done.headers["Location"] == f"/jobs/{swarm.awaiting.id}"
    page = demo.request("GET", swarm.url + done.headers["Location"], headers={"Cookie": cookie}).text
    assert "now has priority 6" in page
    with swarm.coord.client(swarm.coord.admin_token) as client:
        assert client.get_job(swarm.awaiting.id).priority == 6


def test_signout_ends_the_session(swarm, demo):
    cookie, csrf = sign_in(swarm, demo)
    assert demo.request("POST", f"{swarm.url}/signout", headers={"Cookie": cookie, **FORM}, body="").status == 403
    out = demo.request("POST", f"{swarm.url}/signout", headers={"Cookie": cookie, **FORM}, body=urlencode({"csrf_token": csrf}))
    assert out.status == 303 and "essaim_session=" in out.headers["Set-Cookie"]
    after = demo.request("POST", f"{swarm.url}/api/v1/jobs/{swarm.awaiting.id}/priority",
                         headers={"Cookie": cookie, "X-CSRF-Token": csrf}, json_body={"priority": 1})
    assert after.status == 403


def test_tokens_never_appear_in_pages_answers_or_the_log(swarm, demo):
    cookie, _ = sign_in(swarm, demo)
    bodies = []
    for path in page_paths(swarm):
        bodies.append(demo.request("GET", swarm.url + path).text)
        bodies.append(demo.request("GET", swarm.url + path, headers={"Cookie": cookie}).text)
    for path in ("/api/v1/volunteers", "/api/v1/jobs", f"/api/v1/jobs/{swarm.running.id}", "/api/v1/contributions",
                 "/api/v1/ledger", "/openapi.json", "/metrics", f"/api/v1/jobs/{swarm.running.id}/recipe.json"):
        bodies.append(demo.request("GET", swarm.url + path, headers={"Authorization": f"Bearer {swarm.coord.admin_token}"}).text)
    demo.request("POST", f"{swarm.url}/signin", headers=FORM, body="token=essaim_typo-of-a-token-0000000000")
    log = swarm.coord.log()
    assert "signed in to the dashboard" in log  # the log does speak of sign-ins...
    for token in [*swarm.tokens, "essaim_typo-of-a-token-0000000000"]:
        assert token not in log  # ...but never of tokens
        for body in bodies:
            assert token not in body


def test_unsafe_text_is_escaped(swarm, demo):
    xss = swarm.member("<script>alert(1)</script>")
    pages = {path: demo.request("GET", swarm.url + path).text for path in page_paths(swarm)}
    for path, html in pages.items():
        assert "<script>alert" not in html, path
        assert "<img src=x" not in html and "<i onmouseover" not in html, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[f"/volunteers/{xss.volunteer_id}"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["/"]
    job_page = pages[f"/jobs/{swarm.running.id}"]
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in job_page and "&amp; &lt;b&gt;bold&lt;/b&gt;" in job_page
    # the job's sample continuations (samples.json), escaped like everything else
    assert 'id="samples"' in job_page and "return a + b" in job_page and "not yet" in job_page
    assert "&lt;img src=x onerror=alert(2)&gt;" in job_page and "checkpoint of epoch 4" in job_page
    assert f'href="/teams?{urlencode({"name": xss.team})}"' in pages["/contributions"]


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_pages_allow_only_their_own_scripts_and_styles(swarm, demo):
    cookie, _ = sign_in(swarm, demo)
    for path in page_paths(swarm):
        answer = demo.request("GET", swarm.url + path, headers={"Cookie": cookie})
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        markup = _Markup()
        markup.feed(answer.text)
        for tag, attrs in markup.tags:
            assert not any(name.startswith("on") for name in attrs), (path, tag, attrs)
            assert "style" not in attrs, (path, tag, attrs)
            if tag == "script":
                assert attrs.get("type") == "application/json" or (attrs.get("src") or "").startswith("/static/"), (path, attrs)
            if tag == "link":
                assert (attrs.get("href") or "").startswith("/static/"), (path, attrs)
            assert tag != "style", path
            for url_attr in ("src", "href", "action"):
                value = attrs.get(url_attr) or ""
                assert not value.startswith(("http:", "https:", "//", "javascript:")), (path, tag, attrs)
    api = demo.request("GET", f"{swarm.url}/api/v1/jobs")
    assert "default-src 'self'" in api.headers["Content-Security-Policy"]


def test_private_dashboard_when_public_pages_are_off(demo, launch_coordinator, tmp_path):
    coord = launch_coordinator(tmp_path / "private", "--no-public-pages", env=demo.SAMPLE_ENV)
    url = coord.http_url
    home = demo.request("GET", url + "/jobs?show=all")
    assert home.status == 303 and home.headers["Location"] == "/signin?next=" + quote("/jobs?show=all", safe="")
    assert demo.request("GET", url + "/api/v1/jobs").status == 401
    assert demo.request("GET", url + "/api/v1/ledger.jsonl").status == 401
    for open_path in ("/healthz", "/metrics", "/signin", "/static/app.css", "/openapi.json", "/docs"):
        assert demo.request("GET", url + open_path).status == 200, open_path
    # the description says so: no read without a credential here
    reads = demo.get_json(url + "/openapi.json")["paths"]["/api/v1/jobs"]["get"]["security"]
    assert reads == [{"bearerToken": []}, {"adminSession": []}], reads
    assert "this coordinator&#39;s pages are private" in demo.request("GET", url + "/docs").text
    signin = demo.request("GET", url + "/signin").text
    assert "pages are private" in signin
    bearer = {"Authorization": f"Bearer {coord.admin_token}"}
    assert demo.request("GET", url + "/api/v1/jobs", headers=bearer).status == 200
    # private to everyone but admins: a researcher's (or a self-registered volunteer's) token reads nothing
    researcher = {"Authorization": f"Bearer {demo.create_token(coord.data_dir, 'researcher', 'r')}"}
    for path in ("/api/v1/jobs", "/api/v1/volunteers", "/api/v1/contributions"):
        assert demo.request("GET", url + path, headers=researcher).status == 401, path
    assert demo.request("GET", url + "/jobs", headers=researcher).status == 303
    answer = demo.request("POST", url + "/signin", headers=FORM, body=urlencode({"token": coord.admin_token, "next": "/jobs"}))
    cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    assert answer.headers["Location"] == "/jobs"
    assert demo.request("GET", url + "/jobs", headers={"Cookie": cookie}).status == 200
    assert demo.request("GET", url + "/api/v1/volunteers", headers={"Cookie": cookie}).status == 200
