"""The API process's light swarm-token issuer writes tokens the swarm's authorizer accepts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from essaim.coordinator import swarm_keys


def test_light_tokens_verify_with_the_swarm_checker(tmp_path: Path) -> None:
    auth = pytest.importorskip("essaim.swarm.auth")
    identity = pytest.importorskip("essaim.swarm.identity")
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
