"""The HTTP front: one aiohttp application on every ``kind = "http"`` listener.

Plain HTTP or HTTPS (``tls = "direct"``: the hosts' certificates, picked by SNI).
Every request goes through one middleware that works out who sent it
(:class:`~xmppd.httproutes.HttpClient`: the real address behind trusted proxies,
whether it is encrypted), enforces the per-address limit of concurrent requests
(a WebSocket counts for its whole life) and counts it in the metrics; then it is
looked up, at request time, in the core's route registry
(:class:`~xmppd.httproutes.HttpRoutes`), where the core's own endpoints (WebSocket,
discovery) and the modules' routes live side by side.

This layer knows no stream kind: a WebSocket opens a client stream through the
function the server hands it, and speaks to it through
:mod:`xmppd.stream.transport`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.typedefs import Handler
from lxml import etree

from xmppd.httproutes import CLIENT, HttpClient, HttpRoutes, client_of
from xmppd.transports.bosh import BoshEndpoint
from xmppd.transports.websocket import WebSocketEndpoint, origin_allowed

if TYPE_CHECKING:
    from xmppd.config import C2SSection, HttpSection, ListenerSection
    from xmppd.metrics import Metrics
    from xmppd.stream.transport import StreamInput, Transport
    from xmppd.tls import TlsContexts

log = logging.getLogger(__name__)

NS_XRD: Final = "http://docs.oasis-open.org/ns/xri/xrd-1.0"
ALT_WEBSOCKET: Final = "urn:xmpp:alt-connections:websocket"
ALT_BOSH: Final = "urn:xmpp:alt-connections:xbosh"
WEBSOCKET_PATH: Final = "/xmpp-websocket"
BOSH_PATH: Final = "/http-bind"
_METHOD_LABELS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class HttpFront:
    """The aiohttp application, its middleware and the core's HTTP endpoints."""

    def __init__(
        self,
        config: HttpSection,
        c2s: C2SSection,
        routes: HttpRoutes,
        metrics: Metrics,
        open_c2s: Callable[[Transport, bool], StreamInput],
        tls: TlsContexts | None,
        hosts: Callable[[], frozenset[str]],
        *,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: bind with SO_REUSEPORT (the workers of ``server.workers``
        share the HTTP ports)."""
        self.config = config
        self.reuse_port = reuse_port
        self.routes = routes
        self.tls = tls
        self._proxies: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies
        )
        self._per_address: dict[str, int] = {}
        self._connections: dict[str, int] = {}
        """Open TCP connections by peer address (trusted proxies are not counted)."""
        self._requests = metrics.counter(
            "http_requests", "HTTP requests answered, by method and status", ("method", "status")
        )
        self._refused = metrics.counter(
            "http_refused", "HTTP requests refused by the per-address limit"
        )
        self._runner: web.AppRunner | None = None
        self.websocket = WebSocketEndpoint(config, c2s, metrics, open_c2s, self.hold)
        self.alt_connections: list[tuple[str, str]] = []
        """(XEP-0156 rel, path) of the connection methods served."""
        routes.add("GET", "/.well-known/host-meta", self._host_meta)
        routes.add("GET", "/.well-known/host-meta.json", self._host_meta_json)
        self.bosh = BoshEndpoint(
            config, c2s, metrics, open_c2s, hosts, lambda r: origin_allowed(config, r)
        )
        if config.websocket:
            routes.add("GET", WEBSOCKET_PATH, self.websocket.handle)
            self.alt_connections.append((ALT_WEBSOCKET, WEBSOCKET_PATH))
        if config.bosh:
            routes.add("POST", BOSH_PATH, self.bosh.handle)
            routes.add("OPTIONS", BOSH_PATH, self.bosh.options)
            self.alt_connections.append((ALT_BOSH, BOSH_PATH))

    # ------------------------------------------------------------------ lifecycle

    async def listen(self, section: ListenerSection) -> asyncio.Server:
        """Open one ``kind = "http"`` listener (the application is set up on the first)."""
        if self._runner is None:
            app = web.Application(
                middlewares=[self._middleware], client_max_size=self.config.max_request_size
            )
            # [\s\S], not '.': a path with an encoded newline is ours to answer too.
            app.router.add_route("*", r"/{tail:[\s\S]*}", self._dispatch)
            runner = web.AppRunner(
                app,
                handle_signals=False,
                access_log=None,
                keepalive_timeout=self.config.keepalive_timeout,
            )
            await runner.setup()
            self._runner = runner
        ssl_ctx = None
        if section.tls == "direct":
            assert self.tls is not None
            ssl_ctx = self.tls.context
        factory = self._runner.server
        assert factory is not None
        srv = await asyncio.get_running_loop().create_server(
            lambda: _Guard(self, factory()),
            host=section.address,
            port=section.port,
            ssl=ssl_ctx,
            backlog=section.backlog,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            ssl_handshake_timeout=30 if ssl_ctx else None,
        )
        for sock in srv.sockets:
            log.info(
                "http listening on %s (%s)",
                sock.getsockname()[:2],
                "https" if ssl_ctx else "plain http",
            )
        return srv

    async def stop(self) -> None:
        """Close every HTTP connection (after the listeners stopped accepting)."""
        await self.websocket.close_all()
        self.bosh.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ every request

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Handler,
    ) -> web.StreamResponse:
        client = self._client(request)
        request[CLIENT] = client
        method = request.method if request.method in _METHOD_LABELS else "other"
        with self.count_request(client.address) as admitted:
            if not admitted:
                self._requests.labels(method=method, status="429").inc()
                return web.Response(status=429, text="too many concurrent requests\n")
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self._requests.labels(method=method, status=str(status)).inc()

    @contextmanager
    def count_request(self, address: str) -> Iterator[bool]:
        """Count an open request from ``address`` while the block runs; ``False`` (not
        counted) when the address has ``max_connections_per_ip`` open already. Also
        used for BOSH requests other cluster nodes pass on, with the real client's
        address."""
        count = self._per_address.get(address, 0)
        if count >= self.config.max_connections_per_ip:
            self._refused.inc()
            log.warning("http: too many concurrent requests from %s", address)
            yield False
            return
        self._per_address[address] = count + 1
        try:
            yield True
        finally:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        methods = self.routes.methods_for(request.path)
        if methods is None:
            raise web.HTTPNotFound()
        handler = self.routes.find(request.method, request.path)
        if handler is None:
            allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
            raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
        return await handler(request)

    def _client(self, request: web.Request) -> HttpClient:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        address = str(peer[0]) if peer else "?"
        tls = request.transport is not None and (
            request.transport.get_extra_info("sslcontext") is not None
        )
        scheme = "https" if tls else "http"
        secure = tls
        if self._is_trusted(address):
            forwarded = request.headers.getall("X-Forwarded-For", [])
            hops = [h.strip() for value in forwarded for h in value.split(",") if h.strip()]
            # Walk back from the nearest hop: the first address not a trusted proxy is
            # the client (anything before it could be made up by the client).
            for hop in reversed(hops):
                address = hop
                if not self._is_trusted(hop):
                    break
            proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
            if proto == "https":
                scheme = "https"
                secure = True
        if not secure and self.config.loopback_is_secure and _is_loopback(peer):
            secure = True
        base = self.config.public_url or f"{scheme}://{request.host}"
        return HttpClient(address=address, secure=secure, base_url=base)

    def hold(self, address: str) -> Callable[[], None]:
        """Count a long-lived client (a WebSocket session, after its request ended)
        against ``address``'s limit of concurrent requests; the returned call ends it."""
        self._per_address[address] = self._per_address.get(address, 0) + 1

        def release() -> None:
            left = self._per_address.get(address, 0) - 1
            if left > 0:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)

        return release

    def admit(self, address: str) -> bool:
        """Count a new TCP connection from ``address``; ``False``: over the limit."""
        if self._is_trusted(address):
            return True
        count = self._connections.get(address, 0)
        if count >= self.config.max_connections_per_ip:
            self._refused.inc()
            log.warning("http: too many connections from %s", address)
            return False
        self._connections[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self._connections.get(address, 0) - 1
        if count > 0:
            self._connections[address] = count
        else:
            self._connections.pop(address, None)

    def _is_trusted(self, address: str) -> bool:
        if not self._proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    # ------------------------------------------------------------------ XEP-0156

    def _links(self, request: web.Request) -> list[tuple[str, str]]:
        base = client_of(request).base_url
        ws_base = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
        return [
            (rel, (ws_base if rel == ALT_WEBSOCKET else base) + path)
            for rel, path in self.alt_connections
        ]

    async def _host_meta(self, request: web.Request) -> web.StreamResponse:
        """``/.well-known/host-meta``: the XRD document of XEP-0156."""
        xrd = etree.Element(f"{{{NS_XRD}}}XRD", nsmap={None: NS_XRD})  # type: ignore[dict-item]
        for rel, href in self._links(request):
            etree.SubElement(xrd, f"{{{NS_XRD}}}Link", {"rel": rel, "href": href})
        body = etree.tostring(xrd, xml_declaration=True, encoding="utf-8")
        return web.Response(body=body, content_type="application/xrd+xml", headers=_PUBLIC_CORS)

    async def _host_meta_json(self, request: web.Request) -> web.StreamResponse:
        """``/.well-known/host-meta.json``: the same as JSON (JRD)."""
        links = [{"rel": rel, "href": href} for rel, href in self._links(request)]
        return web.Response(
            text=json.dumps({"links": links}),
            content_type="application/json",
            headers=_PUBLIC_CORS,
        )


class _Guard(asyncio.Protocol):
    """aiohttp's protocol behind a guard: a connection over the per-address limit is
    dropped before aiohttp sees it, and a client that has not finished the headers of
    its first request within ``http.request_header_timeout`` is cut off (slow-header
    attacks: aiohttp itself has no such deadline; later requests on a keep-alive
    connection are bounded by ``keepalive_timeout`` and the per-address limits).

    A WebSocket session takes the connection over (:meth:`take_over`): its bytes go
    to the session from then on, and aiohttp, which sees the connection through an
    :class:`_AiohttpSide`, finishes with it without touching the socket."""

    __slots__ = (
        "_address",
        "_counted",
        "_front",
        "_inner",
        "_side",
        "_tail",
        "_taken",
        "_timer",
        "_transport",
    )

    def __init__(self, front: HttpFront, inner: asyncio.BaseProtocol) -> None:
        self._front = front
        self._inner: Any = inner
        self._address = "?"
        self._counted = False
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._side: _AiohttpSide | None = None
        self._taken: asyncio.Protocol | None = None

    @property
    def raw(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if peer else "?"
        if not self._front.admit(self._address):
            self._inner = None
            cast(asyncio.Transport, transport).abort()
            return
        self._counted = True
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._front.config.request_header_timeout, self._too_slow
        )
        self._side = _AiohttpSide(self, self._transport)
        self._inner.connection_made(self._side)

    def take_over(self, receiver: Any) -> None:
        """Hand the connection to ``receiver`` (``data_received``, ``eof_received``,
        ``connection_lost``); aiohttp is told the connection is gone once it closes
        its side."""
        self._taken = receiver
        if self._side is not None:
            self._side.detached = True

    def release_inner(self) -> None:
        """aiohttp closed its side of a connection taken over: it may forget it."""
        inner, self._inner = self._inner, None
        if inner is not None:
            asyncio.get_running_loop().call_soon(inner.connection_lost, None)

    def _too_slow(self) -> None:
        self._timer = None
        log.warning("http: %s too slow to send its request headers; closing", self._address)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._taken is not None:
            self._taken.data_received(data)
            return
        if self._inner is None:
            return
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._taken is not None:
            self._taken.eof_received()
            return None
        if self._inner is None:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._front.release(self._address)
        taken, self._taken = self._taken, None
        if taken is not None:
            taken.connection_lost(exc)
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)
        self._transport = None

    def pause_writing(self) -> None:
        if self._taken is not None:
            self._taken.pause_writing()
        elif self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._taken is not None:
            self._taken.resume_writing()
        elif self._inner is not None:
            self._inner.resume_writing()


