"""A reconnecting mobile-style client for the ``storm`` scenario (and the restart test).

One :class:`StormSession` is one account's client across connections.  It logs in over
STARTTLS in one of three ways and keeps XEP-0198 stream management on:

* ``scram``: SASL SCRAM-SHA-1 (RFC 6120 SASL), resource bind, ``<enable resume/>``;
* ``fast``: XEP-0388 SASL2 with XEP-0386 Bind 2 and inline SM enable; the first login
  uses SCRAM-SHA-1 and asks for a XEP-0484 FAST token (``HT-SHA-256-NONE``), every
  later one uses the token alone (one round trip);
* TLS: the session of the client's last connection is offered again (its ticket, as
  phones' TLS stacks do; ``tls_resume``), so a server that issues tickets can skip the
  certificate on a reconnect;
* resumption (``resume=True``): the previous SM session is resumed (``<resume/>`` after
  SCRAM, or inline in SASL2 with the FAST token); when the server answers ``<failed/>``
  the client binds a fresh session instead.

After login it sends ``<presence/>`` (servers deliver offline messages on it) and a ping,
and then parses everything synchronously in :meth:`StormConn.data_received`: it counts
incoming stanzas for XEP-0198 (``h``), answers ``<r/>`` and the server's pings, records
the ids of received chat messages, and pops its own unacknowledged messages on ``<a/>``.
Messages it sends carry ``id='S-N'`` (sender index, sequence number).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import os
import random
import socket
import ssl
import struct
import time
import uuid
from collections import deque

from bench.certs import TLS_SESSION
from bench.xmpp import (
    BIND_IQ,
    PING_NS,
    SESSION_IQ,
    Connection,
    XmppError,
    attr,
    find_element,
    local_name,
    scram_keys,
    scram_sha1,
    session_required,
    starttls,
    stream_header,
)

SM = b"urn:xmpp:sm:3"
SASL2 = b"urn:xmpp:sasl:2"
BIND2 = b"urn:xmpp:bind:0"
FAST = b"urn:xmpp:fast:0"
FAST_MECHANISM = "HT-SHA-256-NONE"
PING_ID = b"storm-ping"
MODES = ("scram", "fast")


class StormConn(Connection):
    """A :class:`Connection` that hands its input to its session once logged in."""

    def __init__(self, session: StormSession) -> None:
        super().__init__()
        self.session = session
        self.live = False
        #: the TCP transport under TLS (aborted too: the TLS one may be half torn down)
        self.raw: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.raw is None:
            self.raw = self.transport

    def data_received(self, data: bytes) -> None:
        if self.live:
            if PING_NS in data:
                self.answer_pings(data)
            self.session.on_data(self, data)
        else:
            super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.session.on_lost(self)

    def transport_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def cut(self) -> None:
        """Abort the TCP connection with a RST (``SO_LINGER`` 0): a dead network, not a
        closed stream."""
        raw = self.raw
        if raw is not None and not raw.is_closing():
            sock = raw.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if self.transport is not None:
            self.transport.abort()
        if raw is not None:
            raw.abort()


class StormSession:
    """One account's client, reconnecting with the configured mode."""

    def __init__(
        self,
        index: int,
        user: str,
        password: str,
        *,
        host: str,
        port: int,
        domain: str,
        tls: ssl.SSLContext,
        mode: str = "scram",
        resend: bool = True,
    ) -> None:
        self.index = index
        self.user = user
        self.password = password
        self.host, self.port, self.domain = host, port, domain
        self.tls = tls
        self.mode = mode
        self.resume = False
        #: offer the TLS session of the last connection (its ticket), as phones do
        self.tls_resume = True
        self.tls_session: ssl.SSLSession | None = None
        #: connections on which the server resumed the TLS session
        self.tls_resumed = 0
        #: resend unacknowledged messages on a new (not resumed) session, as real clients do
        self.resend = resend
        self.agent_id = str(uuid.uuid4())
        #: the resource asked for in a legacy bind (the one bound last time)
        self.resource = b"storm"
        self.token: bytes | None = None
        self.conn: StormConn | None = None
        self.sm_id: bytes | None = None
        self.h_in = 0
        self.h_acked_sent = -1
        self.out = 0
        #: (outbound stanza count when sent, message id, stanza) not acknowledged yet
        self.unacked: deque[tuple[int, bytes, bytes]] = deque()
        #: message ids the server acknowledged (``<a/>`` or ``<resumed/>``)
        self.acked: list[bytes] = []
        #: ids of every message sent since the last count (to tell late arrivals of
        #: earlier storms from this one's)
        self.sent_ids: set[bytes] = set()
        #: ids of chat messages received, with how many times
        self.received: dict[bytes, int] = {}
        #: ids received before the last count (to tell a late first delivery from a repeat)
        self.history: set[bytes] = set()
        self.peer: bytes | None = None
        self.seq = 0
        self.sent = 0
        self.resent = 0
        self.errors = 0
        self.logins = 0
        self.resumed = 0
        self.ready = asyncio.Event()
        self._ping: asyncio.Future[None] | None = None
        self.lost_at: float | None = None
        #: set when the connection is lost, cleared by a successful login
        self.dropped = asyncio.Event()

    # ------------------------------------------------------------------ live input
    def on_data(self, conn: StormConn, data: bytes) -> None:
        conn.buf += data
        got_message = False
        while True:
            try:
                span = find_element(conn.buf, conn.pos)
            except XmppError:  # </stream:stream>
                conn.buf, conn.pos = b"", 0
                conn.cut()
                return
            if span is None:
                break
            start, end = span
            element = conn.buf[start:end]
            conn.pos = end
            name = local_name(element)
            if name == b"message":
                self.h_in += 1
                got_message = True
                if b"type='error'" in element[:200] or b'type="error"' in element[:200]:
                    self.errors += 1
                    continue
                msg_id = attr(element, b"id")
                if msg_id is not None and b"<body" in element:
                    self.received[msg_id] = self.received.get(msg_id, 0) + 1
            elif name in (b"presence", b"iq"):
                self.h_in += 1
                if name == b"iq":
                    self._on_iq(conn, element)
            elif name == b"r":
                conn.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % self.h_in)
                self.h_acked_sent = self.h_in
            elif name == b"a":
                h = attr(element, b"h")
                if h is not None:
                    self._acknowledge(int(h))
        if conn.pos >= len(conn.buf):
            conn.buf, conn.pos = b"", 0
        if got_message and self.h_in != self.h_acked_sent and not conn.transport_closing():
            # Acknowledge at once (XEP-0198 allows an unsolicited <a/>): what the server
            # has to redeliver after a drop is then only what was in flight.
            conn.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % self.h_in)
            self.h_acked_sent = self.h_in

    def _on_iq(self, conn: StormConn, element: bytes) -> None:
        kind = attr(element, b"type")
        if kind == b"get" or kind == b"set":
            iq_id = attr(element, b"id") or b""
            sender = attr(element, b"from")
            to = b" to='" + sender + b"'" if sender else b""
            conn.send(b"<iq type='result' id='" + iq_id + b"'" + to + b"/>")
            self.out += 1
        elif attr(element, b"id") == PING_ID and self._ping is not None and not self._ping.done():
            self._ping.set_result(None)

    def _acknowledge(self, h: int) -> None:
        unacked = self.unacked
        while unacked and unacked[0][0] <= h:
            self.acked.append(unacked.popleft()[1])

    def on_lost(self, conn: StormConn) -> None:
        if conn is self.conn:
            self.conn = None
            self.ready.clear()
            if self.lost_at is None:
                self.lost_at = time.monotonic()
            self.dropped.set()
            if self._ping is not None and not self._ping.done():
                self._ping.set_exception(XmppError("connection lost during login"))

    # ------------------------------------------------------------------ sending
    def send_message(self) -> bool:
        """One counted chat message to the peer; False while offline."""
        conn = self.conn
        if conn is None or self.peer is None or conn.transport_closing():
            return False
        self.seq += 1
        msg_id = b"%d-%d" % (self.index, self.seq)
        stanza = (
            b"<message type='chat' to='" + self.peer + b"' id='" + msg_id + b"'><body>"
            b"storm " + msg_id + b"</body></message>"
        )
        conn.send(stanza)
        self.out += 1
        self.unacked.append((self.out, msg_id, stanza))
        self.sent_ids.add(msg_id)
        self.sent += 1
        return True

    def request_ack(self) -> None:
        conn = self.conn
        if conn is not None and not conn.transport_closing():
            conn.send(b"<r xmlns='urn:xmpp:sm:3'/>")

    def _resend_unacked(self, conn: StormConn) -> None:
        pending = list(self.unacked)
        self.unacked.clear()
        for _, msg_id, stanza in pending:
            conn.send(stanza)
            self.out += 1
            self.unacked.append((self.out, msg_id, stanza))
            self.resent += 1

    # ------------------------------------------------------------------ login
    async def connect(self) -> bool:
        """Log in (or resume); returns whether the SM session was resumed."""
        loop = asyncio.get_running_loop()
        TLS_SESSION.set(self.tls_session if self.tls_resume else None)
        _, conn = await loop.create_connection(lambda: StormConn(self), self.host, self.port)
        try:
            header = stream_header(self.domain)
            conn.send(header)
            await conn.read_stream_header()
            features = await _features(conn)
            await starttls(conn, features, self.tls, self.domain)
            conn.send(header)
            await conn.read_stream_header()
            features = await _features(conn)
            self._keep_tls_session(conn)
            if self.mode == "fast":
                resumed = await self._sasl2(conn, features)
            else:
                resumed = await self._sasl1(conn, header, features)
            self.logins += 1
            if resumed:
                self.resumed += 1
            else:
                await self._online(conn)
            self.lost_at = None
            self.dropped.clear()
            return resumed
        except BaseException:
            if self.conn is conn:
                self.conn = None
            conn.cut()
            raise

    def _keep_tls_session(self, conn: StormConn) -> None:
        """Keep the connection's TLS session for the next one (a TLS 1.3 ticket comes
        after the handshake, before the stream's features). A resumed session's ticket
        is kept and offered again: reading ``SSLObject.session`` copies the session
        through DER (CPython does so for TLS 1.3), a tenth of the generator's core in
        a storm of resumptions; xmppd and OpenSSL accept a ticket more than once."""
        sslobj = conn.transport.get_extra_info("ssl_object") if conn.transport else None
        if sslobj is None:
            return
        if sslobj.session_reused and self.tls_session is not None:
            self.tls_resumed += 1
            return
        session = sslobj.session
        self.tls_session = session if session is not None and session.has_ticket else None

    async def _sasl1(self, conn: StormConn, header: bytes, features: bytes) -> bool:
        if b">SCRAM-SHA-1<" not in features:
            raise XmppError(f"SCRAM-SHA-1 not offered: {features[:300]!r}")
        await scram_sha1(conn, self.user, self.password)
        conn.send(header)
        await conn.read_stream_header()
        features = await _features(conn)
        if self.resume and self.sm_id is not None:
            conn.send(
                b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%d'/>" % (self.sm_id, self.h_in)
            )
            answer = await conn.next_element()
            if local_name(answer) == b"resumed":
                self._go_live(conn)
                self._after_resume(conn, answer)
                return True
            if local_name(answer) != b"failed":
                raise XmppError(f"resume: unexpected {answer[:300]!r}")
        conn.send(BIND_IQ % self.resource)
        self._bound(await conn.wait_iq(b"bind1"))
        if session_required(features):
            conn.send(SESSION_IQ)
            await conn.wait_iq(b"sess1")
        conn.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        enabled = await _skip_to(conn, (b"enabled", b"failed"))
        if local_name(enabled) != b"enabled":
            raise XmppError(f"SM enable failed: {enabled[:300]!r}")
        self._new_sm(enabled)
        self._go_live(conn)
        return False

    async def _sasl2(self, conn: StormConn, features: bytes) -> bool:
        if SASL2 not in features:
            raise XmppError(f"SASL2 not offered: {features[:300]!r}")
        agent = (
            b"<user-agent id='" + self.agent_id.encode() + b"'><software>xmppd bench</software>"
            b"<device>storm</device></user-agent>"
        )
        resuming = self.resume and self.sm_id is not None
        if resuming:
            inline = b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%d'/>" % (
                self.sm_id or b"",
                self.h_in,
            )
        else:
            inline = (
                b"<bind xmlns='urn:xmpp:bind:0'><tag>storm</tag>"
                b"<enable xmlns='urn:xmpp:sm:3' resume='true'/></bind>"
            )
        if self.token is not None:
            proof = hmac.digest(self.token, b"Initiator", "sha256")
            initial = self.user.encode() + b"\0" + proof
            conn.send(
                b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='"
                + FAST_MECHANISM.encode()
                + b"'><initial-response>"
                + base64.b64encode(initial)
                + b"</initial-response>"
                + agent
                + b"<fast xmlns='urn:xmpp:fast:0'/>"
                + inline
                + b"</authenticate>"
            )
            answer = await _skip_to(conn, (b"success", b"failure"))
            if local_name(answer) != b"success":
                raise XmppError(f"FAST login failed: {answer[:300]!r}")
            expected = hmac.digest(self.token, b"Responder", "sha256")
            if not hmac.compare_digest(_additional_data(answer), expected):
                raise XmppError("FAST: the server did not prove the token")
        else:
            request = b"<request-token xmlns='urn:xmpp:fast:0' mechanism='%s'/>" % (
                FAST_MECHANISM.encode()
            )
            answer = await _sasl2_scram(conn, self.user, self.password, agent + inline + request)
        self._bound(answer)
        token = _token(answer)
        if token is not None:
            self.token = token
        if resuming:
            if b"<resumed" in answer:
                self._go_live(conn)
                self._after_resume(conn, answer[answer.find(b"<resumed") :])
                return True
            # Not resumable any more: the session is authenticated but not bound.
            await _features(conn)
            conn.send(
                b"<iq type='set' id='bind2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                b"<resource>" + self.resource + b"</resource></bind></iq>"
            )
            self._bound(await conn.wait_iq(b"bind2"))
            conn.send(b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            enabled = await _skip_to(conn, (b"enabled", b"failed"))
        else:
            await _features(conn)
            i = answer.find(b"<enabled")
            enabled = answer[i:] if i >= 0 else b""
        if local_name(enabled) != b"enabled":
            raise XmppError(f"SM enable failed: {answer[:400]!r}")
        self._new_sm(enabled)
        self._go_live(conn)
        return False

    def _bound(self, answer: bytes) -> None:
        """Keep the resource the server bound (from a bind result's ``<jid>`` or SASL2's
        ``<authorization-identifier>``): a client asks for the same one next time, so a
        new session replaces its hibernated one instead of standing beside it."""
        for start, end in ((b"<jid>", b"</jid>"), (b"authorization-identifier>", b"</")):
            i = answer.find(start)
            if i >= 0:
                i += len(start)
                jid = answer[i : answer.find(end, i)]
                if b"/" in jid:
                    self.resource = jid.partition(b"/")[2]
                return

    def _new_sm(self, enabled: bytes) -> None:
        resumable = attr(enabled, b"resume") in (b"true", b"1")
        self.sm_id = attr(enabled, b"id") if resumable else None
        self.h_in = 0
        self.h_acked_sent = -1
        self.out = 0
        if self.unacked and not self.resend:
            self.unacked.clear()

    def _go_live(self, conn: StormConn) -> None:
        rest = conn.buf[conn.pos :]
        conn.buf, conn.pos = b"", 0
        conn.live = True
        self.conn = conn
        if rest:
            self.on_data(conn, rest)

    def _after_resume(self, conn: StormConn, resumed: bytes) -> None:
        h = attr(resumed, b"h")
        if h is not None:
            self._acknowledge(int(h))
            self.out = int(h)
        self._resend_unacked(conn)
        self.ready.set()

    async def _online(self, conn: StormConn) -> None:
        if self.resend:
            self._resend_unacked(conn)
        loop = asyncio.get_running_loop()
        self._ping = loop.create_future()
        conn.send(
            b"<presence/><iq type='get' id='"
            + PING_ID
            + b"' to='"
            + self.domain.encode()
            + b"'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        self.out += 2
        try:
            await self._ping
        finally:
            self._ping = None
        self.ready.set()

    def cut(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.cut()

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.live = False
            conn.close()


async def _features(conn: Connection) -> bytes:
    features = await conn.next_element()
    if local_name(features) != b"features":
        raise XmppError(f"expected stream features, got {features[:200]!r}")
    return features


async def _skip_to(conn: Connection, names: tuple[bytes, ...]) -> bytes:
    while True:
        element = await conn.next_element()
        if local_name(element) in names:
            return element


def _additional_data(success: bytes) -> bytes:
    i = success.find(b"additional-data")
    if i < 0:
        return b""
    gt = success.find(b">", i)
    end = success.find(b"<", gt)
    return base64.b64decode(success[gt + 1 : end])


def _token(success: bytes) -> bytes | None:
    i = success.find(b"<token")
    if i < 0 or FAST not in success:
        return None
    value = attr(success[i:], b"token")
    return value


async def _sasl2_scram(conn: Connection, user: str, password: str, extra: bytes) -> bytes:
    """SCRAM-SHA-1 inside SASL2; returns the ``<success/>`` (server signature checked)."""
    nonce = base64.b64encode(os.urandom(18))
    first_bare = b"n=" + user.encode() + b",r=" + nonce
    conn.send(
        b"<authenticate xmlns='urn:xmpp:sasl:2' mechanism='SCRAM-SHA-1'><initial-response>"
        + base64.b64encode(b"n,," + first_bare)
        + b"</initial-response>"
        + extra
        + b"</authenticate>"
    )
    challenge = await _skip_to(conn, (b"challenge", b"failure"))
    if local_name(challenge) != b"challenge":
        raise XmppError(f"SASL2 SCRAM refused: {challenge[:300]!r}")
    gt = challenge.find(b">")
    server_first = base64.b64decode(challenge[gt + 1 : challenge.rfind(b"</")])
    fields = {p[:1]: p[2:] for p in server_first.split(b",") if len(p) >= 2}
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
        b"<response xmlns='urn:xmpp:sasl:2'>"
        + base64.b64encode(without_proof + b",p=" + base64.b64encode(proof))
        + b"</response>"
    )
    answer = await _skip_to(conn, (b"success", b"failure"))
    if local_name(answer) != b"success":
        raise XmppError(f"SASL2 authentication failed: {answer[:300]!r}")
    expected = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha1"))
    if _additional_data(answer) != expected:
        raise XmppError("SCRAM: wrong server signature")
    return answer


class Backoff:
    """Reconnect delays of one client: a first wait drawn uniformly from
    ``[0, first)`` (clients notice a drop at different moments), then exponential
    back-off with full jitter: attempt ``k`` waits ``uniform(0, min(cap, base * 2**k))``."""

    def __init__(self, first: float, base: float, cap: float, rng: random.Random) -> None:
        self.first, self.base, self.cap, self.rng = first, base, cap, rng

    def delay(self, attempt: int) -> float:
        if attempt == 0:
            return self.rng.uniform(0.0, self.first)
        return self.rng.uniform(0.0, min(self.cap, self.base * 2 ** (attempt - 1)))


async def reconnect(
    session: StormSession,
    sem: asyncio.Semaphore,
    backoff: Backoff,
    timeout: float,
    deadline: float,
) -> tuple[float, int, str | None]:
    """Bring ``session`` back with ``backoff`` between attempts and at most
    ``sem``'s count of logins in flight; returns (seconds from the drop to being back,
    attempts, last error or None)."""
    dropped = session.lost_at if session.lost_at is not None else time.monotonic()
    attempt = 0
    error: str | None = None
    while time.monotonic() < deadline:
        await asyncio.sleep(backoff.delay(attempt))
        attempt += 1
        async with sem:
            try:
                await asyncio.wait_for(session.connect(), timeout)
            except (OSError, XmppError, TimeoutError, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                continue
        return time.monotonic() - dropped, attempt, None
    return time.monotonic() - dropped, attempt, error or "deadline"
