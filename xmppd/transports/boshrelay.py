"""BOSH in a cluster: a request for a session another node holds is passed on to it.

A BOSH session lives in the memory of the process that created it, but the HTTP
requests of one session may land on any node or worker (a load balancer without
stickiness, ``SO_REUSEPORT``). The session id names its node (``<random>.<node>``),
so the node a request lands on knows, without asking anyone, where the session is:

- its own: the request is answered here;
- a live node: the request body is POSTed to that node's *relay listener* (an
  internal HTTP address each node publishes in the nodes hash of Redis, one per
  worker) and the answer is relayed back, held as long as the owner holds it;
- a node that is gone (or does not answer): ``item-not-found``, which ends the
  session as XEP-0124 says (the stream behind it is lost with its node; stream
  management can resume it on a new session).

The relay request carries the client's address and whether it came encrypted, and
is signed (HMAC-SHA-256 under a key derived from the server secret, with the sending
and receiving nodes' names and a time stamp), so the owner believes those facts only
from a node of the cluster and counts the request against the real client address.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Final

import aiohttp
from aiohttp import web

from xmppd.httproutes import HttpClient

log = logging.getLogger(__name__)

PATH: Final = "/_cluster/bosh"
HEADER_FROM: Final = "X-Xmppd-From-Node"
HEADER_CLIENT: Final = "X-Xmppd-Client"
HEADER_SECURE: Final = "X-Xmppd-Secure"
HEADER_TIME: Final = "X-Xmppd-Time"
HEADER_SIGNATURE: Final = "X-Xmppd-Signature"
MAX_SKEW: Final = 60.0
"""Seconds a relayed request's time stamp may differ from the owner's clock."""
CONNECT_TIMEOUT: Final = 5.0
BODY_TIMEOUT: Final = 10.0
"""A relayed body (sent whole by a node) must have arrived within this time."""

Answer = Callable[[bytes, HttpClient], Awaitable[bytes]]
"""The owner's side: answer a request body for ``client`` (its sessions only)."""
CountRequest = Callable[[str], AbstractContextManager[bool]]
"""The HTTP front's per-address count of open requests (``False``: over the limit)."""


def node_of(sid: str) -> str:
    """The node a session id names (``""``: none, a sid from a single process)."""
    return sid.partition(".")[2]


