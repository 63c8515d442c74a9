"""The client-to-server stream (RFC 6120): header, features, STARTTLS, SASL, bind,
then stanzas. It does no I/O itself: a transport feeds it bytes
(:meth:`C2SStream.data_received`) and it writes through the transport interface
(:mod:`xmppd.stream.transport`), so TCP, direct TLS and (later) WebSocket and BOSH
share it. The queue, drain, output and close machinery is the shared
:class:`~xmppd.stream.machine.StreamMachine`'s; this file is what a client stream
means, with its states in :data:`C2S_TRANSITIONS`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias, TypeVar, cast

from lxml import etree

from xmppd import hooks, ns, oplog
from xmppd.auth import fast, sasl
from xmppd.errors import StanzaError, StreamError
from xmppd.events import Drop
from xmppd.hooks import FeaturesContext, PacketContext, StanzaEvent
from xmppd.iq import Scope
from xmppd.jid import JID, InvalidJID, resourceprep
from xmppd.metrics import StanzaTraffic
from xmppd.server_secret import derive
from xmppd.sessions import CONTINUED_ELSEWHERE, SessionKey
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
)
from xmppd.stanza import summary as stanza_summary
from xmppd.stream import c2sfeatures, sasl2
from xmppd.stream import sm as sm_ns
from xmppd.stream.c2sfeatures import CoreFeatures
from xmppd.stream.framing import XML_STREAM
from xmppd.stream.machine import StreamMachine, StreamState, Transitions
from xmppd.stream.sm import Handover, SmMirrors, SmState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, MutableMapping

    from xmppd.auth.accounts import Accounts
    from xmppd.auth.fast import FastTokens
    from xmppd.auth.throttle import FailedLoginThrottle
    from xmppd.config import AuthSection, C2SSection
    from xmppd.sessions import SessionRegistry
    from xmppd.stream.services import StanzaRouter, StreamHost, TaskStarter
    from xmppd.stream.teardowns import Teardowns
    from xmppd.stream.transport import Framing, StreamInput, Transport
    from xmppd.tls import TlsContexts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class C2SServices:
    """Everything a client stream (:class:`xmppd.stream.c2s.C2SStream`) uses."""

    c2s: C2SSection
    auth: AuthSection
    hosts: Mapping[str, StreamHost]
    """Served domains (lowercase) → their host."""
    router: StanzaRouter
    sessions: SessionRegistry
    """Bound sessions: a stream adds itself on bind and removes itself at close."""
    accounts: Accounts
    throttle: FailedLoginThrottle
    start_task: TaskStarter
    resumable: MutableMapping[str, C2SStream]
    """Stream-management sessions by resumption id (XEP-0198), shared by all streams."""
    secret: bytes = b""
    """The persistent server secret (stable Bind 2 resources)."""
    fast_tokens: FastTokens | None = None
    """XEP-0484 FAST tokens, when SASL2 and FAST are enabled."""
    tls: TlsContexts | None = None
    """The certificates (channel binding); ``None`` without TLS listeners."""
    traffic: StanzaTraffic = field(default_factory=StanzaTraffic)
    """Client stanzas in and out by kind (read by the metrics)."""
    resume_elsewhere: ResumeElsewhere | None = None
    """In a cluster: take over a resumable session another node holds (``None``: a
    single process)."""
    sm_mirrors: SmMirrors | None = None
    """In a cluster: where resumable sessions are mirrored for the other nodes."""
    teardowns: Teardowns | None = None
    """Ended sessions' ``resource_unbound`` hooks, a few per event-loop turn
    (``None``: all at once)."""


T = TypeVar("T")

ResumeElsewhere: TypeAlias = "Callable[[str, JID, int], Awaitable[Handover | str]]"
"""``(resumption id, bare JID, client's h)`` → the session handed over by the node
holding it, or the ``<failed/>`` condition (``item-not-found`` when no node has it)."""

MAX_SASL_FAILURES: Final = 5

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

_CONNECTED: Final = StreamState.CONNECTED
_TLS: Final = StreamState.TLS_HANDSHAKE
_AUTHENTICATED: Final = StreamState.AUTHENTICATED
_BOUND: Final = StreamState.BOUND
_DETACHED: Final = StreamState.DETACHED
_CLOSED: Final = StreamState.CLOSED

C2S_TRANSITIONS: Final[Transitions] = {
    # STARTTLS, SASL (or SASL2) success, or the end.
    _CONNECTED: frozenset({_TLS, _AUTHENTICATED, _CLOSED}),
    # The handshake succeeded (a new stream header follows) or failed.
    _TLS: frozenset({_CONNECTED, _CLOSED}),
    # Resource bound (bind or Bind 2), or the end (also: its connection was handed
    # to a resumed session).
    _AUTHENTICATED: frozenset({_BOUND, _CLOSED}),
    # The connection dropped with resumable stream management, or the end.
    _BOUND: frozenset({_DETACHED, _CLOSED}),
    # Resumed on a new connection, or the resumption timed out.
    _DETACHED: frozenset({_BOUND, _CLOSED}),
    _CLOSED: frozenset(),
}
"""The client stream's life (RFC 6120 §4 and XEP-0198): state → allowed next states."""


class C2SStream(StreamMachine):
    """One client connection, from stream header to close. Implements ``Session``."""

    # Slots: one of these exists per connected client; a __dict__ would cost ~1 KB each.
    __slots__ = (
        "_ack_timer",
        "_acks_due",
        "_continued_elsewhere",
        "_data",
        "_handed_over",
        "_hibernation",
        "_jid",
        "_jid_str",
        "_mechanism",
        "_presence",
        "_sasl",
        "_sasl2",
        "_sasl_failures",
        "_unbound",
        "continues_session",
        "host",
        "is_interested",
        "offer_starttls",
        "priority",
        "services",
        "sm",
    )

    KIND = "c2s"
    TRANSITIONS = C2S_TRANSITIONS
    CONTENT_NAMESPACE = ns.CLIENT

    def __init__(
        self, services: C2SServices, transport: Transport, *, offer_starttls: bool
    ) -> None:
        cfg = services.c2s
        super().__init__(
            transport,
            max_stanza_size=cfg.max_stanza_size,
            connect_timeout=cfg.connect_timeout,
            write_limit=cfg.max_write_buffer,
            input_rate=cfg.input_rate,
            input_burst=cfg.input_burst,
        )
        self.services = services
        self.offer_starttls = offer_starttls
        self.host: StreamHost | None = None
        self._jid: JID | None = None
        self._jid_str = ""
        self.priority = 0
        # The last available presence, serialized: an lxml element would keep its whole
        # parser (~27 KB of libxml2 state) alive for as long as the session lasts.
        self._presence: bytes | None = None
        self.is_interested = False
        self._data: dict[str, Any] | None = None
        self._unbound: asyncio.Task[None] | None = None
        self._handed_over = False
        """The session moved to another cluster node: it ends here without teardown."""
        self.continues_session = False
        self._continued_elsewhere = False
        """Closed because another stream continues this session with its queue (a
        resumption from the cluster mirror on another node): nothing to deliver again."""
        self.sm: SmState | None = None
        self._hibernation: asyncio.TimerHandle | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acks_due: list[bytes] | None = None
        """Answers to ``<r/>`` waiting for this turn's earlier writes."""
        self._sasl: sasl.Mechanism | None = None
        self._sasl2: sasl2.AuthenticateRequest | None = None
        self._sasl_failures = 0
        self._mechanism = ""

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
    def transport_name(self) -> str:
        return self.transport.NAME

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

    @property
    def is_authenticated(self) -> bool:
        state = self.state
        return state is _AUTHENTICATED or state is _BOUND or state is _DETACHED

    @property
    def is_bound(self) -> bool:
        state = self.state
        return state is _BOUND or state is _DETACHED

    @property
    def is_detached(self) -> bool:
        return self.state is _DETACHED

    def get(self, key: SessionKey[T]) -> T:
        if self._data is None:
            return key.default
        return cast(T, self._data.get(key.name, key.default))

    def set(self, key: SessionKey[T], value: T) -> None:
        if self._data is None:
            self._data = {}
        self._data[key.name] = value

    async def deliver(self, stanza: Element, data: bytes | None = None) -> None:
        if self.state is _CLOSED:
            return
        host = self.host
        if host is not None and host.bus.has_handlers(hooks.USER_RECEIVE_PACKET):
            result = await host.bus.fold(
                hooks.USER_RECEIVE_PACKET, stanza, PacketContext(self.services.sessions.view(self))
            )
            if isinstance(result, Drop):
                return
            if result is not stanza:  # a handler changed it (handlers copy to change)
                data = None
            stanza = result
        if self.state is _DETACHED and host is not None:
            # Queued in memory only: store a durable copy before the sender's stanza
            # counts as handled (its <a/>), so a crash does not lose it. A prepared
            # serialisation (fan-out) carries the recipient's 'to': store what is sent.
            sent = stanza if data is None else parse(data)
            token = await self._store_durably(host, sent)
            if token:
                self._queue_stored(serialize(sent) if data is None else data, token)
                return
        self._send_stanza(serialize(stanza) if data is None else data)

    def send_raw(self, stanza: Element) -> None:
        if self.state is not _CLOSED:
            self._send_stanza(serialize(stanza))

    def _send_stanza(self, data: bytes) -> None:
        """Write a stanza; with stream management, keep it until the client acks it."""
        sm = self.sm
        if sm is not None:
            limits = self.services.c2s
            if (
                len(sm.unacked) >= limits.max_unacked
                or sm.unacked_bytes + len(data) > limits.max_unacked_bytes
            ):
                sm.sent_stanza(data)  # delivered again with the rest as the session ends
                if self.state is _DETACHED:
                    self._expire()
                else:
                    self.close("policy-violation", "too many unacknowledged stanzas or bytes")
                return
            sm.sent_stanza(data)
        self.services.traffic.outbound[data[1]] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("c2s %s out: %s", self._jid_str, _head(data))
        if self.state is _DETACHED:
            return
        self._write(data)
        if sm is not None and not sm.ack_requested:
            self._request_ack(soon=len(sm.unacked) >= ACK_EVERY)

    async def _store_durably(self, host: StreamHost, stanza: Element) -> str:
        """Hand a message for this hibernated session to ``sm_store``; its token, or ''."""
        if (
            self.sm is None
            or stanza.tag != "message"
            or stanza.get("type") in ("error", "groupchat", "headline")
            or not host.bus.has_handlers(hooks.SM_STORE)
        ):
            return ""
        try:
            from_ = JID.parse(stanza.get("from", ""))
        except InvalidJID:
            return ""
        event = hooks.HibernatedStanza(self.services.sessions.view(self), stanza, from_)
        token = await host.bus.fold(hooks.SM_STORE, "", event)
        return token if isinstance(token, str) else ""

    def _queue_stored(self, data: bytes, token: str) -> None:
        """Queue a stanza whose durable copy is ``token``; if it cannot be queued (the
        session ended meanwhile), the copy becomes an offline message."""
        sm = self.sm
        queued = False
        if sm is not None and self.state is not _CLOSED:
            before = sm.sent
            self._send_stanza(data)
            queued = sm.sent != before
            if queued and not self.closed:
                sm.stored[sm.sent] = token
                return
        # Queued and the session ended at once (its queue was full): it is delivered
        # again with the rest of the queue, so the copy goes; never queued: the copy is
        # an offline message now.
        self._release([token], acked=queued)

    async def _store_unacked(self) -> None:
        """On hibernation: store durable copies of the stanzas already queued (sent on
        the lost connection, never acknowledged)."""
        sm, host = self.sm, self.host
        if sm is None or host is None:
            return
        for number, data in sm.pending():
            if number in sm.stored or self.closed:
                continue
            token = await self._store_durably(host, parse(data))
            if not token:
                continue
            if sm.is_pending(number) and not self.closed:
                sm.stored[number] = token
            else:  # acknowledged on resumption, or delivered again as the session ended
                self._release([token], acked=True)

    def _release(self, tokens: list[str], *, acked: bool) -> None:
        host = self.host
        if tokens and host is not None:
            event = hooks.HibernatedRelease(self.services.sessions.view(self), tuple(tokens), acked)
            _ = self.services.start_task(_run_release(host, event), name="sm-store-release")

    def _release_acked(self, sm: SmState) -> None:
        if sm.released:
            self._release(sm.released, acked=True)
            sm.released = []

    def release_idle_memory(self, now: float, idle_for: float) -> bool:
        """Drop per-connection buffers of a bound client idle for ``idle_for`` seconds
        (its parser, and the worker task that waits for its input)."""
        if not self.is_bound or self._queue or now - self.last_activity < idle_for:
            return False
        self._stop_idle_worker()
        return self.reader.release_if_idle()

    def summary(self) -> str:
        return f"c2s {self._jid_str or self.peer}"

    # ------------------------------------------------------------------ input

    def connection_lost(self) -> None:
        """The transport closed (peer went away or we closed it)."""
        state = self.state
        if state is _CLOSED or state is _DETACHED:
            return
        sm = self.sm
        if state is _BOUND and sm is not None and sm.resumable:
            self._hibernate()
        else:
            self._ending("connection-lost")
            self._shutdown()

    def _answer_error(self, stanza: Element, err: StanzaError) -> None:
        reply = error_reply(stanza, err)
        if reply is not None:
            _drop_attr(reply, "from")
            self.send_raw(reply)

    # ------------------------------------------------------------------ stream header

    async def _on_header(self) -> None:
        header = self.reader.header
        assert header is not None
        to = (header.to or "").lower()
        host = self.services.hosts.get(to)
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
        return self.transport.framing.open(ns.CLIENT, attrs)

    async def _send_features(self) -> None:
        self._write(await self._features())

    async def _features(self, *, binding: bool = False) -> bytes:
        """The stream features for the stream's current stage (hooks add theirs),
        serialised; ``binding``: the session is being bound (Bind 2), so bind is not
        offered."""
        host = self.host
        assert host is not None
        cfg = self.services.c2s
        if self.is_authenticated:
            core = CoreFeatures(
                "post-auth",
                offer_bind=not (self.is_bound or binding),
                offer_sm=cfg.stream_management and self.sm is None,
            )
        elif not self.is_secure and self.offer_starttls:
            core = CoreFeatures(
                "pre-tls",
                require_tls=cfg.require_encryption,
                insecure_plain=self._insecure_plain(),
            )
        else:
            channel = self._tls_channel()
            sasl2_offered = channel is not None and self._sasl2_offered()
            core = CoreFeatures(
                "pre-auth",
                insecure_plain=self._insecure_plain(),
                bindings=CoreFeatures.channel_bindings(channel),
                sasl2=sasl2_offered,
                bind2_inline=await self._bind2_inline() if sasl2_offered else (),
                resume=cfg.stream_management and cfg.resume_timeout > 0,
                fast=self.services.fast_tokens is not None,
            )
        extra = await host.bus.fold(
            hooks.C2S_STREAM_FEATURES,
            (),
            FeaturesContext(self.services.sessions.view(self), core.stage),  # type: ignore[arg-type]
        )
        return c2sfeatures.serialise(core, () if isinstance(extra, Drop) else extra)

    def _sasl2_offered(self) -> bool:
        """SASL2 only over TLS (XEP-0388 §6), and only before authentication."""
        return self.services.auth.sasl2 and self.is_secure and not self.is_authenticated

    async def _bind2_inline(self) -> tuple[str, ...]:
        """What a Bind 2 request may enable inline (stream management, and the hooks')."""
        host = self.host
        assert host is not None
        inline: tuple[str, ...] = (sm_ns.NS,) if self.services.c2s.stream_management else ()
        more = await host.bus.fold(
            hooks.BIND2_FEATURES,
            inline,
            FeaturesContext(self.services.sessions.view(self), "pre-auth"),
        )
        return inline if isinstance(more, Drop) else tuple(more)

    def _tls_channel(self) -> sasl.TlsChannel | None:
        if not self.is_secure:
            return None
        sslobj = self.transport.ssl_object()
        bindings: dict[str, bytes] = {}
        if self.services.tls is not None and sslobj is not None:
            bindings["tls-server-end-point"] = self.services.tls.for_object(sslobj).end_point_hash
            # tls-unique is not defined for TLS 1.3 (RFC 9266), and on a resumed TLS 1.2
            # session its Finished message can be steered into another connection's
            # (the triple handshake attack, RFC 7627): offered on full handshakes only.
            if sslobj.version() != "TLSv1.3" and not sslobj.session_reused:
                unique = sslobj.get_channel_binding("tls-unique")
                if unique:
                    bindings["tls-unique"] = unique
        return sasl.TlsChannel(bindings)

    def _insecure_plain(self) -> bool:
        return self.services.auth.allow_insecure_plain

    def _offered_mechanisms(self, channel: sasl.TlsChannel | None) -> list[str]:
        return c2sfeatures.offered_mechanisms(channel, insecure_plain=self._insecure_plain())

    def _advertised(self, channel: sasl.TlsChannel | None) -> sasl.Advertised:
        """What the features listed, for SCRAM downgrade protection (XEP-0474)."""
        bindings = tuple(channel.bindings) if channel is not None and channel.bindings else None
        return sasl.Advertised(tuple(self._offered_mechanisms(channel)), bindings)

    # ------------------------------------------------------------------ elements

    async def _on_element(self, el: Element) -> None:
        state = self.state
        if state is _BOUND or state is _DETACHED:  # stanzas read before a drop still count
            if el.tag.startswith(_SM_PREFIX):
                self._on_sm(el)
                return
            sm = self.sm
            if sm is not None and el.tag in STANZA_KINDS:
                sm.handled_inbound()
                mirror = sm.mirror
                if mirror is not None:
                    token = mirror.handling(sm.inbound)
                    try:
                        await self._on_stanza(el)
                    finally:
                        mirror.handled(token)
                    return
            await self._on_stanza(el)
            return
        tag = el.tag
        if state is _CONNECTED:
            if tag == _STARTTLS and self.offer_starttls and not self.is_secure:
                await self._starttls()
            elif (
                self.offer_starttls and not self.is_secure and self.services.c2s.require_encryption
            ):
                raise StreamError("policy-violation", "use STARTTLS first")
            elif tag in (_SASL_AUTH, _SASL_RESPONSE, _SASL_ABORT):
                await self._on_sasl(el)
            elif tag in sasl2.ELEMENTS:
                await self._on_sasl2(el)
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
            await self._resume(el)
        elif tag in sasl2.ELEMENTS:
            raise StreamError("policy-violation", "already authenticated")
        elif tag.startswith(_SM_PREFIX):
            self._write(_sm_failed("unexpected-request"))
        elif tag in STANZA_KINDS:
            raise StanzaError("not-authorized", "bind a resource first")
        else:
            raise StreamError("unsupported-stanza-type")

    async def _starttls(self) -> None:
        self._enter(_TLS)  # input is ignored until the handshake is done
        self._write(_PROCEED)
        self._flush()  # <proceed/> must go out in the clear, before the handshake
        self.reader.reset()
        # Whatever the client sent after <starttls/> in the clear is dropped, not
        # handled as if it came over TLS (RFC 6120 §5.4.3.3; "STARTTLS injection").
        self._queue.clear()
        try:
            await self.transport.start_tls()
        except Exception as exc:  # handshake failure: nothing more can be said
            log.debug("c2s %s: TLS handshake failed: %s", self.peer, exc)
            self._shutdown()
            self.transport.close()
            return
        if self.state is _TLS:  # not closed meanwhile (timeout, server stop)
            self._enter(_CONNECTED)

    async def _on_preauth_iq(self, el: Element) -> None:
        host = self.host
        assert host is not None
        if el.get("type") not in ("get", "set") or el.get("id") is None or len(el) != 1:
            raise StanzaError("bad-request")
        if not self.is_secure and self.services.c2s.require_encryption:
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
            channel = self._tls_channel()
            mech = sasl.create_mechanism(
                el.get("mechanism", ""),
                domain=host.domain,
                lookup=self.services.accounts.lookup_for(host.domain),
                tls=channel,
                allow_plain=True,
                insecure_plain=self._insecure_plain(),
                advertised=self._advertised(channel),
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
        mechanism = self._sasl.name
        step = await self._sasl.step(data)
        if isinstance(step, sasl.Challenge):
            self._write(_sasl_element("challenge", step.data))
        elif isinstance(step, sasl.Success):
            self._sasl = None
            try:
                jid = JID.create(step.username, host.domain)
            except InvalidJID:
                self._log_failure(step.username, mechanism, "invalid username")
                self._sasl_failed(sasl.Failure("not-authorized"))
                return
            self.services.throttle.succeeded(self.peer, mechanism, account=self._account(jid.local))
            self._mechanism = mechanism
            self._jid = jid
            self._jid_str = str(jid)
            self._enter(_AUTHENTICATED)
            self.reader.reset()
            self._write(_sasl_element("success", step.data))
        else:
            failed, self._sasl = self._sasl, None
            assert failed is not None
            # The failure's answer waits for its slot (xmppd.auth.throttle): held here,
            # this connection cannot guess again before its turn.
            await self.services.throttle.answer_failure(
                self.peer, mechanism, account=self._account(failed.username)
            )
            self._log_failure(failed.username, mechanism, step.condition)
            self._sasl_failed(step)

    # ------------------------------------------------------------------ SASL2 + Bind 2

    async def _on_sasl2(self, el: Element) -> None:
        """XEP-0388: ``<authenticate/>``, ``<response/>`` or ``<abort/>``."""
        if not self._sasl2_offered():
            raise StreamError("policy-violation", "SASL2 is not offered on this stream")
        if el.tag == sasl2.ABORT:
            self._sasl = self._sasl2 = None
            self._sasl2_failed(sasl.Failure("aborted"))
            return
        if el.tag == sasl2.AUTHENTICATE:
            try:
                request = sasl2.parse_authenticate(el)
            except sasl2.MalformedRequest as exc:
                self._sasl2_failed(sasl.Failure("malformed-request", str(exc)))
                return
            except ValueError:
                self._sasl2_failed(sasl.Failure("incorrect-encoding"))
                return
            mech = self._sasl2_mechanism(request)
            if mech is None:
                self._sasl2_failed(sasl.Failure("invalid-mechanism"), count=False)
                return
            self._sasl, self._sasl2 = mech, request
            data = request.initial_response
            if data is None and isinstance(mech, fast.HashedTokenMechanism):
                data = b""  # a one-message mechanism: the step reports it malformed
        elif self._sasl is None or self._sasl2 is None:
            self._sasl2_failed(sasl.Failure("malformed-request", "no exchange in progress"))
            return
        else:
            try:
                data = sasl2.decode(el.text)
            except ValueError:
                self._sasl = self._sasl2 = None
                self._sasl2_failed(sasl.Failure("incorrect-encoding"))
                return
        mech, request = self._sasl, self._sasl2
        assert mech is not None and request is not None
        step = await mech.step(b"" if data is None else data)
        if isinstance(step, sasl.Challenge):
            self._write(sasl2.challenge(step.data))
            return
        self._sasl = self._sasl2 = None
        if isinstance(step, sasl.Failure):
            await self.services.throttle.answer_failure(
                self.peer, mech.name, account=self._account(mech.username)
            )
            self._log_failure(mech.username, mech.name, step.condition)
            self._sasl2_failed(step)
            return
        await self._sasl2_success(step, mech, request)

    def _sasl2_mechanism(self, request: sasl2.AuthenticateRequest) -> sasl.Mechanism | None:
        host = self.host
        channel = self._tls_channel()
        assert host is not None and channel is not None
        if request.mechanism in fast.MECHANISMS:
            tokens = self.services.fast_tokens
            if (
                tokens is None
                or not request.client_id
                or request.mechanism not in fast.offered_mechanisms(channel)
            ):
                return None
            return fast.HashedTokenMechanism(
                request.mechanism,
                domain=host.domain,
                tokens=tokens,
                client_id=request.client_id,
                tls=channel,
            )
        return sasl.create_mechanism(
            request.mechanism,
            domain=host.domain,
            lookup=self.services.accounts.lookup_for(host.domain),
            tls=channel,
            allow_plain=True,
            insecure_plain=self._insecure_plain(),
            advertised=self._advertised(channel),
        )

    def _sasl2_failed(self, failure: sasl.Failure, *, count: bool = True) -> None:
        self._write(sasl2.failure(failure.condition, failure.text))
        if count:
            self._count_sasl_failure()

    async def _sasl2_success(
        self, step: sasl.Success, mech: sasl.Mechanism, request: sasl2.AuthenticateRequest
    ) -> None:
        """Authenticated: issue a FAST token, resume or bind as asked, then answer
        ``<success/>`` and the new stream features (no stream restart)."""
        host = self.host
        assert host is not None
        try:
            jid = JID.create(step.username, host.domain)
        except InvalidJID:
            self._log_failure(step.username, mech.name, "invalid username")
            self._sasl2_failed(sasl.Failure("not-authorized"))
            return
        self.services.throttle.succeeded(self.peer, mech.name, account=self._account(jid.local))
        self._mechanism = mech.name
        self._jid = jid
        self._jid_str = str(jid)
        self._enter(_AUTHENTICATED)
        extra: list[Element] = []
        token = await self._fast_token(step.username, mech, request)
        if token is not None:
            extra.append(token)
        if request.resume is not None:
            old = await self._find_resumable(request.resume)
            if isinstance(old, Handover):
                resumed = payload(sm_ns.NS, "resumed", {"previd": old.sm_id, "h": str(old.inbound)})
                self._jid = JID.parse(old.jid)
                self._jid_str = old.jid
                self.sm = old.restore()
                features = await self._features()
                self.sm = None
                announce = sasl2.success(old.jid, step.data, [*extra, resumed])
                self._adopt(old, announce + features)
                return
            if not isinstance(old, str):
                extra.append(old.resumed_element())
                # The resumed session's features: it is bound and has stream management,
                # so neither is offered again (a client would try to resume twice).
                features = await old._features()
                announce = sasl2.success(str(old.jid), step.data, extra)
                old._take_over(self, announce + features)
                return
            extra.append(_sm_failed_element(old))
        if request.bind is not None:
            try:
                extra.append(await self._bind2(request))
            except StanzaError as err:
                self._sasl2_failed(sasl.Failure("not-authorized", err.text or "bind refused"))
                self.close("not-authorized", "resource binding refused")
                return
        features = await self._features(binding=request.bind is not None)
        if request.bind is not None:
            self._go_live()
        self._write(sasl2.success(self._jid_str, step.data, extra))
        self._write(features)
        if self.state is _BOUND:
            await host.bus.run(
                hooks.RESOURCE_BOUND, hooks.SessionEvent(self.services.sessions.view(self))
            )

    async def _fast_token(
        self, username: str, mech: sasl.Mechanism, request: sasl2.AuthenticateRequest
    ) -> Element | None:
        """XEP-0484: a new token when asked for, or when the one just used is due
        for rotation; none after an 'invalidate' login unless asked for."""
        tokens, host = self.services.fast_tokens, self.host
        if tokens is None or host is None or not request.client_id:
            return None
        used = mech.token if isinstance(mech, fast.HashedTokenMechanism) else None
        if used is not None and request.invalidate_token:
            await tokens.invalidate(host.domain, username, request.client_id)
        channel = self._tls_channel()
        offered = fast.offered_mechanisms(channel) if channel is not None else []
        if request.request_token in offered:
            mechanism = request.request_token
        elif used is not None and not request.invalidate_token and tokens.due_for_rotation(used):
            mechanism = used.mechanism
        else:
            return None
        assert mechanism is not None
        issued = await tokens.issue(host.domain, username, request.client_id, mechanism)
        expiry = datetime.fromtimestamp(issued.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return payload(ns.FAST, "token", {"token": issued.token, "expiry": expiry})

    async def _bind2(self, request: sasl2.AuthenticateRequest) -> Element:
        """XEP-0386: bind a resource, enable what the client asked for inline; the
        ``<bound/>`` answer. The session is not routable yet (see :meth:`_go_live`)."""
        host = self.host
        assert host is not None and self._jid is not None
        await self._take_resource(self._bind2_resource(request))
        answers: list[Element] = []
        requests = request.bind_requests
        sm_enable = next((el for el in requests if el.tag == f"{{{sm_ns.NS}}}enable"), None)
        if sm_enable is not None:
            answers.append(self._enable_sm(sm_enable))
        others = tuple(el for el in requests if el is not sm_enable)
        more = await host.bus.fold(
            hooks.BIND2_BOUND, (), hooks.Bind2Request(self.services.sessions.view(self), others)
        )
        if not isinstance(more, Drop):
            answers.extend(more)
        return sasl2.bound(answers)

    def _bind2_resource(self, request: sasl2.AuthenticateRequest) -> str:
        """``<tag>/<id>``: the id is stable for one client installation (derived from
        its user-agent id, which it does not reveal), random otherwise."""
        assert self._jid is not None
        if request.client_id:
            bare = str(self._jid.bare)
            key = derive(self.services.secret, "bind2-resource", bare, request.client_id)
            suffix = base64.b32encode(key[:10]).decode("ascii").lower()
        else:
            suffix = secrets.token_hex(6)
        try:
            tag = resourceprep(request.bind_tag) if request.bind_tag else ""
        except InvalidJID:
            tag = ""
        return f"{tag}/{suffix}" if tag else suffix

    def _sasl_failed(self, failure: sasl.Failure, *, count: bool = True) -> None:
        el = payload(ns.SASL, "failure")
        child(el, failure.condition)
        if failure.text:
            child(el, "text", text=failure.text)
        self._write(etree.tostring(el))
        if count:
            self._count_sasl_failure()

    def _log_failure(self, username: str, mechanism: str, reason: str) -> None:
        oplog.login_failed(
            address=self.peer,
            user=username,
            mechanism=mechanism,
            reason=reason,
            transport=self.transport.NAME,
        )

    def _account(self, username: str) -> str | None:
        """The throttle's key for an account of this stream's host (``None``: unknown)."""
        host = self.host
        return f"{username}@{host.domain}" if username and host is not None else None

    def _count_sasl_failure(self) -> None:
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
        await self._take_resource(resource)
        self._go_live()
        bind = payload(ns.BIND, "bind")
        child(bind, "jid", text=self._jid_str)
        self.send_raw(iq_result(iq, bind))
        await host.bus.run(
            hooks.RESOURCE_BOUND, hooks.SessionEvent(self.services.sessions.view(self))
        )

    async def _take_resource(self, resource: str) -> None:
        """Set the session's full JID (``pre_resource_bind`` may change or refuse it)."""
        host = self.host
        assert host is not None and self._jid is not None
        result = await host.bus.fold(
            hooks.PRE_RESOURCE_BIND, resource, hooks.BindRequest(self.services.sessions.view(self))
        )
        if isinstance(result, Drop):
            raise StanzaError("not-allowed")
        try:
            full = self._jid.bare.with_resource(result)
        except InvalidJID:
            raise StanzaError("bad-request", "invalid resource") from None
        self._jid = full
        self._jid_str = str(full)

    def _go_live(self) -> None:
        """Make the bound session routable; an older one with the same JID is closed."""
        self._enter(_BOUND)  # first: a stream closed meanwhile is never registered
        replaced = self.services.sessions.bind(self)
        self._timeout.cancel()
        oplog.login(
            address=self.peer,
            jid=self._jid_str,
            mechanism=self._mechanism,
            transport=self.transport.NAME,
        )
        replacing = False
        if replaced is not None and replaced is not self:
            replaced.close("conflict", "replaced by a new connection")
            replacing = True
        teardowns = self.services.teardowns
        if teardowns is not None:  # a predecessor's end is announced before we are
            teardowns.going_live(self._jid_str, replaced=replacing)

    # ------------------------------------------------------------------ stanzas (hot path)

    async def _on_stanza(self, el: Element) -> None:
        kind = el.tag
        self.services.traffic.inbound[kind] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("c2s %s in: %s", self._jid_str, stanza_summary(el))
        if kind not in STANZA_KINDS:
            if kind in sasl2.ELEMENTS:
                raise StreamError("policy-violation", "already authenticated")
            host = self.host
            if host is not None and await host.bus.run(
                hooks.C2S_STREAM_ELEMENT,
                hooks.StreamElementEvent(self.services.sessions.view(self), el),
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
            if itype == "set" and to_attr is None and el[0].tag == _SESSION:
                # COMPAT: RFC 3921 session establishment sent after bind (Strophe.js
                # does, although the feature says <optional/>): a no-op, answered.
                del el.attrib["from"]
                self.send_raw(iq_result(el))
                return
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
            result = await host.bus.fold(
                hooks.USER_SEND_PACKET, el, PacketContext(self.services.sessions.view(self))
            )
            if isinstance(result, Drop):
                return
            el = result
        if kind == "presence":
            to = JID.parse(to_attr) if to_attr is not None else self.jid.bare
            if await host.bus.run(
                hooks.PRESENCE_OUT, StanzaEvent(el, to, self.jid, self.services.sessions.view(self))
            ):
                return
            if to_attr is None:
                return
        await self.services.router.route(el, self.services.sessions.view(self))

    # ------------------------------------------------------------------ stream management

    def _on_sm(self, el: Element) -> None:
        """XEP-0198 nonzas on a bound stream: enable, r, a."""
        local = el.tag[len(_SM_PREFIX) :]
        sm = self.sm
        if local == "enable":
            self._write(etree.tostring(self._enable_sm(el)))
        elif sm is None:
            self._write(_sm_failed("unexpected-request"))
        elif local == "r":
            self._answer_ack_request(sm.inbound)
        elif local == "a":
            h = el.get("h", "")
            if not h.isdigit() or not sm.ack(int(h)):
                self.close("undefined-condition", "acknowledged more stanzas than were sent")
            else:
                self._release_acked(sm)
        else:
            self._write(_sm_failed("unexpected-request"))

    def _enable_sm(self, el: Element) -> Element:
        """``<enable/>`` → ``<enabled/>`` (or ``<failed/>``), top-level or in Bind 2."""
        cfg = self.services.c2s
        if self.sm is not None or not cfg.stream_management:
            return _sm_failed_element("unexpected-request")
        resumable = el.get("resume") in ("true", "1") and cfg.resume_timeout > 0
        sm = self.sm = SmState(resumable=resumable)
        attrs = {}
        if resumable:
            self.services.resumable[sm.id] = self
            self._mirror(sm)
            attrs = {"id": sm.id, "resume": "true", "max": str(int(cfg.resume_timeout))}
        return payload(sm_ns.NS, "enabled", attrs)

    def _mirror(self, sm: SmState) -> None:
        """In a cluster: keep a copy of the session where other nodes can take it
        over if this one dies."""
        mirrors = self.services.sm_mirrors
        if mirrors is None or not sm.resumable:
            return
        sm.mirror = mirrors.start(self._sm_snapshot(sm), lambda: self._sm_snapshot(sm))

    def _sm_snapshot(self, sm: SmState) -> Handover:
        """What a mirror holds of the session now."""
        return Handover(
            jid=self._jid_str,
            sm_id=sm.id,
            inbound=sm.inbound,
            acked=sm.acked,
            unacked=list(sm.unacked),
            mechanism=self._mechanism,
        )

    def _request_ack(self, *, soon: bool) -> None:
        """Ask the client for an ack now (many unacked) or in a moment (a few)."""
        if soon:
            self._send_ack_request()
        elif self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_DELAY, self._send_ack_request
            )

    def _answer_ack_request(self, h: int) -> None:
        """``<a h/>`` for ``<r/>``, written after every write queued before it in this
        turn of the event loop. The stanzas it counts were routed already, but a
        recipient's copy may still wait for its connection's flush behind this one's
        (this stream had output queued first): a crash between the two writes would
        leave the sender told of a message nobody got. A stream that closes first
        still answers (:meth:`close`)."""
        due = self._acks_due
        if due is None:
            due = self._acks_due = []
            asyncio.get_running_loop().call_soon(self._write_acks_due)
        due.append(_ACK_ANSWER % h)

    def _write_acks_due(self) -> None:
        due, self._acks_due = self._acks_due, None
        if due and not self.closed:
            for answer in due:
                self._write(answer)

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        self._write_acks_due()  # an <r/> read just before the client's stream end
        if text == CONTINUED_ELSEWHERE:
            self._continued_elsewhere = True
        sm = self.sm
        if (
            condition == "connection-timeout"
            and self.state is _BOUND
            and sm is not None
            and sm.resumable
        ):
            # A dead-peer check went unanswered (mod_ping): as when the connection drops,
            # the session waits for its client to resume it (XEP-0198) instead of ending:
            # a phone whose network went away quietly resumes rather than logs in anew.
            log.info("c2s %s: no answer; treated as a lost connection", self.summary())
            self.transport.detach()
            self.transport.close()
            self.connection_lost()
            return
        super().close(condition, text)

    def ask_for_acks(self) -> bool:
        """The server is about to stop: ask the client to acknowledge what it has
        (XEP-0198 ``<r/>``), so that only what it really lacks is delivered again when
        the session ends. Whether anything is still unacknowledged."""
        self._send_ack_request()
        return self.awaiting_acks

    @property
    def awaiting_acks(self) -> bool:
        """A live stream management session with stanzas its client has not acknowledged."""
        sm = self.sm
        return sm is not None and bool(sm.unacked) and self.state is _BOUND

    def _send_ack_request(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        sm = self.sm
        if sm is None or sm.ack_requested or not sm.unacked or self.state is not _BOUND:
            return
        sm.ack_requested = True
        self._write(_ACK_REQUEST)

    def _hibernate(self) -> None:
        """The connection dropped: stay routable, keep what is sent, wait for a resume."""
        self._enter(_DETACHED)
        self._out.clear()
        self._stop_idle_worker()  # no input until a resumption (which starts one)
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._hibernation = asyncio.get_running_loop().call_later(
            self.services.c2s.resume_timeout, self._expire
        )
        if self.sm is not None and self.sm.unacked:
            _ = self.services.start_task(self._store_unacked(), name="sm-store")
        self.services.sessions.connection_changed(self)
        log.debug("c2s %s: connection lost; resumable", self.summary())

    def _expire(self) -> None:
        """No resume in time: end the session (what the client never acked is delivered
        again, :meth:`_on_shutdown`)."""
        if self.closed:
            return
        self._ending("resumption-timeout")
        self._shutdown()

    async def _resume(self, el: Element) -> None:
        """``<resume previd h/>`` on a newly authenticated stream (XEP-0198 §5)."""
        old = await self._find_resumable(el)
        if isinstance(old, str):
            self._write(_sm_failed(old))
        elif isinstance(old, Handover):
            resumed = payload(sm_ns.NS, "resumed", {"previd": old.sm_id, "h": str(old.inbound)})
            self._adopt(old, etree.tostring(resumed))
        else:
            old._take_over(self, etree.tostring(old.resumed_element()))

    async def _find_resumable(self, el: Element) -> C2SStream | Handover | str:
        """The session ``<resume/>`` asks for: here, or handed over by the cluster node
        that holds it; or the ``<failed/>`` condition."""
        found = self._resumable_session(el)
        elsewhere = self.services.resume_elsewhere
        if found != "item-not-found" or elsewhere is None or self._jid is None:
            return found
        h = el.get("h", "")
        if not h.isdigit():
            return "item-not-found"
        return await elsewhere(el.get("previd", ""), self._jid.bare, int(h))

    def _resumable_session(self, el: Element) -> C2SStream | str:
        """The session ``<resume/>`` asks for, with the client's ``h`` applied; or the
        condition of the ``<failed/>`` answer."""
        previd, h = el.get("previd", ""), el.get("h", "")
        old: C2SStream | None = self.services.resumable.get(previd)
        if (
            old is None
            or old.closed
            or old.sm is None
            or self._jid is None
            or old.jid.bare != self._jid.bare
            or not h.isdigit()
        ):
            return "item-not-found"
        if not old.sm.ack(int(h)):
            return "undefined-condition"
        old._release_acked(old.sm)
        return old

    def hand_over(self, bare: JID, h: int) -> Handover | str:
        """Give this resumable session to another cluster node, where its client
        resumes with ``h``; it ends here quietly (no unavailable presence, its stored
        copies go with it). The ``<failed/>`` condition when it cannot."""
        sm = self.sm
        if self.closed or sm is None or not sm.resumable or self._jid is None:
            return "item-not-found"
        if self._jid.bare != bare:
            return "item-not-found"
        if not sm.ack(h):
            return "undefined-condition"
        self._release_acked(sm)
        # All of it, also what only this node reads (a client-state queue of held
        # stanzas): it is the session's, and continues on the new node.
        state = dict(self._data or {})
        handover = Handover(
            jid=self._jid_str,
            sm_id=sm.id,
            inbound=sm.inbound,
            acked=sm.acked,
            unacked=list(sm.unacked),
            stored=dict(sm.stored),
            presence=self._presence,
            priority=self.priority,
            interested=self.is_interested,
            state=state,
            mechanism=self._mechanism,
        )
        sm.stored.clear()  # they move with the session: not offline messages here
        sm.clear_unacked()
        self._handed_over = True
        self._ending("moved-to-another-node")
        if self.state is _BOUND:
            self.transport.detach()
            self.transport.close()
        # A stanza being handled now is counted in the ``h`` handed over: its client
        # will not send it again, so it must finish here, not be cancelled (the queue
        # behind it is dropped: not counted, the client sends those again).
        self._worker = None
        self._shutdown()
        return handover

    def move_elsewhere(self, redirect: str | None) -> None:
        """This node is draining: a resumable session loses its connection but not its
        stream, so its client resumes on another node (which takes it over); any other
        is asked to reconnect, to ``redirect`` (``see-other-host``) when known."""
        sm = self.sm
        if self.state is _DETACHED:
            return  # waits for its client wherever it comes back
        if self.state is _BOUND and sm is not None and sm.resumable:
            self._flush()
            self.transport.close()
            return
        if redirect:
            self.close("see-other-host", redirect)
        else:
            self.close("system-shutdown")

    def _adopt(self, handover: Handover, announce: bytes) -> None:
        """Continue a session handed over by another cluster node on this stream."""
        assert self._jid is not None
        self._continue(handover)
        assert self.sm is not None
        self._write(announce)
        for data in self.sm.unacked:
            self._write(data)
        if self.sm.unacked:
            self._request_ack(soon=True)
        log.debug("c2s %s: resumed (handed over by another node)", self.summary())

    def _continue(self, handover: Handover) -> None:
        """Make this stream the session ``handover`` describes, bound here."""
        self._jid = JID.parse(handover.jid)
        self._jid_str = handover.jid
        self.continues_session = True
        self.sm = handover.restore()
        self.services.resumable[self.sm.id] = self
        self._mirror(self.sm)
        self._presence = handover.presence
        self.priority = handover.priority
        self.is_interested = handover.interested
        self._mechanism = f"{handover.mechanism or self._mechanism}"
        self._go_live()
        sessions = self.services.sessions
        for name, value in handover.state.items():
            sessions.set_state(self, SessionKey(name, None), value)
        if handover.presence is not None:
            sessions.set_presence(self, parse(handover.presence), handover.priority)
        if handover.interested:
            sessions.set_interested(self)

    def resumed_element(self) -> Element:
        assert self.sm is not None
        resumed = {"previd": self.sm.id, "h": str(self.sm.inbound)}
        return payload(sm_ns.NS, "resumed", resumed)

    def _take_over(self, new: C2SStream, announce: bytes) -> None:
        """Continue this session on ``new``'s connection; ``new`` retires unbound.
        ``announce`` (``<resumed/>``, or the SASL2 success holding it) goes first."""
        assert self.sm is not None
        if self.state is _BOUND:  # the old connection is still open: drop it quietly
            self.transport.detach()
            self.transport.close()
        else:
            self._enter(_BOUND)
        if self._hibernation is not None:
            self._hibernation.cancel()
            self._hibernation = None
        self.transport = new.transport
        self.reader = new.reader
        self.transport.attach(self)
        self.last_activity = asyncio.get_running_loop().time()
        pipelined = list(new._queue)
        new._queue.clear()
        new._shutdown()  # retires without teardown: it was never bound
        new._flush()
        self._write(announce)
        for data in self.sm.unacked:
            self._write(data)
        self.sm.ack_requested = False
        if self.sm.unacked:
            self._request_ack(soon=True)
        self._queue.extend(pipelined)
        self.services.sessions.connection_changed(self)
        self._start_worker()
        oplog.login(
            address=self.peer,
            jid=self._jid_str,
            mechanism=f"{new._mechanism}+resume",
            transport=self.transport.NAME,
        )
        log.debug("c2s %s: resumed", self.summary())

    def _on_shutdown(self, previous: StreamState) -> None:
        """Unregister (hooks run in a background task) and stop the SM timers."""
        for timer in (self._hibernation, self._ack_timer):
            if timer is not None:
                timer.cancel()
        sm = self.sm
        if sm is not None and self.services.resumable.get(sm.id) is self:
            del self.services.resumable[sm.id]
        if sm is not None and sm.mirror is not None:
            sm.mirror.end()
            sm.mirror = None
        # Never acknowledged (XEP-0198 §5: as if sent to an unavailable resource): the
        # stored copies become offline messages, the rest is delivered again once the
        # session is gone, however it ended (hibernation expired, a dead-peer timeout,
        # a new login with this resource, a full write buffer, the server stopping).
        # A session handed to another node took its queue along, and so did one whose
        # client resumed from its mirror on another node (closed with
        # CONTINUED_ELSEWHERE).
        pending: list[bytes] = []
        if sm is not None:
            moved = self._continued_elsewhere  # the stanzas are in the other's queue
            if not moved:
                pending = [data for number, data in sm.pending() if number not in sm.stored]
            sm.clear_unacked()
            if sm.stored:
                self._release(list(sm.stored.values()), acked=moved)
                sm.stored.clear()
        if previous is _BOUND or previous is _DETACHED:
            oplog.session_ended(
                address=self.peer,
                jid=self._jid_str,
                reason=self.end_reason or "closed",
                transport=self.transport.NAME,
            )
            self.services.sessions.unbind(self)
            host = self.host
            if host is not None and not self._handed_over:
                self._unbound = self.services.start_task(
                    self._announce_unbound(host, pending), name="resource_unbound"
                )
                return
        self.services.sessions.release(self)

    async def _announce_unbound(self, host: StreamHost, pending: list[bytes]) -> None:
        """``resource_unbound``, then the unacknowledged stanzas to the host again (other
        resources, offline storage). :meth:`wait_closed` waits for both: the server
        stops only after them. Not through the router: ``filter_packet`` already ran on
        them (archived, filtered, stamped), and running it twice would archive them twice."""
        sessions = self.services.sessions
        try:
            teardowns = self.services.teardowns
            if teardowns is not None:
                await teardowns.turn(self._jid_str)  # thousands ending at once: a few per turn
            await host.bus.run(hooks.RESOURCE_UNBOUND, hooks.SessionEvent(sessions.view(self)))
        finally:
            sessions.release(self)  # the session is gone: delivery will not pick it again
        if pending:
            await redeliver(self.services, host, pending)

    async def wait_closed(self) -> None:
        """Wait until a closed session's teardown hooks (``resource_unbound``) are done."""
        if self._unbound is not None:
            await asyncio.shield(self._unbound)


async def redeliver(services: C2SServices, host: StreamHost | None, pending: list[bytes]) -> None:
    """Unacknowledged stanzas of a session that ended: messages to the host again
    (other resources, offline storage), requests answered with an error."""
    for data in pending:
        stanza = parse(data)
        kind, stype = stanza.tag, stanza.get("type")
        if kind == "message" and stype not in ("error", "groupchat", "headline"):
            try:
                to, from_ = JID.parse(stanza.get("to", "")), JID.parse(stanza.get("from", ""))
            except InvalidJID:
                continue
            if host is not None:
                await host.deliver(stanza, to, from_, None)
        elif kind == "iq" and stype in ("get", "set"):
            reply = error_reply(stanza, StanzaError("recipient-unavailable"))
            if reply is not None and reply.get("to"):
                await services.router.route(reply, None)


def end_mirrored(services: C2SServices, handover: Handover) -> None:
    """A dead node's session whose JID is in use again (its client logged in again
    instead of resuming): what it never got acknowledged is delivered again as at the
    end of a hibernation."""
    try:
        host = services.hosts.get(JID.parse(handover.jid).domain)
    except InvalidJID:
        return
    if handover.unacked:
        _ = services.start_task(
            redeliver(services, host, list(handover.unacked)), name="sm-redeliver"
        )


def adopt_hibernated(services: C2SServices, handover: Handover) -> C2SStream | None:
    """A session whose cluster node died, rebuilt from its mirror as a hibernated
    stream of this node: its client resumes it here or on any node (which takes it
    over), or it expires as any hibernated session does (``None``: not a served
    domain)."""
    try:
        jid = JID.parse(handover.jid)
    except InvalidJID:
        return None
    host = services.hosts.get(jid.domain)
    if host is None:
        return None
    stream = C2SStream(services, _NoConnection(), offer_starttls=False)
    stream.host = host
    stream.stream_id = secrets.token_urlsafe(12)
    stream._jid = jid
    stream._jid_str = handover.jid
    stream._enter(_AUTHENTICATED)
    stream._continue(handover)
    stream._hibernate()
    return stream


class _NoConnection:
    """The connection of a session adopted from a dead node: none, until its client
    resumes it (which brings its own)."""

    NAME: ClassVar[str] = "tcp"
    peer = ""
    is_secure = True

    @property
    def framing(self) -> Framing:
        return XML_STREAM

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write_buffer_size(self) -> int:
        return 0

    def ssl_object(self) -> ssl.SSLObject | None:
        return None

    async def start_tls(self) -> None:
        pass

    def attach(self, stream: StreamInput) -> None:
        pass

    def detach(self) -> None:
        pass


async def _run_release(host: StreamHost, event: hooks.HibernatedRelease) -> None:
    await host.bus.run(hooks.SM_STORE_RELEASE, event)


def _sm_failed_element(condition: str) -> Element:
    failed = payload(sm_ns.NS, "failed")
    child(failed, condition, namespace=ns.STANZA_ERRORS)
    return failed


def _sm_failed(condition: str) -> bytes:
    return etree.tostring(_sm_failed_element(condition))


def _head(data: bytes) -> str:
    """The start of a serialised stanza, for a debug line: its start tag, cut short."""
    end = data.find(b">")
    return data[: end + 1 if 0 < end < 200 else 200].decode("utf-8", "replace")


def _drop_attr(el: Element, name: str) -> None:
    if name in el.attrib:
        del el.attrib[name]


def _sasl_element(name: str, data: bytes) -> bytes:
    """``<challenge/>`` or ``<success/>`` with ``data`` (bytes as lxml writes them)."""
    tag = name.encode("ascii")
    if not data:
        return b"<" + tag + _SASL_XMLNS + b"/>"
    return b"<" + tag + _SASL_XMLNS + b">" + base64.b64encode(data) + b"</" + tag + b">"


_SASL_XMLNS: Final = b' xmlns="' + ns.SASL.encode() + b'"'
_PROCEED: Final = etree.tostring(payload(ns.TLS, "proceed"))
_ACK_REQUEST: Final = etree.tostring(payload(sm_ns.NS, "r"))
_ACK_ANSWER: Final = b'<a xmlns="' + sm_ns.NS.encode() + b'" h="%d"/>'
"""Written as they are: an element built per login (or per ack) costs more than the
rest of writing it."""
