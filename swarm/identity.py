"""A volunteer's identity: one RSA key pair that signs its registration, its swarm requests and its
DHT records, and that is also its libp2p identity, so its peer id is stable across restarts.

    key = load_or_create_private_key(data_dir / "identity.pem")     # PEM, 0600, parent dir 0700
    path = ensure_p2p_identity(key, data_dir / "identity.p2p")      # the same key in libp2p's format
    peer_id = peer_id_for_identity(path)                            # base58, e.g. "QmX..."
    signature = sign(key, b"essaim-register|...")                    # raw RSA-PSS/SHA-256 bytes
    verify(public_key_bytes(key), data, signature)                   # True

The libp2p identity file (hivemind's ``identity_path``) holds the same RSA key as the PEM file, so
the coordinator can check that a registering peer id belongs to the public key it registers
(:func:`peer_id_for_public_key`). Used by the volunteer app (registration), the trainer (DHT and
swarm authorizer) and the coordinator (its own key, which signs swarm tokens).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path

import multihash
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from essaim.swarm.errors import AuthError
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

logger = logging.getLogger(__name__)

__all__ = [
    "RSAPrivateKey",
    "RSAPublicKey",
    "ensure_p2p_identity",
    "load_or_create_private_key",
    "load_public_key",
    "openssh_public_key",
    "peer_id_for_identity",
    "peer_id_for_key",
    "peer_id_for_public_key",
    "public_key_bytes",
    "sign",
    "verify",
]


def _wrap(key: rsa.RSAPrivateKey) -> RSAPrivateKey:
    """A hivemind RSAPrivateKey around an existing ``cryptography`` key (hivemind only generates new ones)."""
    wrapped = RSAPrivateKey.__new__(RSAPrivateKey)
    wrapped._private_key = key
    return wrapped


def _private_dir(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by the owner only, atomically (no half-written keys)."""
    _private_dir(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_create_private_key(path: str | Path) -> RSAPrivateKey:
    """The RSA private key stored at ``path`` (PEM), made and saved there (mode 0600) on first use.

    Raises AuthError when the file exists but does not hold an RSA private key.
    """
    path = Path(path)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise AuthError(
                f"cannot read the identity key {path}: {exc}; move the file away to make a new identity "
                "(the volunteer will have to register again)"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise AuthError(f"{path} holds a {type(key).__name__}, not an RSA key; move it away to make a new one")
        if path.stat().st_mode & 0o077:
            logger.warning("identity key %s is readable by other users; fixing its mode to 0600", path)
            path.chmod(0o600)
        return _wrap(key)
    key = RSAPrivateKey()
    pem = key._private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write_private(path, pem)
    logger.info("created a new identity key at %s", path)
    return key


def ensure_p2p_identity(key: RSAPrivateKey, identity_path: str | Path) -> Path:
    """Write ``key`` as a libp2p identity file (hivemind's ``identity_path``) unless it already holds it.

    A file holding another key is replaced, so the peer id always follows the volunteer's key.
    """
    identity_path = Path(identity_path)
    data = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes()).SerializeToString()
    if identity_path.exists():
        try:
            if identity_path.read_bytes() == data:
                return identity_path
        except OSError:
            pass
        logger.warning("libp2p identity %s does not hold the identity key; rewriting it", identity_path)
        identity_path.chmod(0o600)
    _write_private(identity_path, data)
    return identity_path


def peer_id_for_identity(identity_path: str | Path) -> str:
    """The base58 libp2p peer id of the identity file at ``identity_path``."""
    try:
        return PeerID.from_identity(Path(identity_path).read_bytes()).to_base58()
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read the libp2p identity {identity_path}: {exc}") from None


def load_public_key(data: bytes | str) -> RSAPublicKey:
    """An RSA public key from OpenSSH (``ssh-rsa ...``), PEM or DER SubjectPublicKeyInfo bytes."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    loaders = (
        serialization.load_ssh_public_key,
        serialization.load_pem_public_key,
        serialization.load_der_public_key,
    )
    for loader in loaders:
        try:
            key = loader(raw)
        except (ValueError, TypeError, IndexError):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            return RSAPublicKey(key)
        raise AuthError(f"expected an RSA public key, got {type(key).__name__}")
    raise AuthError("not an RSA public key (expected OpenSSH, PEM or DER SubjectPublicKeyInfo bytes)")


def public_key_bytes(key: RSAPrivateKey | RSAPublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of ``key`` (what RegisterRequest.public_key carries)."""
    public = key.get_public_key() if isinstance(key, RSAPrivateKey) else key
    return public._public_key.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )


def openssh_public_key(key: RSAPrivateKey | RSAPublicKey | bytes) -> bytes:
    """The OpenSSH form (``ssh-rsa AAAA...``) hivemind uses in access tokens and DHT record keys."""
    if isinstance(key, bytes | str):
        return load_public_key(key).to_bytes()
    public = key.get_public_key() if isinstance(key, RSAPrivateKey) else key
    return public.to_bytes()


def peer_id_for_public_key(public_key: bytes | RSAPublicKey) -> str:
    """The base58 libp2p peer id that belongs to an RSA public key (any format of :func:`load_public_key`)."""
    public = public_key if isinstance(public_key, RSAPublicKey) else load_public_key(public_key)
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=public_key_bytes(public)).SerializeToString()
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return PeerID(digest).to_base58()


def peer_id_for_key(key: RSAPrivateKey) -> str:
    """The base58 libp2p peer id of a private key (the same as its identity file's)."""
    return peer_id_for_public_key(key.get_public_key())


def sign(key: RSAPrivateKey, data: bytes) -> bytes:
    """A raw RSA-PSS (SHA-256) signature of ``data``."""
    return base64.b64decode(key.sign(data))


def verify(public_key: bytes | RSAPublicKey, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (from :func:`sign`) signs ``data`` with the key ``public_key``."""
    try:
        public = public_key if isinstance(public_key, RSAPublicKey) else load_public_key(public_key)
    except AuthError:
        return False
    return public.verify(data, base64.b64encode(signature))
