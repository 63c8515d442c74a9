"""Raw-bytes XMPP client used by the load generator.

Nothing here builds a DOM.  During login the stream is cut into top-level elements with a
tag-depth scanner (enough for what servers send before and during session establishment);
during the chat phase :meth:`Connection.data_received` only looks for ``</message>`` ends and
parses ``<body>STEP:MICROSECONDS</body>`` with bytes operations.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable
from typing import cast

STREAM_NS = "http://etherx.jabber.org/streams"

_NAME_RE = re.compile(rb"</?([^\s/>]+)")
_ATTR_RE_CACHE: dict[bytes, re.Pattern[bytes]] = {}


class XmppError(Exception):
    """The server answered something the login dance did not expect."""


class StreamClosed(XmppError):
    """The server closed the stream (``</stream:stream>`` or TCP close)."""


def stream_header(domain: str) -> bytes:
    return (
        f"<?xml version='1.0'?><stream:stream to='{domain}' xmlns='jabber:client' "
        f"xmlns:stream='{STREAM_NS}' version='1.0'>"
    ).encode()


def local_name(element: bytes) -> bytes:
    """Local name of the first tag in ``element`` (``b'stream:features'`` -> ``b'features'``)."""
    m = _NAME_RE.search(element)
    if m is None:
        return b""
    return m.group(1).rpartition(b":")[2]


def attr(element: bytes, name: bytes) -> bytes | None:
    """Value of attribute ``name`` on the first (opening) tag of ``element``."""
    pattern = _ATTR_RE_CACHE.get(name)
    if pattern is None:
        pattern = re.compile(rb"\s" + re.escape(name) + rb"\s*=\s*(['\"])(.*?)\1", re.S)
        _ATTR_RE_CACHE[name] = pattern
    end = element.find(b">")
    m = pattern.search(element, 0, end + 1 if end >= 0 else len(element))
    return m.group(2) if m else None


def find_stream_header(buf: bytes, pos: int) -> int | None:
    """Index just past the ``<stream:stream ...>`` opening tag found at or after ``pos``."""
    i = pos
    while True:
        lt = buf.find(b"<", i)
        if lt < 0:
            return None
        if buf.startswith(b"<?", lt):
            end = buf.find(b"?>", lt)
            if end < 0:
                return None
            i = end + 2
            continue
        gt = buf.find(b">", lt)
        if gt < 0:
            return None
        tag = buf[lt : gt + 1]
        if local_name(tag) != b"stream" or tag.startswith(b"</"):
            if local_name(tag) == b"stream":
                raise StreamClosed("stream closed before header")
            raise XmppError(f"expected a stream header, got {tag[:200]!r}")
        return gt + 1


def find_element(buf: bytes, pos: int) -> tuple[int, int] | None:
    """(start, end) of the next complete top-level element at or after ``pos``.

    Tracks tag depth only; attribute values containing a raw ``>`` are not supported
    (servers escape it).  Raises :class:`StreamClosed` on ``</stream:stream>``.
    """
    i = pos
    depth = 0
    start = -1
    find = buf.find
    while True:
        lt = find(b"<", i)
        if lt < 0:
            return None
        gt = find(b">", lt)
        if gt < 0:
            return None
        second = buf[lt + 1 : lt + 2]
        if second == b"?" or second == b"!":
            i = gt + 1
            continue
        if second == b"/":
            if depth == 0:
                raise StreamClosed("server closed the stream")
            depth -= 1
            if depth == 0:
                return start, gt + 1
        elif buf[gt - 1 : gt] == b"/":
            if depth == 0:
                return lt, gt + 1
        else:
            if depth == 0:
                start = lt
            depth += 1
        i = gt + 1


def session_required(features: bytes) -> bool:
    """Whether the RFC 3921 session IQ is advertised without ``<optional/>``."""
    i = features.find(b"urn:ietf:params:xml:ns:xmpp-session")
    if i < 0:
        return False
    gt = features.find(b">", i)
    if gt < 0 or features[gt - 1 : gt] == b"/":
        return True
    end = features.find(b"session>", gt)
    inner = features[gt:end] if end >= 0 else features[gt:]
    return b"optional" not in inner


def plain_auth(user: str, domain: str, password: str) -> bytes:
    del domain  # authcid is the bare local part; the domain comes from the stream
    token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    return b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>" + token + b"</auth>"


BIND_IQ = (
    b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<resource>%s</resource></bind></iq>"
)
SESSION_IQ = (
    b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
)
ROSTER_IQ = b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>"
PRESENCE_AND_PING = b"<presence/><iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>"
MESSAGE_END = b"</message>"


class Recorder:
    """Per-process latency store of the chat phase, keyed by sweep step."""

    __slots__ = ("errors", "last_rx", "lat", "misrouted")

    def __init__(self) -> None:
        self.lat: dict[int, list[int]] = {}
        self.errors = 0
        #: messages that arrived on a connection other than the one they were addressed to
        self.misrouted = 0
        self.last_rx = 0.0

    def count(self, step: int) -> int:
        lst = self.lat.get(step)
        return len(lst) if lst is not None else 0


class Connection(asyncio.Protocol):
    """One client connection: awaitable element reader for login, fast path for chat."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pos = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.recorder: Recorder | None = None
        self.tail = b""
        self.jid = b""
        #: bytes that start every chat message this connection sends (set by the worker);
        #: the body starts with the recipient's local part, checked on arrival
        self.prefix = b""
        #: local part of this connection's account
        self.user = b""

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        rec = self.recorder
        if rec is not None:
            self._chat_data(rec, data)
            return
        self.buf += data
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = exc if exc is not None else StreamClosed("connection closed by server")
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- chat fast path ---------------------------------------------------------------
    def _chat_data(self, rec: Recorder, data: bytes) -> None:
        buf = self.tail + data if self.tail else data
        end = buf.rfind(MESSAGE_END)
        if end < 0:
            self.tail = buf
            return
        self.tail = buf[end + 10 :]
        chunk = buf[:end]
        now = time.monotonic_ns() // 1000
        rec.last_rx = now
        if b"type='error'" in chunk or b'type="error"' in chunk:
            self._chat_slow(rec, chunk, now)
            return
        lat = rec.lat
        me = self.user
        for part in chunk.split(b"<body")[1:]:
            gt = part.find(b">")
            lt = part.find(b"<", gt)
            tag, step, stamp = part[gt + 1 : lt].split(b":")
            if tag != me:
                rec.misrouted += 1
            s = int(step)
            lst = lat.get(s)
            if lst is None:
                lst = lat[s] = []
            lst.append(now - int(stamp))

    def _chat_slow(self, rec: Recorder, chunk: bytes, now: int) -> None:
        for message in chunk.split(MESSAGE_END):
            opening = message[: message.find(b">") + 1]
            if b"type='error'" in opening or b'type="error"' in opening:
                rec.errors += 1
                continue
            i = message.find(b"<body")
            if i < 0:
                continue
            gt = message.find(b">", i)
            lt = message.find(b"<", gt)
            tag, step, stamp = message[gt + 1 : lt].split(b":")
            if tag != self.user:
                rec.misrouted += 1
            rec.lat.setdefault(int(step), []).append(now - int(stamp))

    # -- login helpers ----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def _more(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _compact(self) -> None:
        if self.pos >= len(self.buf):
            self.buf = b""
            self.pos = 0
        elif self.pos > 65536:
            self.buf = self.buf[self.pos :]
            self.pos = 0

    async def read_stream_header(self) -> None:
        while True:
            end = find_stream_header(self.buf, self.pos)
            if end is not None:
                self.pos = end
                self._compact()
                return
            await self._more()

    async def next_element(self) -> bytes:
        while True:
            span = find_element(self.buf, self.pos)
            if span is not None:
                start, end = span
                element = self.buf[start:end]
                self.pos = end
                self._compact()
                if local_name(element) == b"error" and element.startswith(b"<stream:"):
                    raise XmppError(f"stream error: {element[:300]!r}")
                return element
            await self._more()

    async def wait_iq(self, iq_id: bytes) -> bytes:
        """Skip elements until the IQ answer with ``iq_id``; raise unless it is a result."""
        while True:
            element = await self.next_element()
            if local_name(element) != b"iq" or attr(element, b"id") != iq_id:
                continue
            if attr(element, b"type") != b"result":
                raise XmppError(f"iq {iq_id.decode()} failed: {element[:300]!r}")
            return element

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(b"</stream:stream>")
            finally:
                self.transport.close()


