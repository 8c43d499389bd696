"""The ledger's signed head against a real coordinator: it publishes its head signed with its swarm
key, and a head saved earlier catches what the hash chain alone cannot (rows cut off the end, or the
whole chain rewritten from some row on with every later hash recomputed, as whoever holds the
database could do), while a head signed by anyone else is refused."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from essaim.coordinator.store import LedgerDraft, open_store, sqlite_url
from essaim.coordinator.store.ledger import SignedHead, hash_of, head_signature_ok, sign_head
from essaim.coordinator.swarm_keys import SWARM_KEY, load_or_create_swarm_key, public_key_der

pytestmark = pytest.mark.timeout(120)


def _head(coord: Any) -> dict[str, Any]:
    with urllib.request.urlopen(f"{coord.http_url}/api/v1/ledger/head", timeout=10) as resp:
        return json.loads(resp.read())


def _append(data_dir: Path, n: int) -> None:
    store = open_store(sqlite_url(data_dir / "coordinator.db"))
    try:
        store.append_ledger([LedgerDraft(job_id="job", volunteer_id=f"v{i % 2}", epoch=i, samples=10 + i,
                                         compute_seconds=0.5) for i in range(n)])
    finally:
        store.close()


def _verify(kit: Any, data_dir: Path, head: Path) -> tuple[int, dict[str, Any], str]:
    done = kit.cli("ledger", "verify", "--data-dir", str(data_dir), "--head", str(head), "--json", check=False)
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def test_a_head_saved_earlier_finds_rows_cut_off_and_a_rewritten_chain(launch_coordinator: Any, tmp_path: Path,
                                                                      kit: Any) -> None:
    data_dir = tmp_path / "data"
    coord = launch_coordinator(data_dir)
    _append(data_dir, 6)
    published = _head(coord)
    assert published["seq"] == 6
    key = load_or_create_swarm_key(data_dir / SWARM_KEY)
    assert head_signature_ok(SignedHead.from_dict(published), public_key_der(key))
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(published))
    _append(data_dir, 2)  # the ledger goes on: the old head still holds
    code, report, err = _verify(kit, data_dir, saved)
    assert code == 0 and report["ok"] and report["checked"] == 8, (report, err)
    coord.stop()

    db = sqlite3.connect(data_dir / "coordinator.db")
    try:
        db.execute("DELETE FROM ledger WHERE seq > 4")  # rows cut off: what is left is a valid chain
        db.commit()
    finally:
        db.close()
    assert kit.cli("ledger", "verify", "--data-dir", str(data_dir), "--json").returncode == 0  # the chain alone
    code, report, _ = _verify(kit, data_dir, saved)
    assert code == 1 and not report["ok"] and "cut off" in report["message"], report


def test_a_rewritten_chain_and_a_foreign_head_are_refused(launch_coordinator: Any, tmp_path: Path, kit: Any) -> None:
    data_dir = tmp_path / "data"
    coord = launch_coordinator(data_dir)
    _append(data_dir, 5)
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(_head(coord)))
    coord.stop()

    # rewrite row 2 on (a volunteer's samples raised), recomputing every later hash
    store = open_store(sqlite_url(data_dir / "coordinator.db"))
    try:
        rows = store.list_ledger()
    finally:
        store.close()
    db = sqlite3.connect(data_dir / "coordinator.db")
    try:
        prev = rows[0].hash
        for entry in rows[1:]:
            changed = dataclasses.replace(entry, prev_hash=prev, samples=entry.samples + (1000 if entry.seq == 2 else 0))
            changed = dataclasses.replace(changed, hash=hash_of(changed))
            db.execute("UPDATE ledger SET samples = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (changed.samples, changed.prev_hash, changed.hash, changed.seq))
            prev = changed.hash
        db.commit()
    finally:
        db.close()
    assert kit.cli("ledger", "verify", "--data-dir", str(data_dir), "--json").returncode == 0  # a valid chain
    code, report, _ = _verify(kit, data_dir, saved)
    assert code == 1 and "rewritten" in report["message"], report

    # a head the rewriter signs with a key of its own is not the coordinator's
    rows_now = open_store(sqlite_url(data_dir / "coordinator.db"))
    try:
        head = rows_now.ledger_head()
    finally:
        rows_now.close()
    from cryptography.hazmat.primitives.asymmetric import rsa

    forged = sign_head(rsa.generate_private_key(public_exponent=65537, key_size=2048), head.seq, head.hash, 0.0)
    (tmp_path / "forged.json").write_text(json.dumps(forged.to_dict()))
    code, _, err = _verify(kit, data_dir, tmp_path / "forged.json")
    assert code == 2 and "not this coordinator's" in err, err

