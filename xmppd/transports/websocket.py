"""XMPP over WebSocket (RFC 7395) at ``/xmpp-websocket``.

The handler checks the handshake (the ``xmpp`` subprotocol, the ``Origin`` of a web
page, encryption), then a :class:`WebSocketTransport` carries one client stream:
the same :class:`~xmppd.stream.c2s.C2SStream` as TCP, with the RFC 7395 framing
(:mod:`xmppd.stream.wsframing`): one element per message, ``<open/>`` and
``<close/>``. A message larger than the stanza size limit is never read: the stream
ends with a ``policy-violation`` stream error and ``<close/>``, then the WebSocket
closes (code 1009, message too big). Output is queued by the synchronous ``write`` of the transport
interface and sent, in order, by one sender task per connection; what waits there
counts as the write buffer, so a client that reads too slowly is cut off exactly as
over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Final

from aiohttp import WSCloseCode, WSMsgType, web

from xmppd.httproutes import client_of
from xmppd.stream.wsframing import WEBSOCKET, qualify_stanza

if TYPE_CHECKING:
    from xmppd.config import C2SSection, HttpSection
    from xmppd.metrics import Metrics
    from xmppd.stream.transport import Framing, StreamInput, Transport

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = "xmpp"
CLOSE_TIMEOUT: Final = 5.0
"""Seconds to wait for the peer's close frame or for queued output at the end."""


class _Response(web.WebSocketResponse):
    """aiohttp's WebSocket response, with a say before a close for a message too big.

    aiohttp refuses a message over ``max_msg_size`` from its frame header (the body is
    never read) and closes at once with code 1009; RFC 7395 §3.6 wants the XMPP stream
    closed first, with its stream error. ``too_big`` runs once, before that close."""

    too_big: Callable[[], Awaitable[None]] | None = None

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        hook, self.too_big = self.too_big, None
        if hook is not None and code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            await hook()
        return await super().close(code=code, message=message, drain=drain)


class WebSocketTransport:
    """The transport interface over one aiohttp WebSocket."""

    NAME: ClassVar[str] = "websocket"

    __slots__ = (
        "_close_code",
        "_closing",
        "_pending",
        "_pending_bytes",
        "_reading",
        "_sender",
        "_ssl",
        "_wake",
        "is_secure",
        "peer",
        "stream",
        "ws",
    )

    def __init__(
        self, ws: web.WebSocketResponse, peer: str, is_secure: bool, sslobj: ssl.SSLObject | None
    ) -> None:
        self.ws = ws
        self.peer = peer
        self.is_secure = is_secure
        self._ssl = sslobj
        self.stream: StreamInput | None = None
        self._pending: deque[tuple[str, int]] = deque()
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._close_code: int = WSCloseCode.OK
        self._sender: asyncio.Task[None] | None = None
        if isinstance(ws, _Response):
            ws.too_big = self._too_big

    @property
    def framing(self) -> Framing:
        return WEBSOCKET

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._pending.append((qualify_stanza(data).decode("utf-8"), len(data)))
        self._pending_bytes += len(data)
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def write_buffer_size(self) -> int:
        return self._pending_bytes

    def ssl_object(self) -> ssl.SSLObject | None:
        return self._ssl

    async def start_tls(self) -> None:
        raise ConnectionError("no STARTTLS over WebSocket")

    def attach(self, stream: StreamInput) -> None:
        self.stream = stream

    def detach(self) -> None:
        self.stream = None

    # ------------------------------------------------------------------ the connection

    async def run(self) -> None:
        """Read messages into the stream until either side closes; send meanwhile."""
        async with asyncio.TaskGroup() as tasks:
            sender = self._sender = tasks.create_task(self._send())
            try:
                await self._receive()
            finally:
                stream, self.stream = self.stream, None
                if stream is not None:
                    stream.connection_lost()
                self.close()
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await asyncio.shield(sender)
                except TimeoutError:
                    sender.cancel()

    async def _receive(self) -> None:
        ws = self.ws
        while True:
            if not self._reading.is_set():
                await self._reading.wait()
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                data: bytes = msg.data.encode("utf-8")
            elif msg.type is WSMsgType.BINARY:
                data = msg.data
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a message over the size limit...)
                if msg.type is WSMsgType.ERROR:
                    log.debug("websocket %s: %s", self.peer, ws.exception())
                return
            if self.stream is not None:
                self.stream.data_received(data)

    async def _too_big(self) -> None:
        """A message over the limit: the stream's ``policy-violation`` and ``<close/>``
        go out (the sender stops after them) before aiohttp's close frame."""
        stream = self.stream
        if stream is None:
            return
        log.warning("websocket %s: message over the stanza size limit", self.peer)
        self._close_code = WSCloseCode.MESSAGE_TOO_BIG
        stream.stream_error("policy-violation", "message too large")
        self.close()
        sender = self._sender
        if sender is not None and sender is not asyncio.current_task():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(sender)
            except TimeoutError:
                pass

    async def _send(self) -> None:
        ws = self.ws
        pending = self._pending
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while pending:
                    text, size = pending.popleft()
                    self._pending_bytes -= size
                    await ws.send_str(text)
                if self._closing:
                    break
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("websocket %s: send failed: %s", self.peer, exc)
        finally:
            pending.clear()
            self._pending_bytes = 0
            self._closing = True
            await ws.close(code=self._close_code)


