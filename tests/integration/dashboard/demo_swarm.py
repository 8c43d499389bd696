"""A demo-size swarm on a real coordinator, shared by the dashboard's integration and browser tests.

    swarm = start_demo_swarm(launcher, tmp_path / "coord")

starts ``python -m essaim.coordinator serve --require-approval --no-swarm`` (through the launcher of
``tests/conftest.py``), then, through the real gRPC client: a researcher submits three jobs (one
with uploaded data files, one whose description holds HTML), an admin approves one, four volunteers
with Ed25519 identities register (one named ``<script>alert(1)</script>``), heartbeat, take
assignments and report progress. Progress curves and ledger rows, which the swarm monitor and the
accounting will write, are written through the store here. Loaded by path by the conftests of
tests/integration/dashboard and tests/e2e/dashboard (test folders are not packages).
"""

from __future__ import annotations

import http.client
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from essaim.client import keys
from essaim.protocol.types import Hardware, Job, JobMetrics, JobProgress, Role

GIB = 1024**3
XSS_NAME = "<script>alert(1)</script>"
XSS_TEAM = "<i onmouseover=alert(4)>team</i>"
XSS_DESCRIPTION = '<img src=x onerror="alert(2)"> <script>alert(3)</script> & <b>bold</b>'
SAMPLE_ENV = {"ESSAIM_DASHBOARD_SAMPLE_S": "0.5"}

RECIPE = """\
version: 1
name: {name}
description: {description}
model: {{name_or_path: org/tiny-model}}
dataset: {{hub_name: org/tiny-data}}
training: {{target_batch_size: 64, batch_size: 4, epochs: 12}}
eval: {{metric: perplexity}}
hardware: {{min_ram_gb: 1}}
"""

FILES_RECIPE = """\
version: 1
name: files-job
description: Data uploaded with the recipe.
model: {name_or_path: org/tiny-model}
dataset: {files: [data/train.jsonl]}
training: {target_batch_size: 64, batch_size: 4, epochs: 3}
hardware: {min_ram_gb: 1}
"""

VOLUNTEERS = [
    ("ada", "lyon", Hardware(os="linux", arch="x86_64", cpu_cores=16, ram_bytes=64 * GIB, accelerator="cuda",
                             gpu_name="NVIDIA RTX 4090", gpu_vram_bytes=24 * GIB, gpu_count=1)),
    (XSS_NAME, XSS_TEAM, Hardware(os="linux", arch="x86_64", cpu_cores=8, ram_bytes=16 * GIB)),
    ("grace", "lyon", Hardware(os="darwin", arch="arm64", cpu_cores=10, ram_bytes=32 * GIB, accelerator="mps",
                               gpu_name="Apple M2", gpu_count=1)),
    ("linus", "", Hardware(os="linux", arch="x86_64", cpu_cores=4, ram_bytes=8 * GIB)),
]


class Identity:
    """A volunteer's RSA key pair, as the app keeps it."""

    def __init__(self) -> None:
        self.key = keys.new_private_key()
        self.public_key = keys.public_key_der(self.key)

    def register(self, client: Any, *, name: str, team: str, hardware: Hardware) -> Any:
        peer_id = f"Qm{abs(hash(self.public_key)) % 10**12}"
        return client.register_with_key(sign=partial(keys.sign, self.key), public_key=self.public_key,
                                        peer_id=peer_id, name=name, hardware=hardware, team=team)


@dataclass
class Member:
    name: str
    team: str
    hardware: Hardware
    volunteer_id: str
    token: str


@dataclass
class DemoSwarm:
    coord: Any  # tests/conftest.py CoordinatorProcess
    researcher_token: str
    running: Job
    awaiting: Job
    files_job: Job
    members: list[Member]
    progress_points: int
    eval_points: int
    ledger_rows: int
    data_file_sha256: str
    tokens: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.coord.http_url

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def open_store(self) -> Any:
        from essaim.coordinator.store import open_store

        return open_store(f"sqlite:///{(self.coord.data_dir / 'coordinator.db').resolve()}")


def create_token(data_dir: Path, role: str, label: str) -> str:
    """A new bearer token stored the way ``essaim coordinator token create`` stores it."""
    from essaim.coordinator.auth import create_token as create
    from essaim.coordinator.store import open_store

    store = open_store(f"sqlite:///{(data_dir / 'coordinator.db').resolve()}")
    try:
        return create(store, role=Role(role), label=label)
    finally:
        store.close()


