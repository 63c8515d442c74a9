"""XMPP over WebSocket (RFC 7395) at ``/xmpp-websocket``.

The handler checks the opening handshake (the ``xmpp`` subprotocol, the ``Origin`` of
a web page, encryption, RFC 6455's upgrade headers), answers it, and takes the
connection over from aiohttp: from then on a :class:`WebSocketTransport` reads and
writes the WebSocket frames itself (:mod:`xmppd.transports.wsframes`) and carries one
client stream: the same :class:`~xmppd.stream.c2s.C2SStream` as TCP, with the RFC 7395
framing (:mod:`xmppd.stream.wsframing`): one element per message, ``<open/>`` and
``<close/>``. Nothing per connection is left of aiohttp (its request, parser, reader
queue and tasks), so an idle WebSocket session costs about what a TCP one does.

A message larger than the stanza size limit is never read: the stream ends with a
``policy-violation`` stream error and ``<close/>``, then the WebSocket closes (code
1009, message too big). Output is written at once to the socket's transport; its
write buffer is the stream's, so a client that reads too slowly is cut off exactly as
over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final, Protocol

from aiohttp import web

from xmppd.httproutes import client_of
from xmppd.stream.wsframing import WEBSOCKET, qualify_stanza
from xmppd.transports import wsframes
from xmppd.transports.wsframes import FrameReader, MessageTooBig, ProtocolViolation

if TYPE_CHECKING:
    from xmppd.config import C2SSection, HttpSection
    from xmppd.metrics import Metrics
    from xmppd.stream.transport import Framing, StreamInput, Transport

log = logging.getLogger(__name__)

SUBPROTOCOL: Final = "xmpp"
CLOSE_TIMEOUT: Final = 5.0
"""Seconds to wait for the client's close frame after ours."""


class Connection(Protocol):
    """What a WebSocket session needs of the HTTP connection it took over."""

    @property
    def raw(self) -> asyncio.Transport:
        """The socket's transport (TLS or plain), written to directly."""

    def take_over(self, receiver: WebSocketTransport) -> None:
        """From now on the connection's input goes to ``receiver``, not to aiohttp."""


class WebSocketTransport:
    """The transport interface over one WebSocket connection, and the receiver of
    its bytes once the handshake is done (the HTTP layer hands the connection over:
    frames are read and written here, without aiohttp's per-connection reader,
    queue and tasks; an idle session costs its stream and a few hundred bytes)."""

    NAME: ClassVar[str] = "websocket"

    __slots__ = (
        "_close_code",
        "_close_timer",
        "_closed",
        "_endpoint",
        "_frames",
        "_raw",
        "_release",
        "_sent_close",
        "awaiting_pong",
        "is_secure",
        "peer",
        "stream",
    )

    def __init__(
        self,
        endpoint: WebSocketEndpoint,
        raw: asyncio.Transport,
        peer: str,
        is_secure: bool,
        max_message: int,
        release: Callable[[], None],
    ) -> None:
        self._endpoint = endpoint
        self._raw = raw
        self.peer = peer
        self.is_secure = is_secure
        self._frames: FrameReader | None = FrameReader(max_message)
        """``None`` once input is no longer read (a refused message, the end)."""
        self._release: Callable[[], None] | None = release
        """Ends the count of this client against its address's limit."""
        self.stream: StreamInput | None = None
        self._close_code = wsframes.CLOSE_NORMAL
        self._sent_close = False
        self._closed = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.awaiting_pong = False

    @property
    def framing(self) -> Framing:
        return WEBSOCKET

    # ------------------------------------------------------------------ to the client

    def write(self, data: bytes) -> None:
        if self._sent_close:
            return
        payload = qualify_stanza(data)
        self._raw.writelines((wsframes.frame(wsframes.OP_TEXT, payload), payload))

    def close(self) -> None:
        """End the WebSocket: a close frame, then the TCP connection once the client
        answered with its own (or after ``CLOSE_TIMEOUT``)."""
        if self._sent_close:
            return
        self._send_close(self._close_code)
        if not self._closed:
            self._close_timer = asyncio.get_running_loop().call_later(
                CLOSE_TIMEOUT, self._raw.abort
            )

    def _send_close(self, code: int, reason: str = "") -> None:
        self._sent_close = True
        payload = wsframes.close_payload(code, reason)
        self._raw.writelines((wsframes.frame(wsframes.OP_CLOSE, payload), payload))

    def heartbeat(self) -> None:
        """The endpoint's keepalive sweep: a ping, whose answer (or anything else the
        client sends) clears ``awaiting_pong``; no answer since the last sweep cuts
        the connection."""
        if self._sent_close:
            return
        if self.awaiting_pong:
            log.info("websocket %s: no answer to a ping; closing", self.peer)
            self._end_stream()
            self._raw.abort()
            return
        self.awaiting_pong = True
        self._raw.write(wsframes.frame(wsframes.OP_PING, b""))

    def pause_reading(self) -> None:
        if not self._closed:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if not self._closed:
            self._raw.resume_reading()

    def write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def ssl_object(self) -> ssl.SSLObject | None:
        sslobj = self._raw.get_extra_info("ssl_object")
        return sslobj if isinstance(sslobj, ssl.SSLObject) else None

    async def start_tls(self) -> None:
        raise ConnectionError("no STARTTLS over WebSocket")

    def attach(self, stream: StreamInput) -> None:
        self.stream = stream

    def detach(self) -> None:
        self.stream = None

    # ------------------------------------------------------------------ from the client

    def data_received(self, data: bytes) -> None:
        reader = self._frames
        if reader is None:
            return  # after a refused message: nothing more is read
        self.awaiting_pong = False
        try:
            frames = reader.feed(data)
        except MessageTooBig:
            self._too_big()
            return
        except ProtocolViolation as exc:
            log.debug("websocket %s: %s", self.peer, exc)
            self._fail(exc.code, str(exc))
            return
        for opcode, payload in frames:
            if opcode == wsframes.OP_TEXT or opcode == wsframes.OP_BINARY:
                if self.stream is not None and not self._sent_close:
                    self.stream.data_received(payload)
            elif opcode == wsframes.OP_PING:
                if not self._sent_close:
                    self._raw.writelines((wsframes.frame(wsframes.OP_PONG, payload), payload))
            elif opcode == wsframes.OP_CLOSE:
                self._peer_closed(payload)
                return

    def _peer_closed(self, payload: bytes) -> None:
        """The client's close frame: answer it (if we have not sent ours) and end."""
        self._end_stream()
        if not self._sent_close:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._send_close(code if code in _ECHOED else wsframes.CLOSE_NORMAL)
        self._raw.close()

    def _too_big(self) -> None:
        """A message over the limit, refused from its frame header: the stream's
        ``policy-violation`` and ``<close/>`` go out first (RFC 7395 §3.6), then the
        close frame with code 1009."""
        log.warning("websocket %s: message over the stanza size limit", self.peer)
        self._frames = None  # the rest of that message is not read
        self._close_code = wsframes.CLOSE_MESSAGE_TOO_BIG
        stream = self.stream
        if stream is not None:
            stream.stream_error("policy-violation", "message too large")
        self.close()
        self._end_stream()

    def _fail(self, code: int, reason: str) -> None:
        """RFC 6455 §7.1.7: a close frame with ``code``, then the connection ends."""
        self._end_stream()
        if not self._sent_close:
            self._send_close(code, reason)
        self._raw.close()

    def eof_received(self) -> None:
        self._end_stream()

    def pause_writing(self) -> None:
        """The socket's buffer is full: the stream sees it in ``write_buffer_size``."""

    def resume_writing(self) -> None:
        """The socket's buffer drained."""

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._frames = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._end_stream()
        self._endpoint.open.discard(self)
        release, self._release = self._release, None
        if release is not None:
            release()

    def _end_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connection_lost()


