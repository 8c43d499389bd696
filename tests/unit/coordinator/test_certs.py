"""`essaim coordinator tls init`: a private CA and a server certificate for the names given."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from essaim.coordinator.certs import issue
from essaim.coordinator.errors import InvalidArgument


def test_the_certificate_names_every_host_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    made = issue(tmp_path, ["coordinator.example.org", "10.0.0.5", "::1"], days=30)
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(made.ca_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["coordinator.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (made.key.stat().st_mode & 0o777, made.ca_key.stat().st_mode & 0o777) == (0o600, 0o600)


def test_it_refuses_to_overwrite_or_to_name_nonsense(tmp_path: Path) -> None:
    issue(tmp_path, ["localhost"])
    with pytest.raises(InvalidArgument, match="exists"):
        issue(tmp_path, ["localhost"])
    issue(tmp_path, ["localhost"], overwrite=True)
    for bad in ([], ["http://x"], ["a b"]):
        with pytest.raises(InvalidArgument):
            issue(tmp_path / "other", bad)
