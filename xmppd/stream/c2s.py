"""The client-to-server stream (RFC 6120): header, features, STARTTLS, SASL, bind,
then stanzas. It does no I/O itself: a transport feeds it bytes
(:meth:`C2SStream.data_received`) and it writes through the transport interface,
so TCP, direct TLS and (later) WebSocket and BOSH share it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from lxml import etree

from xmppd import hooks, ns
from xmppd.auth import sasl
from xmppd.errors import StanzaError, StreamError
from xmppd.events import Drop
from xmppd.hooks import FeaturesContext, PacketContext, StanzaEvent
from xmppd.jid import JID, InvalidJID, resourceprep
from xmppd.module import Scope
from xmppd.sessions import SessionData
from xmppd.stanza import (
    IQ_TYPES,
    STANZA_KINDS,
    Element,
    child,
    error_reply,
    iq_result,
    parse,
    payload,
    serialize,
    summary,
)
from xmppd.stream import sm as sm_ns
from xmppd.stream.sm import SmState
from xmppd.stream.xmlreader import XmlReader

if TYPE_CHECKING:
    import ssl

    from xmppd.host import Host
    from xmppd.server import Server

log = logging.getLogger(__name__)

MAX_SASL_FAILURES: Final = 5
QUEUE_HIGH_WATER: Final = 500
"""Stanzas waiting to be handled before the socket stops being read."""

_STREAM_TAG: Final = f"{{{ns.STREAMS}}}stream"
_STARTTLS: Final = f"{{{ns.TLS}}}starttls"
_SASL_AUTH: Final = f"{{{ns.SASL}}}auth"
_SASL_RESPONSE: Final = f"{{{ns.SASL}}}response"
_SASL_ABORT: Final = f"{{{ns.SASL}}}abort"
_BIND: Final = f"{{{ns.BIND}}}bind"
_SESSION: Final = f"{{{ns.SESSION}}}session"
_SM_PREFIX: Final = f"{{{sm_ns.NS}}}"
_SM_RESUME: Final = f"{{{sm_ns.NS}}}resume"
ACK_EVERY: Final = 5
"""Ask for an ack at once when this many stanzas are unacknowledged."""
ACK_DELAY: Final = 2.0
"""Otherwise ask this long after the first unacknowledged one."""


class Transport(Protocol):
    """What a stream needs from the connection under it."""

    peer: str
    is_secure: bool

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def write_buffer_size(self) -> int: ...

    def ssl_object(self) -> ssl.SSLObject | None: ...

    async def start_tls(self) -> None: ...

    def attach(self, stream: C2SStream) -> None:
        """Feed this connection's bytes to ``stream`` from now on (resumption)."""

    def detach(self) -> None:
        """Stop feeding any stream (the connection is being replaced)."""