class _AiohttpSide:
    """The transport as aiohttp sees it: the real one, until a WebSocket session takes
    the connection over; from then on what aiohttp writes is dropped and its close
    only tells the guard that aiohttp is done."""

    __slots__ = ("_real", "connection", "detached")

    def __init__(self, connection: _Guard, real: asyncio.Transport) -> None:
        self._real = real
        self.connection = connection
        """Read by the WebSocket endpoint to take the connection over."""
        self.detached = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.detached:
            self._real.write(data)

    def writelines(self, data: Any) -> None:
        if not self.detached:
            self._real.writelines(data)

    def write_eof(self) -> None:
        if not self.detached:
            self._real.write_eof()

    def close(self) -> None:
        if self.detached:
            self.connection.release_inner()
        else:
            self._real.close()

    def abort(self) -> None:
        if self.detached:
            self.connection.release_inner()
        else:
            self._real.abort()

    def pause_reading(self) -> None:
        if not self.detached:
            self._real.pause_reading()

    def resume_reading(self) -> None:
        if not self.detached:
            self._real.resume_reading()


_PUBLIC_CORS: Final = {"Access-Control-Allow-Origin": "*"}
"""Discovery documents are public: web clients on any origin may read them."""


def _is_loopback(peer: object) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        return ipaddress.ip_address(str(peer[0])).is_loopback
    except ValueError:
        return False
