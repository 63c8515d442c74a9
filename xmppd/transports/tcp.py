"""TCP listeners: c2s with STARTTLS (port 5222) or direct TLS (XEP-0368), s2s the
same way (port 5269), and plain TCP for external components (XEP-0114, port 5347);
outgoing s2s connections (:func:`connect_outgoing`).

This layer knows no stream kind: the server passes the functions that open a stream
on a new connection (:class:`StreamOpeners`), and connections speak to streams only
through :mod:`xmppd.stream.transport`. The framing is RFC 6120's ``<stream:stream>``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast

from xmppd import ns
from xmppd.heap import note_freed
from xmppd.stream.framing import XML_STREAM
from xmppd.stream.shaper import Shaper
from xmppd.transports.peerlimit import ConnectionsPerAddress, refusal
from xmppd.transports.tlslayer import TlsLayer
from xmppd.turnpacer import TurnPacer

if TYPE_CHECKING:
    from xmppd.config import ListenerSection
    from xmppd.stream.transport import Framing, StreamInput, Transport
    from xmppd.tls import TlsContexts
    from xmppd.transports.peertls import PeerTlsContexts, TlsSession

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamOpeners:
    """How the server opens a stream on a new connection, per listener kind."""

    c2s: Callable[[Transport, bool], StreamInput]
    """A client stream; the flag: offer STARTTLS (the connection is not TLS yet)."""
    component: Callable[[Transport], StreamInput]
    """An external component stream (XEP-0114)."""
    components_configured: bool
    """Any ``[[components]]`` in the config (warnings about listeners only)."""
    s2s: Callable[[Transport, bool], StreamInput] | None = None
    """An incoming server-to-server stream (``None``: federation is off); the flag:
    offer STARTTLS."""
    http: Callable[[ListenerSection], Awaitable[asyncio.Server]] | None = None
    """Opens a ``kind = "http"`` listener (:mod:`xmppd.transports.http`)."""
    s2s_tls: PeerTlsContexts | None = None
    """TLS of s2s listeners that asks for the remote's certificate (SASL EXTERNAL);
    ``None``: the hosts' standard contexts (no certificate asked)."""
    s2s_rate: int = 256 * 1024
    """Bytes per second one incoming s2s connection may send (:class:`ShapedConnection`)."""
    s2s_on_throttle: Callable[[StreamInput | None], None] | None = None
    """Called with the stream when an incoming s2s connection starts being slowed down."""
    c2s_per_address: ConnectionsPerAddress | None = None
    """Open client connections per source address, shared by every c2s listener."""
    s2s_per_address: ConnectionsPerAddress | None = None
    """Open incoming s2s connections per source address, shared by every s2s listener."""
    component_per_address: ConnectionsPerAddress | None = None
    """Open component connections per source address (every component listener)."""
    reuse_port: bool = False
    """Bind with SO_REUSEPORT: the workers of ``server.workers`` each bind every
    listener and the kernel spreads new connections over them."""
    login_pacer: TurnPacer | None = None
    """Login reads per event-loop turn, shared by every c2s listener (``None``: no
    limit)."""


LINGER: Final = 2.0
"""Seconds a closing plain-TCP connection keeps reading (and discarding) after sending
its FIN. Closing a socket whose peer's bytes are still unread sends an RST, which makes
the peer's kernel discard what we wrote last: the ``<stream:error>`` telling a flooding
or misbehaving peer why it was closed. Reading on for a moment lets it arrive."""
LINGER_MAX_UNSENT: Final = 256 * 1024
"""Above this much unsent output, closing aborts at once (the buffer is freed)."""


HOLD_READS_BEFORE_PAUSE: Final = 4
"""Reads a connection held by the login pacer may take before its socket is paused
(uvloop reads at most 256 KiB at a time, so at most 1 MiB is held)."""

HANDSHAKE_TIMEOUT: Final = 30.0
"""Seconds a TLS handshake (direct TLS or STARTTLS) may take."""


