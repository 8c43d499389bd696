"""Tokens, roles and registration signatures, over a real SQLite store."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from essaim.coordinator.auth import (
    FIRST_ADMIN_TOKEN_DAYS,
    Authenticator,
    Principal,
    check_access,
    check_own_volunteer,
    create_token,
    ensure_admin_token,
    hash_token,
)
from essaim.coordinator.errors import BannedVolunteer, InvalidArgument, PermissionDenied, Unauthenticated
from essaim.coordinator.keys import verify_registration
from essaim.coordinator.store import open_store, sqlite_url
from essaim.protocol.auth_metadata import bearer_metadata, registration_message, token_from_metadata
from essaim.protocol.types import Role


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(sqlite_url(tmp_path / "auth.db"))
    yield s
    s.close()


def test_tokens_are_stored_hashed_and_resolve_to_their_role(store) -> None:
    token = create_token(store, role=Role.RESEARCHER, label="alice")
    assert token.startswith("essaim_") and len(token) > 40
    assert store.find_token(token) is None  # never stored in clear
    assert store.find_token(hash_token(token)).role == Role.RESEARCHER
    principal = Authenticator(store).authenticate(token)
    assert principal == Principal(role=Role.RESEARCHER, subject="alice", label="alice")


def test_bad_tokens_are_unauthenticated(store) -> None:
    auth = Authenticator(store)
    assert auth.authenticate(None) is None
    with pytest.raises(Unauthenticated, match="not known"):
        auth.authenticate("essaim_nope")
    expired = create_token(store, role=Role.RESEARCHER, label="old", expires_at=time.time() - 1)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authenticate(expired)


def test_banned_volunteer_tokens_stop_working_at_once(store) -> None:
    auth = Authenticator(store)
    token = create_token(store, role=Role.VOLUNTEER, subject="vol-1", label="v")
    assert auth.authenticate(token).subject == "vol-1"  # now cached
    store.revoke_tokens("vol-1")
    auth.mark_banned("vol-1", "cheating")
    with pytest.raises(BannedVolunteer, match=r"banned .*cheating"):
        auth.authenticate(token)
    fresh = Authenticator(store)
    fresh.load_banned({"vol-1": "cheating"})
    with pytest.raises(PermissionDenied, match="banned"):
        fresh.authenticate(token)


def test_first_admin_token_is_written_0600_once(store, tmp_path: Path) -> None:
    path = tmp_path / "data" / "admin-token"
    token = ensure_admin_token(store, path)
    assert token and path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Authenticator(store).authenticate(token).is_admin
    assert ensure_admin_token(store, path) is None
    # it expires as other tokens do; a start with no usable admin token makes a new one
    (row,) = [t for t in store.list_tokens() if t.label == "first admin"]
    assert row.expires_at == pytest.approx(time.time() + FIRST_ADMIN_TOKEN_DAYS * 86_400, abs=60)
    store.revoke_token(row.id)
    again = ensure_admin_token(store, path)
    assert again and again != token and path.read_text().strip() == again


def test_role_table() -> None:
    admin = Principal(Role.ADMIN, "admin")
    researcher = Principal(Role.RESEARCHER, "r")
    volunteer = Principal(Role.VOLUNTEER, "v1")
    check_access("Register", None, open_registration=True)
    with pytest.raises(Unauthenticated):
        check_access("Register", None, open_registration=False)
    check_access("Register", admin, open_registration=False)
    for rpc in ("SubmitJob", "ListJobs", "GetJob", "CancelJob", "UploadFile", "Download"):
        check_access(rpc, researcher, open_registration=True)
        check_access(rpc, admin, open_registration=True)
    for rpc in ("ApproveJob", "SetJobPriority", "ListVolunteers", "BanVolunteer", "UnbanVolunteer"):
        check_access(rpc, admin, open_registration=True)
        with pytest.raises(PermissionDenied, match="needs an admin token; yours is a researcher"):
            check_access(rpc, researcher, open_registration=True)
    with pytest.raises(PermissionDenied):
        check_access("SubmitJob", volunteer, open_registration=True)
    check_access("Download", volunteer, open_registration=True)
    with pytest.raises(Unauthenticated, match="needs a bearer token"):
        check_access("ListJobs", None, open_registration=True)
    check_own_volunteer(volunteer, "v1")
    with pytest.raises(PermissionDenied):
        check_own_volunteer(volunteer, "v2")
    with pytest.raises(PermissionDenied):
        check_own_volunteer(admin, "v1")


def test_bearer_metadata_round_trip() -> None:
    assert token_from_metadata(bearer_metadata("essaim_x")) == "essaim_x"
    assert token_from_metadata([("authorization", "Basic abc")]) is None
    assert token_from_metadata(bearer_metadata(None)) is None


def _der(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_registration_signatures() -> None:
    now = time.time()
    msg = registration_message("peer", "name", now)
    ed = ed25519.Ed25519PrivateKey.generate()
    verify_registration(
        public_key=_der(ed), peer_id="peer", name="name", timestamp=now, signature=ed.sign(msg)
    )
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    for pad in (pss, padding.PKCS1v15()):
        sig = rsa_key.sign(msg, pad, hashes.SHA256())
        verify_registration(
            public_key=_der(rsa_key), peer_id="peer", name="name", timestamp=now, signature=sig
        )
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_registration(
            public_key=_der(ed), peer_id="peer", name="other", timestamp=now, signature=ed.sign(msg)
        )
    with pytest.raises(Unauthenticated, match="clock"):
        old = now - 3600
        sig = ed.sign(registration_message("peer", "name", old))
        verify_registration(public_key=_der(ed), peer_id="peer", name="name", timestamp=old, signature=sig)
    with pytest.raises(InvalidArgument, match="not accepted"):
        ec_key = ec.generate_private_key(ec.SECP256R1())
        verify_registration(public_key=_der(ec_key), peer_id="p", name="n", timestamp=now, signature=b"x")
    with pytest.raises(InvalidArgument, match="DER"):
        verify_registration(public_key=b"garbage", peer_id="p", name="n", timestamp=now, signature=b"x")
