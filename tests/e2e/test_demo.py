"""``essaim demo`` from the command line, as the README's first command runs it: a coordinator and two
volunteer trainers on this machine train the built-in job (``--keep-running``: its coordinator then
stays up where it says, until Ctrl-C); the demo exits 0 and leaves a loadable
model and its provenance, with the held-out accuracy before and after training. While it trains,
the dashboard it prints shows the live swarm: its JSON API has the job's curve, and (where Debian's
chromium is installed) the job page drawn in headless Chromium has a point per progress report;
its screenshot is kept in ``bench/results/screenshots/dashboard-live-demo.png``.

The job is shortened with ``ESSAIM_DEMO_EPOCHS`` (the full demo trains 12 epochs) so that the test
fits a CI run on two cores; everything else is the demo users run. The demo runs once per module;
the browser's view of it is a test of its own, skipped with the reason where Chromium or Playwright
is missing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

EPOCHS = 7
"""Measured on a 2-core machine (exact match on the 200 held-out sums, every 2 epochs): near zero up to
epoch 4 (0.08-0.365 there: where the jump starts varies from run to run), 0.845-0.95 at epoch 6,
0.96-0.975 at epoch 8, beside two busy processes too; the full 12 epochs end at 0.975. Epoch 7 is
past the jump (every run was over 0.84 at epoch 6), and about a minute shorter than the full demo."""
LEARNED = 0.6
"""What the shortened demo must reach: well under the 0.96-0.975 measured at epoch 8 (a busy machine
changes how long an epoch takes, not what it learns: an epoch is a fixed number of samples), well
over the 0.08-0.365 of runs stopped at epoch 4, before the model has learned to add."""
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "screenshots"
SUBMITTED = re.compile(r"submitted job (\w+) .*dashboard at (http://\S+/)")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.loads(reply.read())


def _browser_missing() -> str:
    if not CHROMIUM.exists():
        return "Debian's chromium is not installed (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed"
    return ""


def _draw_the_job_page(url: str, job_id: str, tmp_path: Path) -> int:
    """The job page in headless Chromium: the points of its loss chart; keeps a screenshot."""
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}jobs/{job_id}")
            box = page.locator("#chart-loss")
            drawn = int(box.get_attribute("data-points") or 0)
            assert drawn >= 2 and box.locator("circle.pt[data-x]").count() == drawn
            assert "running" in page.locator("body").inner_text()
            page.screenshot(path=str(tmp_path / "dashboard-live-demo.png"), full_page=True)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "dashboard-live-demo.png", SCREENSHOTS / "dashboard-live-demo.png")
            return drawn
        finally:
            browser.close()


def _watch_the_live_dashboard(proc: subprocess.Popen, log_path: Path, tmp_path: Path) -> dict:
    """While the demo trains: the job's curve in the API and, with chromium, on the job page."""
    found = None
    while found is None and proc.poll() is None:
        found = SUBMITTED.search(" ".join(log_path.read_text(errors="replace").split()))
        time.sleep(0.5)
    assert found is not None, "the demo did not print its job and dashboard"
    job_id, url = found.groups()
    points: list = []
    while len(points) < 2 and proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            points = _get_json(f"{url}api/v1/jobs/{job_id}/progress")["points"]
        time.sleep(1)
    assert len(points) >= 2, "the dashboard showed no progress while the demo trained"
    seen: dict = {"job_id": job_id, "api_points": len(points), "page_points": None, "page_error": None}
    seen["browser_missing"] = _browser_missing()
    if not seen["browser_missing"]:
        try:  # the page's own test reports a failure here; the demo's run goes on
            seen["page_points"] = _draw_the_job_page(url, job_id, tmp_path)
        except Exception as exc:
            seen["page_error"] = exc
    return seen


