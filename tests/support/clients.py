"""Third-party XMPP clients (slixmpp) wrapped for tests: connect, wait for events."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from slixmpp import ClientXMPP
from slixmpp.stanza import Message, Presence

from tests.support.server import SESSION_REGISTRY, XmppdServer

CLUSTER_SETTLE = 0.15
"""Seconds a client waits after logging in when the suite runs against a cluster."""


class AuthFailed(Exception):
    pass


class ClientTarget(Protocol):
    """What a client needs of a server: xmppd's :class:`XmppdServer`, or another
    server under test (Prosody in the interop tests)."""

    @property
    def domain(self) -> str: ...
    @property
    def cafile(self) -> Path: ...
    @property
    def starttls_port(self) -> int: ...
    @property
    def direct_tls_port(self) -> int: ...


def client_tls_context(server: ClientTarget, *, max_tls12: bool = False) -> ssl.SSLContext:
    """Trusts the server's self-signed certificate (and checks the host name)."""
    ctx = ssl.create_default_context(cafile=str(server.cafile))
    if max_tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Slix:
    """A slixmpp client that records what it receives."""

    def __init__(
        self,
        server: ClientTarget,
        jid: str,
        password: str,
        *,
        direct_tls: bool = False,
        mechanism: str | None = None,
        max_tls12: bool = False,
        plugins: tuple[str, ...] = ("xep_0030", "xep_0199", "xep_0092", "xep_0202", "xep_0012"),
        initial_presence: bool = True,
        fetch_roster: bool = True,
    ) -> None:
        self.server = server
        self.xmpp = ClientXMPP(jid, password, sasl_mech=mechanism)
        self.xmpp.ssl_context = client_tls_context(server, max_tls12=max_tls12)
        self.xmpp.enable_direct_tls = direct_tls
        self.xmpp.enable_starttls = not direct_tls
        self.xmpp.enable_plaintext = False
        self.xmpp.plugin["feature_mechanisms"].unencrypted_plain = False
        self.xmpp.auto_reconnect = False
        for plugin in plugins:
            self.xmpp.register_plugin(plugin)
        self.port = server.direct_tls_port if direct_tls else server.starttls_port
        # A server under test may listen on a loopback address of its own (ejabberd).
        self.address: str = getattr(server, "address", "127.0.0.1")
        self.initial_presence = initial_presence
        self.fetch_roster = fetch_roster
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.presences: asyncio.Queue[Presence] = asyncio.Queue()
        self.roster_pushes: asyncio.Queue[Any] = asyncio.Queue()
        self.xmpp.add_event_handler("message", self.messages.put_nowait)
        # slixmpp reports type='error' messages only as 'message_error'.
        self.xmpp.add_event_handler("message_error", self.messages.put_nowait)
        self.xmpp.add_event_handler("presence", self.presences.put_nowait)
        self.xmpp.add_event_handler("roster_update", self.roster_pushes.put_nowait)
        self._started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.xmpp.add_event_handler("session_start", lambda _: self._settle("ok"))
        self.xmpp.add_event_handler("failed_all_auth", lambda _: self._settle("auth"))
        self.xmpp.add_event_handler("disconnected", lambda _: self._settle("disconnected"))
        self.xmpp.add_event_handler("connection_failed", lambda _: self._settle("disconnected"))

    def _settle(self, outcome: str) -> None:
        if not self._started.done():
            self._started.set_result(outcome)

    @property
    def jid(self) -> str:
        return str(self.xmpp.boundjid)

    async def start(self, timeout: float = 20) -> Slix:
        self.xmpp.connect(host=self.address, port=self.port)
        async with asyncio.timeout(timeout):
            outcome = await self._started
        if outcome == "auth":
            raise AuthFailed(self.xmpp.boundjid.bare)
        if outcome != "ok":
            raise ConnectionError("disconnected before the session started")
        if self.fetch_roster:
            await self.xmpp.get_roster()
        if self.initial_presence:
            self.xmpp.send_presence()
        if SESSION_REGISTRY == "cluster":
            # The other nodes learn of this session's presence through Redis, a few
            # milliseconds later; a test that writes to it at once would race that.
            await asyncio.sleep(CLUSTER_SETTLE)
        return self

    async def stop(self) -> None:
        if self.xmpp.transport is not None:
            await self.xmpp.disconnect(wait=1)
        transport = self.xmpp.transport
        if transport is not None:
            # The server did not close in time (a loaded machine): close the socket
            # anyway, or it is left to the garbage collector (ResourceWarning, which
            # pytest turns into a failure of whatever test runs then).
            transport.abort()

    async def __aenter__(self) -> Slix:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def next_message(
        self, predicate: Callable[[Message], bool] = lambda m: True, timeout: float = 10
    ) -> Message:
        return await _next(self.messages, predicate, timeout)

    async def next_presence(
        self, predicate: Callable[[Presence], bool] = lambda p: True, timeout: float = 10
    ) -> Presence:
        return await _next(self.presences, predicate, timeout)


async def _next(queue: asyncio.Queue[Any], predicate: Callable[[Any], bool], timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            item = await queue.get()
            if predicate(item):
                return item


async def register_account(server: XmppdServer, username: str, password: str) -> None:
    """Create an account through in-band registration (XEP-0077) on a raw stream.

    Much faster than the CLI (no process start); servers started by the test harness
    allow registration. Falls back to ``xmppd adduser`` when the server refuses.
    """
    from tests.support.rawstream import RawClient, stanza_error

    client = await RawClient(server).connect()
    try:
        await client.starttls()
        await client.open_stream()
        client.send(
            "<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
            f"<username>{username}</username><password>{password}</password></query></iq>"
        )
        reply = await client.read_until(b"</iq>|<iq[^>]*/>")
    finally:
        await client.close()
    condition = stanza_error(reply)
    if condition is None:
        return
    if condition != "service-unavailable":
        raise RuntimeError(f"registration of {username} failed: {condition}")
    result = await asyncio.to_thread(
        server.cli, "adduser", f"{username}@{server.domain}", "--password", password
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
