"""XMPP over WebSocket (RFC 7395) for the load generator, on aiohttp.

A :class:`WsConnection` is the TCP client's :class:`bench.xmpp.Connection` with a
WebSocket underneath: every text message the server sends is handed to
``data_received`` (so the chat fast path and the login element reader work unchanged,
one stanza per message), and :class:`WsTransport` turns each ``write`` into one text
message.  The stream is opened with the framing namespace's ``<open/>`` instead of
``<stream:stream>``, stanzas are qualified with ``jabber:client``
(:func:`qualify`); everything else (SASL PLAIN or SCRAM-SHA-1, bind, roster, presence,
ping) is the TCP login.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import aiohttp

from bench.xmpp import (
    PLAIN,
    Connection,
    StreamClosed,
    XmppError,
    authenticate,
    bind_and_fetch_roster,
    local_name,
    stream_features,
)

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
#: The subprotocol every server requires (RFC 7395 §3.1).
SUBPROTOCOL = "xmpp"
CLOSE = f"<close xmlns='{NS_FRAMING}'/>".encode()


def open_element(domain: str) -> bytes:
    """The ``<open/>`` that starts (and restarts) a stream over WebSocket."""
    return f"<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0'/>".encode()


_STANZAS = (b"<message", b"<presence", b"<iq")


def qualify(data: bytes) -> bytes:
    """``data`` (one stanza) with ``xmlns='jabber:client'`` on its top element if it has
    no namespace: over WebSocket every message is a document of its own (RFC 7395
    §3.3.3), so a stanza must carry its namespace (Prosody refuses it otherwise)."""
    for name in _STANZAS:
        if data.startswith(name):
            end = len(name)
            nxt = data[end : end + 1]
            if nxt not in (b" ", b">", b"/"):
                return data
            gt = data.find(b">", end)
            if data.find(b"xmlns=", end, gt if gt >= 0 else len(data)) >= 0:
                return data
            return data[:end] + b" xmlns='jabber:client'" + data[end:]
    return data


class WsTransport:
    """The part of ``asyncio.Transport`` the generator uses, over a WebSocket.

    ``write`` queues one text message; a task of the connection sends the queue in
    order (aiohttp's send is a coroutine; the generator's send loops are not).
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.queue: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False
        self.error: BaseException | None = None

    def write(self, data: bytes) -> None:
        if self.closing:
            return
        self.queue.append(qualify(data))
        self.wakeup.set()

    def is_closing(self) -> bool:
        return self.closing or self.ws.closed

    def close(self) -> None:
        self.closing = True
        self.wakeup.set()

    def get_extra_info(self, name: str, default: object = None) -> object:
        del name
        return default

    async def pump(self) -> None:
        """Send what ``write`` queued until :meth:`close`; then close the WebSocket."""
        ws, queue = self.ws, self.queue
        try:
            while True:
                while queue:
                    await ws.send_str(queue.popleft().decode())
                if self.closing:
                    break
                self.wakeup.clear()
                await self.wakeup.wait()
        except Exception as exc:  # the reader sees the close too
            self.error = exc
        finally:
            with contextlib.suppress(Exception):
                await ws.close()


class WsConnection(Connection):
    """A client connection over WebSocket (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.ws_tasks: list[asyncio.Task[None]] = []

    async def read_open(self) -> None:
        """Wait for the server's ``<open/>`` (the WebSocket stream header)."""
        while True:
            element = await self.next_element()
            name = local_name(element)
            if name == b"open":
                return
            if name == b"close":
                raise StreamClosed(f"server closed the stream: {element[:200]!r}")
            raise XmppError(f"expected <open/>, got {element[:200]!r}")

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(CLOSE)
            transport.close()


async def _reader(ws: aiohttp.ClientWebSocketResponse, conn: WsConnection) -> None:
    try:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                conn.data_received(msg.data.encode())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                conn.data_received(msg.data)
            else:
                break
    finally:
        conn.connection_lost(None)


async def ws_connect(
    session: aiohttp.ClientSession, url: str, timeout: float = 60.0
) -> WsConnection:
    """Open the WebSocket (subprotocol ``xmpp``) and start its reader and writer."""
    ws = await session.ws_connect(
        url,
        protocols=(SUBPROTOCOL,),
        autoping=True,
        heartbeat=None,
        max_msg_size=1 << 20,
        timeout=aiohttp.ClientWSTimeout(ws_close=5.0)
        if hasattr(aiohttp, "ClientWSTimeout")
        else 5.0,  # type: ignore[arg-type, unused-ignore]
    )
    if ws.protocol != SUBPROTOCOL:
        await ws.close()
        raise XmppError(f"server chose subprotocol {ws.protocol!r}, not {SUBPROTOCOL!r}")
    conn = WsConnection()
    transport = WsTransport(ws)
    conn.transport = transport  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    conn.ws_tasks = [loop.create_task(transport.pump()), loop.create_task(_reader(ws, conn))]
    return conn


async def ws_login(
    session: aiohttp.ClientSession,
    url: str,
    domain: str,
    user: str,
    password: str,
    resource: str,
    *,
    mechanism: str = PLAIN,
) -> WsConnection:
    """The c2s login of :func:`bench.xmpp.login` over a WebSocket at ``url``.

    Returns once the server answered a ping sent after the initial presence.
    """
    conn = await ws_connect(session, url)
    conn.user = user.encode()
    try:
        conn.send(open_element(domain))
        await conn.read_open()
        await authenticate(conn, await stream_features(conn), user, domain, password, mechanism)
        conn.send(open_element(domain))
        await conn.read_open()
        await bind_and_fetch_roster(conn, await stream_features(conn), resource)
        # one stanza per WebSocket message (RFC 7395 §3.3.3)
        conn.send(b"<presence/>")
        conn.send(b"<iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>")
        await conn.wait_iq(b"ping1")
    except BaseException:
        conn.close()
        raise
    return conn


class WsClients:
    """A worker's WebSocket logins: one aiohttp session (no connection limit), made on
    first use."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def login(
        self, url: str, domain: str, user: str, password: str, resource: str, mechanism: str
    ) -> WsConnection:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)
            )
        return await ws_login(
            self.session, url, domain, user, password, resource, mechanism=mechanism
        )

    async def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            await asyncio.sleep(0.2)  # let the connections' <close/> go out
            await session.close()