class C2SStream(SessionData):
    """One client connection, from stream header to close. Implements ``Session``."""

    # Slots: one of these exists per connected client; a __dict__ would cost ~1 KB each.
    __slots__ = (
        "_ack_timer",
        "_awaiting_tls",
        "_detached",
        "_header_pending",
        "_hibernation",
        "_jid",
        "_jid_str",
        "_out",
        "_paused",
        "_presence",
        "_queue",
        "_sasl",
        "_sasl_failures",
        "_timeout",
        "_unbound",
        "_worker",
        "closed",
        "host",
        "is_authenticated",
        "is_bound",
        "is_interested",
        "last_activity",
        "offer_starttls",
        "priority",
        "reader",
        "server",
        "sm",
        "stream_id",
        "transport",
    )

    def __init__(self, server: Server, transport: Transport, *, offer_starttls: bool) -> None:
        super().__init__()
        cfg = server.config.c2s
        self.server = server
        self.transport = transport
        self.offer_starttls = offer_starttls
        self.reader = XmlReader(expected_namespace=ns.CLIENT, max_stanza_size=cfg.max_stanza_size)
        self.host: Host | None = None
        self._jid: JID | None = None
        self._jid_str = ""
        self.stream_id = ""
        self.is_authenticated = False
        self.is_bound = False
        self.priority = 0
        # The last available presence, serialized: an lxml element would keep its whole
        # parser (~27 KB of libxml2 state) alive for as long as the session lasts.
        self._presence: bytes | None = None
        self.is_interested = False
        self.closed = False
        self.last_activity = asyncio.get_running_loop().time()
        self._queue: deque[Element | None] = deque()
        self._out: list[bytes] = []
        self._unbound: asyncio.Task[None] | None = None
        self.sm: SmState | None = None
        self._detached = False
        self._hibernation: asyncio.TimerHandle | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._sasl: sasl.Mechanism | None = None
        self._sasl_failures = 0
        self._awaiting_tls = False
        self._header_pending = False
        self._timeout = asyncio.get_running_loop().call_later(
            cfg.connect_timeout, self._connect_timed_out
        )

    # ------------------------------------------------------------------ Session API

    @property
    def jid(self) -> JID:
        assert self._jid is not None
        return self._jid

    @property
    def domain(self) -> str:
        return self.host.domain if self.host else ""

    @property
    def peer(self) -> str:
        return self.transport.peer

    @property
    def is_secure(self) -> bool:
        return self.transport.is_secure

    @property
    def presence(self) -> Element | None:
        return None if self._presence is None else etree.fromstring(self._presence)

    @presence.setter
    def presence(self, stanza: Element | None) -> None:
        self._presence = None if stanza is None else serialize(stanza)

    @property
    def is_available(self) -> bool:
        return self._presence is not None

    async def deliver(self, stanza: Element) -> None:
        if self.closed:
            return
        host = self.host
        if host is not None and host.bus.has_handlers(hooks.USER_RECEIVE_PACKET):
            result = await host.bus.fold(hooks.USER_RECEIVE_PACKET, stanza, PacketContext(self))
            if isinstance(result, Drop):
                return
            stanza = result
        self._send_stanza(serialize(stanza))

    def send_raw(self, stanza: Element) -> None:
        if not self.closed:
            self._send_stanza(serialize(stanza))

    @property
    def is_detached(self) -> bool:
        return self._detached

    def _send_stanza(self, data: bytes) -> None:
        """Write a stanza; with stream management, keep it until the client acks it."""
        sm = self.sm
        if sm is not None:
            if len(sm.unacked) >= self.server.config.c2s.max_unacked:
                if self._detached:
                    self._expire()
                else:
                    self.close("policy-violation", "too many unacknowledged stanzas")
                return
            sm.sent_stanza(data)
        if self._detached:
            return
        self._write(data)
        if sm is not None and not sm.ack_requested:
            self._request_ack(soon=len(sm.unacked) >= ACK_EVERY)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        if self.closed:
            return
        if condition is not None:
            self._write(_stream_error(condition, text))
        self._write(b"</stream:stream>")
        self._flush()
        self._shutdown()
        self.transport.close()

    def release_idle_memory(self, now: float, idle_for: float) -> bool:
        """Drop per-connection buffers of a bound client idle for ``idle_for`` seconds."""
        if not self.is_bound or self._queue or now - self.last_activity < idle_for:
            return False
        return self.reader.release_if_idle()

    def summary(self) -> str:
        return f"c2s {self._jid_str or self.peer}"

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        """Bytes from the transport (synchronous: parse, then queue for handling)."""
        if self.closed or self._awaiting_tls:
            return
        self.last_activity = asyncio.get_running_loop().time()
        had_header = self.reader.header is not None
        try:
            stanzas = self.reader.feed(data)
        except StreamError as err:
            self._fail(err)
            return
        if not had_header and self.reader.header is not None:
            self._header_pending = True
            self._queue.append(None)
        self._queue.extend(stanzas)
        if self.reader.closed:
            self._queue.append(_CLOSE_MARK)
        if self._queue and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        if len(self._queue) > QUEUE_HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def connection_lost(self) -> None:
        """The transport closed (peer went away or we closed it)."""
        if self.closed or self._detached:
            return
        sm = self.sm
        if self.is_bound and sm is not None and sm.resumable:
            self._hibernate()
        else:
            self._shutdown()

    async def _drain(self) -> None:
        try:
            while self._queue and not self.closed:
                item = self._queue.popleft()
                if self._paused and len(self._queue) < QUEUE_HIGH_WATER // 2:
                    self._paused = False
                    self.transport.resume_reading()
                try:
                    if item is None:
                        await self._on_header()
                    elif item is _CLOSE_MARK:
                        self.close()
                    else:
                        await self._on_element(item)
                except StreamError as err:
                    self._fail(err)
                except StanzaError as err:
                    if item is not None and item is not _CLOSE_MARK:
                        reply = error_reply(item, err)
                        if reply is not None:
                            _drop_attr(reply, "from")
                            self.send_raw(reply)
                except Exception:
                    log.exception("c2s %s: failed on %s", self.summary(), _describe(item))
                    self._fail(StreamError("internal-server-error"))
        finally:
            self._worker = None

    def _fail(self, err: StreamError) -> None:
        if self.closed:
            return
        log.debug("c2s %s: stream error %s", self.peer, err.condition)
        if not self.stream_id:
            self._write(self._header_bytes(None))
        self.close(err.condition, err.text)

    # ------------------------------------------------------------------ stream header

    async def _on_header(self) -> None:
        header = self.reader.header
        assert header is not None
        self._header_pending = False
        to = (header.to or "").lower()
        host = self.server.hosts.get(to)
        self._write(self._header_bytes(host.domain if host else None))
        if host is None:
            raise StreamError("host-unknown")
        if self.host is not None and host is not self.host:
            raise StreamError("host-unknown", "host changed on restart")
        self.host = host
        if header.version is None or not header.version.startswith("1."):
            raise StreamError("unsupported-version")
        await self._send_features()

    def _header_bytes(self, domain: str | None) -> bytes:
        self.stream_id = secrets.token_urlsafe(12)
        attrs = {"id": self.stream_id, "version": "1.0", f"{{{ns.XML}}}lang": "en"}
        if domain:
            attrs["from"] = domain
        nsmap = {None: ns.CLIENT, "stream": ns.STREAMS}
        root = etree.Element(_STREAM_TAG, attrs, nsmap=nsmap)  # type: ignore[arg-type]
        return b"<?xml version='1.0'?>" + etree.tostring(root)[:-2] + b">"

    async def _send_features(self) -> None:
        host = self.host
        assert host is not None
        features = etree.Element(f"{{{ns.STREAMS}}}features", nsmap={"stream": ns.STREAMS})
        require_tls = self.server.config.c2s.require_encryption
        if self.is_authenticated:
            stage = "post-auth"
            child(features, "bind", namespace=ns.BIND)
            sess = child(features, "session", namespace=ns.SESSION)
            child(sess, "optional")
            if self.server.config.c2s.stream_management:
                child(features, "sm", namespace=sm_ns.NS)
        elif not self.is_secure and self.offer_starttls:
            stage = "pre-tls"
            tls = child(features, "starttls", namespace=ns.TLS)
            if require_tls:
                child(tls, "required")
            else:
                self._add_mechanisms(features)
        else:
            stage = "pre-auth"
            self._add_mechanisms(features)
        extra = await host.bus.fold(
            hooks.C2S_STREAM_FEATURES,
            (),
            FeaturesContext(self, stage),  # type: ignore[arg-type]
        )
        if not isinstance(extra, Drop):
            for el in extra:
                features.append(el)
        self._write(etree.tostring(features))

    def _tls_channel(self) -> sasl.TlsChannel | None:
        if not self.is_secure:
            return None
        sslobj = self.transport.ssl_object()
        bindings: dict[str, bytes] = {}
        if self.server.tls is not None and sslobj is not None:
            bindings["tls-server-end-point"] = self.server.tls.for_object(sslobj).end_point_hash
            if sslobj.version() != "TLSv1.3":
                unique = sslobj.get_channel_binding("tls-unique")
                if unique:
                    bindings["tls-unique"] = unique
        return sasl.TlsChannel(bindings)

    def _insecure_plain(self) -> bool:
        return self.server.config.auth.allow_insecure_plain

    def _add_mechanisms(self, features: Element) -> None:
        mechs = child(features, "mechanisms", namespace=ns.SASL)
        offered = sasl.offered_mechanisms(
            tls=self._tls_channel(), allow_plain=True, insecure_plain=self._insecure_plain()
        )
        for name in offered:
            child(mechs, "mechanism", text=name)
        channel = self._tls_channel()
        if channel is not None and channel.bindings:
            cb = child(features, "sasl-channel-binding", namespace=ns.SASL_CB)
            for name in channel.bindings:
                child(cb, "channel-binding", {"type": name})

    # ------------------------------------------------------------------ elements

    async def _on_element(self, el: Element) -> None:
        if self.is_bound:
            if el.tag.startswith(_SM_PREFIX):
                self._on_sm(el)
                return
            if self.sm is not None and el.tag in STANZA_KINDS:
                self.sm.handled_inbound()
            await self._on_stanza(el)
            return
        tag = el.tag
        if not self.is_authenticated:
            if tag == _STARTTLS and self.offer_starttls and not self.is_secure:
                await self._starttls()
            elif (
                self.offer_starttls
                and not self.is_secure
                and self.server.config.c2s.require_encryption
            ):
                raise StreamError("policy-violation", "use STARTTLS first")
            elif tag in (_SASL_AUTH, _SASL_RESPONSE, _SASL_ABORT):
                await self._on_sasl(el)
            elif tag == "iq":
                await self._on_preauth_iq(el)
            else:
                raise StreamError("not-authorized")
            return
        if tag == "iq" and el.get("type") == "set" and len(el) == 1 and el[0].tag == _BIND:
            await self._bind(el)
        elif tag == "iq" and len(el) == 1 and el[0].tag == _SESSION:
            self.send_raw(iq_result(el))
        elif tag == _SM_RESUME:
            self._resume(el)
        elif tag.startswith(_SM_PREFIX):
            self._write(_sm_failed("unexpected-request"))
        elif tag in STANZA_KINDS:
            raise StanzaError("not-authorized", "bind a resource first")
        else:
            raise StreamError("unsupported-stanza-type")

    async def _starttls(self) -> None:
        self._awaiting_tls = True
        self._write(etree.tostring(payload(ns.TLS, "proceed")))
        self._flush()  # <proceed/> must go out in the clear, before the handshake
        self.reader.reset()
        try:
            await self.transport.start_tls()
        except Exception as exc:  # handshake failure: nothing more can be said
            log.debug("c2s %s: TLS handshake failed: %s", self.peer, exc)
            self._shutdown()
            self.transport.close()
            return
        self._awaiting_tls = False

    async def _on_preauth_iq(self, el: Element) -> None:
        host = self.host
        assert host is not None
        if el.get("type") not in ("get", "set") or el.get("id") is None or len(el) != 1:
            raise StanzaError("bad-request")
        if not self.is_secure and self.server.config.c2s.require_encryption:
            raise StanzaError("not-authorized", "use TLS")
        reply = await host.dispatch_iq(el, Scope.STREAM, host.jid, None, self)
        if reply is not None:
            _drop_attr(reply, "to")
            self.send_raw(reply)

    async def _on_sasl(self, el: Element) -> None:
        host = self.host
        assert host is not None
        if el.tag == _SASL_ABORT:
            self._sasl = None
            self._sasl_failed(sasl.Failure("aborted"))
            return
        if el.tag == _SASL_AUTH:
            delay = self.server.throttle.delay_for(self.peer)
            if delay:
                await asyncio.sleep(delay)
            mech = sasl.create_mechanism(
                el.get("mechanism", ""),
                domain=host.domain,
                lookup=self.server.accounts.lookup_for(host.domain),
                tls=self._tls_channel(),
                allow_plain=True,
                insecure_plain=self._insecure_plain(),
            )
            if mech is None:
                self._sasl_failed(sasl.Failure("invalid-mechanism"), count=False)
                return
            self._sasl = mech
        elif self._sasl is None:
            self._sasl_failed(sasl.Failure("malformed-request", "no exchange in progress"))
            return
        text = (el.text or "").strip()
        try:
            data = b"" if text in ("", "=") else base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self._sasl = None
            self._sasl_failed(sasl.Failure("incorrect-encoding"))
            return
        step = await self._sasl.step(data)
        if isinstance(step, sasl.Challenge):
            self._write(_sasl_element("challenge", step.data))
        elif isinstance(step, sasl.Success):
            self._sasl = None
            try:
                jid = JID.create(step.username, host.domain)
            except InvalidJID:
                self._sasl_failed(sasl.Failure("not-authorized"))
                return
            self.server.throttle.succeeded(self.peer)
            self._jid = jid
            self._jid_str = str(jid)
            self.is_authenticated = True
            self.reader.reset()
            self._write(_sasl_element("success", step.data))
        else:
            self._sasl = None
            self.server.throttle.failed(self.peer)
            self._sasl_failed(step)

    def _sasl_failed(self, failure: sasl.Failure, *, count: bool = True) -> None:
        el = payload(ns.SASL, "failure")
        child(el, failure.condition)
        if failure.text:
            child(el, "text", text=failure.text)
        self._write(etree.tostring(el))
        if count:
            self._sasl_failures += 1
            if self._sasl_failures >= MAX_SASL_FAILURES:
                self.close("policy-violation", "too many failed authentication attempts")

    async def _bind(self, iq: Element) -> None:
        host = self.host
        assert host is not None and self._jid is not None
        requested = (iq[0].findtext(f"{{{ns.BIND}}}resource") or "").strip()
        if requested:
            try:
                resource = resourceprep(requested)
            except InvalidJID:
                raise StanzaError("bad-request", "invalid resource") from None
        else:
            resource = secrets.token_hex(6)
        result = await host.bus.fold(hooks.PRE_RESOURCE_BIND, resource, hooks.BindRequest(self))
        if isinstance(result, Drop):
            raise StanzaError("not-allowed")
        try:
            full = self._jid.bare.with_resource(result)
        except InvalidJID:
            raise StanzaError("bad-request", "invalid resource") from None
        self._jid = full
        self._jid_str = str(full)
        replaced = self.server.sessions.add(self)
        self.is_bound = True
        self._timeout.cancel()
        if replaced is not None and replaced is not self:
            replaced.close("conflict", "replaced by a new connection")
        bind = payload(ns.BIND, "bind")
        child(bind, "jid", text=self._jid_str)
        self.send_raw(iq_result(iq, bind))
        await host.bus.run(hooks.RESOURCE_BOUND, hooks.SessionEvent(self))

    # ------------------------------------------------------------------ stanzas (hot path)

    async def _on_stanza(self, el: Element) -> None:
        kind = el.tag
        if kind not in STANZA_KINDS:
            host = self.host
            if host is not None and await host.bus.run(
                hooks.C2S_STREAM_ELEMENT, hooks.StreamElementEvent(self, el)
            ):
                return
            raise StreamError("unsupported-stanza-type")
        frm = el.get("from")
        if frm is not None and frm != self._jid_str:
            try:
                claimed = JID.parse(frm)
            except InvalidJID:
                raise StreamError("invalid-from") from None
            if claimed != self._jid and claimed != self.jid.bare:
                raise StreamError("invalid-from")
        el.set("from", self._jid_str)
        to_attr = el.get("to")
        if kind == "iq":
            itype = el.get("type")
            if itype not in IQ_TYPES or el.get("id") is None:
                raise StanzaError("bad-request", "an IQ needs an id and a valid type")
            if itype in ("get", "set") and len(el) != 1:
                raise StanzaError("bad-request", "a get or set IQ carries exactly one child")
        if to_attr is None:
            if kind != "presence":
                el.set("to", str(self.jid.bare))
        else:
            try:
                JID.parse(to_attr)
            except InvalidJID:
                raise StanzaError("jid-malformed") from None
        host = self.host
        assert host is not None
        if host.bus.has_handlers(hooks.USER_SEND_PACKET):
            result = await host.bus.fold(hooks.USER_SEND_PACKET, el, PacketContext(self))
            if isinstance(result, Drop):
                return
            el = result
        if kind == "presence":
            to = JID.parse(to_attr) if to_attr is not None else self.jid.bare
            if await host.bus.run(hooks.PRESENCE_OUT, StanzaEvent(el, to, self.jid, self)):
                return
            if to_attr is None:
                return
        await self.server.router.route(el, self)

    # ------------------------------------------------------------------ output and teardown

    def _write(self, data: bytes) -> None:
        """Queue output; it is written once per event-loop turn (one syscall per burst,
        not one per stanza)."""
        if self._detached:
            return
        out = self._out
        out.append(data)
        if len(out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        transport = self.transport
        transport.write(data)
        if transport.write_buffer_size() > self.server.config.c2s.max_write_buffer:
            log.warning("c2s %s: peer too slow to read; closing", self.summary())
            self._shutdown()
            transport.close()

    # ------------------------------------------------------------------ stream management

    def _on_sm(self, el: Element) -> None:
        """XEP-0198 nonzas on a bound stream: enable, r, a."""
        local = el.tag[len(_SM_PREFIX) :]
        cfg = self.server.config.c2s
        sm = self.sm
        if local == "enable":
            if sm is not None or not cfg.stream_management:
                self._write(_sm_failed("unexpected-request"))
                return
            resumable = el.get("resume") in ("true", "1") and cfg.resume_timeout > 0
            sm = self.sm = SmState(resumable=resumable)
            attrs = {}
            if resumable:
                self.server.resumable[sm.id] = self
                attrs = {"id": sm.id, "resume": "true", "max": str(int(cfg.resume_timeout))}
            self._write(etree.tostring(payload(sm_ns.NS, "enabled", attrs)))
        elif sm is None:
            self._write(_sm_failed("unexpected-request"))
        elif local == "r":
            self._write(etree.tostring(payload(sm_ns.NS, "a", {"h": str(sm.inbound)})))
        elif local == "a":
            h = el.get("h", "")
            if not h.isdigit() or not sm.ack(int(h)):
                self.close("undefined-condition", "acknowledged more stanzas than were sent")
        else:
            self._write(_sm_failed("unexpected-request"))

    def _request_ack(self, *, soon: bool) -> None:
        """Ask the client for an ack now (many unacked) or in a moment (a few)."""
        if soon:
            self._send_ack_request()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_DELAY, self._send_ack_request
            )

    def _send_ack_request(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        sm = self.sm
        if sm is None or sm.ack_requested or not sm.unacked or self._detached or self.closed:
            return
        sm.ack_requested = True
        self._write(etree.tostring(payload(sm_ns.NS, "r")))

    def _hibernate(self) -> None:
        """The connection dropped: stay routable, keep what is sent, wait for a resume."""
        self._detached = True
        self._out.clear()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._hibernation = asyncio.get_running_loop().call_later(
            self.server.config.c2s.resume_timeout, self._expire
        )
        log.debug("c2s %s: connection lost; resumable", self.summary())

    def _expire(self) -> None:
        """No resume in time: end the session, re-deliver what the client never acked."""
        if self.closed:
            return
        pending = list(self.sm.unacked) if self.sm is not None else []
        self._shutdown()
        if pending:
            self.server.spawn(self._redeliver(pending), name="sm-redeliver")

    async def _redeliver(self, pending: list[bytes]) -> None:
        await self.wait_closed()  # the session is gone: the router will not pick it again
        for data in pending:
            stanza = parse(data)
            kind, stype = stanza.tag, stanza.get("type")
            if kind == "message" and stype not in ("error", "groupchat", "headline"):
                await self.server.router.route(stanza, None)
            elif kind == "iq" and stype in ("get", "set"):
                await self.server.bounce(stanza, StanzaError("recipient-unavailable"))

    def _resume(self, el: Element) -> None:
        """``<resume previd h/>`` on a newly authenticated stream (XEP-0198 §5)."""
        previd, h = el.get("previd", ""), el.get("h", "")
        old = self.server.resumable.get(previd)
        if (
            old is None
            or old.closed
            or old.sm is None
            or self._jid is None
            or old.jid.bare != self._jid.bare
            or not h.isdigit()
        ):
            self._write(_sm_failed("item-not-found"))
            return
        if not old.sm.ack(int(h)):
            self._write(_sm_failed("undefined-condition"))
            return
        old._take_over(self)

    def _take_over(self, new: C2SStream) -> None:
        """Continue this session on ``new``'s connection; ``new`` retires unbound."""
        assert self.sm is not None
        if not self._detached:  # the old connection is still open: drop it quietly
            self.transport.detach()
            self.transport.close()
        if self._hibernation is not None:
            self._hibernation.cancel()
            self._hibernation = None
        self._detached = False
        self.transport = new.transport
        self.reader = new.reader
        self.transport.attach(self)
        self.last_activity = asyncio.get_running_loop().time()
        pipelined = list(new._queue)
        new._queue.clear()
        new.closed = True
        new._timeout.cancel()
        resumed = {"previd": self.sm.id, "h": str(self.sm.inbound)}
        self._write(etree.tostring(payload(sm_ns.NS, "resumed", resumed)))
        for data in self.sm.unacked:
            self._write(data)
        self.sm.ack_requested = False
        if self.sm.unacked:
            self._request_ack(soon=True)
        self._queue.extend(pipelined)
        if self._queue and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        log.debug("c2s %s: resumed", self.summary())

    def _connect_timed_out(self) -> None:
        if not self.is_bound and not self.closed:
            self._fail(StreamError("connection-timeout"))

    def _shutdown(self) -> None:
        """Mark closed and unregister (idempotent). Hooks run in a background task."""
        if self.closed:
            return
        self.closed = True
        self._detached = False
        self._timeout.cancel()
        self._queue.clear()
        for timer in (self._hibernation, self._ack_timer):
            if timer is not None:
                timer.cancel()
        if self.sm is not None and self.server.resumable.get(self.sm.id) is self:
            del self.server.resumable[self.sm.id]
        if self._worker is not None and self._worker is not asyncio.current_task():
            self._worker.cancel()
        if self.is_bound:
            self.server.sessions.remove(self)
            host = self.host
            if host is not None:
                self._unbound = self.server.start_task(
                    self._announce_unbound(host), name="resource_unbound"
                )

    async def _announce_unbound(self, host: Host) -> None:
        await host.bus.run(hooks.RESOURCE_UNBOUND, hooks.SessionEvent(self))

    async def wait_closed(self) -> None:
        """Wait until a closed session's teardown hooks (``resource_unbound``) are done."""
        if self._unbound is not None:
            await asyncio.shield(self._unbound)


def _sm_failed(condition: str) -> bytes:
    failed = payload(sm_ns.NS, "failed")
    child(failed, condition, namespace=ns.STANZA_ERRORS)
    return etree.tostring(failed)


_CLOSE_MARK: Final = etree.Element("close-mark")
"""Queued when the peer closed its stream."""


def _drop_attr(el: Element, name: str) -> None:
    if name in el.attrib:
        del el.attrib[name]


def _describe(item: Element | None) -> str:
    if item is None:
        return "stream header"
    return summary(item)


def _sasl_element(name: str, data: bytes) -> bytes:
    el = payload(ns.SASL, name)
    if data:
        el.text = base64.b64encode(data).decode("ascii")
    return etree.tostring(el)


def _stream_error(condition: str, text: str | None) -> bytes:
    err = etree.Element(f"{{{ns.STREAMS}}}error", nsmap={"stream": ns.STREAMS})
    child(err, condition, namespace=ns.STREAM_ERRORS)
    if text:
        t = child(err, "text", namespace=ns.STREAM_ERRORS, text=text)
        t.set(f"{{{ns.XML}}}lang", "en")
    return etree.tostring(err)
