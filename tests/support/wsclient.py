"""A hand-driven XMPP-over-WebSocket client (RFC 7395) for tests: aiohttp's WebSocket
client, one element per message, every received message parsed on its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import Callable
from typing import Final

import aiohttp
from lxml import etree

from tests.support.server import XmppdServer

Element = etree._Element

FRAMING: Final = "urn:ietf:params:xml:ns:xmpp-framing"
CLIENT: Final = "jabber:client"
STREAMS: Final = "http://etherx.jabber.org/streams"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND: Final = "urn:ietf:params:xml:ns:xmpp-bind"
SM: Final = "urn:xmpp:sm:3"
_ids = itertools.count(1)


class WsClient:
    """One WebSocket connection to the server's ``/xmpp-websocket``."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws
        self.domain = "localhost"
        self.jid = ""
        self.features: Element | None = None
        self.raw: list[str] = []
        """Every text message received, as sent."""
        self._inbox: list[Element] = []
        self._changed = asyncio.Event()
        self._ended = asyncio.Event()
        self.close_code: int | None = None
        # Set once the connection underneath is gone. Closing a WebSocket only starts that
        # (over TLS, a close_notify exchange follows); a test loop ending before it ends
        # leaves an unclosed socket that the garbage collector reports in a later test.
        protocol = ws._conn.protocol if ws._conn is not None else None
        self._connection_lost = protocol.closed if protocol is not None else None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        server: XmppdServer,
        *,
        protocols: tuple[str, ...] = ("xmpp",),
        headers: dict[str, str] | None = None,
        max_msg_size: int = 4 * 1024 * 1024,
    ) -> WsClient:
        """Open the WebSocket; raises ``aiohttp.WSServerHandshakeError`` when refused."""
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(
                f"{server.http_url.replace('http', 'ws', 1)}/xmpp-websocket",
                protocols=protocols,
                headers=headers or {},
                max_msg_size=max_msg_size,
                autoping=True,
            )
        except BaseException:
            await session.close()
            raise
        return cls(session, ws)

    async def _read_loop(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self.raw.append(msg.data)
                    self._inbox.append(etree.fromstring(msg.data.encode()))
                    self._changed.set()
        finally:
            self.close_code = self.ws.close_code
            self._ended.set()
            self._changed.set()

    async def send_now(self, data: str) -> None:
        await self.ws.send_str(data)

    async def expect(self, predicate: Callable[[Element], bool], timeout: float = 10) -> Element:
        """The first received element matching ``predicate`` (removed from the inbox)."""
        async with asyncio.timeout(timeout):
            while True:
                for i, el in enumerate(self._inbox):
                    if predicate(el):
                        del self._inbox[i]
                        return el
                if self._ended.is_set():
                    raise ConnectionError(f"websocket closed ({self.close_code})")
                self._changed.clear()
                await self._changed.wait()

    async def open(self) -> Element:
        """Send ``<open/>``; the server's ``<open/>`` (its features go to ``features``)."""
        await self.send_now(f"<open xmlns='{FRAMING}' to='{self.domain}' version='1.0'/>")
        opened = await self.expect(lambda el: el.tag == f"{{{FRAMING}}}open")
        self.features = await self.expect(lambda el: el.tag == f"{{{STREAMS}}}features")
        return opened

    async def login(self, username: str, password: str, resource: str = "ws") -> str:
        """SASL PLAIN and bind (opening the stream first unless :meth:`open` did)."""
        if self.features is None:
            await self.open()
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        await self.send_now(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        outcome = await self.expect(
            lambda el: el.tag in (f"{{{SASL}}}success", f"{{{SASL}}}failure")
        )
        if outcome.tag != f"{{{SASL}}}success":
            raise PermissionError("SASL failure")
        await self.open()
        reply = await self.iq("set", f"<bind xmlns='{BIND}'><resource>{resource}</resource></bind>")
        assert reply.get("type") == "result", etree.tostring(reply)
        self.jid = reply.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or ""
        return self.jid

    async def iq(self, type: str, payload: str, to: str | None = None) -> Element:
        iq_id = f"ws{next(_ids)}"
        to_attr = f" to='{to}'" if to else ""
        await self.send_now(
            f"<iq xmlns='{CLIENT}' type='{type}' id='{iq_id}'{to_attr}>{payload}</iq>"
        )
        return await self.expect(lambda el: el.tag == f"{{{CLIENT}}}iq" and el.get("id") == iq_id)

    async def wait_closed(self, timeout: float = 10) -> int | None:
        async with asyncio.timeout(timeout):
            await self._ended.wait()
        return self.close_code

    def stream_error(self) -> str | None:
        """The condition of a ``<stream:error/>`` received, if any."""
        for el in self._inbox:
            if el.tag == f"{{{STREAMS}}}error" and len(el):
                return etree.QName(el[0]).localname
        return None

    async def drop(self) -> None:
        """Close the WebSocket without closing the XMPP stream (a lost connection)."""
        await self.ws.close()
        await self.wait_closed()
        await self.session.close()
        await self._connection_gone()

    async def _connection_gone(self) -> None:
        if self._connection_lost is not None:
            # The outcome does not matter (a reset is as gone as a clean close).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._connection_lost), 5)

    async def close(self) -> None:
        if not self._ended.is_set():
            with contextlib.suppress(ConnectionError, TimeoutError, RuntimeError):
                await self.send_now(f"<close xmlns='{FRAMING}'/>")
                await self.expect(lambda el: el.tag == f"{{{FRAMING}}}close", 5)
        await self.ws.close()
        await self.wait_closed(5)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.session.close()
        await self._connection_gone()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
