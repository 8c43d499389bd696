"""Erasing a volunteer account on a real coordinator: only the volunteer itself (or an admin) may,
its token stops at once, a heartbeat that arrives afterwards writes nothing back, and a ban
survives the erasure."""

from __future__ import annotations

import time
from typing import Any

import pytest
from essaim.protocol.errors import NotFound, PermissionDenied, Unauthenticated
from essaim.protocol.types import Hardware, VolunteerStatus

pytestmark = pytest.mark.timeout(120)
MACHINE = Hardware(os="linux", arch="x86_64", cpu_cores=8, ram_bytes=16 * 2**30, accelerator="cuda",
                   gpu_name="RTX 4090", gpu_vram_bytes=24 * 2**30, gpu_count=1)


@pytest.fixture(scope="module")
def coord(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return module_launcher(tmp_path_factory.mktemp("erase") / "data")


def _volunteer(coord: Any, kit: Any, name: str) -> Any:
    with coord.client() as anon:
        reg = kit.Identity().register(anon, name, hardware=MACHINE)
    with coord.client(reg.token) as client:
        client.heartbeat(volunteer_id=reg.volunteer_id, state="training", reason="idle 0:42", hardware=MACHINE)
    return reg


def _seen(coord: Any, volunteer_id: str) -> Any:
    with coord.client(coord.admin_token) as admin:
        return next(v for v in admin.list_volunteers() if v.id == volunteer_id)


def test_only_the_volunteer_or_an_admin_erases_and_its_token_stops_at_once(coord: Any, kit: Any) -> None:
    alice, bob = _volunteer(coord, kit, "alice"), _volunteer(coord, kit, "bob")
    with coord.client(bob.token) as client, pytest.raises(PermissionDenied):
        client.erase_account(alice.volunteer_id)
    with coord.client(alice.token) as client:
        erased = client.erase_account(alice.volunteer_id)
        assert erased.status == VolunteerStatus.ERASED and erased.name == "" and erased.hardware.gpu_name == ""
        with pytest.raises(Unauthenticated):
            client.heartbeat(volunteer_id=alice.volunteer_id, state="training", hardware=MACHINE)
    time.sleep(1.0)  # past a heartbeat flush: nothing was written back
    seen = _seen(coord, alice.volunteer_id)
    assert (seen.status, seen.name, seen.state, seen.reason, seen.hardware.cpu_cores) == (VolunteerStatus.ERASED, "", "", "", 0)
    with coord.client(coord.admin_token) as admin:
        assert admin.erase_account(bob.volunteer_id).status == VolunteerStatus.ERASED
        with pytest.raises(NotFound):
            admin.erase_account("no-such-volunteer")


def test_a_ban_survives_the_erasure(coord: Any, kit: Any) -> None:
    mallory = _volunteer(coord, kit, "mallory")
    with coord.client(coord.admin_token) as admin:
        admin.ban_volunteer(mallory.volunteer_id, "poisoned rounds")
        erased = admin.erase_account(mallory.volunteer_id)
    assert erased.status == VolunteerStatus.BANNED and erased.reason == "poisoned rounds" and erased.name == ""
