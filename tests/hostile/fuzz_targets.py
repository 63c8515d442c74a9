"""Fuzz targets without sockets: JID parsing, SASL mechanisms (SCRAM and PLAIN) and the
SASL2 ``<authenticate/>`` reader. Each raises ``AssertionError`` on a broken promise;
any other exception is a crash. Driven by hypothesis in the suite
(``test_jid_sasl_properties.py``) and by ``python -m tests.hostile.fuzz`` (atheris when
installed, else hypothesis) for long campaigns."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

from lxml import etree

from xmppd import ns
from xmppd.auth.sasl import Challenge, Failure, Success, TlsChannel, create_mechanism
from xmppd.auth.scram import SCRAM_HASHES, ScramCredentials, derive_credentials
from xmppd.jid import JID, InvalidJID
from xmppd.stream import sasl2

DOMAIN: Final = "example.org"
USER: Final = "juliet"
PASSWORD: Final = "r0m30-myr0m30"
TLS: Final = TlsChannel({"tls-server-end-point": b"\x01end-point\x02" * 2})
MECHANISMS: Final = (
    "PLAIN",
    *(f"SCRAM-{h}" for h in SCRAM_HASHES),
    *(f"SCRAM-{h}-PLUS" for h in SCRAM_HASHES),
)
SASL_CONDITIONS: Final = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)
"""RFC 6120 §6.5: the only failures a SASL exchange may end with."""


# ----------------------------------------------------------------------------- JIDs


def jid_target(text: str) -> None:
    """``JID.parse`` raises only :class:`InvalidJID`; what it accepts round-trips."""
    try:
        jid = JID.parse(text)
    except InvalidJID:
        return
    again = JID.parse(str(jid))
    assert again == jid, (text, str(jid), str(again))
    assert str(again) == str(jid)
    assert JID.create(jid.local, jid.domain, jid.resource) == jid
    assert JID.parse(str(jid.bare)) == jid.bare
    assert jid.bare.resource == ""
    assert len(jid.domain.encode()) <= 1023


# ----------------------------------------------------------------------------- SASL


class Credentials:
    """One account's SCRAM credentials, derived once (cheap iterations)."""

    def __init__(self) -> None:
        self.creds: dict[str, ScramCredentials] = {
            h: derive_credentials(PASSWORD, h, iterations=4096) for h in SCRAM_HASHES
        }

    async def get_scram(self, username: str, hash_name: str) -> ScramCredentials | None:
        return self.creds.get(hash_name) if username == USER else None


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


_CREDENTIALS: list[Credentials] = []


def _credentials() -> Credentials:
    if not _CREDENTIALS:
        _CREDENTIALS.append(Credentials())
    return _CREDENTIALS[0]


async def _exchange(mechanism: str, messages: Sequence[bytes]) -> list[str]:
    mech = create_mechanism(
        mechanism, domain=DOMAIN, lookup=_credentials(), tls=TLS, allow_plain=True
    )
    assert mech is not None, mechanism
    outcomes: list[str] = []
    nonce = b""
    for raw in messages:
        message = raw.replace(b"{nonce}", nonce)
        step = await mech.step(message)
        if isinstance(step, Challenge):
            outcomes.append("challenge")
            for part in step.data.split(b","):
                if part.startswith(b"r="):
                    nonce = part[2:]
            continue
        if isinstance(step, Failure):
            assert step.condition in SASL_CONDITIONS, step.condition
            outcomes.append(step.condition)
        else:
            assert isinstance(step, Success)
            outcomes.append("success")
        break
    return outcomes


def sasl_target(mechanism: str, messages: Sequence[bytes]) -> list[str]:
    """Run an exchange of client ``messages`` (``{nonce}`` is replaced by the server's
    nonce): every step is a challenge, a success or a documented failure, and no
    unexpected error is logged (the mechanisms turn any crash into a failure and log
    it: that is a bug the log reveals). Without the password no exchange succeeds."""
    handler = _Errors()
    log = logging.getLogger("xmppd.auth.sasl")
    log.addHandler(handler)
    try:
        outcomes = asyncio.run(_exchange(mechanism, messages))
    finally:
        log.removeHandler(handler)
    assert not handler.records, handler.records
    if "success" in outcomes:
        assert any(PASSWORD.encode() in m for m in messages) or mechanism.startswith("SCRAM")
    return outcomes


def sasl2_target(xml: bytes) -> None:
    """The SASL2 ``<authenticate/>`` reader raises only its documented errors."""
    try:
        el = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return
    if el.tag != f"{{{ns.SASL2}}}authenticate":
        return
    try:
        request = sasl2.parse_authenticate(el)
    except ValueError:  # MalformedRequest is one too; incorrect base64
        return
    assert request.mechanism
    assert len(request.software) <= 1024 and len(request.device) <= 1024
