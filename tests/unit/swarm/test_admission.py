"""Who may open an averaging stream: a peer whose swarm token of the job is published under its own
key in the DHT, valid and not revoked (essaim.swarm.admission)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from essaim.coordinator import swarm_keys
from essaim.swarm import admission as adm
from essaim.swarm.admission import Admission, AdmittedServicer, members_key
from essaim.swarm.auth import REVOCATIONS_RECHECK_S, SwarmAuthorizer, issue_swarm_token, write_revocations
from essaim.swarm.identity import load_or_create_private_key, peer_id_for_key, public_key_bytes
from essaim.swarm.records import owner_subkey
from hivemind.proto import averaging_pb2

JOB = "job-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("keys")
    return {n: load_or_create_private_key(root / f"{n}.pem") for n in ("coordinator", "rogue", "me", "alice", "bob")}


def _token(keys: dict[str, Any], peer: str, *, job: str = JOB, ttl: float = 600, signer: str = "coordinator") -> str:
    return issue_swarm_token(keys[signer], job_id=job, volunteer_id=f"vol-{peer}",
                             peer_public_key=public_key_bytes(keys[peer]), ttl_s=ttl)[0]


class _DHT:
    """The DHT's answer for the members key: {owner subkey: token}, as hivemind returns it."""

    def __init__(self) -> None:
        self.records: dict[bytes, Any] = {}
        self.gets = 0

    def publish(self, owner: Any, token: Any) -> None:
        self.records[owner_subkey(owner)] = SimpleNamespace(value=token)

    def get(self, key: str, latest: bool, return_future: bool) -> Any:
        assert key == members_key(JOB) and latest and return_future
        self.gets += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(value=dict(self.records)) if self.records else None)
        return future


def _admission(keys: dict[str, Any], tmp_path: Path) -> Admission:
    authorizer = SwarmAuthorizer(keys["me"], _token(keys, "me"), public_key_bytes(keys["coordinator"]), JOB,
                                 revocations_path=tmp_path / "revoked.json")
    return Admission(authorizer, JOB, trusted=[peer_id_for_key(keys["me"])])


def _admits(admission: Admission, dht: _DHT, key: Any) -> bool:
    return asyncio.run(admission.admits(dht, peer_id_for_key(key)))


def test_a_peer_with_its_published_token_is_admitted_and_remembered(keys: dict[str, Any], tmp_path: Path) -> None:
    admission, dht = _admission(keys, tmp_path), _DHT()
    dht.publish(keys["alice"], _token(keys, "alice"))
    assert _admits(admission, dht, keys["alice"])
    assert _admits(admission, dht, keys["alice"]) and dht.gets == 1  # held, not looked up again
    assert _admits(admission, dht, keys["me"]) and dht.gets == 1  # this peer itself: trusted


@pytest.mark.parametrize("case", ["absent", "another key's token", "forged", "other job", "expired", "garbage"])
def test_a_peer_without_a_valid_token_of_its_own_is_refused(keys: dict[str, Any], tmp_path: Path, case: str) -> None:
    admission, dht = _admission(keys, tmp_path), _DHT()
    published = {
        "absent": None,
        "another key's token": _token(keys, "bob"),  # bob's token copied under alice's subkey
        "forged": _token(keys, "alice", signer="rogue"),
        "other job": _token(keys, "alice", job="job-2"),
        "expired": _token(keys, "alice", ttl=0.001),
        "garbage": "essaim-swarm-v1.AAAA",
    }[case]
    if published is not None:
        time.sleep(0.01)
        dht.publish(keys["alice"], published)
    assert not _admits(admission, dht, keys["alice"])
    assert not _admits(admission, dht, keys["alice"]) and dht.gets == 1  # refusals are held a moment


def test_a_refused_peer_is_looked_up_again_later(keys: dict[str, Any], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    admission, dht = _admission(keys, tmp_path), _DHT()
    assert not _admits(admission, dht, keys["alice"])
    dht.publish(keys["alice"], _token(keys, "alice"))  # its record reached the DHT after its first call
    now = time.monotonic()
    monkeypatch.setattr(adm.time, "monotonic", lambda: now + adm.REFUSED_RECHECK_S + 1)
    assert _admits(admission, dht, keys["alice"]) and dht.gets == 2


def test_a_revoked_peer_is_refused_even_once_admitted(keys: dict[str, Any], tmp_path: Path) -> None:
    admission, dht = _admission(keys, tmp_path), _DHT()
    dht.publish(keys["alice"], _token(keys, "alice"))
    assert _admits(admission, dht, keys["alice"])
    coordinator = keys["coordinator"]._private_key  # the coordinator signs with its cryptography key
    listed = swarm_keys.sign_revocations(coordinator, JOB, [swarm_keys.public_key_der(keys["alice"]._private_key)])
    write_revocations(tmp_path / "revoked.json", listed)
    time.sleep(REVOCATIONS_RECHECK_S + 0.1)
    assert not _admits(admission, dht, keys["alice"])


def test_the_averagers_streams_answer_nothing_to_a_refused_peer() -> None:
    class Averager(AdmittedServicer):  # hivemind's averager would come next in the MRO: never reached
        dht = None

    refused = Averager()
    refused.admission = SimpleNamespace(admits=lambda dht, peer: _false())  # type: ignore[assignment]
    context = SimpleNamespace(remote_id="stranger")

    async def run() -> tuple[list[Any], list[Any], list[Any]]:
        join = [m async for m in AdmittedServicer.rpc_join_group(refused, averaging_pb2.JoinRequest(), context)]
        parts = [m async for m in AdmittedServicer.rpc_aggregate_part(refused, _empty(), context)]
        state = [m async for m in AdmittedServicer.rpc_download_state(refused, averaging_pb2.DownloadRequest(),
                                                                      context)]
        return join, parts, state

    join, parts, state = asyncio.run(run())
    assert [m.code for m in join] == [averaging_pb2.PROTOCOL_VIOLATION]
    assert [m.code for m in parts] == [averaging_pb2.PROTOCOL_VIOLATION]
    assert state == []


@pytest.mark.parametrize("servicer", ["mixin", "gradient averager"])
def test_a_refused_peers_parts_are_read_before_it_is_answered(servicer: str) -> None:
    """Answered while it still writes, the caller's stream is reset and the refusal can be lost (an
    empty answer under load): both the mixin's and the gradient averager's own override read first."""
    from essaim.swarm import optimizer

    cls = AdmittedServicer if servicer == "mixin" else optimizer._GradAverager
    refused = object.__new__(cls)  # no averager behind it: the refusal never reaches hivemind's code
    refused.admission = SimpleNamespace(admits=lambda dht, peer: _false())
    refused.dht = None
    refused._parent_pid = None  # hivemind's __del__ shuts down an averager its own process started
    read: list[int] = []

    async def sent() -> Any:
        for i in range(3):
            read.append(i)
            yield averaging_pb2.AveragingData(code=averaging_pb2.PART_FOR_AVERAGING)

    async def run() -> list[Any]:
        return [m async for m in cls.rpc_aggregate_part(refused, sent(), SimpleNamespace(remote_id="stranger"))]

    assert [m.code for m in asyncio.run(run())] == [averaging_pb2.PROTOCOL_VIOLATION]
    assert read == [0, 1, 2]


async def _false() -> bool:
    return False


async def _empty() -> Any:
    return
    yield