_ECHOED: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})
"""Close codes sent back as received; anything else is answered with 1000."""


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
        hold: Callable[[str], Callable[[], None]],
    ) -> None:
        self.config = config
        self.c2s = c2s
        self.open_c2s = open_c2s
        self._hold = hold
        """Counts a client against its address's limit until the returned call."""
        self.open: set[WebSocketTransport] = set()
        self._pinger: asyncio.Task[None] | None = None
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
        answer = _handshake_answer(request)
        connection: Connection | None = getattr(request.transport, "connection", None)
        if connection is None or connection.raw.is_closing():
            raise web.HTTPServiceUnavailable(text="connection closed\n")
        transport = WebSocketTransport(
            self,
            connection.raw,
            client.address,
            client.secure,
            self.c2s.max_stanza_size,
            self._hold(client.address),
        )
        connection.raw.write(answer)
        connection.take_over(transport)
        self.open.add(transport)
        self._opened.inc()
        transport.stream = self.open_c2s(transport, False)
        if self._pinger is None:
            self._pinger = asyncio.get_running_loop().create_task(self._ping())
        # aiohttp is done with this connection: what it writes from here on (this
        # response) goes nowhere, and its close does not close the socket.
        done = web.Response(status=101)
        done.force_close()
        return done

    async def _ping(self) -> None:
        """Every ``http.websocket_ping`` seconds, ping each session; one that did not
        answer the previous ping (nor sent anything since) is cut off."""
        try:
            while self.open:
                await asyncio.sleep(self.config.websocket_ping)
                for transport in list(self.open):
                    transport.heartbeat()
        finally:
            self._pinger = None

    async def close_all(self) -> None:
        """Server stop: end the connections still open (their streams closed already)."""
        for transport in list(self.open):
            transport.close()
        if self._pinger is not None:
            self._pinger.cancel()


def _handshake_answer(request: web.Request) -> bytes:
    """The ``101 Switching Protocols`` answer to a valid opening handshake (RFC 6455
    §4.2), with the ``xmpp`` subprotocol (RFC 7395 §3.1); an HTTP error otherwise."""
    headers = request.headers
    if headers.get("Upgrade", "").strip().lower() != "websocket" or "upgrade" not in {
        t.strip().lower() for t in headers.get("Connection", "").split(",")
    }:
        raise web.HTTPBadRequest(text="not a WebSocket upgrade\n")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise _version_refused()
    accept = wsframes.accept_key(headers.get("Sec-WebSocket-Key", ""))
    if accept is None:
        raise web.HTTPBadRequest(text="bad Sec-WebSocket-Key\n")
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode("ascii") + b"\r\n"
        b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode("ascii") + b"\r\n\r\n"
    )


def _version_refused() -> web.HTTPException:
    """RFC 6455 §4.4: an unsupported version gets 426 and the versions understood."""
    return web.HTTPUpgradeRequired(
        text="WebSocket version 13 only\n", headers={"Sec-WebSocket-Version": "13"}
    )
