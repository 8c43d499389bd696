"""The dashboard in a real browser (headless Chromium) against a coordinator with a demo swarm.

The pages render with the live swarm and their charts draw every point; an admin signs in,
approves a job and bans a volunteer through the pages, and both show over gRPC; unsafe names
and descriptions never run as script; a tampered ledger row turns the verification red. No page
logs a console error, so the Content-Security-Policy blocks nothing the pages need.
"""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
from essaim.protocol.errors import EssaimError
from essaim.protocol.types import JobStatus, VolunteerStatus

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def chart_points(page, chart_id: str) -> tuple[int, int]:
    """(points the chart says it draws, SVG point markers in it)."""
    box = page.locator(f"#{chart_id}")
    return int(box.get_attribute("data-points") or 0), box.locator("circle.pt[data-x]").count()


def test_pages_render_the_live_swarm_with_charts(swarm, watch, screenshot):
    page = watch.page
    page.goto(swarm.url + "/")
    page.wait_for_function("document.querySelector('#chart-online').getAttribute('data-points') >= 2")
    assert page.locator("#volunteers-table tbody tr").count() == len(swarm.members)
    assert page.inner_text("#stat-online").strip() == str(len(swarm.members))
    points, dots = chart_points(page, "chart-online")
    assert points >= 2 and dots == points
    assert chart_points(page, "chart-throughput")[0] >= 2
    row = page.locator(f"tr[data-volunteer-id='{swarm.member('ada').volunteer_id}']")
    # a visitor sees pseudonyms and contributions; hardware and live state are the volunteer's own
    assert "private" in row.inner_text() and "NVIDIA RTX 4090" not in row.inner_text()
    assert "training" not in row.inner_text()
    shots = [screenshot(page, "dashboard-swarm")]

    page.goto(f"{swarm.url}/jobs/{swarm.running.id}")
    assert chart_points(page, "chart-loss") == (swarm.progress_points, swarm.progress_points)
    assert chart_points(page, "chart-eval") == (swarm.eval_points, swarm.eval_points)
    assert chart_points(page, "chart-sps")[0] == swarm.progress_points
    assert chart_points(page, "chart-peers")[0] == swarm.progress_points
    assert "5 / 12" in page.inner_text(".stats")
    page.hover("#chart-loss svg", position={"x": 200, "y": 80})
    assert page.locator("#chart-loss .chart-tip").is_visible()
    shots.append(screenshot(page, "dashboard-job"))

    page.goto(f"{swarm.url}/jobs/{swarm.running.id}/transparency")
    assert page.get_attribute("#ledger-verification", "data-ok") == "true"
    assert "name: demo-llama" in page.inner_text("#recipe")
    assert page.locator("table.ledger tbody tr").count() == swarm.ledger_rows
    shots.append(screenshot(page, "dashboard-transparency"))

    page.goto(f"{swarm.url}/jobs/{swarm.files_job.id}/transparency")
    assert swarm.data_file_sha256 in page.inner_text("#files-table")

    ada = swarm.member("ada")  # a volunteer's credit over time: one point per ledger row of hers
    page.goto(f"{swarm.url}/volunteers/{ada.volunteer_id}")
    store = swarm.open_store()
    try:
        hers = store.list_ledger(volunteer_id=ada.volunteer_id)
    finally:
        store.close()
    assert hers and chart_points(page, "chart-credit") == (len(hers), len(hers))
    last = page.locator("#chart-credit circle.pt[data-x]").last
    assert float(last.get_attribute("data-y")) == sum(e.samples for e in hers)
    shots.append(screenshot(page, "dashboard-volunteer"))

    page.goto(swarm.url + "/contributions")
    assert page.locator("#leaderboard tbody tr").count() == 3
    assert "lyon" in page.inner_text("#teams")
    shots.append(screenshot(page, "dashboard-contributions"))

    page.goto(swarm.url + "/docs")  # the JSON API's reference, read from /openapi.json
    assert page.locator(".api-op[data-path='/api/v1/jobs/{job_id}/approve'][data-method='POST']").count() == 1
    assert page.locator("#api-schemes .api-scheme").count() == 3
    shots.append(screenshot(page, "dashboard-api"))

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(swarm.url + "/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shots.append(screenshot(page, "dashboard-swarm-phone"))
    page.goto(swarm.url + "/docs")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shots.append(screenshot(page, "dashboard-api-phone"))
    assert watch.errors == [] and watch.dialogs == []
    print("screenshots:", *map(str, shots), sep="\n  ")


def test_admin_signs_in_approves_a_job_and_bans_a_volunteer(swarm, watch, screenshot):
    page = watch.page
    page.goto(swarm.url + "/jobs?show=awaiting")
    assert page.locator("[data-action=approve]").count() == 0  # not signed in: no admin controls
    page.click("text=Admin sign-in")
    page.fill("#token", swarm.coord.admin_token)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs\?show=awaiting$"))
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("essaim_session", True, "Strict")]
    assert swarm.coord.admin_token not in cookies[0]["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read the session
    page.goto(swarm.url + "/")  # an admin sees each volunteer's machine and state
    row = page.locator(f"tr[data-volunteer-id='{swarm.member('ada').volunteer_id}']")
    assert "NVIDIA RTX 4090" in row.inner_text() and "training" in row.inner_text()
    page.goto(swarm.url + "/jobs?show=awaiting")

    page.click(f"tr[data-job-id='{swarm.awaiting.id}'] [data-action=approve]")
    page.wait_for_selector("[data-flash=ok]")
    assert "poems approved" in page.inner_text("[data-flash=ok]")
    with swarm.coord.client(swarm.coord.admin_token) as client:
        assert client.get_job(swarm.awaiting.id).status == JobStatus.QUEUED

    page.goto(f"{swarm.url}/jobs/{swarm.awaiting.id}")
    assert page.locator("#admin [data-action=pause]").is_visible()
    screenshot(page, "dashboard-admin-job", full_page=False)

    grace = swarm.member("grace")
    page.goto(f"{swarm.url}/volunteers/{grace.volunteer_id}")
    page.fill("#ban-reason", "sent <b>poisoned</b> gradients")
    page.click("[data-action=ban]")
    page.wait_for_selector("[data-flash=ok]")
    assert page.get_attribute("#volunteer-name [data-status]", "data-status") == "banned"
    assert "sent <b>poisoned</b> gradients" in page.inner_text(".alert.bad")
    screenshot(page, "dashboard-admin-ban", full_page=False)
    with swarm.coord.client(swarm.coord.admin_token) as client:
        banned = {v.id: v for v in client.list_volunteers()}[grace.volunteer_id]
        assert banned.status == VolunteerStatus.BANNED and banned.reason == "sent <b>poisoned</b> gradients"
    with swarm.coord.client(grace.token) as client, pytest.raises(EssaimError):
        client.heartbeat(volunteer_id=grace.volunteer_id, state="training")

    assert swarm.coord.admin_token not in page.content()
    page.click("text=Sign out")
    page.wait_for_url(swarm.url + "/")
    assert page.locator("text=Admin sign-in").is_visible()
    assert watch.errors == [] and watch.dialogs == []


def test_unsafe_names_and_descriptions_never_run(swarm, watch, demo):
    page = watch.page
    xss = swarm.member(demo.XSS_NAME)
    page.goto(f"{swarm.url}/volunteers/{xss.volunteer_id}")
    assert page.inner_text("#volunteer-name").startswith(demo.XSS_NAME)
    page.hover(f"a:text-is('{demo.XSS_TEAM}')")
    page.goto(f"{swarm.url}/jobs/{swarm.running.id}")
    assert page.inner_text("#job-description") == demo.XSS_DESCRIPTION
    for path in ("/", "/contributions", f"/jobs/{swarm.running.id}/transparency", "/ledger", "/jobs"):
        page.goto(swarm.url + path)
        assert page.locator("img[src='x']").count() == 0
    assert watch.dialogs == []
    assert watch.errors == []


def test_the_model_card_reads_as_a_document_and_its_words_stay_text(swarm, watch, demo, screenshot):
    """A model card as write_artifact makes it, carrying a researcher's description and volunteers'
    pseudonyms (here hostile ones), is shown rendered: headings, a table, lists; no markup of
    theirs runs or loads, no link of theirs goes anywhere but http(s)."""
    card = swarm.coord.data_dir / "artifacts" / swarm.running.id / "artifact" / "README.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text(
        f"# demo-llama\n\n{demo.XSS_DESCRIPTION}\n\n## Evaluation\n\n| metric | before | after |\n|---|---:|---:|\n"
        f"| exact_match | 0.000 | 0.915 |\n\n## Volunteers\n\n- {demo.XSS_NAME} ({demo.XSS_TEAM})\n"
        "- [grace](javascript:alert(5)) ![x](javascript:alert(6))\n\n```\nepoch,loss\n0,2.31\n```\n")
    page = watch.page
    page.goto(f"{swarm.url}/jobs/{swarm.running.id}/transparency")
    box = page.locator("#model-card")
    assert box.locator("h1").inner_text() == "demo-llama"
    assert [h.inner_text() for h in box.locator("h2").all()] == ["Evaluation", "Volunteers"]
    assert box.locator("table td.align-right").count() == 2
    assert box.locator("pre code").inner_text().startswith("epoch,loss")
    assert demo.XSS_NAME in box.inner_text() and "<b>bold</b>" in box.inner_text()  # shown as written
    assert box.locator("script, img, iframe, b, i").count() == 0
    assert box.locator("a[href^='javascript']").count() == 0
    screenshot(page, "dashboard-model-card")
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{swarm.url}/jobs/{swarm.running.id}/transparency")
    wide = page.evaluate("""[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right >
        window.innerWidth + 1).map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 12)""")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), wide
    screenshot(page, "dashboard-model-card-phone")
    assert watch.dialogs == [] and watch.errors == []


