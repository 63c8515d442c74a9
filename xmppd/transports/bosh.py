"""BOSH (XEP-0124, XEP-0206) at ``/http-bind``: XMPP over long-polled HTTP requests.

A :class:`BoshSession` outlives the HTTP requests it rides on. It is the transport of
one ordinary client stream (:class:`~xmppd.stream.c2s.C2SStream`): the children of
each request's ``<body/>`` are fed to the stream one element at a time, through the
RFC 7395 reader (:class:`~xmppd.stream.wsframing.FramedReader`) with a synthetic
``<open/>`` at session creation and at each ``xmpp:restart``; what the stream writes
waits in the session until a held request carries it back.

XEP-0124 rules kept here: request ids in order within a window of ``requests``
(out-of-order ones wait for the gap to fill; a lost response is sent again), at most
``hold`` requests held (an extra one releases the oldest), ``wait`` for an empty
answer, ``inactivity`` (nothing held for that long ends the session; a client may
``pause`` up to ``maxpause``), ``polling`` (two empty requests closer than that, with
nothing held, is overactivity), ``terminate``; errors as ``<body type='terminate'
condition='...'/>``. A stream error goes out as ``remote-stream-error`` with the
``<stream:error/>`` inside. When the session ends without a ``terminate`` (inactivity),
the stream sees a lost connection, so a session with stream management can resume.

Session state lives in this process. In a cluster the session id names its node,
and a request that lands on another node is passed on to it
(:mod:`xmppd.transports.boshrelay`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from aiohttp import web
from lxml import etree

from xmppd import ns
from xmppd.errors import StreamError
from xmppd.httproutes import HttpClient, client_of
from xmppd.stream.wsframing import WEBSOCKET, FramedReader, qualify_stanza
from xmppd.stream.xmlreader import XmlReader

if TYPE_CHECKING:
    import ssl

    from xmppd.config import C2SSection, HttpSection
    from xmppd.metrics import Metrics
    from xmppd.stanza import Element
    from xmppd.stream.transport import Framing, StreamInput, Transport
    from xmppd.transports.boshrelay import BoshRelay

log = logging.getLogger(__name__)

NS_HTTPBIND: Final = "http://jabber.org/protocol/httpbind"
NS_XBOSH: Final = "urn:xmpp:xbosh"
_RESTART: Final = f"{{{NS_XBOSH}}}restart"
_VERSION: Final = f"{{{NS_XBOSH}}}version"
BODY_OVERHEAD: Final = 4096
"""Bytes a request may carry beyond the stanza size limit (the <body/> wrapper)."""
CONTENT_TYPE: Final = "text/xml"


class BoshError(Exception):
    """Ends a request (and the session, if any) with ``<body type='terminate'/>``."""

    def __init__(self, condition: str) -> None:
        super().__init__(condition)
        self.condition = condition


def parse_body(data: bytes, max_size: int) -> Element:
    """The ``<body/>`` of a request, through the restricted stream reader (no DTD,
    comments or PIs; size limit); :class:`BoshError` ``bad-request`` otherwise."""
    reader = XmlReader(expected_namespace=NS_HTTPBIND, max_stanza_size=max_size)
    root = etree.Element(
        f"{{{ns.STREAMS}}}stream",
        nsmap={None: NS_HTTPBIND, "stream": ns.STREAMS},  # type: ignore[dict-item]
    )
    reader.feed(etree.tostring(root)[:-2] + b">")
    try:
        elements = reader.feed(data)
    except StreamError:
        raise BoshError("bad-request") from None
    if len(elements) != 1 or elements[0].tag != "body" or not reader.is_between_stanzas:
        raise BoshError("bad-request")
    return elements[0]


def _int_attr(body: Element, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 16:
        raise BoshError("bad-request")
    return int(value)


@dataclass(slots=True)
class _Held:
    rid: int
    future: asyncio.Future[bytes]


class BoshSession:
    """One BOSH session: the stream's transport, and the requests it rides on."""

    NAME: ClassVar[str] = "bosh"

    __slots__ = (
        "_cache",
        "_closing",
        "_condition",
        "_endpoint",
        "_flush_scheduled",
        "_held",
        "_inactivity",
        "_last_empty",
        "_out",
        "_out_bytes",
        "_paused_until",
        "_waiting",
        "created",
        "domain",
        "hold",
        "inactivity",
        "is_secure",
        "peer",
        "rid",
        "sid",
        "stream",
        "wait",
    )

    def __init__(
        self,
        endpoint: BoshEndpoint,
        *,
        peer: str,
        is_secure: bool,
        rid: int,
        wait: float,
        hold: int,
        domain: str,
        sid_suffix: str = "",
    ) -> None:
        self._endpoint = endpoint
        self.sid = secrets.token_urlsafe(18) + sid_suffix
        self.peer = peer
        self.is_secure = is_secure
        self.rid = rid
        """The last request id handled."""
        self.wait = wait
        self.hold = hold
        self.inactivity = endpoint.config.bosh_inactivity
        self.domain = domain
        self.stream: StreamInput | None = None
        self.created = False
        """The session creation response went out."""
        self._held: deque[_Held] = deque()
        self._waiting: dict[int, Element] = {}
        """Requests that arrived ahead of their turn, by rid."""
        self._cache: dict[int, bytes] = {}
        """Recent responses by rid, for a client that lost one (§14.3)."""
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._closing = False
        self._condition: str | None = None
        self._flush_scheduled = False
        self._inactivity: asyncio.TimerHandle | None = None
        self._last_empty = 0.0
        self._paused_until = 0.0

    @property
    def requests(self) -> int:
        """Requests the client may have open at once (``hold`` + 1)."""
        return self.hold + 1

    # ------------------------------------------------------------------ Transport

    @property
    def framing(self) -> Framing:
        return BOSH

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        if data.startswith(b"<stream:error"):
            self._condition = "remote-stream-error"
        self._out.append(qualify_stanza(data))
        self._out_bytes += len(data)
        self._schedule_flush()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._schedule_flush()

    def pause_reading(self) -> None:
        pass  # see _feed

    def resume_reading(self) -> None:
        pass

    def write_buffer_size(self) -> int:
        return self._out_bytes

    def ssl_object(self) -> ssl.SSLObject | None:
        return None  # requests may come over different connections: no channel binding

    async def start_tls(self) -> None:
        raise ConnectionError("no STARTTLS over BOSH")

    def attach(self, stream: StreamInput) -> None:
        self.stream = stream

    def detach(self) -> None:
        self.stream = None

    # ------------------------------------------------------------------ requests

    async def request(self, body: Element, rid: int) -> bytes:
        """Handle one request of this session; the response body."""
        if self._closing and not self._held and not self._out:
            raise BoshError("item-not-found")
        if rid <= self.rid:
            cached = self._cache.get(rid)
            if cached is None:
                raise BoshError("item-not-found")
            return cached  # a retransmission
        if rid > self.rid + self.requests:
            self._terminate("item-not-found")
            raise BoshError("item-not-found")
        if len(self._held) >= self.requests:
            self._terminate("policy-violation")
            raise BoshError("policy-violation")
        _int_attr(body, "pause")  # a bad value is refused before anything is queued
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        held = _Held(rid, future)
        self._waiting[rid] = body
        await self._process_in_order(held)
        if self._out or self._closing:
            self._schedule_flush()  # output that waited for a request to carry it
        try:
            async with asyncio.timeout(self.wait + 5):
                return await asyncio.shield(future)
        except TimeoutError:
            return self._respond_to(held, empty=True)

    async def _process_in_order(self, mine: _Held) -> None:
        """Handle the waiting requests whose turn has come (ours, maybe others)."""
        self._stop_inactivity()
        self._held.append(mine)
        self._arm_wait(mine)
        if mine.rid != self.rid + 1:
            return  # ahead of its turn: held until the gap fills (its payload waits too)
        while self.rid + 1 in self._waiting:
            rid = self.rid + 1
            body = self._waiting.pop(rid)
            self.rid = rid
            await self._handle(body)
        # More held than allowed: answer the oldest now (empty if nothing is queued).
        while len(self._held) > self.hold:
            self._respond_to(self._held[0], empty=not self._out)

    async def _handle(self, body: Element) -> None:
        loop = asyncio.get_running_loop()
        pause = _int_attr(body, "pause")
        if pause is not None:
            self._paused_until = loop.time() + min(pause, self._endpoint.config.bosh_max_pause)
            for held in list(self._held):
                self._respond_to(held, empty=not self._out)
            return
        if body.get("type") == "terminate":
            # The stream closes on <close/> and then closes this transport, which
            # answers with type='terminate' (a clean end: nothing to resume).
            for child in body:
                self._feed(etree.tostring(child))
            self._feed(WEBSOCKET.close())
            return
        if len(body) == 0 and body.get(_RESTART) is None and self.created:
            now = loop.time()
            if (
                len(self._held) <= 1
                and not self._waiting
                and now - self._last_empty < self._endpoint.config.bosh_polling
                and self.hold == 0
            ):
                self._terminate("policy-violation")
                return
            self._last_empty = now
        if body.get(_RESTART) in ("true", "1"):
            self._feed(self._open_bytes())
        for child in body:
            self._feed(etree.tostring(child))

    def _feed(self, data: bytes) -> None:
        # No pause here: what one session can send is bounded by its request window
        # times the body size limit, well under the stream's queue limit.
        if self.stream is not None:
            self.stream.data_received(data)

    def _open_bytes(self) -> bytes:
        nsmap = {None: ns.FRAMING}
        return etree.tostring(
            etree.Element(
                f"{{{ns.FRAMING}}}open",
                {"to": self.domain, "version": "1.0"},
                nsmap=nsmap,  # type: ignore[arg-type]
            )
        )

    def start(self, stream: StreamInput) -> None:
        """Attach the stream and give it its stream header."""
        self.stream = stream
        stream.data_received(self._open_bytes())

    # ------------------------------------------------------------------ responses

    def _arm_wait(self, held: _Held) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(self.wait, self._wait_expired, held)

    def _wait_expired(self, held: _Held) -> None:
        if not held.future.done() and held in self._held:
            self._respond_to(held, empty=True)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out_bytes > self._endpoint.c2s.max_write_buffer:
            log.warning("bosh %s: client too slow to fetch; ending the session", self.peer)
            self._out.clear()
            self._out_bytes = 0
            self._terminate("policy-violation")
            return
        if not self._held:
            if self._closing:
                self._end()
            return
        if self._out or self._closing:
            # In order: the oldest held request that is in sequence carries the data.
            for held in self._held:
                if held.rid <= self.rid:
                    self._respond_to(held, empty=False)
                    break
        if self._closing:
            for held in list(self._held):
                self._respond_to(held, empty=False)
            self._end()

    def _respond_to(self, held: _Held, *, empty: bool) -> bytes:
        if held in self._held:
            self._held.remove(held)
        if held.future.done():
            return held.future.result()
        payload = b"" if empty else b"".join(self._out)
        if not empty:
            self._out.clear()
            self._out_bytes = 0
        data = self._body(payload)
        self._cache[held.rid] = data
        for old in [r for r in self._cache if r <= held.rid - self.requests - 1]:
            del self._cache[old]
        held.future.set_result(data)
        if not self._held and not self._closing:
            self._start_inactivity()
        return data

    def _body(self, payload: bytes) -> bytes:
        attrs: dict[str, str] = {}
        if not self.created:
            self.created = True
            cfg = self._endpoint.config
            attrs = {
                "sid": self.sid,
                "wait": str(int(self.wait)),
                "hold": str(self.hold),
                "requests": str(self.requests),
                "inactivity": str(int(self.inactivity)),
                "polling": str(int(cfg.bosh_polling)),
                "maxpause": str(int(cfg.bosh_max_pause)),
                "ver": "1.11",
                "from": self.domain,
                "secure": "true" if self.is_secure else "false",
                _VERSION: "1.0",
            }
        if self._closing:
            attrs["type"] = "terminate"
            if self._condition is not None:
                attrs["condition"] = self._condition
        body = etree.Element(
            f"{{{NS_HTTPBIND}}}body",
            attrs,
            nsmap={None: NS_HTTPBIND, "xmpp": NS_XBOSH, "stream": ns.STREAMS},  # type: ignore[dict-item]
        )
        if not payload:
            return etree.tostring(body)
        head = etree.tostring(body)[:-2] + b">"
        return head + payload + b"</body>"

    # ------------------------------------------------------------------ the end

    def _terminate(self, condition: str) -> None:
        """End the session with a BOSH error (the stream sees its connection lost)."""
        if self._condition is None:
            self._condition = condition
        self._closing = True
        for held in list(self._held):
            self._respond_to(held, empty=True)
        self._end()

    def _end(self) -> None:
        self._stop_inactivity()
        self._endpoint.forget(self)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connection_lost()

    def _start_inactivity(self) -> None:
        self._stop_inactivity()
        loop = asyncio.get_running_loop()
        delay = max(self.inactivity, self._paused_until - loop.time())
        self._inactivity = loop.call_later(delay, self._inactive)

    def _stop_inactivity(self) -> None:
        if self._inactivity is not None:
            self._inactivity.cancel()
            self._inactivity = None

    def _inactive(self) -> None:
        log.debug("bosh %s: inactive; session ends", self.peer)
        self._inactivity = None
        if not self._held:
            self._closing = True
            self._end()


