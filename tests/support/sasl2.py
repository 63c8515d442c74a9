"""A SASL2 (XEP-0388) client for tests: SCRAM through scramp, FAST (XEP-0484) HT-*
tokens computed from the draft's formulas, Bind 2 (XEP-0386) requests written by hand.

It rides on :class:`tests.support.xmlclient.XmlClient` (STARTTLS done, features read)
so every byte the server answers can be inspected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from lxml import etree
from scramp import ScramClient

from tests.support.server import XmppdServer
from tests.support.xmlclient import STREAMS, Element, XmlClient

SASL2: Final = "urn:xmpp:sasl:2"
BIND2: Final = "urn:xmpp:bind:0"
FAST: Final = "urn:xmpp:fast:0"
SM: Final = "urn:xmpp:sm:3"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
SASL_CB: Final = "urn:xmpp:sasl-cb:0"
CARBONS: Final = "urn:xmpp:carbons:2"
CSI: Final = "urn:xmpp:csi:0"
MAM: Final = "urn:xmpp:mam:2"

_OUTCOMES: Final = (f"{{{SASL2}}}success", f"{{{SASL2}}}failure")
_HASHES: Final = {"SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}


def bind_request(tag: str = "TestClient", *inline: str) -> str:
    """``<bind xmlns='urn:xmpp:bind:0'>`` with a tag and inline feature requests."""
    return f"<bind xmlns='{BIND2}'><tag>{tag}</tag>{''.join(inline)}</bind>"


ENABLE_CARBONS: Final = f"<enable xmlns='{CARBONS}'/>"
ENABLE_SM: Final = f"<enable xmlns='{SM}' resume='true'/>"


@dataclass
class Outcome:
    """The server's answer to an ``<authenticate/>``."""

    element: Element
    features: Element | None
    """The stream features that follow a success (there is no stream restart)."""

    @property
    def ok(self) -> bool:
        return self.element.tag == f"{{{SASL2}}}success"

    @property
    def condition(self) -> str | None:
        for child in self.element:
            if etree.QName(child).namespace == SASL:
                return etree.QName(child).localname
        return None

    @property
    def jid(self) -> str:
        return self.element.findtext(f"{{{SASL2}}}authorization-identifier") or ""

    @property
    def additional_data(self) -> bytes:
        return base64.b64decode(self.element.findtext(f"{{{SASL2}}}additional-data") or "")

    def find(self, path: str) -> Element | None:
        return self.element.find(path)

    @property
    def token(self) -> tuple[str, str] | None:
        """(token, expiry) of a FAST token in the success, if one came."""
        el = self.element.find(f"{{{FAST}}}token")
        return None if el is None else (el.get("token") or "", el.get("expiry") or "")


