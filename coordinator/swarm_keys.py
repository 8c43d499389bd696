"""The coordinator's swarm key, and the swarm tokens it signs, without importing the training stack.

The API process hands out a swarm token with every assignment, so it must sign them; importing
hivemind (and with it torch) there would cost seconds and hundreds of MB. This module writes the
very token :mod:`essaim.swarm.auth` defines (a hivemind ``AccessToken``, base64url behind
``essaim-swarm-v1.``, RSA-PSS/SHA-256 signature over ``essaim-swarm-token-v1|username|public_key|expiry``)
with ``cryptography`` alone; ``tests/unit/coordinator/test_swarm_keys.py`` checks that
:func:`essaim.swarm.auth.verify_swarm_token` accepts it.

Used by :mod:`essaim.coordinator.gateway`; the job runners load the same key file with
:func:`essaim.swarm.identity.load_or_create_private_key`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from essaim.coordinator.errors import InvalidArgument

SWARM_KEY = "swarm-key.pem"  # in the coordinator's data dir
TOKEN_PREFIX = "essaim-swarm-v1."
_SIGNED_PREFIX = b"essaim-swarm-token-v1"
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
KEY_BITS = 2048


def load_or_create_swarm_key(path: Path) -> rsa.RSAPrivateKey:
    """The coordinator's RSA key (PEM, PKCS#8, mode 0600), made on first use."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidArgument(f"{path} does not hold an RSA private key; move it away to make a new one")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # never overwrite a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return load_or_create_swarm_key(path)


def public_key_der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def openssh_from_der(der: bytes) -> bytes:
    """The OpenSSH form (``ssh-rsa AAAA...``) of a DER public key: what hivemind tokens carry."""
    try:
        public = serialization.load_der_public_key(der)
    except ValueError:
        raise InvalidArgument("the volunteer's public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(public, rsa.RSAPublicKey):
        raise InvalidArgument(
            "swarm access needs an RSA identity key; this volunteer registered another kind: "
            "upgrade the volunteer app and register again"
        )
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _field(number: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    out = bytearray([number << 3 | 2])
    length = len(value)
    while True:
        byte = length & 0x7F
        length >>= 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(out) + value


def issue_swarm_token(
    key: rsa.RSAPrivateKey,
    *,
    job_id: str,
    volunteer_id: str,
    peer_public_key_der: bytes,
    ttl_s: float,
    now: float | None = None,
) -> tuple[str, float]:
    """A token letting the holder of ``peer_public_key_der`` use job ``job_id``'s DHT for ``ttl_s`` s."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    expires_at = (time.time() if now is None else now) + ttl_s
    username = json.dumps({"job": job_id, "volunteer": volunteer_id}, separators=(",", ":"), sort_keys=True)
    public = openssh_from_der(peer_public_key_der)
    expiry = repr(float(expires_at))
    signed = b"|".join([_SIGNED_PREFIX, username.encode(), public, expiry.encode()])
    signature = base64.b64encode(key.sign(signed, _PSS, hashes.SHA256()))
    message = _field(1, username.encode()) + _field(2, public) + _field(3, expiry.encode()) + _field(4, signature)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(message).decode().rstrip("="), expires_at


REVOCATIONS_PREFIX = b"essaim-swarm-revoked-v1"


def revocations_signed_bytes(job_id: str, issued_at: float, keys: list[str]) -> bytes:
    """What the coordinator signs in a revocation list (:mod:`essaim.swarm.auth` checks the same bytes)."""
    return b"|".join([REVOCATIONS_PREFIX, job_id.encode(), repr(float(issued_at)).encode(),
                      ",".join(sorted(keys)).encode()])


def sign_revocations(key: rsa.RSAPrivateKey, job_id: str, public_keys_der: list[bytes], *,
                     now: float | None = None) -> dict[str, object]:
    """The job's list of revoked peer keys (banned volunteers), signed by the coordinator.

    Peers refuse every swarm token issued for a key in the newest list they saw, so a ban reaches
    the swarm without waiting for the banned volunteer's token to run out. Keys that are not RSA are
    left out: they were never given a swarm token.
    """
    keys = []
    for der in public_keys_der:
        try:
            keys.append(openssh_from_der(der).decode())
        except InvalidArgument:
            continue
    keys = sorted(set(keys))
    issued_at = float(time.time() if now is None else now)
    signature = base64.b64encode(key.sign(revocations_signed_bytes(job_id, issued_at, keys), _PSS, hashes.SHA256()))
    return {"job": job_id, "issued_at": issued_at, "keys": keys, "signature": signature.decode()}


RESET_PREFIX = b"essaim-swarm-reset-v1"


def reset_signed_bytes(job_id: str, generation: int, epoch: int, issued_at: float) -> bytes:
    """What the coordinator signs in a state reset (:func:`essaim.swarm.auth.check_reset` checks it)."""
    return b"|".join([RESET_PREFIX, job_id.encode(), str(int(generation)).encode(), str(int(epoch)).encode(),
                      repr(float(issued_at)).encode()])


def sign_reset(key: rsa.RSAPrivateKey, job_id: str, generation: int, epoch: int, *,
               now: float | None = None) -> dict[str, object]:
    """A job's state reset, signed by the coordinator: its averaging peer rolled back (the
    ``generation``-th time) at ``epoch``, and every volunteer is to reload its state."""
    issued_at = float(time.time() if now is None else now)
    signature = base64.b64encode(key.sign(reset_signed_bytes(job_id, generation, epoch, issued_at), _PSS,
                                          hashes.SHA256()))
    return {"job": job_id, "generation": int(generation), "epoch": int(epoch), "issued_at": issued_at,
            "signature": signature.decode()}
