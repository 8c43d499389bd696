"""Checks that a registering volunteer holds the private key of the public key it presents.

The volunteer signs ``registration_message(peer_id, name, timestamp, nonce)`` (essaim.protocol.auth_metadata)
with its identity key: Ed25519, or RSA with PSS or PKCS#1 v1.5 padding over SHA-256 (hivemind's
identities are RSA). The public key is DER SubjectPublicKeyInfo. Used by the service's Register.
"""

from __future__ import annotations

import math
import time

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from essaim.coordinator.errors import InvalidArgument, Unauthenticated
from essaim.protocol.auth_metadata import REGISTRATION_MAX_SKEW_SECONDS, registration_message

MAX_PUBLIC_KEY_BYTES = 4096
MIN_RSA_BITS = 2048


def load_public_key(der: bytes) -> ed25519.Ed25519PublicKey | rsa.RSAPublicKey:
    """Parse a DER SubjectPublicKeyInfo; only Ed25519 and RSA >= 2048 bits are accepted."""
    if not der or len(der) > MAX_PUBLIC_KEY_BYTES:
        raise InvalidArgument("public_key must be a DER SubjectPublicKeyInfo of an Ed25519 or RSA key")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidArgument(
            "public_key is not a DER SubjectPublicKeyInfo of an Ed25519 or RSA key; regenerate the identity"
        ) from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidArgument(f"RSA keys must have at least {MIN_RSA_BITS} bits; got {key.key_size}")
        return key
    raise InvalidArgument(f"{type(key).__name__} keys are not accepted; use Ed25519 or RSA")


def verify_signature(der: bytes, data: bytes, signature: bytes) -> None:
    """Raise Unauthenticated unless ``signature`` over ``data`` verifies with the key ``der``."""
    key = load_public_key(der)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
        for pad in (pss, padding.PKCS1v15()):
            try:
                key.verify(signature, data, pad, hashes.SHA256())
                return
            except InvalidSignature:
                continue
        raise InvalidSignature()
    except InvalidSignature:
        raise Unauthenticated(
            "the registration signature does not verify with the given public key; "
            "sign 'essaim-register|<peer_id>|<name>|<timestamp>|<nonce hex>' with the identity key"
        ) from None


def verify_registration(
    *,
    public_key: bytes,
    peer_id: str,
    name: str,
    timestamp: float,
    signature: bytes,
    nonce: bytes = b"",
    now: float | None = None,
) -> None:
    """Check a Register request's proof of key possession and the freshness of its timestamp."""
    now = time.time() if now is None else now
    if not math.isfinite(timestamp) or abs(now - timestamp) > REGISTRATION_MAX_SKEW_SECONDS:
        raise Unauthenticated(
            f"the registration timestamp is more than {REGISTRATION_MAX_SKEW_SECONDS:.0f} s away from the "
            "coordinator's clock; fix this machine's clock and retry"
        )
    verify_signature(public_key, registration_message(peer_id, name, timestamp, nonce), signature)