class Sasl2Client:
    """One connection that authenticates with SASL2."""

    def __init__(self, xml: XmlClient, agent_id: str) -> None:
        self.xml = xml
        self.agent_id = agent_id
        features = xml.features
        assert features is not None
        self.features: Element = features

    @classmethod
    async def connect(cls, server: XmppdServer, agent_id: str | None = None) -> Sasl2Client:
        xml = await XmlClient.connect(server)
        return cls(xml, agent_id or str(uuid.uuid4()))

    # ------------------------------------------------------------------ what is offered

    @property
    def authentication(self) -> Element | None:
        return self.features.find(f"{{{SASL2}}}authentication")

    @property
    def mechanisms(self) -> list[str]:
        auth = self.authentication
        assert auth is not None, "no SASL2 feature"
        return [m.text or "" for m in auth.iterfind(f"{{{SASL2}}}mechanism")]

    @property
    def fast_mechanisms(self) -> list[str]:
        auth = self.authentication
        assert auth is not None
        path = f"{{{SASL2}}}inline/{{{FAST}}}fast/{{{FAST}}}mechanism"
        return [m.text or "" for m in auth.iterfind(path)]

    @property
    def bind_features(self) -> list[str]:
        auth = self.authentication
        assert auth is not None
        path = f"{{{SASL2}}}inline/{{{BIND2}}}bind/{{{BIND2}}}inline/{{{BIND2}}}feature"
        return [f.get("var") or "" for f in auth.iterfind(path)]

    @property
    def channel_bindings(self) -> list[str] | None:
        cb = self.features.find(f"{{{SASL_CB}}}sasl-channel-binding")
        if cb is None:
            return None
        return [el.get("type") or "" for el in cb]

    def expected_downgrade_hash(self, hash_name: str) -> str:
        """XEP-0474 §4.1, computed from what the features listed."""
        text = "\x1e".join(sorted(self.mechanisms))
        bindings = self.channel_bindings
        if bindings is not None:
            text += "\x1f" + "\x1e".join(sorted(bindings))
        digest = hashlib.new(_HASHES[hash_name], text.encode()).digest()
        return base64.b64encode(digest).decode()

    def end_point_binding(self) -> bytes:
        """RFC 5929 tls-server-end-point of the server certificate."""
        sslobj = self.xml._writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        algorithm = cert.signature_hash_algorithm
        if algorithm is None or algorithm.name in ("md5", "sha1"):
            algorithm = hashes.SHA256()
        digest = hashes.Hash(algorithm)
        digest.update(der)
        return digest.finalize()

    # ------------------------------------------------------------------ authenticate

    def _authenticate(self, mechanism: str, initial: bytes | None, inline: str) -> None:
        response = (
            ""
            if initial is None
            else f"<initial-response>{base64.b64encode(initial).decode()}</initial-response>"
        )
        agent = (
            f"<user-agent id='{self.agent_id}'><software>xmppd tests</software>"
            "<device>CI</device></user-agent>"
        )
        self.xml.send(
            f"<authenticate xmlns='{SASL2}' mechanism='{mechanism}'>{response}{agent}{inline}"
            "</authenticate>"
        )

    async def _outcome(self) -> Outcome:
        el = await self.xml.expect(lambda e: e.tag in _OUTCOMES)
        features = None
        if el.tag == _OUTCOMES[0]:
            features = await self.xml.expect(lambda e: e.tag == f"{{{STREAMS}}}features")
        return Outcome(el, features)

    async def scram(
        self,
        username: str,
        password: str,
        *,
        mechanism: str = "SCRAM-SHA-256",
        inline: str = "",
    ) -> tuple[Outcome, str]:
        """A SCRAM login; also returns the server-first-message (for XEP-0474 checks)."""
        client = ScramClient([mechanism], username, password)
        self._authenticate(mechanism, client.get_client_first().encode(), inline)
        challenge = await self.xml.expect(lambda e: e.tag in (f"{{{SASL2}}}challenge", *_OUTCOMES))
        if challenge.tag != f"{{{SASL2}}}challenge":
            return Outcome(challenge, None), ""
        server_first = base64.b64decode(challenge.text or "").decode()
        client.set_server_first(server_first)
        final = base64.b64encode(client.get_client_final().encode()).decode()
        self.xml.send(f"<response xmlns='{SASL2}'>{final}</response>")
        outcome = await self._outcome()
        if outcome.ok:
            client.set_server_final(outcome.additional_data.decode())  # verifies the server
        return outcome, server_first

    async def token(
        self,
        username: str,
        token: str,
        *,
        mechanism: str = "HT-SHA-256-NONE",
        inline: str = "",
        fast_attrs: str = "",
    ) -> Outcome:
        """A FAST login: ``authcid NUL HMAC(token, "Initiator" || cb-data)``."""
        cb = self.end_point_binding() if mechanism == "HT-SHA-256-ENDP" else b""
        proof = hmac.digest(token.encode(), b"Initiator" + cb, "sha256")
        self._authenticate(
            mechanism,
            username.encode() + b"\0" + proof,
            f"<fast xmlns='{FAST}'{fast_attrs}/>{inline}",
        )
        outcome = await self._outcome()
        if outcome.ok:
            expected = hmac.digest(token.encode(), b"Responder" + cb, "sha256")
            assert hmac.compare_digest(outcome.additional_data, expected), "server not proven"
        return outcome

    async def close(self) -> None:
        await self.xml.close()
