"""The life of a bearer token against a real coordinator: `essaim coordinator token create | list |
revoke | rotate` on its data dir while it runs. A revoked or rotated token stops working within
seconds, an expired one at once, and a command pointed at a data dir with no coordinator store
makes none (a token printed from it would be known to no coordinator)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from essaim.protocol.errors import Unauthenticated

pytestmark = pytest.mark.timeout(120)
REVOKED_WITHIN_S = 6.0  # the coordinator looks for revocations every 2 s


@pytest.fixture(scope="module")
def coord(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return module_launcher(tmp_path_factory.mktemp("tokens"), "--no-swarm")


def _tokens(kit: Any, coord: Any, *args: str) -> list[dict[str, Any]]:
    return json.loads(kit.cli("token", "list", "--json", "--data-dir", str(coord.data_dir), *args).stdout)


def _works(coord: Any, token: str) -> bool:
    with coord.client(token, retries=0) as client:
        try:
            client.list_jobs()
        except Unauthenticated:
            return False
    return True


def _refused_within(coord: Any, token: str, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if not _works(coord, token):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"the token still worked {seconds} s later")


def test_list_revoke_and_rotate_take_effect_within_seconds(coord: Any, kit: Any) -> None:
    token = kit.cli("token", "create", "--role", "researcher", "--label", "rita", "--expires-in", "30",
                    "--data-dir", str(coord.data_dir)).stdout.strip().splitlines()[-1]
    assert _works(coord, token)  # and now cached by the coordinator
    listed = [t for t in _tokens(kit, coord) if t["label"] == "rita"]
    assert len(listed) == 1 and listed[0]["role"] == "researcher" and not listed[0]["revoked"]
    assert 29 * 86400 < listed[0]["expires_at"] - time.time() <= 30 * 86400
    assert token not in json.dumps(_tokens(kit, coord, "--all"))  # never the token itself

    rotated = kit.cli("token", "rotate", str(listed[0]["id"]), "--data-dir", str(coord.data_dir)).stdout.strip()
    assert rotated.startswith("essaim_") and rotated != token
    assert _works(coord, rotated)
    _refused_within(coord, token, REVOKED_WITHIN_S)
    with coord.client(token, retries=0) as client, pytest.raises(Unauthenticated, match="revoked"):
        client.list_jobs()

    new_id = next(t["id"] for t in _tokens(kit, coord) if t["label"] == "rita")
    assert kit.cli("token", "revoke", str(new_id), "--data-dir", str(coord.data_dir)).returncode == 0
    _refused_within(coord, rotated, REVOKED_WITHIN_S)
    assert not [t for t in _tokens(kit, coord) if t["label"] == "rita"]  # revoked ones are listed with --all
    assert len([t for t in _tokens(kit, coord, "--all") if t["label"] == "rita"]) == 2


def test_an_expired_token_is_refused(coord: Any, kit: Any) -> None:
    token = kit.cli("token", "create", "--role", "researcher", "--label", "brief", "--expires-in", "0.00002",
                    "--data-dir", str(coord.data_dir)).stdout.strip().splitlines()[-1]  # 1.7 s
    time.sleep(2.0)
    with coord.client(token, retries=0) as client, pytest.raises(Unauthenticated, match="expired"):
        client.list_jobs()


def test_admin_commands_make_no_store_where_there_is_none(kit: Any, tmp_path: Path) -> None:
    nowhere = tmp_path / "typo"
    done = kit.cli("token", "create", "--role", "admin", "--data-dir", str(nowhere), check=False)
    assert done.returncode == 3 and "no coordinator store" in done.stderr, done.stderr
    assert not done.stdout.strip() and not nowhere.exists()
