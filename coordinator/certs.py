"""A private CA and the coordinator's certificate, for a coordinator without a public one.

    essaim coordinator tls init --name coordinator.example.org --name 10.0.0.5 --out DIR
        DIR/ca.pem        give it to volunteers and researchers (ESSAIM_CA_FILE, or coordinator.ca_file)
        DIR/ca.key        keep it offline: it signs certificates every client of this coordinator trusts
        DIR/server.pem    --tls-cert
        DIR/server.key    --tls-key

A coordinator with a domain name is better served by a public CA's certificate (e.g. Let's
Encrypt's, with any ACME client): clients then need no CA file at all. Keys are ECDSA P-256,
written 0600; the certificate names every ``--name`` (host names and IP addresses) and lasts
``days`` days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from essaim.coordinator.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Issued:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() or c in "/:@" for c in name):
                raise InvalidArgument(f"--name {name!r} is neither a host name nor an IP address") from None
            out.append(x509.DNSName(name))
    return out


def issue(out: Path, names: list[str], *, days: int = 825, ca_name: str = "essaim coordinator CA",
          overwrite: bool = False) -> Issued:
    """Make a CA and a server certificate for ``names`` in ``out`` (see the module docstring)."""
    if not names:
        raise InvalidArgument("give the names volunteers reach the coordinator at (--name HOST, repeatable)")
    out.mkdir(parents=True, exist_ok=True)
    paths = Issued(out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key")
    existing = [p for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key) if p.exists()]
    if existing and not overwrite:
        raise InvalidArgument(f"{existing[0]} exists; pick another --out, or --overwrite (clients must then get the "
                              "new ca.pem)")
    alt = _alt_names(names)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.ca_cert, ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.key, _key_pem(key), private=True)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return paths