def start_demo_swarm(launcher: Any, data_dir: Path, *args: str) -> DemoSwarm:
    # The swarm here is drawn, not trained: its job names a model no one can load, so the coordinator
    # runs no swarm services (they would fail the job once the model hub gives up, and the running
    # job these pages show would be gone).
    coord = launcher(data_dir, "--require-approval", "--no-swarm", *args, env=SAMPLE_ENV)
    probe = request("GET", coord.http_url + "/api/v1/swarm/online")
    assert probe.status == 200, (
        f"the coordinator serves no dashboard (GET /api/v1/swarm/online: {probe.status}); "
        "coordinator/http.py's create_app must call essaim.coordinator.dashboard.register_dashboard"
    )
    researcher = create_token(coord.data_dir, "researcher", "alice")
    work = data_dir.parent / f"{data_dir.name}-recipes"
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "data" / "train.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(50)))
    (work / "recipe.yaml").write_text(FILES_RECIPE)
    with coord.client(researcher) as client:
        running = client.submit_job(RECIPE.format(name="demo-llama", description=json.dumps(XSS_DESCRIPTION)))
        awaiting = client.submit_job(RECIPE.format(name="poems", description="Short poems, awaiting approval."))
        files_job = client.submit_recipe_file(work / "recipe.yaml")
    with coord.client(coord.admin_token) as admin:
        admin.approve_job(running.id)

    members = []
    for i, (name, team, hardware) in enumerate(VOLUNTEERS):
        with coord.client() as anonymous:
            reg = Identity().register(anonymous, name=name, team=team, hardware=hardware)
        with coord.client(reg.token) as client:
            progress = []
            if i < 3:
                assignment = client.get_assignment(reg.volunteer_id, hardware)
                assert assignment.job is not None and assignment.job.id == running.id, assignment
                progress = [JobProgress(job_id=running.id, epoch=5, samples=300 * (i + 1),
                                        compute_seconds=60.0, samples_per_second=4.0 + i, loss=1.2)]
            client.heartbeat(volunteer_id=reg.volunteer_id, state="training" if progress else "idle",
                             hardware=hardware, progress=progress, client_version="0.1.0")
        members.append(Member(name, team, hardware, reg.volunteer_id, reg.token))

    progress_points, eval_points, ledger_rows = _write_curves_and_ledger(coord.data_dir, running.id, members[:3])
    # what the job's runner writes for the job page: its sample prompts, continued before and after
    samples = coord.data_dir / "jobs" / running.id
    samples.mkdir(parents=True, exist_ok=True)
    (samples / "samples.json").write_text(json.dumps({"epoch": 4, "samples": [
        {"prompt": "def add(a, b):", "before": " pass", "after": "\n    return a + b"},
        {"prompt": XSS_NAME, "before": "<img src=x onerror=alert(2)>", "after": None}]}))
    swarm = DemoSwarm(
        coord=coord, researcher_token=researcher, running=running, awaiting=awaiting, files_job=files_job,
        members=members, progress_points=progress_points, eval_points=eval_points, ledger_rows=ledger_rows,
        data_file_sha256=files_job.files[0].sha256,
        tokens=[coord.admin_token, researcher, *(m.token for m in members)],
    )
    def settled() -> bool:  # heartbeats are written in batches: wait until every one is stored
        items = get_json(swarm.url + "/api/v1/volunteers", headers={"Authorization": f"Bearer {coord.admin_token}"})["items"]
        return sum(1 for v in items if v["current_job_id"]) == 3 and all(v["state"] for v in items)

    _wait_for(settled)
    return swarm


def _write_curves_and_ledger(data_dir: Path, job_id: str, members: list[Member]) -> tuple[int, int, int]:
    """What the swarm monitor and the ledger accounting write as a job trains."""
    from essaim.coordinator.store import LedgerDraft, open_store

    store = open_store(f"sqlite:///{(data_dir / 'coordinator.db').resolve()}")
    try:
        now = time.time()
        points, evals = 30, 0
        for k in range(points):
            with_eval = k % 5 == 4
            evals += with_eval
            store.update_job_metrics(
                job_id,
                JobMetrics(epoch=k // 5, target_epochs=12, samples=(k + 1) * 64, samples_per_second=12.0 + 3 * math.sin(k / 4),
                           loss=2.4 * math.exp(-k / 12) + 0.4, eval_metric=(8.0 * math.exp(-k / 15) + 2.0) if with_eval else 0.0,
                           eval_metric_name="perplexity", live_peers=3),
                at=now - (points - k) * 60,
            )
        drafts = [
            LedgerDraft(job_id=job_id, volunteer_id=m.volunteer_id, epoch=epoch, samples=40 + 10 * i + epoch,
                        compute_seconds=120.0 + 30 * i)
            for epoch in range(6)
            for i, m in enumerate(members)
        ]
        store.append_ledger(drafts)
    finally:
        store.close()
    return points, evals, len(drafts)


def _wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the coordinator did not reach the expected state in time")
        time.sleep(0.1)


# ---- HTTP without redirects or cookies jars: each test says exactly what it sends ----


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def request(method: str, url: str, *, headers: dict[str, str] | None = None, body: bytes | str | None = None,
            json_body: Any = None, timeout: float = 15.0) -> Answer:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    sent = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body)
        sent.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=sent)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def get_json(url: str, **kwargs: Any) -> Any:
    answer = request("GET", url, **kwargs)
    assert answer.status == 200, (url, answer.status, answer.text[:300])
    return answer.json()