class C2SConnection(asyncio.Protocol):
    """asyncio glue: one per TCP connection; feeds a client stream.

    TLS (direct, or STARTTLS on a plaintext connection) is this object's own
    :class:`~xmppd.transports.tlslayer.TlsLayer` over the raw TCP transport, not the
    event loop's TLS transport, so an idle connection holds no read buffer of its own:
    uvloop reads every plain stream's socket into one buffer of the loop and hands the
    bytes read to :meth:`data_received`. (A ``BufferedProtocol`` would save that copy
    but costs two Python calls per read instead of one: more than the copy.)"""

    NAME: ClassVar[str] = "tcp"

    __slots__ = (
        "_counted",
        "_held",
        "_layer",
        "_limit",
        "_linger",
        "_open",
        "_pacer",
        "_pacer_paused",
        "_stream_paused",
        "_tls",
        "_tls_mode",
        "_tls_timer",
        "_tls_wait",
        "_transport",
        "is_secure",
        "peer",
        "stream",
    )

    def __init__(
        self,
        open_stream: Callable[[Transport], StreamInput],
        tls: TlsContexts | None,
        tls_mode: str,
        limit: ConnectionsPerAddress | None = None,
        pacer: TurnPacer | None = None,
    ) -> None:
        self._open = open_stream
        self._limit = limit
        self._pacer = pacer
        self._held: list[bytes] | None = None
        """Reads waiting for a later turn (:class:`TurnPacer`), in order."""
        self._stream_paused = False
        self._pacer_paused = False
        self._counted = False
        self._tls = tls
        self._tls_mode = tls_mode
        self._transport: asyncio.Transport | None = None
        self.stream: StreamInput | None = None
        self.peer = ""
        self.is_secure = False
        self._linger: asyncio.TimerHandle | None = None
        self._layer: TlsLayer | None = None
        """TLS, once started (direct TLS: from the first byte)."""
        self._tls_wait: asyncio.Future[None] | None = None
        """STARTTLS: resolved when the handshake is done."""
        self._tls_timer: asyncio.TimerHandle | None = None

    def __del__(self) -> None:
        # Its TLS state (OpenSSL's ~17 KB) is freed with it: also after a TLS
        # handshake that never completed, when no stream was opened.
        note_freed(cyclic=False)

    @property
    def framing(self) -> Framing:
        return XML_STREAM

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self._transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        if self._tls_mode == "direct" and self._tls is not None:
            # Direct TLS (XEP-0368): the stream opens once the handshake is done.
            self._start_layer(self._tls.context)
            return
        self._open_stream()

    def _open_stream(self) -> None:
        assert self._transport is not None
        if self._admit("c2s", ns.CLIENT):
            self.stream = self._open(self)

    def _admit(self, kind: str, namespace: str | None) -> bool:
        """Count this connection against its address's limit (if any); over it, the
        connection is refused: with our stream header, ``<policy-violation/>`` and the
        end of the stream in ``namespace``, or (``None``: nothing can be said yet, e.g.
        before a TLS handshake) dropped at once."""
        limit = self._limit
        if limit is None:
            return True
        if limit.acquire(self.peer):
            self._counted = True
            return True
        log.warning("%s %s: too many connections from this address", kind, self.peer)
        if namespace is None:
            if self._transport is not None:
                self._transport.abort()
            return False
        self.write(refusal(namespace))
        self.close()
        return False

    def data_received(self, data: bytes) -> None:
        """Bytes read from the socket."""
        pacer = self._pacer
        if pacer is not None:
            held = self._held
            if held is not None:
                held.append(data)
                if len(held) == HOLD_READS_BEFORE_PAUSE and self._transport is not None:
                    self._pacer_paused = True  # a client that keeps sending
                    self._transport.pause_reading()
                return
            stream = self.stream
            if stream is None or not getattr(stream, "is_bound", True):
                if not pacer.admit():
                    # Login work beyond this turn's budget: wait for a later turn. A
                    # client logging in sends little until it is answered, so the socket
                    # is only paused if more keeps coming (each pause and resume is a
                    # system call).
                    self._held = [data]
                    pacer.wait(self._release_held)
                    return
            else:
                self._pacer = None  # bound for good: its reads are never paced again
        # What _handle does, written out: one call less per read on the message path.
        layer = self._layer
        if layer is None:
            self._plain_received(data)
        elif self._linger is None:  # closing: what the peer still sends is dropped
            self._tls_received(layer, data)

    def _release_held(self) -> None:
        held, self._held = self._held, None
        transport = self._transport
        if held is None or transport is None or transport.is_closing():
            return
        if self._pacer_paused:
            self._pacer_paused = False
            if not self._stream_paused:
                transport.resume_reading()
        self._handle(held[0] if len(held) == 1 else b"".join(held))

    def _handle(self, data: bytes) -> None:
        layer = self._layer
        if layer is None:
            self._plain_received(data)
        elif self._linger is None:  # closing: what the peer still sends is dropped
            self._tls_received(layer, data)

    def _plain_received(self, data: bytes) -> None:
        """Bytes from the peer in the clear (decrypted if TLS is on): to the stream."""
        if self.stream is not None and self._linger is None:
            self.stream.data_received(data)

    # TLS
    def _start_layer(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        layer = self._layer = TlsLayer(
            context, server_side=server_side, server_hostname=server_hostname
        )
        loop = asyncio.get_running_loop()
        self._tls_timer = loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        if not server_side:  # the client speaks first
            layer.start()
            if self._transport is not None:
                self._transport.write(layer.output())

    async def _upgrade(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        """STARTTLS: every byte read from now on is TLS (RFC 6120 §5.4.3.3: nothing
        more is taken in the clear); returns once the handshake is done."""
        if self._transport is None or self._layer is not None:
            raise ConnectionError("no transport")
        waiter = self._tls_wait = asyncio.get_running_loop().create_future()
        self._start_layer(context, server_side=server_side, server_hostname=server_hostname)
        try:
            await waiter
        finally:
            self._tls_wait = None

    def _handshake_timeout(self) -> None:
        self._tls_timer = None
        self._tls_broken("handshake timed out", TimeoutError("TLS handshake timed out"))

    def _tls_received(self, layer: TlsLayer, data: bytes) -> None:
        try:
            plain = layer.receive(data)
        except ssl.SSLError as exc:
            self._tls_broken(str(exc), exc)
            return
        transport = self._transport
        out = layer.output()
        if out and transport is not None and not transport.is_closing():
            transport.write(out)
        if layer.done and not self.is_secure:
            self._tls_ready(layer)
        if plain:
            self._plain_received(plain)
        if layer.peer_closed:
            self.close()

    def _tls_ready(self, layer: TlsLayer) -> None:
        self.is_secure = True
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s: TLS up (%s)", self.NAME, self.peer, layer.describe())
        waiter = self._tls_wait
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.stream is None and self._tls_mode == "direct":
            self._open_stream()

    def _tls_broken(self, reason: str, exc: Exception | None = None) -> None:
        log.debug("%s %s: TLS failed: %s", self.NAME, self.peer, reason)
        waiter = self._tls_wait
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionError(f"TLS failed: {reason}"))
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        waiter = self._tls_wait
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection lost during the TLS handshake"))
        self._layer = None
        if self.stream is not None:
            self.stream.connection_lost()
            self.stream = None
        if self._counted and self._limit is not None:
            self._counted = False
            self._limit.release(self.peer)
        self._transport = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def eof_received(self) -> bool:
        return False

    # Transport interface for the stream
    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        layer = self._layer
        if layer is None:
            transport.write(data)
        elif layer.done:  # before: nothing can be sent yet (the stream is waiting)
            try:
                transport.write(layer.send(data))
            except ssl.SSLError as exc:
                self._tls_broken(str(exc), exc)

    def close(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        layer = self._layer
        if layer is not None:
            if not layer.done:  # mid-handshake: nothing to say
                transport.abort()
                return
            transport.write(layer.shutdown())  # close_notify, then as in plaintext
        if not transport.can_write_eof():
            transport.close()
            return
        if transport.get_write_buffer_size() > LINGER_MAX_UNSENT:
            transport.abort()  # a peer that does not read: nothing to wait for
            return
        # Half-close: our last bytes, then FIN; what the peer still sends is read and
        # dropped (the stream is closed) until it closes too or LINGER passes.
        transport.write_eof()
        transport.resume_reading()
        self._linger = asyncio.get_running_loop().call_later(LINGER, transport.close)

    def pause_reading(self) -> None:
        self._stream_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._stream_paused = False
        if self._transport is not None and not self._pacer_paused:
            self._transport.resume_reading()

    def write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def ssl_object(self) -> ssl.SSLObject | None:
        if self._transport is None:
            return None
        layer = self._layer
        if layer is not None:
            return layer.obj if layer.done else None
        obj: Any = self._transport.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def attach(self, stream: StreamInput) -> None:
        self.stream = stream

    def detach(self) -> None:
        self.stream = None

    async def start_tls(self) -> None:
        if self._tls is None:
            raise ConnectionError("no TLS configured")
        await self._upgrade(self._tls.context)


KEEPALIVE: Final = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4))
"""TCP keepalive of component connections: a component whose machine vanished is
noticed in about two minutes (a second connection for its domain is refused while
the first one stands)."""


