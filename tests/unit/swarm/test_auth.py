"""Swarm tokens and identities: who may use a job's DHT, and the keys behind it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from essaim.swarm.auth import (
    SwarmAuthorizer,
    decode_swarm_token,
    issue_swarm_token,
    token_file_refresher,
    verify_swarm_token,
)
from essaim.swarm.errors import AuthError
from essaim.swarm.identity import (
    ensure_p2p_identity,
    load_or_create_private_key,
    load_public_key,
    openssh_public_key,
    peer_id_for_identity,
    peer_id_for_key,
    peer_id_for_public_key,
    public_key_bytes,
    sign,
    verify,
)
from hivemind.proto import dht_pb2

JOB = "job-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("keys")
    return {name: load_or_create_private_key(root / f"{name}.pem") for name in ("coordinator", "rogue", "alice", "bob")}


def _token(keys: dict, peer: str = "alice", *, job: str = JOB, ttl: float = 600, signer: str = "coordinator") -> str:
    return issue_swarm_token(keys[signer], job_id=job, volunteer_id=f"vol-{peer}",
                             peer_public_key=public_key_bytes(keys[peer]), ttl_s=ttl)[0]


def _authorizer(keys: dict, peer: str, token: str | None = None, **kwargs: object) -> SwarmAuthorizer:
    return SwarmAuthorizer(keys[peer], token or _token(keys, peer), public_key_bytes(keys["coordinator"]), JOB,
                           **kwargs)


# ---- identity ----
def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "data" / "identity.pem"
    key = load_or_create_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert public_key_bytes(load_or_create_private_key(path)) == public_key_bytes(key)


def test_peer_id_follows_the_key_across_restarts(tmp_path: Path) -> None:
    key = load_or_create_private_key(tmp_path / "id.pem")
    identity = ensure_p2p_identity(key, tmp_path / "id.p2p")
    first = peer_id_for_identity(identity)
    again = ensure_p2p_identity(load_or_create_private_key(tmp_path / "id.pem"), tmp_path / "id.p2p")
    assert peer_id_for_identity(again) == first == peer_id_for_key(key)
    assert peer_id_for_public_key(public_key_bytes(key)) == first
    assert peer_id_for_public_key(openssh_public_key(key)) == first
    assert first.startswith("Qm")


def test_identity_file_holding_another_key_is_replaced(tmp_path: Path) -> None:
    other = load_or_create_private_key(tmp_path / "other.pem")
    identity = ensure_p2p_identity(other, tmp_path / "id.p2p")
    key = load_or_create_private_key(tmp_path / "id.pem")
    assert peer_id_for_identity(ensure_p2p_identity(key, identity)) == peer_id_for_key(key)


def test_corrupt_key_file_is_an_auth_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_text("not a key")
    with pytest.raises(AuthError, match="move the file away"):
        load_or_create_private_key(path)


def test_sign_and_verify(keys: dict) -> None:
    data = b"essaim-register|Qm...|alice|1700000000"
    signature = sign(keys["alice"], data)
    assert verify(public_key_bytes(keys["alice"]), data, signature)
    assert verify(openssh_public_key(keys["alice"]), data, signature)
    assert not verify(public_key_bytes(keys["bob"]), data, signature)
    assert not verify(public_key_bytes(keys["alice"]), data + b"x", signature)
    assert not verify(b"garbage", data, signature)


def test_public_key_formats_load(keys: dict) -> None:
    der = public_key_bytes(keys["alice"])
    assert load_public_key(der).to_bytes() == load_public_key(openssh_public_key(keys["alice"])).to_bytes()
    with pytest.raises(AuthError):
        load_public_key(b"nonsense")


# ---- tokens ----
def test_token_roundtrip(keys: dict) -> None:
    token, expires_at = issue_swarm_token(keys["coordinator"], job_id=JOB, volunteer_id="vol-alice",
                                          peer_public_key=public_key_bytes(keys["alice"]), ttl_s=60)
    info = verify_swarm_token(token, public_key_bytes(keys["coordinator"]), job_id=JOB)
    assert (info.job_id, info.volunteer_id) == (JOB, "vol-alice")
    assert info.public_key == openssh_public_key(keys["alice"])
    assert info.expires_at == pytest.approx(expires_at)
    assert time.time() < expires_at <= time.time() + 60


def test_expired_token_is_refused(keys: dict) -> None:
    token, _ = issue_swarm_token(keys["coordinator"], job_id=JOB, volunteer_id="v",
                                 peer_public_key=public_key_bytes(keys["alice"]), ttl_s=10, now=time.time() - 60)
    with pytest.raises(AuthError, match="expired"):
        verify_swarm_token(token, public_key_bytes(keys["coordinator"]), job_id=JOB)
    assert not _authorizer(keys, "bob").is_token_valid(decode_swarm_token(token))


def test_token_from_another_signer_is_refused(keys: dict) -> None:
    token = _token(keys, signer="rogue")
    with pytest.raises(AuthError, match="not signed"):
        verify_swarm_token(token, public_key_bytes(keys["coordinator"]), job_id=JOB)
    assert not _authorizer(keys, "bob").is_token_valid(decode_swarm_token(token))


def test_token_for_another_job_is_refused(keys: dict) -> None:
    token = _token(keys, job="job-2")
    with pytest.raises(AuthError, match="job-2"):
        verify_swarm_token(token, public_key_bytes(keys["coordinator"]), job_id=JOB)
    assert not _authorizer(keys, "bob").is_token_valid(decode_swarm_token(token))


def test_tampered_token_is_refused(keys: dict) -> None:
    access = decode_swarm_token(_token(keys))
    access.expiration_time = repr(time.time() + 10**6)  # extend its life without the coordinator
    assert not _authorizer(keys, "bob").is_token_valid(access)
    for bad in ("", "essaim-swarm-v1.!!!", "bearer abc"):
        with pytest.raises(AuthError):
            decode_swarm_token(bad)


def test_authorizer_refuses_a_token_for_another_key(keys: dict) -> None:
    with pytest.raises(AuthError, match="another peer"):
        _authorizer(keys, "bob", token=_token(keys, "alice"))


def test_signed_requests_pass_between_valid_peers_only(keys: dict) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        alice, bob = _authorizer(keys, "alice"), _authorizer(keys, "bob")
        request = dht_pb2.PingRequest(validate=True)
        await alice.sign_request(request, None)
        accepted = await bob.validate_request(request)
        replayed = await bob.validate_request(request)  # the same nonce twice
        intruder = SwarmAuthorizer(keys["rogue"], _token(keys, "rogue", signer="rogue"),
                                   public_key_bytes(keys["rogue"]), JOB)
        forged = dht_pb2.PingRequest(validate=True)
        await intruder.sign_request(forged, None)
        return accepted, replayed, await bob.validate_request(forged)

    accepted, replayed, forged = asyncio.run(scenario())
    assert accepted and not replayed and not forged


def test_authorizer_refreshes_a_token_about_to_expire(keys: dict, tmp_path: Path) -> None:
    path = tmp_path / "token"
    fresh = _token(keys, "alice", ttl=3600)
    path.write_text(fresh)
    authorizer = _authorizer(keys, "alice", token=_token(keys, "alice", ttl=30), refresh=token_file_refresher(path),
                             refresh_margin_s=60)
    current = asyncio.run(authorizer.get_token())
    assert float(current.expiration_time) == pytest.approx(time.time() + 3600, abs=30)


def test_refresh_ignores_a_bad_token(keys: dict, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(_token(keys, "alice", signer="rogue"))
    old = _token(keys, "alice", ttl=30)
    authorizer = _authorizer(keys, "alice", token=old, refresh=token_file_refresher(path), refresh_margin_s=60)
    current = asyncio.run(authorizer.get_token())
    assert current.SerializeToString() == decode_swarm_token(old).SerializeToString()
    os.unlink(path)
    assert token_file_refresher(path)() is None


# ---- joining: client mode ----
def test_client_mode_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    from essaim.swarm import dht

    lan = ["/ip4/192.168.1.10/tcp/4000/p2p/QmPeer"]
    public = ["/ip4/8.8.8.8/tcp/4000/p2p/QmPeer"]
    assert dht.decide_client_mode(["/ip4/127.0.0.1/tcp/4000/p2p/QmPeer"]) is False  # a swarm on this machine
    assert dht.decide_client_mode([]) is False  # the first peer of a swarm must accept connections
    monkeypatch.setattr(dht, "has_public_address", lambda: False)
    assert dht.decide_client_mode(public) is True  # behind a NAT, the bootstrap on the internet
    # a coordinator's private address says nothing of this peer: unknown means client mode, which
    # always works through the coordinator's averaging peer
    assert dht.decide_client_mode(lan) is True
    assert dht.decide_client_mode([*lan, "/ip4/127.0.0.1/tcp/4000/p2p/QmPeer"]) is True
    monkeypatch.setattr(dht, "has_public_address", lambda: True)
    assert dht.decide_client_mode(public) is False
    assert dht.decide_client_mode(lan) is False


def test_maddrs_for_others() -> None:
    from essaim.swarm.dht import maddrs_for_others

    both = ["/ip4/127.0.0.1/tcp/4000/p2p/QmPeer", "/ip4/10.20.0.1/tcp/4000/p2p/QmPeer"]
    assert maddrs_for_others(both) == both[1:]  # nobody else can use the loopback address
    assert maddrs_for_others(both[:1]) == both[:1]  # a swarm on this machine keeps it
    announced = ["/ip4/203.0.113.5/tcp/4000/p2p/QmPeer", *both]
    assert maddrs_for_others(announced, announce_host="203.0.113.5") == announced[:1]


def test_bad_initial_peer_is_a_dht_error() -> None:
    from essaim.swarm.dht import start_dht
    from essaim.swarm.errors import DHTError

    with pytest.raises(DHTError, match="not a multiaddr"):
        start_dht(initial_peers=["127.0.0.1:4000"], identity_path=None, authorizer=None)
