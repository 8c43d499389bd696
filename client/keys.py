"""The volunteer's identity key, without importing hivemind: load or make it, sign, derive the peer id.

    key = load_or_create_private_key(paths.identity_file)    # RSA 2048, PEM (PKCS8), mode 0600
    der = public_key_der(key)                                 # RegisterRequest.public_key
    peer_id = peer_id_for(key)                                # base58 libp2p id, "Qm..."
    signature = sign(key, registration_message(peer_id, name, timestamp))
    check_identity_file(paths.identity_file)                  # at start: a readable RSA key, or none yet

The file and the signatures are the same as :mod:`essaim.swarm.identity` makes (RSA-PSS, SHA-256,
maximum salt), which the trainer and the coordinator use; this module exists so the light app
process never imports hivemind or torch. ``tests/unit/client/test_client_parts.py`` checks both agree.
``cryptography`` (about 9 MB resident) is imported only by the functions that use the key: the app
needs them to register, once per coordinator, and checks the file at start without them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from essaim.client.errors import IdentityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger(__name__)
_PEM = re.compile(r"-----BEGIN (RSA )?PRIVATE KEY-----(.+?)-----END \1?PRIVATE KEY-----", re.S)
_RSA_OID = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption, in a PKCS8 AlgorithmIdentifier
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _unreadable(path: Path, why: object) -> IdentityError:
    return IdentityError(
        f"cannot read the identity key {path} ({why}); move the file away to make a new identity "
        "(this computer will then register as a new volunteer)"
    )


def _not_rsa(path: Path, what: str) -> IdentityError:
    return IdentityError(f"{path} holds {what}, not an RSA key; move it away to make a new one")


def _owner_only(path: Path) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("identity key %s was readable by other users; setting its mode to 0600", path)
        path.chmod(0o600)


def check_identity_file(path: Path) -> None:
    """Raise IdentityError unless ``path`` is missing (made when first needed) or holds an RSA private key.

    A light check for the app's start, without ``cryptography``: the PEM armour, its base64, and
    the RSA algorithm of a PKCS8 key. The key itself is parsed where it is used.
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        match = _PEM.search(path.read_text(encoding="ascii"))
        der = base64.b64decode("".join(match.group(2).split()), validate=True) if match else b""
    except (OSError, UnicodeDecodeError, binascii.Error) as exc:
        raise _unreadable(path, exc) from None
    if match is None or not der.startswith(b"\x30"):
        raise _unreadable(path, "no PEM private key in it")
    if not match.group(1) and _RSA_OID not in der[:32]:
        raise _not_rsa(path, "another kind of key")
    _owner_only(path)


def load_or_create_private_key(path: Path) -> rsa.RSAPrivateKey:
    """The key stored at ``path``, made (RSA 2048) and saved with mode 0600 on first use."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = Path(path)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as exc:
            raise _unreadable(path, exc) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise _not_rsa(path, f"a {type(key).__name__}")
        _owner_only(path)
        return key
    key = new_private_key()
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("made a new identity key at %s", path)
    return key


def new_private_key() -> rsa.RSAPrivateKey:
    """A new RSA 2048 key, as the app and the trainer make them."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_der(key: rsa.RSAPrivateKey) -> bytes:
    """DER SubjectPublicKeyInfo of the key's public half."""
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: rsa.RSAPrivateKey, data: bytes) -> bytes:
    """Raw RSA-PSS SHA-256 signature, as :func:`essaim.swarm.identity.sign` makes."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    return key.sign(data, pss, hashes.SHA256())


def _base58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def peer_id_for(key: rsa.RSAPrivateKey) -> str:
    """The libp2p peer id: base58(multihash sha2-256 of the protobuf PublicKey{key_type=RSA, data=DER})."""
    der = public_key_der(key)
    encoded = b"\x08\x00\x12" + _varint(len(der)) + der  # proto2: key_type=0 (RSA) is always written
    return _base58(b"\x12\x20" + hashlib.sha256(encoded).digest())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