class ComponentConnection(C2SConnection):
    """asyncio glue for one external component (XEP-0114): plain TCP, keepalive on."""

    __slots__ = ()

    def __init__(
        self,
        open_stream: Callable[[Transport], StreamInput],
        limit: ConnectionsPerAddress | None = None,
    ) -> None:
        super().__init__(open_stream, None, "none", limit)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        if not self._admit("component", ns.COMPONENT):
            return
        _enable_keepalive(self._transport.get_extra_info("socket"))
        self.stream = self._open(self)


def _enable_keepalive(sock: Any) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE:
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
    except OSError as exc:  # not fatal: the connection works without keepalive
        log.debug("cannot enable TCP keepalive: %s", exc)


async def start_listeners(
    sections: Sequence[ListenerSection], tls: TlsContexts | None, openers: StreamOpeners
) -> list[asyncio.Server]:
    """Open every configured listener; returns the asyncio servers."""
    loop = asyncio.get_running_loop()
    opened = []
    for section in sections:
        opened.append(await _listen(loop, section, tls, openers))
    kinds = {section.kind for section in sections}
    if openers.components_configured and "component" not in kinds:
        log.warning("[[components]] are configured but no listener has kind = 'component'")
    return opened


async def _listen(
    loop: asyncio.AbstractEventLoop,
    section: ListenerSection,
    tls: TlsContexts | None,
    openers: StreamOpeners,
) -> asyncio.Server:
    if section.kind == "component":
        return await _listen_components(loop, section, openers)
    if section.kind == "http":
        assert openers.http is not None
        return await openers.http(section)
    if section.tls == "direct":
        assert tls is not None
    offer_starttls = section.tls == "starttls"
    opener = openers.c2s
    limit = openers.c2s_per_address if section.kind == "c2s" else None
    pacer = openers.login_pacer if section.kind == "c2s" else None
    if section.kind == "s2s":
        if openers.s2s is None:
            raise ValueError(
                f"listener on port {section.port}: kind = 's2s' but federation is off "
                "(s2s.enabled = false)"
            )
        opener = openers.s2s
    open_kind = opener

    def open_stream(transport: Transport) -> StreamInput:
        return open_kind(transport, offer_starttls)

    peer_tls = openers.s2s_tls
    if section.kind == "s2s" and peer_tls is not None:
        direct = section.tls == "direct"
        rate, on_throttle = openers.s2s_rate, openers.s2s_on_throttle
        s2s_limit = openers.s2s_per_address
        srv = await loop.create_server(
            lambda: S2SInConnection(
                open_stream,
                peer_tls,
                direct=direct,
                rate=rate,
                on_throttle=on_throttle,
                limit=s2s_limit,
            ),
            host=section.address,
            port=section.port,
            backlog=section.backlog,
            reuse_address=True,
            reuse_port=openers.reuse_port or None,
        )
        for sock in srv.sockets:
            log.info("s2s listening on %s (tls=%s)", sock.getsockname()[:2], section.tls)
        return srv

    # Direct TLS too is the connection's own (C2SConnection), not the loop's.
    srv = await loop.create_server(
        lambda: C2SConnection(open_stream, tls, section.tls, limit, pacer),
        host=section.address,
        port=section.port,
        backlog=section.backlog,
        reuse_address=True,
        reuse_port=openers.reuse_port or None,
    )
    for sock in srv.sockets:
        log.info("%s listening on %s (tls=%s)", section.kind, sock.getsockname()[:2], section.tls)
    return srv