class BoshFraming:
    """XEP-0206: no stream header or end of our own (the ``<body/>`` attributes say
    it); elements in, one by one, through the RFC 7395 reader."""

    __slots__ = ()

    @property
    def message_per_element(self) -> bool:
        # Each element in a write of its own: the session qualifies each stanza with
        # xmlns='jabber:client' (XEP-0206 §7), which it cannot do inside a joined burst
        # (the second stanza of a burst would fall into the httpbind namespace of the
        # <body/>); the session joins them into the next response anyway.
        return True

    def reader(self, namespace: str, max_stanza_size: int) -> FramedReader:
        return WEBSOCKET.reader(namespace, max_stanza_size)

    def open(
        self, namespace: str, attrs: dict[str, str], prefixes: dict[str, str] | None = None
    ) -> bytes:
        return b""

    def close(self) -> bytes:
        return b""


BOSH: Final = BoshFraming()


class BoshEndpoint:
    """``/http-bind``: session creation and the requests of live sessions."""

    def __init__(
        self,
        config: HttpSection,
        c2s: C2SSection,
        metrics: Metrics,
        open_c2s: Callable[[Transport, bool], StreamInput],
        hosts: Callable[[], frozenset[str]],
        origin_allowed: Callable[[web.Request], bool],
    ) -> None:
        self.config = config
        self.c2s = c2s
        self.open_c2s = open_c2s
        self.hosts = hosts
        self.origin_allowed = origin_allowed
        self.sessions: dict[str, BoshSession] = {}
        self.relay: BoshRelay | None = None
        """In a cluster: passes requests for other nodes' sessions on to them."""
        self._per_address: dict[str, int] = {}
        """Live sessions by client address (``http.max_connections_per_ip`` each)."""
        self._opened = metrics.counter("bosh_sessions_opened", "BOSH sessions created")
        metrics.gauge_function("bosh_sessions", "Live BOSH sessions", lambda: len(self.sessions))

    def forget(self, session: BoshSession) -> None:
        if self.sessions.pop(session.sid, None) is not None:
            left = self._per_address.get(session.peer, 0) - 1
            if left > 0:
                self._per_address[session.peer] = left
            else:
                self._per_address.pop(session.peer, None)

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not self.origin_allowed(request):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        }

    async def options(self, request: web.Request) -> web.StreamResponse:
        """CORS preflight of a browser client on another origin."""
        return web.Response(status=200, headers=self._cors(request))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = self._cors(request)
        if request.headers.get("Origin") is not None and not headers:
            raise web.HTTPForbidden(text="origin not allowed\n")
        limit = self.c2s.max_stanza_size + BODY_OVERHEAD
        if request.content_length is not None and request.content_length > limit:
            raise web.HTTPRequestEntityTooLarge(limit, request.content_length)
        try:
            async with asyncio.timeout(self.config.request_body_timeout):
                data = await _read_body(request, limit)
        except TimeoutError:
            log.warning("bosh: %s too slow to send its request body; closing", request.remote)
            return await _too_slow(request)
        out = await self.answer(data, client_of(request))
        return web.Response(body=out, content_type=CONTENT_TYPE, charset="utf-8", headers=headers)

    async def answer(self, data: bytes, client: HttpClient, *, relayed: bool = False) -> bytes:
        """The response body to the request body ``data`` from ``client``. A request
        for a session of another node is passed on to it, unless it was ``relayed``
        here already (then only this node's sessions are served)."""
        try:
            return await self._respond(data, client, relayed)
        except BoshError as err:
            return _terminate_body(err.condition)

    async def _respond(self, data: bytes, client: HttpClient, relayed: bool) -> bytes:
        body = parse_body(data, self.c2s.max_stanza_size)
        rid = _int_attr(body, "rid")
        if rid is None:
            raise BoshError("bad-request")
        sid = body.get("sid")
        if sid is None:
            if relayed:
                raise BoshError("bad-request")
            return await self._create(client, body, rid)
        session = self.sessions.get(sid)
        if session is None:
            owner = self.relay.owner(sid) if self.relay is not None else None
            if owner is None or relayed:
                raise BoshError("item-not-found")
            assert self.relay is not None
            out = await self.relay.forward(owner, data, client)
            if out is None:
                raise BoshError("item-not-found")  # its node is gone, and the session too
            return out
        return await session.request(body, rid)

    async def _create(self, client: HttpClient, body: Element, rid: int) -> bytes:
        if not client.secure and self.c2s.require_encryption:
            raise BoshError("policy-violation")
        to = (body.get("to") or "").lower()
        if to not in self.hosts():
            raise BoshError("host-unknown")
        wait = _int_attr(body, "wait")
        hold = _int_attr(body, "hold")
        if wait is None or hold is None:
            raise BoshError("bad-request")
        count = self._per_address.get(client.address, 0)
        if count >= self.config.max_connections_per_ip:
            # A session outlives its requests: without this, one address could open
            # sessions (each a client stream) as fast as it can send requests.
            log.warning("bosh: too many sessions from %s", client.address)
            raise BoshError("policy-violation")
        session = BoshSession(
            self,
            peer=client.address,
            is_secure=client.secure,
            rid=rid - 1,
            wait=float(min(max(wait, 1), int(self.config.bosh_max_wait))),
            hold=min(hold, self.config.bosh_max_hold),
            domain=to,
            sid_suffix=self.relay.sid_suffix if self.relay is not None else "",
        )
        self.sessions[session.sid] = session
        self._per_address[client.address] = count + 1
        self._opened.inc()
        session.start(self.open_c2s(session, False))
        return await session.request(_strip(body), rid)

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            session._terminate("system-shutdown")


def _strip(body: Element) -> Element:
    """The creation request's body as a plain request (its children only)."""
    plain = etree.Element("body")
    for child in body:
        plain.append(child)
    return plain


def _terminate_body(condition: str) -> bytes:
    return etree.tostring(
        etree.Element(
            f"{{{NS_HTTPBIND}}}body",
            {"type": "terminate", "condition": condition},
            nsmap={None: NS_HTTPBIND},  # type: ignore[dict-item]
        )
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body (in as many reads as it takes), at most ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(limit, size)
        chunks.append(chunk)
    return b"".join(chunks)


async def _too_slow(request: web.Request) -> web.StreamResponse:
    """408, then the connection is closed (not kept alive, nor drained)."""
    response = web.Response(status=408, headers={"Connection": "close"}, text="too slow\n")
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response
