"""aioxmpp 0.13 as a second, independent client library for end-to-end tests.

:class:`Aio` wraps an ``aioxmpp.PresenceManagedClient`` that connects with STARTTLS to
the test server and trusts the server's self-signed certificate (its CA file), like
:class:`tests.support.clients.Slix` does for slixmpp.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aioxmpp
import aioxmpp.connector
import aioxmpp.dispatcher
import aioxmpp.security_layer
import OpenSSL.SSL
from cryptography import x509

from tests.support.e2e import take
from tests.support.server import XmppdServer


class CAFileVerifier(aioxmpp.security_layer.CertificateVerifier):
    """PKIX verification by OpenSSL against the contexts' trust store (the server's CA
    file), then a host-name check of the leaf certificate.

    aioxmpp's own host-name check calls ``X509.get_extension``, which current pyOpenSSL
    no longer has; this does the same check with ``cryptography``.
    """

    def verify_callback(
        self, conn: Any, cert: OpenSSL.crypto.X509, errno: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            return False
        if depth > 0:
            return True
        hostname = self.transport.get_extra_info("server_hostname")
        try:
            san = cert.to_cryptography().extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            )
        except x509.ExtensionNotFound:
            return False
        return hostname in san.value.get_values_for_type(x509.DNSName)

    async def post_handshake(self, transport: Any) -> None:
        return None


def security_layer(server: XmppdServer, password: str) -> aioxmpp.SecurityLayer:
    """TLS required, trusting ``server.cafile``; SASL with ``password``."""

    def ssl_context() -> OpenSSL.SSL.Context:
        ctx = aioxmpp.security_layer.default_ssl_context()
        ctx.load_verify_locations(str(server.cafile))
        return ctx

    layer = aioxmpp.make_security_layer(password, ssl_context_factory=ssl_context)
    return layer._replace(certificate_verifier_factory=CAFileVerifier)


def peer(server: XmppdServer) -> list[tuple[str, int, aioxmpp.connector.BaseConnector]]:
    """Connect to the test server's STARTTLS listener instead of resolving the domain."""
    return [("127.0.0.1", server.starttls_port, aioxmpp.connector.STARTTLSConnector())]


class Aio:
    """An aioxmpp client that records the messages and presences it receives.

    ``start()`` connects, fetches the roster (``RosterClient``) and sends initial
    presence (``available``) with ``priority``.
    """

    def __init__(
        self,
        server: XmppdServer,
        jid: str,
        password: str,
        *,
        resource: str | None = None,
        priority: int = 0,
    ) -> None:
        address = aioxmpp.JID.fromstr(jid)
        if resource is not None:
            address = address.replace(resource=resource)
        self.server = server
        self.priority = priority
        self.client = aioxmpp.PresenceManagedClient(
            address, security_layer(server, password), override_peer=peer(server)
        )
        self.roster: aioxmpp.RosterClient = self.client.summon(aioxmpp.RosterClient)
        self._include_priority(self.client.summon(aioxmpp.PresenceServer))
        self.presence_client: aioxmpp.PresenceClient = self.client.summon(aioxmpp.PresenceClient)
        self.messages: asyncio.Queue[aioxmpp.Message] = asyncio.Queue()
        self.presences: asyncio.Queue[aioxmpp.Presence] = asyncio.Queue()
        self.subscription_requests: asyncio.Queue[aioxmpp.Presence] = asyncio.Queue()
        self.client.summon(aioxmpp.dispatcher.SimpleMessageDispatcher).register_callback(
            None, None, self.messages.put_nowait
        )
        self.presence_client.on_available.connect(self._on_presence)
        self.presence_client.on_changed.connect(self._on_presence)
        self.presence_client.on_unavailable.connect(self._on_presence)
        self.roster.on_subscribe.connect(self.subscription_requests.put_nowait)

    @staticmethod
    def _include_priority(server: aioxmpp.PresenceServer) -> None:
        """aioxmpp 0.13's ``PresenceServer.make_stanza`` forgets the priority it was given
        (the server then sees 0); put it in the stanzas it builds."""
        make_stanza = server.make_stanza

        def with_priority() -> aioxmpp.Presence:
            stanza = make_stanza()
            stanza.priority = server.priority
            return stanza

        server.make_stanza = with_priority

    def _on_presence(self, full_jid: aioxmpp.JID, stanza: aioxmpp.Presence, *_: Any) -> None:
        self.presences.put_nowait(stanza)

    @property
    def jid(self) -> str:
        return str(self.client.local_jid)

    @property
    def bare(self) -> str:
        return str(self.client.local_jid.bare())

    async def start(self, timeout: float = 20) -> Aio:
        loop = asyncio.get_running_loop()
        established: asyncio.Future[None] = loop.create_future()
        self.client.on_stream_established.connect(
            established, self.client.on_stream_established.AUTO_FUTURE
        )
        self.client.on_failure.connect(established, self.client.on_failure.AUTO_FUTURE)
        self.client.summon(aioxmpp.PresenceServer).set_presence(
            aioxmpp.PresenceState(True), priority=self.priority
        )
        async with asyncio.timeout(timeout):
            await established
        # Initial presence is processed once the server reflects it (RFC 6121 §4.2.2).
        echo = await self.next_presence(lambda p: p.from_ == self.client.local_jid, timeout)
        assert echo.priority == self.priority
        return self

    async def stop(self, timeout: float = 10) -> None:
        if not self.client.running:
            return
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client.on_stopped.connect(stopped, self.client.on_stopped.AUTO_FUTURE)
        self.client.on_failure.connect(stopped, self.client.on_failure.AUTO_FUTURE)
        self.client.stop()
        async with asyncio.timeout(timeout):
            with contextlib.suppress(Exception):  # a failure while stopping is still a stop
                await stopped

    async def __aenter__(self) -> Aio:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def next_message(self, predicate: Any = lambda m: True, timeout: float = 10) -> Any:
        """The first received message matching ``predicate`` (the others stay queued)."""
        return await take(self.messages, predicate, timeout)

    async def next_presence(self, predicate: Any = lambda p: True, timeout: float = 10) -> Any:
        """The first received presence matching ``predicate`` (the others stay queued)."""
        return await take(self.presences, predicate, timeout)