def _runners_in(directory: Path) -> list[int]:
    """Job runners (own sessions: they outlive a killed coordinator) working under ``directory``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            cmdline = proc.info["cmdline"] or []
            if "essaim.coordinator.jobrunner" in cmdline and any(str(directory) in part for part in cmdline):
                found.append(proc.info["pid"])
    return found


@dataclass
class DemoRun:
    code: int | None
    text: str
    out: Path
    work: Path
    live: dict
    kept: dict


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``essaim demo`` run to its end, with what the live dashboard showed while it trained."""
    tmp_path = tmp_path_factory.mktemp("demo")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "ESSAIM_DEMO_EPOCHS": str(EPOCHS), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log = (tmp_path / "demo.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "essaim", "demo", "--volunteers", "2", "--output", str(out), "--timeout", "600",
         "--workdir", str(work), "--keep-running"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    kept: dict = {}
    try:
        live = _watch_the_live_dashboard(proc, tmp_path / "demo.log", tmp_path)
        kept = _use_the_kept_coordinator(proc, tmp_path / "demo.log", env, deadline=time.monotonic() + 780)
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _runners_in(work):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        log.close()
    return DemoRun(code, (tmp_path / "demo.log").read_text(errors="replace"), out, work, live, kept)


KEPT = re.compile(r"coordinator: (\S+) \(gRPC\), admin token in (\S+):")


def _use_the_kept_coordinator(proc: subprocess.Popen, log_path: Path, env: dict, deadline: float) -> dict:
    """With --keep-running, once the demo is done: its coordinator answers at the address it printed,
    with the admin token in the file it printed; Ctrl-C then ends the demo."""
    found = None
    while found is None and proc.poll() is None and time.monotonic() < deadline:
        text = " ".join(log_path.read_text(errors="replace").split())
        found = KEPT.search(text) if "press Ctrl-C to stop it" in text else None
        time.sleep(0.5)
    if found is None:
        return {}
    address, token_file = found.groups()
    listed = subprocess.run([sys.executable, "-m", "essaim", "job", "list", "--json"], capture_output=True, text=True,
                            timeout=60, env={**env, "ESSAIM_COORDINATOR": address,
                                             "ESSAIM_TOKEN": Path(token_file).read_text().strip()})
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in its terminal
    return {"address": address, "listed": listed}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_essaim_demo_trains_a_model_with_two_volunteers(demo_run: DemoRun) -> None:
    text, out, live = demo_run.text, demo_run.out, demo_run.live
    assert demo_run.code == 0, f"essaim demo exited with {demo_run.code}:\n{text[-4000:]}"
    # --keep-running: the coordinator stayed up where it said, until Ctrl-C
    listed = demo_run.kept["listed"]
    assert listed.returncode == 0, listed.stderr
    assert [j["status"] for j in json.loads(listed.stdout)] == ["completed"], listed.stdout
    assert not _runners_in(demo_run.work), "the demo left its job runner behind"
    assert live["api_points"] >= 2, live

    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["epochs"] == EPOCHS
    ev = provenance["eval"]
    assert ev["metric"] == "exact_match"
    assert ev["before"] is not None and ev["after"] is not None
    curve = {p["epoch"]: p["value"] for p in ev["curve"]}
    assert curve[0] == ev["before"] and curve[EPOCHS] == ev["after"]
    assert ev["before"] < 0.1, ev  # the untrained model cannot add
    assert ev["after"] >= LEARNED, ev  # the tiny model learned to add
    assert len(provenance["contributors"]) == 2
    assert all(c["samples"] > 0 for c in provenance["contributors"])
    assert f"{ev['before']:.3f} -> {ev['after']:.3f}" in " ".join(text.split())  # what the demo printed
    # the sample prompts, continued before and after training: what the demo printed, from the provenance
    samples = provenance["samples"]
    assert [s["prompt"] for s in samples] == ["12+7=", "40+25="] and all(s["after"] is not None for s in samples)
    printed = f"'12+7=': base model {samples[0]['before']!r}, trained {samples[0]['after']!r}"
    assert " ".join(printed.split()) in " ".join(text.split())

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "artifact")
    tokenizer = AutoTokenizer.from_pretrained(out / "artifact")
    ids = tokenizer("12+7=", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[-1] > ids["input_ids"].shape[-1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_live_dashboard_page_draws_the_demo_curve(demo_run: DemoRun) -> None:
    live = demo_run.live
    if live["browser_missing"]:
        pytest.skip(live["browser_missing"])
    if live["page_error"] is not None:
        raise live["page_error"]
    assert live["page_points"] >= 2, live
