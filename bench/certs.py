"""One self-signed certificate shared by every server of a TLS run, and the client context."""

from __future__ import annotations

import datetime
import ssl
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Key type of the benchmark certificate (same for every server).
KEY_TYPE = "ECDSA P-256"


@dataclass(frozen=True, slots=True)
class CertFiles:
    cert: Path
    """PEM certificate."""
    key: Path
    """PEM private key (unencrypted)."""
    combined: Path
    """Certificate followed by the key in one file (ejabberd's ``certfiles``)."""


def make_certificate(directory: Path, domain: str) -> CertFiles:
    """Write a self-signed ECDSA P-256 certificate for ``domain`` into ``directory``.

    ECDSA keeps the server's handshake signature cheap (an RSA-2048 signature costs a
    server ~1 ms of CPU per login); all three servers accept it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    files = CertFiles(
        directory / f"{domain}.crt", directory / f"{domain}.key", directory / "all.pem"
    )
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.combined.write_bytes(cert_pem + key_pem)
    for path in (files.key, files.combined):
        path.chmod(0o600)
    return files


#: The TLS session a client offers to resume on its next connection (``None``: a full
#: handshake). Set it before the TCP connection is made: uvloop runs a transport's
#: callbacks, the TLS handshake's start among them, in the context it was created in.
TLS_SESSION: ContextVar[ssl.SSLSession | None] = ContextVar("tls_session", default=None)


class ResumingContext(ssl.SSLContext):
    """A client context that offers :data:`TLS_SESSION` (the event loops' ``start_tls``
    has no parameter for a session to resume)."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session or TLS_SESSION.get(),
        )


def client_context() -> ssl.SSLContext:
    """The generator's TLS context: default protocol versions and ciphers (TLS 1.3 with
    every server here), no certificate verification (the benchmark certificate is
    self-signed; verifying is client-side work that does not load the server).

    No CA store is loaded: OpenSSL still builds the server's chain with ``CERT_NONE``,
    and looking issuers up in the system store halved the generator's handshake rate.
    It resumes the TLS session in :data:`TLS_SESSION` when one is set.
    """
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
