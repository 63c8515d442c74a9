"""Raw-bytes XMPP client used by the load generator.

Nothing here builds a DOM.  During login the stream is cut into top-level elements with a
tag-depth scanner (enough for what servers send before and during session establishment);
during the chat phase :meth:`Connection.data_received` only looks for ``</message>`` ends and
parses ``<body>RECIPIENT:STEP:MICROSECONDS</body>`` with bytes operations, and during the
presence phase it cuts the data at ``<presence`` and reads ``<status>SENDER:STEP:MICROSECONDS
</status>``.  Login speaks SASL PLAIN or SCRAM-SHA-1, optionally after STARTTLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import cast

STREAM_NS = "http://etherx.jabber.org/streams"

_NAME_RE = re.compile(rb"</?([^\s/>]+)")
_ATTR_RE_CACHE: dict[bytes, re.Pattern[bytes]] = {}


PING_NS = b"urn:xmpp:ping"


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


NS_SASL = b"urn:ietf:params:xml:ns:xmpp-sasl"
SCRAM_SHA1 = "SCRAM-SHA-1"
PLAIN = "PLAIN"

_SALTED: dict[tuple[str, bytes, int], tuple[bytes, bytes, bytes]] = {}
"""(password, salt, iterations) -> (client key, stored key, server key).

