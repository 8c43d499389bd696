"""The API process's light swarm-token issuer writes tokens the swarm's authorizer accepts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from essaim.coordinator import swarm_keys
from essaim.swarm import auth, identity


def test_light_tokens_verify_with_the_swarm_checker(tmp_path: Path) -> None:
    coordinator = swarm_keys.load_or_create_swarm_key(tmp_path / "swarm-key.pem")
    assert (tmp_path / "swarm-key.pem").stat().st_mode & 0o777 == 0o600
    volunteer = identity.load_or_create_private_key(tmp_path / "volunteer.pem")
    der = identity.public_key_bytes(volunteer)

    token, expires = swarm_keys.issue_swarm_token(
        coordinator, job_id="job1", volunteer_id="v1", peer_public_key_der=der, ttl_s=60
    )
    info = auth.verify_swarm_token(token, swarm_keys.public_key_der(coordinator), job_id="job1")
    assert (info.job_id, info.volunteer_id) == ("job1", "v1")
    assert info.public_key == identity.openssh_public_key(der)
    assert abs(info.expires_at - expires) < 1e-6

    with pytest.raises(auth.AuthError, match="not"):
        auth.verify_swarm_token(token, swarm_keys.public_key_der(coordinator), job_id="other")
    other = swarm_keys.load_or_create_swarm_key(tmp_path / "other.pem")
    with pytest.raises(auth.AuthError, match="not signed"):
        auth.verify_swarm_token(token, swarm_keys.public_key_der(other), job_id="job1")
    old, _ = swarm_keys.issue_swarm_token(
        coordinator, job_id="job1", volunteer_id="v1", peer_public_key_der=der, ttl_s=1, now=time.time() - 10
    )
    with pytest.raises(auth.AuthError, match="expired"):
        auth.verify_swarm_token(old, swarm_keys.public_key_der(coordinator), job_id="job1")


def test_key_is_stable_across_loads(tmp_path: Path) -> None:
    a = swarm_keys.load_or_create_swarm_key(tmp_path / "k.pem")
    b = swarm_keys.load_or_create_swarm_key(tmp_path / "k.pem")
    assert swarm_keys.public_key_der(a) == swarm_keys.public_key_der(b)


def test_non_rsa_volunteer_key_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from essaim.coordinator.errors import InvalidArgument

    der = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidArgument, match="RSA"):
        swarm_keys.openssh_from_der(der)


def test_revocation_lists_verify_and_make_the_authorizer_refuse_banned_keys(tmp_path: Path) -> None:
    coordinator = swarm_keys.load_or_create_swarm_key(tmp_path / "swarm-key.pem")
    trusted = identity.load_public_key(swarm_keys.public_key_der(coordinator))
    keys = {name: identity.load_or_create_private_key(tmp_path / f"{name}.pem") for name in ("me", "bad", "good")}
    der = {name: identity.public_key_bytes(k) for name, k in keys.items()}
    tokens = {
        name: auth.decode_swarm_token(swarm_keys.issue_swarm_token(
            coordinator, job_id="job1", volunteer_id=name, peer_public_key_der=der[name], ttl_s=600)[0])
        for name in keys
    }

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    not_rsa = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )  # registered, never given a swarm token: left out of the list
    listed = swarm_keys.sign_revocations(coordinator, "job1", [der["bad"], not_rsa], now=1000.0)
    issued_at, revoked = auth.check_revocations(listed, trusted, job_id="job1")
    assert issued_at == 1000.0 and revoked == {identity.openssh_public_key(der["bad"])}
    with pytest.raises(auth.AuthError, match="not signed"):
        auth.check_revocations({**listed, "keys": []}, trusted, job_id="job1")  # a peer emptied the list
    with pytest.raises(auth.AuthError, match="for job"):
        auth.check_revocations(listed, trusted, job_id="job2")
    with pytest.raises(auth.AuthError, match="malformed"):
        auth.check_revocations({"keys": 3}, trusted, job_id="job1")

    path = tmp_path / "revoked.json"
    own = swarm_keys.issue_swarm_token(coordinator, job_id="job1", volunteer_id="me",
                                       peer_public_key_der=der["me"], ttl_s=600)[0]
    authorizer = auth.SwarmAuthorizer(keys["me"], own, swarm_keys.public_key_der(coordinator), "job1",
                                      revocations_path=path)
    assert authorizer.is_token_valid(tokens["bad"]) and authorizer.is_token_valid(tokens["good"])
    auth.write_revocations(path, listed)
    time.sleep(auth.REVOCATIONS_RECHECK_S + 0.1)
    assert not authorizer.is_token_valid(tokens["bad"])  # refused even though it was cached as valid
    assert authorizer.is_token_valid(tokens["good"])

    # an older list, or one the coordinator did not sign, changes nothing
    auth.write_revocations(path, swarm_keys.sign_revocations(coordinator, "job1", [], now=999.0))
    time.sleep(auth.REVOCATIONS_RECHECK_S + 0.1)
    assert not authorizer.is_token_valid(tokens["bad"])
    auth.write_revocations(path, {**swarm_keys.sign_revocations(coordinator, "job1", [], now=5000.0), "keys": []}
                           | {"signature": listed["signature"]})
    time.sleep(auth.REVOCATIONS_RECHECK_S + 0.1)
    assert not authorizer.is_token_valid(tokens["bad"])
    # a newer list that lifts the ban
    auth.write_revocations(path, swarm_keys.sign_revocations(coordinator, "job1", [], now=6000.0))
    time.sleep(auth.REVOCATIONS_RECHECK_S + 0.1)
    assert authorizer.is_token_valid(tokens["bad"])


def test_a_state_reset_counts_only_when_the_coordinator_signed_it_for_this_job(tmp_path: Path) -> None:
    coordinator = swarm_keys.load_or_create_swarm_key(tmp_path / "swarm-key.pem")
    trusted = identity.load_public_key(swarm_keys.public_key_der(coordinator))
    reset = swarm_keys.sign_reset(coordinator, "job1", 2, 5, now=1000.0)
    assert auth.check_reset(reset, trusted, job_id="job1") == (2, 5)
    with pytest.raises(auth.AuthError, match="not signed"):  # a peer inventing a later reset
        auth.check_reset({**reset, "generation": 3}, trusted, job_id="job1")
    other = swarm_keys.load_or_create_swarm_key(tmp_path / "other-key.pem")
    with pytest.raises(auth.AuthError, match="not signed"):
        auth.check_reset(swarm_keys.sign_reset(other, "job1", 9, 5), trusted, job_id="job1")
    with pytest.raises(auth.AuthError, match="for job"):
        auth.check_reset(reset, trusted, job_id="job2")
    with pytest.raises(auth.AuthError, match="malformed"):
        auth.check_reset({"generation": "x"}, trusted, job_id="job1")