async def login(
    host: str,
    port: int,
    domain: str,
    user: str,
    password: str,
    resource: str,
    factory: Callable[[], Connection] = Connection,
) -> Connection:
    """Full c2s login: SASL PLAIN, bind, optional session, roster get, presence.

    Returns once the server answered a ping sent right after the initial presence, i.e.
    once it has processed the presence too.
    """
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(factory, host, port)
    conn.user = user.encode()
    try:
        header = stream_header(domain)
        conn.send(header)
        await conn.read_stream_header()
        features = await conn.next_element()
        if local_name(features) != b"features":
            raise XmppError(f"expected stream features, got {features[:200]!r}")
        if b">PLAIN<" not in features:
            raise XmppError(f"SASL PLAIN not offered: {features[:300]!r}")
        conn.send(plain_auth(user, domain, password))
        answer = await conn.next_element()
        if local_name(answer) != b"success":
            raise XmppError(f"authentication failed: {answer[:300]!r}")
        conn.send(header)
        await conn.read_stream_header()
        features = await conn.next_element()
        if local_name(features) != b"features":
            raise XmppError(f"expected stream features, got {features[:200]!r}")
        conn.send(BIND_IQ % resource.encode())
        bound = await conn.wait_iq(b"bind1")
        i = bound.find(b"<jid>")
        conn.jid = bound[i + 5 : bound.find(b"</jid>", i)] if i >= 0 else b""
        if session_required(features):
            conn.send(SESSION_IQ)
            await conn.wait_iq(b"sess1")
        conn.send(ROSTER_IQ)
        await conn.wait_iq(b"roster1")
        conn.send(PRESENCE_AND_PING)
        await conn.wait_iq(b"ping1")
    except BaseException:
        conn.close()
        raise
    return conn


async def register(host: str, port: int, domain: str, users: list[str], password: str) -> int:
    """In-band registration (XEP-0077) of ``users``, one stream per account.

    Returns how many registrations succeeded (already-existing accounts count as success).
    """
    loop = asyncio.get_running_loop()
    done = 0
    for user in users:
        _, conn = await loop.create_connection(Connection, host, port)
        try:
            conn.send(stream_header(domain))
            await conn.read_stream_header()
            features = await conn.next_element()
            if local_name(features) != b"features":
                raise XmppError(f"expected stream features, got {features[:200]!r}")
            conn.send(
                b"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'><username>"
                + user.encode()
                + b"</username><password>"
                + password.encode()
                + b"</password></query></iq>"
            )
            while True:
                element = await conn.next_element()
                if local_name(element) == b"iq" and attr(element, b"id") == b"reg1":
                    break
            if attr(element, b"type") == b"result" or b"conflict" in element:
                done += 1
            else:
                raise XmppError(f"registration of {user} failed: {element[:300]!r}")
        finally:
            conn.close()
    return done