class ShapedConnection(C2SConnection):
    """A connection whose input goes through a :class:`~xmppd.stream.shaper.Shaper`
    before its stream (s2s, incoming and outgoing): ``rate`` bytes a second, bursts of
    one second's worth. Its stream's own pauses (a full queue) are kept apart from the
    shaper's: reading resumes when neither wants it paused."""

    __slots__ = ("_shaper",)

    def __init__(
        self,
        open_stream: Callable[[Transport], StreamInput],
        tls_mode: str,
        rate: int,
        on_throttle: Callable[[], None] | None,
        limit: ConnectionsPerAddress | None = None,
    ) -> None:
        super().__init__(open_stream, None, tls_mode, limit)
        self._shaper = Shaper(
            rate,
            rate,
            deliver=super()._plain_received,
            pause=self._shaper_pause,
            resume=self._shaper_resume,
            on_throttle=on_throttle,
        )

    def _shape(self, data: bytes) -> None:
        """Bytes read from the socket (after TLS): to the stream within the budget."""
        self._shaper.received(data, asyncio.get_running_loop().time())

    def _plain_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._shape(data)

    def _shaper_pause(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _shaper_resume(self) -> None:
        transport = self._transport
        if not self._stream_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def resume_reading(self) -> None:
        self._stream_paused = False
        if not self._shaper.holding:
            super().resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._shaper.cancel()
        super().connection_lost(exc)


class S2SInConnection(ShapedConnection):
    """asyncio glue for an incoming s2s connection whose TLS (STARTTLS or direct) asks
    for the remote's certificate and lets every certificate through the handshake
    (:mod:`xmppd.transports.peertls`); the stream judges it (SASL EXTERNAL)."""

    __slots__ = ("_handshake", "_handshake_timer", "_peer_tls", "_session")

    def __init__(
        self,
        open_stream: Callable[[Transport], StreamInput],
        peer_tls: PeerTlsContexts,
        *,
        direct: bool,
        rate: int,
        on_throttle: Callable[[StreamInput | None], None] | None = None,
        limit: ConnectionsPerAddress | None = None,
    ) -> None:
        super().__init__(
            open_stream,
            "direct" if direct else "starttls",
            rate,
            None if on_throttle is None else lambda: on_throttle(self.stream),
            limit,
        )
        self.is_secure = False  # until the handshake is done
        self._peer_tls = peer_tls
        self._session: TlsSession | None = None
        self._handshake: asyncio.Future[None] | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        # Counted from the connect, before any TLS: a handshake that never completes
        # holds its share too. A direct-TLS one over the limit cannot be told why.
        direct = self._tls_mode == "direct"
        if not self._admit("s2s-in", None if direct else ns.SERVER):
            return
        if not direct:
            self.stream = self._open(self)
            return
        # Direct TLS (XEP-0368): the stream opens once the handshake is done (in
        # data_received, before the bytes that came with the last flight).
        self._session = self._peer_tls.session()
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(30, self._abort_handshake)

    def _abort_handshake(self) -> None:
        if self._transport is not None and not self.is_secure:
            self._transport.abort()

    def _begin_tls(self) -> None:
        self._session = self._peer_tls.session()
        self._handshake = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        from xmppd.transports.peertls import TlsError

        transport = self._transport
        if transport is None:
            return
        session = self._session
        if session is None:
            self._shape(data)
            return
        try:
            plain, out = session.receive(data)
        except TlsError as exc:
            self._tls_failed(exc)
            return
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(out)
        if session.handshake_done and not self.is_secure:
            self.is_secure = True
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            if self.stream is None and self._tls_mode == "direct":
                self.stream = self._open(self)
            if self._handshake is not None and not self._handshake.done():
                self._handshake.set_result(None)
        if plain:
            self._shape(plain)
        if session.closed:
            self.close()

    def _tls_failed(self, exc: Exception) -> None:
        log.info("s2s-in %s: TLS failed: %s", self.peer, exc)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError(f"TLS handshake failed: {exc}"))
        if self._transport is not None:
            self._transport.abort()

    def write(self, data: bytes) -> None:
        from xmppd.transports.peertls import TlsError

        session = self._session
        if session is None:
            super().write(data)
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            transport.write(session.send(data))
        except TlsError as exc:
            self._tls_failed(exc)

    def close(self) -> None:
        session = self._session
        transport = self._transport
        if session is None or transport is None or transport.is_closing():
            super().close()
            return
        if session.handshake_done:
            transport.write(session.shutdown())
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionError("connection lost during TLS"))
        super().connection_lost(exc)

    def ssl_object(self) -> ssl.SSLObject | None:
        return None  # not the ssl module's: see peer_chain()

    def peer_chain(self) -> list[bytes]:
        """The remote's certificates (DER, leaf first) from the TLS handshake."""
        session = self._session
        return session.peer_chain() if session is not None and session.handshake_done else []

    async def start_tls(self) -> None:
        if self._transport is None:
            raise ConnectionError("no transport")
        self._begin_tls()
        handshake = self._handshake
        assert handshake is not None
        async with asyncio.timeout(30):
            await handshake


