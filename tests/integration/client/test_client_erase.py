"""A volunteer renames itself (``essaim config set volunteer.name``: the coordinator learns it from
the next heartbeat), then erases its account from its own machine: ``essaim erase-account`` against a real
coordinator forgets its pseudonym, team and machine there, stops its token, and forgets the
account here; its ledger rows stay, under its id, and the ledger still verifies."""

from __future__ import annotations

import json
import time

import pytest
from essaim.coordinator.store import LedgerDraft, open_store
from essaim.coordinator.store.engine import sqlite_url
from essaim.protocol.errors import EssaimError
from essaim.protocol.types import VolunteerStatus

pytestmark = pytest.mark.timeout(180)


def test_a_volunteer_erases_its_account(tmp_path, launch_app, launch_coordinator, client_kit):
    coord = launch_coordinator(tmp_path / "coordinator", "--heartbeat-interval", "1")
    app = launch_app(tmp_path / "app", "--coordinator", app_address(coord),
                     "--name", "ada", "--team", "lyon")
    st = app.wait(lambda s: s["coordinator"]["connected"] and s["coordinator"]["volunteer_id"], "registration", 60)
    volunteer_id = st["coordinator"]["volunteer_id"]
    with coord.client(coord.admin_token) as admin:
        deadline = time.monotonic() + 20
        while not (me := next(v for v in admin.list_volunteers() if v.id == volunteer_id)).hardware.cpu_cores:
            assert time.monotonic() < deadline, me
            time.sleep(0.2)
    assert me.name == "ada" and me.team == "lyon"
    # a new pseudonym and team reach the coordinator with the app's next heartbeat
    app.cli("config", "set", "volunteer.name", "Ada L.")
    app.cli("config", "set", "volunteer.team", "paris")
    with coord.client(coord.admin_token) as admin:
        deadline = time.monotonic() + 30
        while ((me := next(v for v in admin.list_volunteers() if v.id == volunteer_id)).name, me.team) != (
                "Ada L.", "paris"):
            assert time.monotonic() < deadline, me
            time.sleep(0.2)
    store = open_store(sqlite_url(coord.data_dir / "coordinator.db"))
    try:  # what the job runner's accounting writes as it trains
        store.append_ledger([LedgerDraft(job_id="job-1", volunteer_id=volunteer_id, epoch=e, samples=64,
                                         compute_seconds=10.0) for e in range(3)])
    finally:
        store.close()
    token = json.loads((app.paths.data_dir / "registration.json").read_text())[app_address(coord)]["token"]

    where = ("--coordinator", app_address(coord))
    refused = app.cli("erase-account", *where, "--yes", check=False)
    assert refused.returncode != 0 and "quit it first" in refused.stderr + refused.stdout
    app.stop()
    done = app.cli("erase-account", *where, "--yes")
    assert f"erased volunteer {volunteer_id}" in done.stdout

    with coord.client(coord.admin_token) as admin:
        (gone,) = [v for v in admin.list_volunteers() if v.id == volunteer_id]
    assert gone.status == VolunteerStatus.ERASED and (gone.name, gone.team, gone.peer_id) == ("", "", "")
    assert gone.hardware.cpu_cores == 0 and gone.state == "" and gone.samples == 3 * 64
    with coord.client(token) as client, pytest.raises(EssaimError):
        client.heartbeat(volunteer_id=volunteer_id, state="training")
    verify = client_kit_cli(coord)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # nothing of the account is left on this machine: joining again makes a new volunteer
    assert app_address(coord) not in json.loads((app.paths.data_dir / "registration.json").read_text())
    assert not app.paths.identity_file.exists()
    again = app.cli("erase-account", *where, "--yes", check=False)
    assert again.returncode != 0 and "no volunteer account" in again.stderr + again.stdout


def app_address(coord) -> str:
    return coord.grpc_address.removeprefix("http://")


def client_kit_cli(coord):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "essaim.coordinator", "ledger", "verify", "--data-dir",
                           str(coord.data_dir)], capture_output=True, text=True, timeout=60)
