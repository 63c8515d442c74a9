"""TLS: certificates per host (self-signed on first run when none is configured),
server contexts with SNI, and channel-binding data for SCRAM-PLUS."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

_ENCODING_DER = 2  # _ssl.ENCODING_DER: Certificate.public_bytes(DER), Python 3.10+


@dataclass(frozen=True, slots=True)
class HostCertificate:
    domain: str
    context: ssl.SSLContext
    end_point_hash: bytes
    """tls-server-end-point channel binding data (RFC 5929 §4.1)."""
    not_after: float = 0.0
    """Unix time the leaf certificate expires (metrics: days remaining)."""
    certificate_pem: bytes = b""
    """The certificate file's contents when loaded."""


def not_after(cert_pem: bytes) -> float:
    """When the first certificate of a PEM file expires (Unix time)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()


def generate_self_signed(domain: str, cert_path: Path, key_path: Path) -> None:
    """Write a self-signed certificate for ``domain`` (and its subdomains)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(domain)]
    try:
        alt = [x509.IPAddress(ipaddress.ip_address(domain))]
    except ValueError:
        alt.append(x509.DNSName(f"*.{domain}"))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("generated a self-signed certificate for %s in %s", domain, cert_path)


def end_point_hash(cert_pem: bytes) -> bytes:
    """Hash of the leaf certificate per RFC 5929 §4.1 (SHA-256 for MD5/SHA-1 signatures)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    algo = cert.signature_hash_algorithm
    name = algo.name if algo is not None else "sha256"
    if name in ("md5", "sha1"):
        name = "sha256"
    return hashlib.new(name, cert.public_bytes(serialization.Encoding.DER)).digest()


def server_context(
    cert_path: Path,
    key_path: Path,
    *,
    min_version: str = "1.2",
    session_tickets: bool = True,
) -> ssl.SSLContext:
    """The c2s/direct-TLS context of one certificate.

    With ``session_tickets`` the server issues one *stateless* ticket per handshake
    (RFC 8446 §4.6.1, RFC 5077 for TLS 1.2): the session is sealed with the context's
    ticket key and kept by the client alone, so a client coming back resumes without
    the certificate and its signature while the server stores nothing per session.
    ``OP_NO_TICKET`` must stay off for that: in TLS 1.3 it means *stateful* tickets,
    every session cached in the context (~1 KiB each, up to 20,480). The ticket key
    lives as long as the context (a reload keeps it): after a restart, or at another
    worker process, the client does a full handshake again. Without ``session_tickets``
    no ticket is issued at all.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.set_alpn_protocols(["xmpp-client"])
    if session_tickets:
        ctx.num_tickets = 1
    else:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    return ctx


def load_host_certificate(
    domain: str,
    cert_path: Path | None,
    key_path: Path | None,
    data_dir: Path,
    *,
    min_version: str = "1.2",
    session_tickets: bool = True,
) -> HostCertificate:
    """The configured certificate, or ``<data_dir>/certs/<domain>.pem`` (generated)."""
    if cert_path is None or key_path is None:
        cert_path = data_dir / "certs" / f"{domain}.crt"
        key_path = data_dir / "certs" / f"{domain}.key"
        if not cert_path.exists() or not key_path.exists():
            generate_self_signed(domain, cert_path, key_path)
    ctx = server_context(
        cert_path, key_path, min_version=min_version, session_tickets=session_tickets
    )
    pem = cert_path.read_bytes()
    return HostCertificate(domain, ctx, end_point_hash(pem), not_after(pem), pem)


class TlsContexts:
    """Picks the host's certificate by SNI; the first host is the default."""

    def __init__(self, certificates: dict[str, HostCertificate]) -> None:
        if not certificates:
            raise ValueError("no certificates")
        self._by_domain = certificates
        self._by_context = {id(c.context): c for c in certificates.values()}
        self.default = next(iter(certificates.values()))
        for cert in certificates.values():
            cert.context.sni_callback = self._select

    def _select(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        if name is None:
            return
        name = name.lower().rstrip(".")
        cert = self._by_domain.get(name)
        if cert is None and "." in name:
            cert = self._by_domain.get(name.split(".", 1)[1])
        if cert is not None:
            sslobj.context = cert.context

    def certificates(self) -> list[HostCertificate]:
        """Every host's certificate."""
        return list(self._by_domain.values())

    def for_object(self, sslobj: ssl.SSLObject | None) -> HostCertificate:
        if sslobj is None:
            return self.default
        return self._by_context.get(id(sslobj.context), self.default)

    @property
    def context(self) -> ssl.SSLContext:
        return self.default.context

    def domains(self) -> list[str]:
        return list(self._by_domain)

    def renew(self, domain: str, cert_path: Path, key_path: Path) -> str | None:
        """Load ``domain``'s certificate again from its files, into the context the
        listeners already use, so the next handshake presents it and open connections
        keep theirs. Returns what happened (``None``: the files hold the same
        certificate). Raises ``OSError``/``ValueError``/``ssl.SSLError`` (nothing
        changed) when the pair does not load."""
        old = self._by_domain[domain]
        pem = cert_path.read_bytes()
        new_hash = end_point_hash(pem)
        if new_hash == old.end_point_hash:
            return None
        # Check the pair on a scratch context first: a key that does not match would
        # leave the live context with a certificate it cannot use.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert_path), str(key_path))
        if _key_type(pem) != _key_type(old.certificate_pem):
            raise ValueError(
                "the new certificate's key type differs from the old one's (RSA/ECDSA); "
                "that change needs a restart"
            )
        old.context.load_cert_chain(str(cert_path), str(key_path))
        new = HostCertificate(domain, old.context, new_hash, not_after(pem), pem)
        self._by_domain[domain] = new
        self._by_context[id(old.context)] = new
        if self.default is old:
            self.default = new
        expiry = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        return f"new certificate, valid until {expiry:%Y-%m-%d}"


def _key_type(pem: bytes) -> str:
    if not pem:
        return ""
    return type(x509.load_pem_x509_certificate(pem).public_key()).__name__


def s2s_client_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The context of our outgoing s2s connections: presents our certificate (for
    SASL EXTERNAL) and never fails the handshake on the remote's certificate, which
    :mod:`xmppd.s2s.certs` checks afterwards (so dialback stays possible and the log
    can say why a certificate does not validate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.set_alpn_protocols(["xmpp-server"])
    return ctx


def peer_chain(sslobj: ssl.SSLObject | None) -> list[bytes]:
    """The certificates the peer sent (DER, leaf first), whether or not they validate."""
    if sslobj is None:
        return []
    inner = getattr(sslobj, "_sslobj", None)
    get_chain = getattr(sslobj, "get_unverified_chain", None) or getattr(
        inner, "get_unverified_chain", None
    )
    if get_chain is not None:
        chain = get_chain() or []
        return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]
    leaf = sslobj.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def certificate_paths(
    domain: str, cert_path: Path | None, key_path: Path | None, data_dir: Path
) -> tuple[Path, Path]:
    """Where :func:`load_host_certificate` takes ``domain``'s certificate from."""
    if cert_path is None or key_path is None:
        return data_dir / "certs" / f"{domain}.crt", data_dir / "certs" / f"{domain}.key"
    return cert_path, key_path
