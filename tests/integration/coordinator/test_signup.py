"""Strangers abusing a real coordinator's open sign-up get nowhere: a captured registration
replayed mints no token, a flood from one address is cut to the per-source rate (a registration
with an admin's token is not counted), and declared hardware and speeds are held to what one
machine could claim. The attacks are a process of their own (``hostile_signup.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from essaim.client import keys
from essaim.coordinator.servicer import CHALLENGES_PER_SIGNUP
from essaim.protocol import serde
from essaim.protocol.auth_metadata import registration_message
from essaim.protocol.errors import Unauthenticated
from essaim.protocol.types import Hardware, JobProgress, RegistrationRequest
from essaim.protocol.v1 import coordinator_pb2 as pb

pytestmark = pytest.mark.timeout(120)
HOSTILE = Path(__file__).with_name("hostile_signup.py")
PER_SOURCE = 5


@pytest.fixture(scope="module")
def coord(module_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("signup")
    return module_launcher(root / "data", "--signups-per-minute-per-source", str(PER_SOURCE))


def _hostile(*args: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, str(HOSTILE), *args], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _signed(key: Any, name: str, nonce: bytes, hardware: Hardware = Hardware()) -> pb.RegisterRequest:
    peer, ts = f"Qm{name}", time.time()
    return serde.registration_request_to_proto(RegistrationRequest(
        public_key=keys.public_key_der(key), peer_id=peer, name=name, timestamp=ts, nonce=nonce,
        signature=keys.sign(key, registration_message(peer, name, ts, nonce)), hardware=hardware))


def test_a_replayed_registration_mints_no_token(coord: Any, tmp_path: Path, kit: Any) -> None:
    key = keys.new_private_key()
    with coord.client() as client:
        nonce = client.registration_challenge()
    request = _signed(key, "victim", nonce)
    with grpc.insecure_channel(coord.grpc_address.removeprefix("http://")) as channel:
        reply = channel.unary_unary("/essaim.v1.Coordinator/Register", request_serializer=None,
                                    response_deserializer=pb.RegisterResponse.FromString)(
            request.SerializeToString(), timeout=10)
    assert reply.token and reply.volunteer_id
    captured = tmp_path / "captured.bin"
    captured.write_bytes(request.SerializeToString())
    got = _hostile("replay", coord.grpc_address, str(captured), "3")
    assert got == {"UNAUTHENTICATED": 3, "refusal": got.get("refusal")} and "used already" in got["refusal"], got
    # the same key with a new challenge (the app, starting again) registers as before; the same
    # challenge twice does not, whoever sends it
    with coord.client(coord.admin_token) as client:
        ts, nonce = time.time(), client.registration_challenge()
        signature = keys.sign(key, registration_message("Qmvictim", "victim", ts, nonce))
        ok = client.register(public_key=keys.public_key_der(key), peer_id="Qmvictim", name="victim",
                             hardware=Hardware(), timestamp=ts, signature=signature, nonce=nonce)
        assert ok.volunteer_id == reply.volunteer_id
        with pytest.raises(Unauthenticated, match="used already"):
            client.register(public_key=keys.public_key_der(key), peer_id="Qmvictim", name="victim",
                            hardware=Hardware(), timestamp=ts, signature=signature, nonce=nonce)


def test_a_registration_needs_a_fresh_challenge_of_this_coordinator(launch_coordinator: Any, tmp_path: Path) -> None:
    key = keys.new_private_key()
    peer, name = "Qmlate", "late"

    def attempt(client: Any, nonce: bytes) -> Any:
        ts = time.time()
        return client.register(public_key=keys.public_key_der(key), peer_id=peer, name=name, hardware=Hardware(),
                               timestamp=ts, nonce=nonce, signature=keys.sign(key, registration_message(
                                   peer, name, ts, nonce)))

    coord = launch_coordinator(tmp_path / "data")  # its own: the module's counts sign-ups per address
    other = launch_coordinator(tmp_path / "other")
    with coord.client() as client, other.client() as elsewhere:
        with pytest.raises(Unauthenticated, match="no challenge"):
            attempt(client, b"")  # signed ahead of time, or an older client
        # a challenge another coordinator made: a registration captured there is no good here
        with pytest.raises(Unauthenticated, match="not made by this coordinator"):
            attempt(client, elsewhere.registration_challenge())
        # a signature over another challenge than the one sent
        nonce = client.registration_challenge()
        ts = time.time()
        with pytest.raises(Unauthenticated):
            client.register(public_key=keys.public_key_der(key), peer_id=peer, name=name, hardware=Hardware(),
                            timestamp=ts, nonce=nonce, signature=keys.sign(key, registration_message(
                                peer, name, ts, client.registration_challenge())))
        assert attempt(client, client.registration_challenge()).token


def test_a_flood_from_one_address_is_cut_to_its_rate(launch_coordinator: Any, tmp_path: Path, kit: Any) -> None:
    coord = launch_coordinator(tmp_path / "data", "--signups-per-minute-per-source", str(PER_SOURCE))
    got = _hostile("flood", coord.grpc_address, "30")
    refusal = got.pop("refusal", "")
    tokens = got.get("token", 0)
    # one more may get through for each 60/PER_SOURCE s the flood takes (a loaded machine)
    assert PER_SOURCE <= tokens <= PER_SOURCE + 2 and got == {"token": tokens, "RESOURCE_EXHAUSTED": 30 - tokens}, got
    assert "too many registrations" in refusal and "try again in" in refusal, refusal
    # the volunteers an admin brings in with its token are not strangers
    with coord.client(coord.admin_token) as client:
        assert kit.Identity().register(client, "invited").token


def test_a_flood_of_challenges_is_cut_to_its_rate(launch_coordinator: Any, tmp_path: Path) -> None:
    coord = launch_coordinator(tmp_path / "data", "--signups-per-minute-per-source", str(PER_SOURCE))
    got = _hostile("challenges", coord.grpc_address, "40")
    refusal = got.pop("refusal", "")
    limit = CHALLENGES_PER_SIGNUP * PER_SOURCE
    assert limit <= got.get("challenge", 0) <= limit + 2 and sum(got.values()) == 40, got
    assert got.get("RESOURCE_EXHAUSTED", 0) == 40 - got["challenge"], got
    assert "too many registration challenges" in refusal and "try again in" in refusal, refusal
    with coord.client(coord.admin_token) as client:  # an admin is no stranger
        assert client.registration_challenge()


def test_declared_hardware_and_speed_are_held_to_what_one_machine_could_claim(coord: Any, kit: Any) -> None:
    boast = Hardware(os="Linux", arch="x86_64", cpu_cores=10**6, ram_bytes=2**62, accelerator="cuda",
                     gpu_name="H100\x1b[31m" + "x" * 500, gpu_vram_bytes=2**60, gpu_count=10**6)
    with coord.client(coord.admin_token) as client:
        reg = kit.Identity().register(client, "boaster", hardware=boast)
    with coord.client(reg.token) as client:
        client.heartbeat(volunteer_id=reg.volunteer_id, state="training", hardware=boast,
                         progress=[JobProgress(job_id="", samples_per_second=float("inf"))])
    with coord.client(coord.admin_token) as client:
        deadline = time.monotonic() + 10
        while True:
            v = next(v for v in client.list_volunteers() if v.id == reg.volunteer_id)
            if v.last_seen or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    hw = v.hardware
    assert (hw.cpu_cores, hw.gpu_count) == (4096, 64), hw
    assert hw.ram_bytes == 64 * 1024**4 and hw.gpu_vram_bytes == 1024**4, hw
    assert hw.gpu_name.startswith("H100") and len(hw.gpu_name) <= 64 and "\x1b" not in hw.gpu_name, hw
    assert v.samples_per_second == 0.0, v