What a real client caches too: every benchmark account has the same password, and the
bench gives every account of a server the same salt, so a worker runs PBKDF2 once per
server instead of once per login (1.4 ms of the generator's core each)."""


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    cached = _SALTED.get((password, salt, iterations))
    if cached is None:
        salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha1")
        server_key = hmac.digest(salted, b"Server Key", "sha1")
        cached = (client_key, hashlib.sha1(client_key).digest(), server_key)
        _SALTED[(password, salt, iterations)] = cached
    return cached


def _scram_fields(message: bytes) -> dict[bytes, bytes]:
    return {part[:1]: part[2:] for part in message.split(b",") if len(part) >= 2}


def _sasl_payload(element: bytes) -> bytes:
    """Decoded text content of a ``<challenge/>``/``<success/>`` element."""
    gt = element.find(b">")
    if element[gt - 1 : gt] == b"/":
        return b""
    return base64.b64decode(element[gt + 1 : element.rfind(b"</")])


async def scram_sha1(conn: Connection, user: str, password: str) -> None:
    """SASL SCRAM-SHA-1 (RFC 5802) without channel binding (gs2 header ``n,,``); checks
    the server signature."""
    nonce = base64.b64encode(os.urandom(18))
    first_bare = b"n=" + user.encode() + b",r=" + nonce
    conn.send(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>"
        + base64.b64encode(b"n,," + first_bare)
        + b"</auth>"
    )
    challenge = await conn.next_element()
    if local_name(challenge) != b"challenge":
        raise XmppError(f"SCRAM: expected a challenge, got {challenge[:300]!r}")
    server_first = _sasl_payload(challenge)
    fields = _scram_fields(server_first)
    server_nonce = fields.get(b"r", b"")
    if not server_nonce.startswith(nonce):
        raise XmppError("SCRAM: the server nonce does not extend ours")
    client_key, stored_key, server_key = scram_keys(
        password, base64.b64decode(fields[b"s"]), int(fields[b"i"])
    )
    without_proof = b"c=biws,r=" + server_nonce
    auth_message = first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.digest(stored_key, auth_message, "sha1")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    conn.send(
        b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>"
        + base64.b64encode(without_proof + b",p=" + base64.b64encode(proof))
        + b"</response>"
    )
    answer = await conn.next_element()
    final = _sasl_payload(answer) if local_name(answer) in (b"success", b"challenge") else b""
    if local_name(answer) == b"challenge":  # RFC 6120 §6.3.10: additional data in a challenge
        conn.send(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
        answer = await conn.next_element()
    if local_name(answer) != b"success":
        raise XmppError(f"authentication failed: {answer[:300]!r}")
    expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha1"))
    if _scram_fields(final).get(b"v") != expected:
        raise XmppError("SCRAM: wrong server signature")


async def starttls(conn: Connection, features: bytes, context: ssl.SSLContext, domain: str) -> None:
    """RFC 6120 §5: ``<starttls/>``, ``<proceed/>``, then the TLS handshake on the socket."""
    if b"xmpp-tls" not in features:
        raise XmppError(f"STARTTLS not offered: {features[:300]!r}")
    conn.send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    answer = await conn.next_element()
    if local_name(answer) != b"proceed":
        raise XmppError(f"STARTTLS refused: {answer[:300]!r}")
    assert conn.transport is not None
    loop = asyncio.get_running_loop()
    conn.buf, conn.pos = b"", 0
    tls = await loop.start_tls(conn.transport, conn, context, server_hostname=domain)
    if tls is None:
        raise XmppError("TLS handshake gave no transport")
    conn.transport = tls
    ssl_object = tls.get_extra_info("ssl_object")
    if ssl_object is not None:
        conn.tls_version = str(ssl_object.version())
        cipher = ssl_object.cipher()
        conn.tls_cipher = str(cipher[0]) if cipher else ""


BIND_IQ = (
    b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
    b"<resource>%s</resource></bind></iq>"
)
SESSION_IQ = (
    b"<iq type='set' id='sess1'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>"
)
ROSTER_IQ = b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>"
PRESENCE_AND_PING = b"<presence/><iq type='get' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>"
REGISTER_IQ = (
    b"<iq type='set' id='reg1'><query xmlns='jabber:iq:register'>"
    b"<username>%s</username><password>%s</password></query></iq>"
)
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


class PresenceRecorder:
    """Per-process store of the presence phase.

    ``lat[step]`` holds the latency of every broadcast presence received for the first
    time (µs); ``repeated`` counts presences whose stamp this connection had already seen
    (the server's answers to probes, repeating a contact's current presence), ``own``
    the server's copies of a connection's own presence, ``without_status`` presences sent
    at login (no stamp).
    """

    __slots__ = ("last_rx", "lat", "own", "received", "repeated", "without_status")

    def __init__(self) -> None:
        self.lat: dict[int, list[int]] = {}
        self.received = 0
        self.repeated = 0
        self.own = 0
        self.without_status = 0
        self.last_rx = 0.0

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "repeated": self.repeated,
            "own": self.own,
            "without_status": self.without_status,
        }


class MucRecorder:
    """Per-process store of the group chat phase (``muc``).

    ``lat[step]`` holds the latency of every copy of a stamped groupchat message an
    occupant received (µs; the sender's own copy counts: the room sends it back too);
    ``presences`` counts the presence stanzas received in the room (join floods),
    ``errors`` the error stanzas.
    """

    __slots__ = ("errors", "last_rx", "lat", "presences")

    def __init__(self) -> None:
        self.lat: dict[int, list[int]] = {}
        self.presences = 0
        self.errors = 0
        self.last_rx = 0.0


MUC_NS = b"http://jabber.org/protocol/muc"


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
        #: negotiated TLS protocol version and cipher ("" without TLS)
        self.tls_version = ""
        self.tls_cipher = ""
        #: presence phase: recorder, this account's index, last stamp seen per
        #: (sender, unavailable) so that a probe answer repeating a presence already
        #: received is not counted twice
        self.presence_rec: PresenceRecorder | None = None
        self.index = -1
        self.seen: dict[tuple[int, bool], int] = {}
        #: group chat phase: recorder once this connection is an occupant
        self.muc_rec: MucRecorder | None = None
        #: the end of the last read (a server ping cut between two reads)
        self.ping_tail = b""

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if PING_NS in data or PING_NS in self.ping_tail[-12:] + data[:12]:
            self.answer_pings(data)
        self.ping_tail = (self.ping_tail + data)[-256:] if len(data) < 256 else data[-256:]
        rec = self.recorder
        if rec is not None:
            self._chat_data(rec, data)
            return
        prec = self.presence_rec
        if prec is not None:
            self._presence_data(prec, data)
            return
        mrec = self.muc_rec
        if mrec is not None:
            self._muc_data(mrec, data)
            return
        self.buf += data
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def answer_pings(self, data: bytes) -> None:
        """Answer the server's XEP-0199 pings, as every client does: a server that
        checks idle connections (xmppd pings a client silent for 5 minutes) cuts one
        that does not answer. ``data`` with the end of the previous read, so that a
        ping cut between two reads is answered once."""
        tail = self.ping_tail
        buf = tail + data
        pos = buf.find(PING_NS)
        while pos >= 0:
            if pos + len(PING_NS) > len(tail):  # not answered with the previous read
                start = buf.rfind(b"<iq", 0, pos)
                opening = buf[start : buf.find(b">", start) + 1] if start >= 0 else b""
                iq_id, sender = attr(opening, b"id"), attr(opening, b"from")
                if attr(opening, b"type") == b"get" and iq_id is not None:
                    to = b" to='" + sender + b"'" if sender else b""
                    self.send(b"<iq type='result' id='" + iq_id + b"'" + to + b"/>")
            pos = buf.find(PING_NS, pos + 1)

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

    # -- presence fast path -----------------------------------------------------------
    def _presence_data(self, rec: PresenceRecorder, data: bytes) -> None:
        buf = self.tail + data if self.tail else data
        last = buf.rfind(b"<presence")
        if last < 0:
            self.tail = b"" if buf.rstrip().endswith(b">") else buf
            return
        piece = buf[last:].rstrip()
        if piece.endswith(b"</presence>") or (piece.endswith(b"/>") and piece.count(b"<") == 1):
            chunk, self.tail = buf, b""
        else:
            chunk, self.tail = buf[:last], buf[last:]
        now = time.monotonic_ns() // 1000
        rec.last_rx = now
        me = self.index
        seen = self.seen
        for stanza in chunk.split(b"<presence")[1:]:
            rec.received += 1
            gt = stanza.find(b">")
            unavailable = b"unavailable" in stanza[:gt]
            i = stanza.find(b"<status", gt)
            if i < 0:
                rec.without_status += 1
                continue
            j = stanza.find(b">", i)
            k = stanza.find(b"<", j)
            try:
                sender_text, step_text, stamp_text = stanza[j + 1 : k].split(b":")
                sender, step, stamp = int(sender_text), int(step_text), int(stamp_text)
            except ValueError:
                rec.without_status += 1
                continue
            if sender == me:
                rec.own += 1
                continue
            key = (sender, unavailable)
            if seen.get(key) == stamp:
                rec.repeated += 1
                continue
            seen[key] = stamp
            lst = rec.lat.get(step)
            if lst is None:
                lst = rec.lat[step] = []
            lst.append(now - stamp)

    # -- group chat fast path ---------------------------------------------------------
    def _muc_data(self, rec: MucRecorder, data: bytes) -> None:
        """Time every stamped groupchat body (``<body>SENDER:STEP:MICROSECONDS</body>``)
        in complete messages; count presences; keep only what may still be an
        incomplete message (presence floods are not buffered)."""
        tail = self.tail
        buf = tail + data if tail else data
        now = time.monotonic_ns() // 1000
        rec.last_rx = now
        # A "<presence" cut by the previous read starts in its last 8 bytes (the tail
        # always ends with them); one wholly inside them cannot exist.
        rec.presences += (
            (tail[-8:] + data).count(b"<presence") if tail else data.count(b"<presence")
        )
        end = buf.rfind(MESSAGE_END)
        if end < 0:
            start = buf.rfind(b"<message")
            self.tail = buf[start:] if start >= 0 else buf[-16:]
            return
        self.tail = buf[end + 10 :]
        chunk = buf[:end]
        if b"type='error'" in chunk or b'type="error"' in chunk:
            rec.errors += chunk.count(b"type='error'") + chunk.count(b'type="error"')
        lat = rec.lat
        for part in chunk.split(b"<body")[1:]:
            gt = part.find(b">")
            lt = part.find(b"<", gt)
            fields = part[gt + 1 : lt].split(b":")
            if len(fields) != 3:
                continue
            s = int(fields[1])
            lst = lat.get(s)
            if lst is None:
                lst = lat[s] = []
            lst.append(now - int(fields[2]))

    async def join_room(self, occupant_jid: bytes) -> None:
        """Send a join presence (no history) and return once the self-presence (status
        110) arrived; raises on an error presence."""
        self.buf, self.pos = b"", 0
        self.send(
            b"<presence to='"
            + occupant_jid
            + b"'><x xmlns='"
            + MUC_NS
            + b"'><history maxstanzas='0'/></x></presence>"
        )
        searched = 0
        while True:
            buf = self.buf
            for marker in (b"code='110'", b'code="110"'):
                if buf.find(marker, searched) >= 0:
                    self.buf, self.pos = b"", 0
                    return
            i = buf.find(b"type='error'", searched)
            if i < 0:
                i = buf.find(b'type="error"', searched)
            if i >= 0:
                raise XmppError(f"join refused: {buf[max(0, i - 200) : i + 400]!r}")
            searched = max(0, len(buf) - 16)
            await self._more()

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

    async def query(self, request: bytes, iq_id: bytes) -> tuple[bytes, int]:
        """Send an IQ and wait for its answer without parsing what comes before it.

        Returns the answer's opening tag and how many ``<result`` elements (XEP-0313
        results) arrived before it; the buffer is emptied.
        """
        markers = (b"id='" + iq_id + b"'", b'id="' + iq_id + b'"')
        self.buf, self.pos = b"", 0
        self.send(request)
        searched = 0
        while True:
            buf = self.buf
            for marker in markers:
                i = buf.find(marker, searched)
                while i >= 0:
                    start = buf.rfind(b"<", 0, i)
                    gt = buf.find(b">", i)
                    if buf.startswith(b"<iq", start) and gt >= 0:
                        count = buf.count(b"<result", 0, start)
                        self.buf, self.pos = b"", 0
                        return buf[start : gt + 1], count
                    if gt < 0:
                        break
                    i = buf.find(marker, i + 1)
            # the marker may straddle two reads, the opening tag may be incomplete
            searched = max(0, buf.rfind(b"<") - 1)
            await self._more()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.write(b"</stream:stream>")
            finally:
                self.transport.close()


async def stream_features(conn: Connection) -> bytes:
    """The next element, which must be ``<stream:features/>``."""
    features = await conn.next_element()
    if local_name(features) != b"features":
        raise XmppError(f"expected stream features, got {features[:200]!r}")
    return features


async def authenticate(
    conn: Connection, features: bytes, user: str, domain: str, password: str, mechanism: str
) -> None:
    """SASL PLAIN or SCRAM-SHA-1, once ``features`` offer ``mechanism``."""
    if b">" + mechanism.encode() + b"<" not in features:
        raise XmppError(f"SASL {mechanism} not offered: {features[:400]!r}")
    if mechanism == SCRAM_SHA1:
        await scram_sha1(conn, user, password)
    else:
        conn.send(plain_auth(user, domain, password))
        answer = await conn.next_element()
        if local_name(answer) != b"success":
            raise XmppError(f"authentication failed: {answer[:300]!r}")


async def bind_and_fetch_roster(conn: Connection, features: bytes, resource: str) -> None:
    """Bind ``resource`` (sets ``conn.jid``), open a session where the server still
    asks for one, and get the roster, as clients do before their initial presence."""
    conn.send(BIND_IQ % resource.encode())
    bound = await conn.wait_iq(b"bind1")
    i = bound.find(b"<jid>")
    conn.jid = bound[i + 5 : bound.find(b"</jid>", i)] if i >= 0 else b""
    if session_required(features):
        conn.send(SESSION_IQ)
        await conn.wait_iq(b"sess1")
    conn.send(ROSTER_IQ)
    await conn.wait_iq(b"roster1")


async def open_stream(conn: Connection, domain: str, tls: ssl.SSLContext | None) -> bytes:
    """Open the client stream, [STARTTLS and open it again]; the stream features."""
    header = stream_header(domain)
    conn.send(header)
    await conn.read_stream_header()
    features = await stream_features(conn)
    if tls is not None:
        await starttls(conn, features, tls, domain)
        conn.send(header)
        await conn.read_stream_header()
        features = await stream_features(conn)
    return features


async def register(
    host: str,
    port: int,
    domain: str,
    user: str,
    password: str,
    *,
    tls: ssl.SSLContext | None = None,
) -> None:
    """XEP-0077 in-band registration of ``user``: [STARTTLS,] one IQ, then close.
    Raises unless the server answered with a result."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Connection, host, port)
    try:
        await open_stream(conn, domain, tls)
        conn.send(REGISTER_IQ % (user.encode(), password.encode()))
        await conn.wait_iq(b"reg1")
    finally:
        conn.close()


async def login(
    host: str,
    port: int,
    domain: str,
    user: str,
    password: str,
    resource: str,
    factory: Callable[[], Connection] = Connection,
    *,
    mechanism: str = PLAIN,
    tls: ssl.SSLContext | None = None,
) -> Connection:
    """Full c2s login: [STARTTLS,] SASL PLAIN or SCRAM-SHA-1, bind, optional session,
    roster get, presence.

    Returns once the server answered a ping sent right after the initial presence, i.e.
    once it has processed the presence too.
    """
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(factory, host, port)
    conn.user = user.encode()
    try:
        features = await open_stream(conn, domain, tls)
        await authenticate(conn, features, user, domain, password, mechanism)
        conn.send(stream_header(domain))
        await conn.read_stream_header()
        await bind_and_fetch_roster(conn, await stream_features(conn), resource)
        conn.send(PRESENCE_AND_PING)
        await conn.wait_iq(b"ping1")
    except BaseException:
        conn.close()
        raise
    return conn
