"""A test certificate authority made with ``cryptography``: server certificates with
DNS-IDs, SRV-IDs (``_xmpp-server.<domain>``) and XmppAddrs (RFC 6120 §13.7.1.2)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xmppd.s2s.certs import ID_ON_DNSSRV, ID_ON_XMPPADDR


def _der(tag: int, text: str) -> bytes:
    raw = text.encode()
    assert len(raw) < 128
    return bytes([tag, len(raw)]) + raw


class TestCA:
    __test__ = False

    def __init__(self, name: str = "xmppd test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        *,
        dns: list[str] = (),  # type: ignore[assignment]
        srv: list[str] = (),  # type: ignore[assignment]
        xmpp: list[str] = (),  # type: ignore[assignment]
        cn: str = "server",
        days: int = 10,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.OtherName(ID_ON_DNSSRV, _der(0x16, f"_xmpp-server.{s}")) for s in srv]
        names += [x509.OtherName(ID_ON_XMPPADDR, _der(0x0C, x)) for x in xmpp]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=-days + 1 if days < 0 else 1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    @staticmethod
    def write_pair(
        cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
    ) -> None:
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def install_certificate(
    ca: TestCA, data_dir: Path, domain: str, *, days: int = 365, **names: list[str]
) -> None:
    """Put a certificate of ``ca`` where xmppd takes ``domain``'s (``data_dir``/certs),
    with the CA after the leaf, so clients that trust that file trust the chain."""
    cert, key = ca.issue(cn=domain, days=days, **names)
    certs = data_dir / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    TestCA.write_pair(cert, key, certs / f"{domain}.crt", certs / f"{domain}.key")
    with (certs / f"{domain}.crt").open("ab") as f:
        f.write(ca.cert.public_bytes(serialization.Encoding.PEM))