class BoshRelay:
    """This node's side of BOSH in a cluster: passing requests on, and taking them."""

    def __init__(
        self,
        node: str,
        key: bytes,
        *,
        is_live: Callable[[str], Awaitable[bool]],
        address_of: Callable[[str], Awaitable[str | None]],
        hold_timeout: float,
        max_body: int,
    ) -> None:
        """``is_live(node)``: whether a node is a live member of the cluster;
        ``address_of(node)``: the relay URL it published (``None``: none);
        ``hold_timeout``: longest an owner may hold a request (``bosh_max_wait`` and
        a margin)."""
        self.node = node
        self._key = key
        self._is_live = is_live
        self._address_of = address_of
        self._timeout = aiohttp.ClientTimeout(total=hold_timeout, connect=CONNECT_TIMEOUT)
        self._max_body = max_body
        self._addresses: dict[str, str] = {}
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._answer: Answer | None = None
        self._count: CountRequest | None = None
        self.url = ""
        """Where this node takes relayed requests (set by :meth:`listen`)."""
        self.forwarded = 0
        """Requests passed on to other nodes."""
        self.taken = 0
        """Requests other nodes passed on to this one."""
        self.refused = 0
        """Relay requests refused (bad signature, stale time stamp)."""

    @property
    def sid_suffix(self) -> str:
        """What this node's session ids end with."""
        return f".{self.node}"

    def owner(self, sid: str) -> str | None:
        """The other node that holds session ``sid``; ``None``: this node (or none)."""
        node = node_of(sid)
        return node if node and node != self.node else None

    # ------------------------------------------------------------------ signing

    def _sign(self, sender: str, receiver: str, stamp: str, client: HttpClient, data: bytes) -> str:
        head = "\0".join(
            (sender, receiver, stamp, client.address, "1" if client.secure else "0")
        ).encode()
        return hmac.new(self._key, head + b"\0" + data, hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ passing on

    async def forward(self, node: str, data: bytes, client: HttpClient) -> bytes | None:
        """Pass a request body on to ``node`` and return its answer; ``None`` when the
        node is gone or cannot be reached (the session is lost);
        :class:`aiohttp.web.HTTPTooManyRequests` when the owner refused the request
        by the per-address limit."""
        if not await self._is_live(node):
            return None
        url = await self._address(node, fresh=False)
        if url is None:
            return None
        self.forwarded += 1
        try:
            return await self._post(node, url, data, client)
        except aiohttp.ClientConnectorError:
            # The node may have restarted with a new address: read it again, once.
            self._addresses.pop(node, None)
            again = await self._address(node, fresh=True)
            if again is None or again == url:
                log.info("bosh relay: node %s does not answer at %s", node, url)
                return None
            try:
                return await self._post(node, again, data, client)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.info("bosh relay: node %s failed: %s", node, exc)
                return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("bosh relay: node %s failed: %s", node, exc)
            return None

    async def _address(self, node: str, *, fresh: bool) -> str | None:
        if not fresh and node in self._addresses:
            return self._addresses[node]
        try:
            url = await self._address_of(node)
        except Exception as exc:  # Redis away: the cached address, if any, is lost too
            log.info("bosh relay: cannot read the address of node %s: %s", node, exc)
            return None
        if url:
            self._addresses[node] = url
        return url

    async def _post(self, node: str, url: str, data: bytes, client: HttpClient) -> bytes | None:
        if self._client is None:
            self._client = aiohttp.ClientSession(
                # One connection per held request: no pool limit (each node holds at
                # most its clients' held requests, bounded by the HTTP limits).
                connector=aiohttp.TCPConnector(limit=0),
                timeout=self._timeout,
            )
        stamp = f"{time.time():.3f}"
        headers = {
            "Content-Type": "text/xml; charset=utf-8",
            HEADER_FROM: self.node,
            HEADER_CLIENT: client.address,
            HEADER_SECURE: "1" if client.secure else "0",
            HEADER_TIME: stamp,
            HEADER_SIGNATURE: self._sign(self.node, node, stamp, client, data),
        }
        async with self._client.post(url + PATH, data=data, headers=headers) as response:
            body = await response.read()
            if response.status == 429:
                # The client has too many requests open on the owner (counted with
                # those it sent there directly): it hears so, the session lives on.
                raise web.HTTPTooManyRequests(text="too many concurrent requests\n")
            if response.status != 200:
                log.warning("bosh relay: node %s answered %d", node, response.status)
                return None
            return body

    # ------------------------------------------------------------------ taking

    async def listen(self, host: str, port: int, answer: Answer, count: CountRequest) -> str:
        """Open the relay listener on ``host:port`` (0: a free port); its URL."""
        self._answer = answer
        self._count = count
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(PATH, self._take)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound[1]}"
        log.info("bosh relay listening on %s", self.url)
        return self.url

    async def _take(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                data = await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout() from None
        client = self._verify(request, data)
        if client is None:
            self.refused += 1
            log.warning("bosh relay: refused a request from %s (not signed)", request.remote)
            raise web.HTTPForbidden(text="not a node of this cluster\n")
        assert self._answer is not None and self._count is not None
        self.taken += 1
        with self._count(client.address) as admitted:
            if not admitted:
                return web.Response(status=429, text="too many concurrent requests\n")
            out = await self._answer(data, client)
        return web.Response(body=out, content_type="text/xml", charset="utf-8")

    def _verify(self, request: web.Request, data: bytes) -> HttpClient | None:
        headers = request.headers
        sender = headers.get(HEADER_FROM, "")
        stamp = headers.get(HEADER_TIME, "")
        signature = headers.get(HEADER_SIGNATURE, "")
        address = headers.get(HEADER_CLIENT, "")
        secure = headers.get(HEADER_SECURE) == "1"
        try:
            skew = abs(time.time() - float(stamp))
        except ValueError:
            return None
        if not sender or not address or skew > MAX_SKEW:
            return None
        client = HttpClient(address=address, secure=secure, base_url="")
        wanted = self._sign(sender, self.node, stamp, client, data)
        if not hmac.compare_digest(wanted, signature):
            return None
        return client

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


WILDCARDS: Final = frozenset({"", "0.0.0.0", "::", "*"})


def split_address(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port); port 0 when absent."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    return host, int(port) if port else 0


async def own_address() -> str:
    """The address this machine's host name resolves to (a pod's IP in Kubernetes),
    preferring one that is not loopback; loopback when it resolves to nothing else."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)
    except OSError:
        infos = []
    found = [str(info[4][0]) for info in infos]
    for address in found:
        if not ipaddress.ip_address(address).is_loopback:
            return address
    log.warning(
        "bosh relay: the host name resolves to no address other nodes could reach; "
        "using loopback (set [cluster] http_address when nodes are on several machines)"
    )
    return "127.0.0.1"


async def relay_address(http_address: str, listener_address: str) -> tuple[str, int]:
    """Where the relay listener binds: ``[cluster] http_address``, or the first HTTP
    listener's address (the machine's own when that is every address), a free port."""
    host, port = split_address(http_address)
    if not host:
        host = listener_address if listener_address not in WILDCARDS else await own_address()
    return host, port