def origin_allowed(config: HttpSection, request: web.Request) -> bool:
    """A web page's ``Origin`` is the server's own (its public or request base URL) or
    in ``http.allowed_origins``; a request without one is not from a web page."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # a native client or a script
    origin = origin.rstrip("/").lower()
    allowed = {o.rstrip("/").lower() for o in config.allowed_origins}
    if "*" in allowed or origin in allowed:
        return True
    own = {client_of(request).base_url.lower(), f"{request.scheme}://{request.host}".lower()}
    return origin in own


class WebSocketEndpoint:
    """The ``/xmpp-websocket`` handler and the WebSocket sessions it carries."""

    def __init__(
        self,
        config: HttpSection,
        c2s: C2SSection,
        metrics: Metrics,
        open_c2s: Callable[[Transport, bool], StreamInput],
    ) -> None:
        self.config = config
        self.c2s = c2s
        self.open_c2s = open_c2s
        self.open: set[WebSocketTransport] = set()
        self._opened = metrics.counter("websocket_sessions_opened", "WebSocket connections opened")
        metrics.gauge_function(
            "websocket_connections", "Open WebSocket connections", lambda: len(self.open)
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        client = client_of(request)
        offered = [
            p.strip()
            for value in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in value.split(",")
        ]
        if SUBPROTOCOL not in offered:
            raise web.HTTPBadRequest(text="the 'xmpp' WebSocket subprotocol is required\n")
        if not origin_allowed(self.config, request):
            log.warning("websocket: origin %r refused", request.headers.get("Origin"))
            raise web.HTTPForbidden(text="origin not allowed\n")
        if not client.secure and self.c2s.require_encryption:
            raise web.HTTPForbidden(text="use https (wss://): encryption is required\n")
        ws = _Response(
            protocols=(SUBPROTOCOL,),
            heartbeat=self.config.websocket_ping,
            max_msg_size=self.c2s.max_stanza_size,
            autoping=True,
        )
        await ws.prepare(request)
        sslobj: Any = request.transport.get_extra_info("ssl_object") if request.transport else None
        transport = WebSocketTransport(
            ws, client.address, client.secure, sslobj if isinstance(sslobj, ssl.SSLObject) else None
        )
        transport.stream = self.open_c2s(transport, False)
        self.open.add(transport)
        self._opened.inc()
        try:
            await transport.run()
        finally:
            self.open.discard(transport)
        return ws

    async def close_all(self) -> None:
        """Server stop: end the connections still open (their streams closed already)."""
        for transport in list(self.open):
            transport.close()
