"""Remote certificates (RFC 6120 §13.7.1.2, RFC 6125, XEP-0178): chains checked
against the configured CA bundle, names as DNS-ID (wildcards in the left-most label
only), SRV-ID and XmppAddr, with the reason when a certificate does not validate."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.testca import TestCA
from xmppd.s2s.certs import CertNames, TrustStore, cert_names, name_matches
from xmppd.tls import generate_self_signed


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def der(cert: object) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    ("names", "domain", "expected"),
    [
        (CertNames(dns=("example.org",)), "example.org", True),
        (CertNames(dns=("*.example.org",)), "chat.example.org", True),
        (CertNames(dns=("*.example.org",)), "example.org", False),
        (CertNames(dns=("*.example.org",)), "a.b.example.org", False),
        (CertNames(dns=("other.org",)), "example.org", False),
        (CertNames(srv=("_xmpp-server.example.org",)), "example.org", True),
        (CertNames(srv=("_xmpp-client.example.org",)), "example.org", False),
        (CertNames(xmpp=("example.org",)), "example.org", True),
        (CertNames(cn=("example.org",)), "example.org", True),
        # The CN only counts when there is no subjectAltName identity at all.
        (CertNames(dns=("other.org",), cn=("example.org",)), "example.org", False),
    ],
)
def test_reference_identifiers(names: CertNames, domain: str, expected: bool) -> None:
    assert name_matches(names, domain) is expected


def test_names_are_read_from_the_certificate(ca: TestCA) -> None:
    cert, _ = ca.issue(dns=["example.org"], srv=["example.org"], xmpp=["example.org"])
    names = cert_names(cert)
    assert names.dns == ("example.org",)
    assert names.srv == ("_xmpp-server.example.org",)
    assert names.xmpp == ("example.org",)


def test_a_ca_signed_certificate_validates_and_others_say_why(ca: TestCA, tmp_path: Path) -> None:
    trust = TrustStore(ca.write_ca(tmp_path / "ca.pem"))
    good, _ = ca.issue(srv=["example.org"])
    assert trust.check([der(good)], "example.org").valid
    assert trust.check([der(good)], "example.org").why() == "valid"

    wrong = trust.check([der(good)], "example.net")
    assert not wrong.valid
    assert wrong.why().startswith("certificate is not for example.net")

    expired, _ = ca.issue(dns=["example.org"], days=-2)
    assert trust.check([der(expired)], "example.org").why().startswith("certificate expired")

    generate_self_signed("example.org", tmp_path / "s.crt", tmp_path / "s.key")
    from cryptography import x509

    own = x509.load_pem_x509_certificate((tmp_path / "s.crt").read_bytes())
    assert trust.check([der(own)], "example.org").why() == "certificate is self-signed"

    other_ca = TestCA("another CA")
    foreign, _ = other_ca.issue(dns=["example.org"])
    why = trust.check([der(foreign)], "example.org").why()
    assert why.startswith("certificate chain does not validate")
    assert trust.check([], "example.org").why() == "no certificate"