class OutgoingConnection(ShapedConnection):
    """asyncio glue for a connection we open to a remote server: TLS as the client
    (``server_hostname`` for SNI), keepalive on. What the remote sends on it goes
    through the same shaper as an incoming connection's: with XEP-0288 the remote's
    stanzas come back on it."""

    __slots__ = ("_client_tls", "_server_hostname")

    def __init__(
        self,
        open_stream: Callable[[Transport], StreamInput],
        client_tls: ssl.SSLContext,
        server_hostname: str,
        direct_tls: bool,
        rate: int,
        on_throttle: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(open_stream, "direct" if direct_tls else "starttls", rate, on_throttle)
        self._client_tls = client_tls
        self._server_hostname = server_hostname

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        _enable_keepalive(self._transport.get_extra_info("socket"))
        if self._tls_mode == "direct":
            # The stream opens once the handshake is done (:meth:`handshake`).
            self._tls_wait = asyncio.get_running_loop().create_future()
            self._start_layer(
                self._client_tls, server_side=False, server_hostname=self._server_hostname
            )
            return
        self.stream = self._open(self)

    async def handshake(self) -> None:
        """Direct TLS: wait for the handshake (raises :class:`ssl.SSLError`,
        :class:`TimeoutError` or :class:`ConnectionError` when it fails)."""
        waiter = self._tls_wait
        if waiter is None:
            return
        try:
            await waiter
        except BaseException:
            if self._transport is not None:
                self._transport.abort()
            raise
        finally:
            self._tls_wait = None

    async def start_tls(self) -> None:
        await self._upgrade(
            self._client_tls, server_side=False, server_hostname=self._server_hostname
        )


async def connect_outgoing(
    host: str,
    port: int,
    *,
    open_stream: Callable[[Transport], StreamInput],
    client_tls: ssl.SSLContext,
    server_hostname: str,
    direct_tls: bool,
    timeout: float,
    rate: int = 256 * 1024,
    on_throttle: Callable[[], None] | None = None,
) -> OutgoingConnection:
    """Open a TCP (and, for ``direct_tls``, TLS) connection to a remote server; the
    stream is opened on it by ``open_stream`` once connected (and encrypted)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _transport, protocol = await loop.create_connection(
            lambda: OutgoingConnection(
                open_stream, client_tls, server_hostname, direct_tls, rate, on_throttle
            ),
            host=host,
            port=port,
        )
        await protocol.handshake()  # direct TLS: our own layer, as on c2s connections
    return protocol


async def _listen_components(
    loop: asyncio.AbstractEventLoop, section: ListenerSection, openers: StreamOpeners
) -> asyncio.Server:
    open_component = openers.component
    limit = openers.component_per_address
    srv = await loop.create_server(
        lambda: ComponentConnection(open_component, limit),
        host=section.address,
        port=section.port,
        backlog=section.backlog,
        reuse_address=True,
        reuse_port=openers.reuse_port or None,
    )
    for sock in srv.sockets:
        log.info("component listener on %s", sock.getsockname()[:2])
    if not _is_loopback(section.address):
        log.warning(
            "component listener on %s:%d is not on loopback: XEP-0114 streams are not "
            "encrypted, so stanzas cross the network in clear",
            section.address,
            section.port,
        )
    if not openers.components_configured:
        log.warning("a component listener is open but no [[components]] are configured")
    return srv


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: cannot tell
