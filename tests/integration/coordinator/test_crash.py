"""kill -9 of the coordinator (and of a ledger writer) in the middle of a burst: nothing acknowledged is lost.

Jobs are committed before SubmitJob answers, and ledger rows before append_ledger returns, so after
a restart every acknowledged job id and ledger row must be there and the ledger chain must verify.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from essaim.coordinator.store import open_store, sqlite_url
from essaim.protocol.errors import EssaimError

pytestmark = pytest.mark.timeout(150)

LEDGER_WRITER = """
import sys
from essaim.coordinator.store import LedgerDraft, open_store, sqlite_url
store = open_store(sqlite_url(sys.argv[1]))
print("ready", flush=True)
n = 0
while True:
    n += 1
    rows = store.append_ledger([LedgerDraft(job_id=sys.argv[2], volunteer_id=sys.argv[3], epoch=n, samples=n, compute_seconds=0.5)] * 2)
    print(" ".join(str(r.seq) for r in rows), flush=True)
"""


def test_kill_9_during_a_burst_loses_nothing_acknowledged(launch_coordinator, tmp_path, kit) -> None:
    data_dir = tmp_path / "coord"
    coord = launch_coordinator(data_dir)
    researcher = kit.create_token(data_dir, "researcher", "burst")
    with coord.client() as anon:
        volunteers = [kit.Identity().register(anon, f"v{i}") for i in range(3)]
    with coord.client(researcher) as client:
        first = client.submit_job(kit.hub_recipe("first"))

    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LEDGER_WRITER,
            str(data_dir / "coordinator.db"),
            first.id,
            volunteers[0].volunteer_id,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    acked_seqs: list[int] = []

    def read_seqs() -> None:
        assert writer.stdout is not None
        for line in writer.stdout:
            acked_seqs.extend(int(s) for s in line.split())

    acked_jobs: list[str] = [first.id]
    beats = [0]
    stop = threading.Event()

    def submitter(i: int) -> None:
        with coord.client(researcher, retries=0, timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    acked_jobs.append(client.submit_job(kit.hub_recipe(f"burst-{i}-{n}")).id)
                except EssaimError:
                    return

    def heartbeater(reg) -> None:
        with coord.client(reg.token, retries=0, timeout=5) as client:
            while not stop.is_set():
                try:
                    client.heartbeat(volunteer_id=reg.volunteer_id, state="training")
                    beats[0] += 1
                except EssaimError:
                    return

    threads = [threading.Thread(target=read_seqs, daemon=True)]
    threads += [threading.Thread(target=submitter, args=(i,), daemon=True) for i in range(3)]
    threads += [threading.Thread(target=heartbeater, args=(v,), daemon=True) for v in volunteers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while (len(acked_jobs) < 20 or len(acked_seqs) < 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    coord.kill()
    writer.kill()
    writer.wait(5)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked_jobs) >= 20 and len(acked_seqs) >= 20 and beats[0] > 0

    restarted = launch_coordinator(data_dir)
    with restarted.client(restarted.admin_token) as admin:
        stored = {j.id for j in admin.list_jobs(limit=1000)}
        assert set(acked_jobs) <= stored
        assert {v.id for v in admin.list_volunteers()} >= {v.volunteer_id for v in volunteers}
    store = open_store(sqlite_url(data_dir / "coordinator.db"))
    try:
        assert set(acked_seqs) <= {e.seq for e in store.list_ledger()}
    finally:
        store.close()
    result = kit.cli("ledger", "verify", "--data-dir", str(data_dir), "--json")
    report = json.loads(result.stdout)
    assert report["ok"] and report["checked"] >= len(acked_seqs)
    restarted.stop()

    # a tampered row is found, named, and fails the command
    with sqlite3.connect(data_dir / "coordinator.db") as db:
        db.execute("UPDATE ledger SET samples = samples + 1000 WHERE seq = 3")
    broken = kit.cli("ledger", "verify", "--data-dir", str(data_dir), check=False)
    assert broken.returncode == 1
    assert "BROKEN at seq 3" in broken.stderr
    as_json = json.loads(
        kit.cli("ledger", "verify", "--data-dir", str(data_dir), "--json", check=False).stdout
    )
    assert as_json["ok"] is False and as_json["first_bad_seq"] == 3