def test_a_tampered_ledger_row_shows_in_red(swarm, watch, screenshot):
    page = watch.page
    db = swarm.coord.data_dir / "coordinator.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE ledger SET volunteer_id = 'someone-else' WHERE seq = 7")
    try:
        page.goto(f"{swarm.url}/jobs/{swarm.running.id}/transparency")
        banner = page.locator("#ledger-verification")
        assert banner.get_attribute("data-ok") == "false" and banner.get_attribute("data-first-bad-seq") == "7"
        assert "FAILED at row 7" in banner.inner_text()
        color = banner.evaluate("el => getComputedStyle(el).color")
        red, green, blue = map(int, re.findall(r"\d+", color)[:3])
        assert red > 150 and green < 110 and blue < 110, color
        assert page.locator("#ledger-row-7").get_attribute("class") == "bad"
        assert page.locator("#ledger-row-6").get_attribute("class") is None
        screenshot(page, "dashboard-ledger-tampered")
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE ledger SET volunteer_id = ? WHERE seq = 7",
                (swarm.members[(7 - 1) % 3].volunteer_id,),
            )
    page.goto(f"{swarm.url}/ledger")
    assert page.get_attribute("#ledger-verification", "data-ok") == "true"


def test_cards_and_tables_follow_the_swarm_without_a_reload(swarm, watch, demo):
    """A volunteer coming online shows in the swarm page's totals and table within a refresh
    (15 s) with no reload, and the table keeps the order its reader sorted it in."""
    page = watch.page
    page.goto(swarm.url + "/")
    online = int(page.inner_text("#stat-online"))
    rows = page.locator("#volunteers-table tbody tr").count()
    page.click("#volunteers-table th[data-sort]:has-text('Pseudonym')")
    order = page.get_attribute("#volunteers-table th[data-sort]:has-text('Pseudonym')", "aria-sort")
    page.evaluate("window.notReloaded = true")
    with swarm.coord.client() as anonymous:
        reg = demo.Identity().register(anonymous, name="zoe-live", team="", hardware=demo.VOLUNTEERS[0][2])
    with swarm.coord.client(reg.token) as client:
        client.heartbeat(volunteer_id=reg.volunteer_id, state="idle")
    deadline = time.monotonic() + 40  # the page's polling, watched from here (the pages' CSP forbids eval)
    while (int(page.inner_text("#stat-online")), page.locator("#volunteers-table tbody tr").count()) != \
            (online + 1, rows + 1):
        assert time.monotonic() < deadline, (page.inner_text("#stat-online"), online)
        page.wait_for_timeout(500)
    assert page.evaluate("window.notReloaded === true")
    header = "#volunteers-table th[data-sort]:has-text('Pseudonym')"
    assert page.get_attribute(header, "aria-sort") == order
    names = [n.strip() for n in page.locator("#volunteers-table tbody tr td:first-child").all_inner_texts()]
    keys = [n.lower() for n in names]
    assert keys == sorted(keys, reverse=order == "descending"), names
    assert watch.errors == [] and watch.dialogs == []


def test_an_ended_job_shows_no_live_figures(swarm, watch):
    """Once a job has ended, its page and the jobs list show no throughput or ETA (the last ones
    seen are not the present), and the volunteers that took part instead of those online. Runs
    last: it cancels the module's running job."""
    page = watch.page
    page.goto(f"{swarm.url}/jobs/{swarm.running.id}")
    assert "samples/s" in page.inner_text("#stat-throughput")
    with swarm.coord.client(swarm.coord.admin_token) as client:
        client.cancel_job(swarm.running.id, reason="the figures of an ended job")
    page.goto(f"{swarm.url}/jobs/{swarm.running.id}")
    assert page.inner_text("#stat-throughput .value").startswith("—")
    assert "cancelled" in page.inner_text("#stat-throughput")
    assert page.inner_text("#stat-volunteers .value") == "3 took part"
    page.goto(f"{swarm.url}/jobs?show=finished")
    row = page.locator(f"tr[data-job-id='{swarm.running.id}']")
    assert [c.inner_text() for c in row.locator("td.num").all()[:2]] == ["—", "—"]  # throughput, ETA
    assert watch.errors == [] and watch.dialogs == []
