"""Certificates of remote servers: chain validation and RFC 6125 name checks.

TLS handshakes with peers never fail on the certificate (a self-signed peer may
still use dialback where the policy allows it); the certificate is checked here
afterwards, so the log and ``xmppd check-federation`` can say exactly why it does not
validate. Names follow RFC 6120 §13.7.1.2 and RFC 6125 (XEP-0178): an XmppAddr
(``id-on-xmppAddr``) equal to the domain, an SRV-ID ``_xmpp-server.<domain>``, or a
DNS-ID equal to the domain or matching a wildcard in its left-most label; the subject
CN only when the certificate has none of those.
"""

from __future__ import annotations

import datetime
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID, ObjectIdentifier
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

ID_ON_XMPPADDR: Final = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
ID_ON_DNSSRV: Final = ObjectIdentifier("1.3.6.1.5.5.7.8.7")


@dataclass(frozen=True, slots=True)
class CertNames:
    """The names a certificate presents, by kind."""

    dns: tuple[str, ...] = ()
    srv: tuple[str, ...] = ()
    xmpp: tuple[str, ...] = ()
    cn: tuple[str, ...] = ()

    def all(self) -> list[str]:
        return [*self.dns, *(f"SRV:{s}" for s in self.srv), *(f"xmpp:{x}" for x in self.xmpp)] + [
            f"CN:{c}" for c in self.cn
        ]


@dataclass(frozen=True, slots=True)
class CertCheck:
    """Whether a peer's certificate is valid for a domain, and if not why."""

    domain: str
    names: CertNames = field(default_factory=CertNames)
    chain_error: str | None = "no certificate"
    name_ok: bool = False

    @property
    def valid(self) -> bool:
        return self.chain_error is None and self.name_ok

    def why(self) -> str:
        if self.chain_error is not None:
            return self.chain_error
        if not self.name_ok:
            shown = ", ".join(self.names.all()) or "none"
            return f"certificate is not for {self.domain} (it names: {shown})"
        return "valid"


def _der_string(value: bytes) -> str:
    """The text of a DER UTF8String or IA5String (the otherName values we read)."""
    if len(value) < 2 or value[0] not in (0x0C, 0x16):
        return ""
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(value[2 : 2 + count], "big")
        offset = 2 + count
    return value[offset : offset + length].decode("utf-8", "replace")


def cert_names(cert: x509.Certificate) -> CertNames:
    dns: list[str] = []
    srv: list[str] = []
    xmpp: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        dns = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
        for other in san.get_values_for_type(x509.OtherName):
            text = _der_string(other.value)
            if other.type_id == ID_ON_XMPPADDR and text:
                xmpp.append(text.lower())
            elif other.type_id == ID_ON_DNSSRV and text:
                srv.append(text.lower().rstrip("."))
    cn = [
        str(a.value).lower()
        for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(a.value, str)
    ]
    return CertNames(tuple(dns), tuple(srv), tuple(xmpp), tuple(cn))


def _dns_matches(pattern: str, domain: str) -> bool:
    if pattern == domain:
        return True
    # RFC 6125 §6.4.3: a wildcard only as the whole left-most label, matching one label.
    if pattern.startswith("*.") and "." in domain:
        return domain.split(".", 1)[1] == pattern[2:] and "*" not in pattern[2:]
    return False


def name_matches(names: CertNames, domain: str) -> bool:
    """RFC 6125 / RFC 6120 §13.7.1.2 reference-identifier check for ``domain``."""
    domain = domain.lower().rstrip(".")
    if domain in names.xmpp:
        return True
    if f"_xmpp-server.{domain}" in names.srv:
        return True
    if any(_dns_matches(p, domain) for p in names.dns):
        return True
    if not (names.dns or names.srv or names.xmpp):
        return domain in names.cn
    return False


class TrustStore:
    """The CA certificates remote servers' chains must lead to (the configured bundle,
    else the system's)."""

    __slots__ = ("_store", "source")

    def __init__(self, ca_file: Path | None) -> None:
        path = ca_file
        if path is None:
            default = ssl.get_default_verify_paths()
            for candidate in (default.cafile, default.openssl_cafile):
                if candidate and Path(candidate).exists():
                    path = Path(candidate)
                    break
        self.source = str(path) if path is not None else "none"
        certs: list[x509.Certificate] = []
        if path is not None and path.exists():
            with warnings.catch_warnings():
                # System bundles hold a few old roots that cryptography frowns upon.
                warnings.simplefilter("ignore")
                certs = x509.load_pem_x509_certificates(path.read_bytes())
        self._store = Store(certs) if certs else None

    def check(self, chain: Sequence[bytes], domain: str) -> CertCheck:
        """Validate ``chain`` (DER, leaf first) and its names for ``domain``."""
        if not chain:
            return CertCheck(domain)
        try:
            leaf = x509.load_der_x509_certificate(chain[0])
            intermediates = [x509.load_der_x509_certificate(c) for c in chain[1:]]
        except ValueError as exc:
            return CertCheck(domain, chain_error=f"certificate cannot be parsed: {exc}")
        names = cert_names(leaf)
        name_ok = name_matches(names, domain)
        now = datetime.datetime.now(datetime.UTC)
        error: str | None = None
        if leaf.not_valid_after_utc < now:
            error = f"certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        elif leaf.not_valid_before_utc > now:
            error = "certificate is not valid yet"
        elif self._store is None:
            error = f"no CA certificates to validate against ({self.source})"
        elif leaf.issuer == leaf.subject and not intermediates:
            error = "certificate is self-signed"
        else:
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(now)
                .extension_policies(
                    ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                    ee_policy=ExtensionPolicy.permit_all(),
                )
                .build_client_verifier()
            )
            try:
                verifier.verify(leaf, intermediates)
            except VerificationError as exc:
                error = f"certificate chain does not validate ({self.source}): {exc}"
        return CertCheck(domain, names, error, name_ok)


def pem_to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
