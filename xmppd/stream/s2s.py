"""Server-to-server streams (RFC 6120, ``jabber:server``): incoming and outgoing kinds
of the :class:`~xmppd.stream.machine.StreamMachine`.

Both do no I/O themselves. Their lifecycle over the machine's states:

```
 incoming (S2S_IN_TRANSITIONS):
   CONNECTED ── <starttls/> ──► TLS_HANDSHAKE ── handshake done ──► CONNECTED
   CONNECTED ── dialback valid / SASL EXTERNAL ──► AUTHENTICATED ──► CLOSED
 outgoing (S2S_OUT_TRANSITIONS):
   CONNECTED ── <proceed/> ──► TLS_HANDSHAKE ──► CONNECTED
   CONNECTED ── db:result valid / SASL success ──► AUTHENTICATED ──► CLOSED
```

**Incoming.** Offers STARTTLS until the stream is encrypted (server-to-server
streams are never authenticated in clear), then dialback (XEP-0220). A remote
authenticates one *(remote domain, local domain)* pair per ``<db:result/>``; several
pairs may share the stream. The key is checked by asking the remote's authoritative
server (:attr:`S2SServices.verify_dialback`, which opens a connection there). A
``<db:verify/>`` from a server checking *our* key is answered on any stream, even
unauthenticated. Every stanza must come from an authenticated remote domain and go to
a domain served here, or the stream closes with ``invalid-from`` (``host-unknown``
for the ``to``) before anything is routed.

**Outgoing.** Opened by a link (:mod:`xmppd.s2s.links`) on a fresh connection:
sends its header, STARTTLS, checks the remote's certificate
(:mod:`xmppd.s2s.certs`), then authenticates with SASL EXTERNAL when offered and our
certificate may be accepted, else dialback when the policy allows it. It reports
readiness or the reason of failure to its :class:`LinkEvents`. A ``verify`` stream
only carries one ``<db:verify/>`` for an incoming stream's dialback, then closes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from lxml import etree

from xmppd import ns
from xmppd.errors import StanzaError, StreamError
from xmppd.jid import JID, InvalidJID, domainprep
from xmppd.s2s.dialback import NS_DIALBACK, NS_DIALBACK_FEATURE, dialback_key, is_valid_key
from xmppd.stanza import STANZA_KINDS, Element, child, error_reply, payload, serialize
from xmppd.stream.machine import StreamMachine, StreamState, Transitions

if TYPE_CHECKING:
    from xmppd.config import S2SSection
    from xmppd.s2s.certs import CertCheck
    from xmppd.stream.services import StanzaRouter, TaskStarter
    from xmppd.stream.transport import Transport

log = logging.getLogger(__name__)

_CONNECTED: Final = StreamState.CONNECTED
_TLS: Final = StreamState.TLS_HANDSHAKE
_AUTHENTICATED: Final = StreamState.AUTHENTICATED
_CLOSED: Final = StreamState.CLOSED

S2S_IN_TRANSITIONS: Final[Transitions] = {
    _CONNECTED: frozenset({_TLS, _AUTHENTICATED, _CLOSED}),
    _TLS: frozenset({_CONNECTED, _CLOSED}),
    _AUTHENTICATED: frozenset({_CLOSED}),
    _CLOSED: frozenset(),
}
"""An incoming s2s stream's life: state → allowed next states."""

S2S_OUT_TRANSITIONS: Final[Transitions] = S2S_IN_TRANSITIONS
"""An outgoing s2s stream's life (the same moves, driven from the other side)."""

_STARTTLS: Final = f"{{{ns.TLS}}}starttls"
_PROCEED: Final = f"{{{ns.TLS}}}proceed"
_TLS_FAILURE: Final = f"{{{ns.TLS}}}failure"
_FEATURES: Final = f"{{{ns.STREAMS}}}features"
_STREAM_ERROR: Final = f"{{{ns.STREAMS}}}error"
_DB_RESULT: Final = f"{{{NS_DIALBACK}}}result"
_DB_VERIFY: Final = f"{{{NS_DIALBACK}}}verify"
_BIDI: Final = f"{{{ns.BIDI}}}bidi"
_BIDI_FEATURE: Final = f"{{{ns.BIDI_FEATURE}}}bidi"
_SASL_AUTH: Final = f"{{{ns.SASL}}}auth"
_SASL_SUCCESS: Final = f"{{{ns.SASL}}}success"
_SASL_FAILURE: Final = f"{{{ns.SASL}}}failure"
_DB_NSMAP: Final = {"db": NS_DIALBACK}

MAX_AUTH_FAILURES: Final = 3
"""Refused authentication attempts (dialback requests answered with an error, SASL
failures) one incoming stream may make; the last is followed by the stream error
``policy-violation`` (RFC 6120 §6.4.5 asks for "at least 2 and no more than 5" retries
and this condition). It bounds what one unauthenticated connection can make us do:
the refusals' log lines and metric increments, and the dialback verifications it asks
of other servers."""

FailureReason = Literal[
    "dns", "connect", "tls", "certificate", "auth", "policy", "timeout", "stream", "closed"
]
"""Why an outgoing link did not come up (labels of the failure counters)."""


class LinkFailure(Exception):
    """An outgoing s2s attempt failed: ``reason`` (a :data:`FailureReason`) and what
    happened, in words for the admin."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: FailureReason = reason
        self.detail = detail


VerifyDialback = Callable[[str, str, str, str], Awaitable[bool]]
"""``(local domain, remote domain, stream id, key)`` → whether the remote's
authoritative server says the key is valid (raises :class:`LinkFailure` if it cannot
be asked)."""


@dataclass(frozen=True, slots=True)
class S2SServices:
    """Everything server-to-server streams use of the server."""

    config: S2SSection
    router: StanzaRouter
    is_local: Callable[[str], bool]
    """Whether a domain is served here (hosts, components, module services)."""
    dialback_secret: bytes
    verify_dialback: VerifyDialback
    start_task: TaskStarter
    on_authenticated: Callable[[str, str], None]
    """``(direction, remote domain)``: counts authenticated streams (metrics)."""
    incoming: set[S2SInStream]
    """The open incoming streams (closed at server stop)."""
    on_refused: Callable[[str, str], None] = lambda remote, reason: None
    """``(remote domain, reason)``: counts refused authentications (metrics)."""
    check_certificate: Callable[[Sequence[bytes], str], CertCheck] | None = None
    """Validates a remote's certificate chain (DER, leaf first) for a domain (the
    trust store of outgoing links); ``None``: no SASL EXTERNAL offered."""
    bidi_ready: Callable[[S2SInStream, str], None] | None = None
    """An incoming bidirectional stream (XEP-0288) authenticated ``remote``: our
    stanzas to it may go back over it (the links register it)."""


def _dialback_element(tag: str, attrs: dict[str, str], text: str | None = None) -> Element:
    el = etree.Element(f"{{{NS_DIALBACK}}}{tag}", attrs, nsmap=_DB_NSMAP)
    if text is not None:
        el.text = text
    return el


def _open_attrs(frm: str | None, to: str | None, stream_id: str | None) -> dict[str, str]:
    attrs = {"version": "1.0"}
    if stream_id:
        attrs["id"] = stream_id
    if frm:
        attrs["from"] = frm
    if to:
        attrs["to"] = to
    return attrs


# ====================================================================== incoming


class S2SInStream(StreamMachine):
    """A connection from a remote server, from stream header to close."""

    __slots__ = (
        "_failures",
        "authenticated",
        "bidi",
        "cert_check",
        "local",
        "offer_starttls",
        "remote_header",
        "services",
    )

    KIND = "s2s-in"
    TRANSITIONS = S2S_IN_TRANSITIONS
    CONTENT_NAMESPACE = ns.SERVER

    def __init__(
        self, services: S2SServices, transport: Transport, *, offer_starttls: bool
    ) -> None:
        cfg = services.config
        super().__init__(
            transport,
            max_stanza_size=cfg.max_stanza_size,
            connect_timeout=cfg.auth_timeout,
            write_limit=cfg.max_write_buffer,
        )
        self.services = services
        self.offer_starttls = offer_starttls
        self.local = ""
        """The local domain the remote addressed in its stream header."""
        self.authenticated: set[tuple[str, str]] = set()
        """(remote domain, local domain) pairs the remote proved."""
        self.remote_header = ""
        """The domain the remote named in its header's ``from`` (XEP-0178)."""
        self.cert_check: CertCheck | None = None
        """The remote's certificate checked for ``remote_header`` (after TLS)."""
        self.bidi = False
        """The remote asked for a bidirectional stream (XEP-0288)."""
        self._failures = 0
        """Authentication attempts refused on this stream (:data:`MAX_AUTH_FAILURES`)."""
        services.incoming.add(self)

    def summary(self) -> str:
        remotes = ",".join(sorted({r for r, _ in self.authenticated})) or "?"
        return f"s2s-in {remotes} ({self.transport.peer})"

    # ------------------------------------------------------------------ header

    async def _on_header(self) -> None:
        header = self.reader.header
        assert header is not None
        try:
            to = domainprep(header.to) if header.to else ""
        except InvalidJID:
            to = ""
        if to and not self.services.is_local(to):
            self._write(self._header_bytes(None))
            raise StreamError("host-unknown", f"{to} is not served here")
        self.local = to
        try:
            self.remote_header = domainprep(header.from_) if header.from_ else ""
        except InvalidJID:
            self.remote_header = ""
        self._write(self._header_bytes(to or None))
        if header.version is None or not header.version.startswith("1."):
            raise StreamError("unsupported-version", "XMPP 1.0 (RFC 6120) is required")
        self._check_certificate()
        self._write(etree.tostring(self._features()))

    def _check_certificate(self) -> None:
        """Check the certificate the remote presented as TLS client, once, for the
        domain of its header (XEP-0178 §3)."""
        check = self.services.check_certificate
        if self.cert_check is not None or check is None or not self.transport.is_secure:
            return
        if not self.remote_header:
            return
        chain_of = getattr(self.transport, "peer_chain", None)
        chain: list[bytes] = chain_of() if callable(chain_of) else []
        if chain:
            self.cert_check = check(chain, self.remote_header)
            log.debug(
                "%s: certificate of %s: %s",
                self.summary(),
                self.remote_header,
                self.cert_check.why(),
            )

    def _header_bytes(self, domain: str | None) -> bytes:
        self.stream_id = secrets.token_urlsafe(16)
        attrs = _open_attrs(domain, None, self.stream_id)
        return self.transport.framing.open(ns.SERVER, attrs, _DB_NSMAP)

    def _features(self) -> Element:
        features = etree.Element(_FEATURES, nsmap={"stream": ns.STREAMS})
        if not self.transport.is_secure and self.offer_starttls:
            tls = child(features, "starttls", namespace=ns.TLS)
            child(tls, "required")
        elif self.transport.is_secure:
            check = self.cert_check
            if (
                not self.authenticated
                and check is not None
                and check.valid
                and self.services.config.policy_for(check.domain) != "deny"
            ):
                mechanisms = child(features, "mechanisms", namespace=ns.SASL)
                child(mechanisms, "mechanism", namespace=ns.SASL, text="EXTERNAL")
            if not self.authenticated and self.services.config.bidi:
                child(features, "bidi", namespace=ns.BIDI_FEATURE)
            db = child(features, "dialback", namespace=NS_DIALBACK_FEATURE)
            child(db, "errors")
        return features

    # ------------------------------------------------------------------ elements

    async def _on_element(self, el: Element) -> None:
        tag = el.tag
        if tag in STANZA_KINDS:
            await self._on_stanza(el)
        elif tag == _DB_RESULT:
            await self._on_db_result(el)
        elif tag == _DB_VERIFY:
            self._on_db_verify(el)
        elif tag == _SASL_AUTH:
            self._on_sasl_auth(el)
        elif tag == _BIDI and self.services.config.bidi and self.transport.is_secure:
            if self.authenticated:
                raise StreamError("policy-violation", "bidi is asked before authentication")
            self.bidi = True
        elif tag == _STARTTLS and self.offer_starttls and not self.transport.is_secure:
            await self._starttls()
        elif tag == _STREAM_ERROR:
            log.warning("%s: stream error from the remote: %s", self.summary(), _condition(el))
            self.close()
        else:
            raise StreamError("unsupported-stanza-type")

    async def _starttls(self) -> None:
        self._enter(_TLS)
        self._write(etree.tostring(payload(ns.TLS, "proceed")))
        self._flush()
        self.reader.reset()
        self._queue.clear()  # nothing sent in clear after <starttls/> counts
        try:
            await self.transport.start_tls()
        except Exception as exc:
            log.warning("s2s-in %s: TLS handshake failed: %s", self.transport.peer, exc)
            self._shutdown()
            self.transport.close()
            return
        if self.state is _TLS:
            self._enter(_CONNECTED)

    def _sasl_failure(self, condition: str, text: str) -> None:
        failure = payload(ns.SASL, "failure")
        child(failure, condition, namespace=ns.SASL)
        child(failure, "text", namespace=ns.SASL, text=text)
        self._write(etree.tostring(failure))
        self._count_failure()

    def _count_failure(self) -> None:
        """One more refused attempt (its answer is written); the stream closes with
        ``policy-violation`` at :data:`MAX_AUTH_FAILURES`."""
        self._failures += 1
        if self._failures >= MAX_AUTH_FAILURES:
            log.warning(
                "%s: %d refused authentication attempts; closing",
                self.summary(),
                self._failures,
            )
            raise StreamError("policy-violation", "too many failed authentication attempts")

    def _on_sasl_auth(self, el: Element) -> None:
        """SASL EXTERNAL (RFC 6120 §6.4, XEP-0178): the remote is who its certificate
        says, for the domain of its header (or the authorization identity it asks)."""
        if self.authenticated or not self.transport.is_secure:
            raise StreamError("policy-violation", "SASL is offered once, after TLS")
        if el.get("mechanism") != "EXTERNAL":
            self._sasl_failure("invalid-mechanism", "only EXTERNAL is offered")
            return
        text = (el.text or "").strip()
        try:
            authzid = "" if text in ("", "=") else base64.b64decode(text, validate=True).decode()
            remote = domainprep(authzid) if authzid else self.remote_header
        except (ValueError, InvalidJID):
            self._sasl_failure("incorrect-encoding", "the authorization identity is not a domain")
            return
        check = self.cert_check
        if not remote or not self.local:
            self._sasl_failure("invalid-authzid", "the stream header needs from and to")
            return
        if remote != self.remote_header:
            self._sasl_failure("invalid-authzid", "the authorization identity is not the header's")
            return
        if check is None or not check.valid:
            why = check.why() if check is not None else "no certificate"
            log.warning("%s: SASL EXTERNAL of %s refused: %s", self.summary(), remote, why)
            self.services.on_refused(remote, "certificate")
            self._sasl_failure("not-authorized", why)
            return
        if self.services.config.policy_for(remote) == "deny":
            log.warning("%s: %s refused by policy (deny)", self.summary(), remote)
            self.services.on_refused(remote, "policy")
            self._sasl_failure("not-authorized", "federation with you is not allowed")
            return
        if self._too_many(remote):
            self._sasl_failure("temporary-auth-failure", "too many connections")
            return
        self._write(etree.tostring(payload(ns.SASL, "success")))
        self._authenticated(remote, self.local, "EXTERNAL")
        self.reader.reset()  # the remote restarts its stream (RFC 6120 §6.4.6)

    def _on_db_verify(self, el: Element) -> None:
        """A receiving server checks a key we (as originating server) sent it."""
        receiving, originating = el.get("from", ""), el.get("to", "")
        stream_id, key = el.get("id", ""), el.text or ""
        if not self.services.is_local(originating):
            raise StreamError("host-unknown", f"{originating} is not served here")
        valid = is_valid_key(self.services.dialback_secret, receiving, originating, stream_id, key)
        log.debug("%s: db:verify from %s for %s: %s", self.summary(), receiving, originating, valid)
        reply = _dialback_element(
            "verify",
            {
                "from": originating,
                "to": receiving,
                "id": stream_id,
                "type": "valid" if valid else "invalid",
            },
        )
        self._write(etree.tostring(reply))

    async def _on_db_result(self, el: Element) -> None:
        """A remote asks to be accepted as ``from`` for our domain ``to`` (XEP-0220 §2.1)."""
        try:
            remote = domainprep(el.get("from") or "")
            local = domainprep(el.get("to") or "")
        except InvalidJID:
            raise StreamError("improper-addressing", "db:result needs from and to") from None
        key = (el.text or "").strip()
        if not key:
            raise StreamError("not-authorized", "dialback result without a key")
        if not self.transport.is_secure:
            raise StreamError("policy-violation", "use STARTTLS before dialback")
        if not self.services.is_local(local):
            self._db_error(remote, local, "item-not-found", f"{local} is not served here")
            return
        policy = self.services.config.policy_for(remote)
        if policy == "deny":
            log.warning("%s: %s refused by policy (deny)", self.summary(), remote)
            self.services.on_refused(remote, "policy")
            self._db_error(remote, local, "forbidden", "federation with you is not allowed")
            return
        if policy == "certificates":
            log.warning(
                "%s: %s refused: the policy requires a valid certificate", self.summary(), remote
            )
            self.services.on_refused(remote, "certificate")
            self._db_error(remote, local, "not-authorized", "a valid certificate is required")
            return
        if self._too_many(remote):
            self._db_error(remote, local, "resource-constraint", "too many connections")
            return
        try:
            async with asyncio.timeout(self.services.config.auth_timeout):
                valid = await self.services.verify_dialback(local, remote, self.stream_id, key)
        except (LinkFailure, TimeoutError) as exc:
            log.warning("%s: cannot verify the dialback key of %s: %s", self.summary(), remote, exc)
            self._db_error(remote, local, "remote-server-timeout", "could not verify the key")
            return
        if self.closed:
            return
        if not valid:
            log.warning("%s: dialback key of %s is invalid", self.summary(), remote)
            self.services.on_refused(remote, "dialback")
            self._write(
                etree.tostring(
                    _dialback_element("result", {"from": local, "to": remote, "type": "invalid"})
                )
            )
            self.close("not-authorized", "dialback key is invalid")
            return
        self._authenticated(remote, local, "dialback")
        self._write(
            etree.tostring(
                _dialback_element("result", {"from": local, "to": remote, "type": "valid"})
            )
        )

    def _too_many(self, remote: str) -> bool:
        """Whether ``remote`` already has ``max_incoming_per_domain`` other streams."""
        limit = self.services.config.max_incoming_per_domain
        others = sum(
            1
            for stream in self.services.incoming
            if stream is not self and any(r == remote for r, _ in stream.authenticated)
        )
        if others >= limit:
            log.warning(
                "%s: %s refused: it has %d incoming connections already (limit %d)",
                self.summary(),
                remote,
                others,
                limit,
            )
            self.services.on_refused(remote, "limit")
            return True
        return False

    def _db_error(self, remote: str, local: str, condition: str, text: str) -> None:
        reply = _dialback_element("result", {"from": local, "to": remote, "type": "error"})
        error = child(reply, "error", {"type": "cancel"})
        child(error, condition, namespace=ns.STANZA_ERRORS)
        child(error, "text", namespace=ns.STANZA_ERRORS, text=text)
        self._write(etree.tostring(reply))
        self._count_failure()

    def _authenticated(self, remote: str, local: str, method: str) -> None:
        first = not self.authenticated
        self.authenticated.add((remote, local))
        if first:
            self._enter(_AUTHENTICATED)
            self._timeout.cancel()
        log.info(
            "%s: %s authenticated for %s (%s%s)",
            self.summary(),
            remote,
            local,
            method,
            "; bidirectional" if self.bidi else "",
        )
        self.services.on_authenticated("in", remote)
        if self.bidi and self.services.bidi_ready is not None:
            self.services.bidi_ready(self, remote)

    def can_send(self, remote: str, local: str) -> bool:
        """Whether a stanza from our ``local`` to ``remote`` may go back over this
        bidirectional stream (the pair is authenticated on it)."""
        return self.bidi and not self.closed and (remote, local) in self.authenticated

    def send(self, stanza: Element) -> None:
        """Write ``stanza`` back to the remote (bidirectional streams only)."""
        self._write(serialize(stanza))

    async def _on_stanza(self, el: Element) -> None:
        if self.state is not _AUTHENTICATED:
            raise StreamError("not-authorized", "authenticate first")
        try:
            frm = JID.parse(el.get("from") or "")
        except InvalidJID:
            raise StreamError("invalid-from", "'from' is missing or invalid") from None
        try:
            to = JID.parse(el.get("to") or "")
        except InvalidJID:
            raise StreamError("improper-addressing", "'to' is missing or invalid") from None
        if (frm.domain, to.domain) not in self.authenticated:
            if not any(remote == frm.domain for remote, _ in self.authenticated):
                log.warning("%s: stanza from unauthenticated %s", self.summary(), frm.domain)
                raise StreamError("invalid-from", f"{frm.domain} is not authenticated here")
            if not self.services.is_local(to.domain):
                raise StreamError("host-unknown", f"{to.domain} is not served here")
            # Same remote, another of our domains (conference.example.org ...): the remote
            # proved its domain; RFC 6120 §13.7 lets it address any of ours over it.
        await self.services.router.route(el, None)

    def _answer_error(self, stanza: Element, err: StanzaError) -> None:
        reply = error_reply(stanza, err)
        if reply is not None and reply.get("to"):
            _ = self.services.start_task(self.services.router.route(reply, None), name="s2s-error")

    def _on_shutdown(self, previous: StreamState) -> None:
        self.services.incoming.discard(self)
        if previous is _AUTHENTICATED:
            log.info("%s: closed", self.summary())


# ====================================================================== outgoing


class LinkEvents(Protocol):
    """What an outgoing stream tells the link that opened it."""

    def ready(self, stream: S2SOutStream) -> None:
        """Authenticated for its first local domain: stanzas may flow."""

    def failed(self, stream: S2SOutStream, failure: LinkFailure) -> None:
        """Never got ready (called once, at close)."""

    def closed(self, stream: S2SOutStream) -> None:
        """A stream that was ready is gone."""


class _Mode:
    """What an outgoing stream is for: a link (``verify is None``) or one db:verify."""

    __slots__ = ("key", "result", "stream_id")

    def __init__(self, stream_id: str, key: str) -> None:
        self.stream_id = stream_id
        self.key = key
        self.result: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


class S2SOutStream(StreamMachine):
    """Our connection to a remote server, from our stream header to close."""

    __slots__ = (
        "_tls_done",
        "auth_method",
        "bidi",
        "cert_check",
        "events",
        "failure",
        "local",
        "local_domains",
        "peer_id",
        "pending",
        "policy",
        "remote",
        "services",
        "verify",
        "was_ready",
    )

    KIND = "s2s-out"
    TRANSITIONS = S2S_OUT_TRANSITIONS
    CONTENT_NAMESPACE = ns.SERVER

    def __init__(
        self,
        services: S2SServices,
        transport: Transport,
        *,
        local: str,
        remote: str,
        events: LinkEvents,
        verify: tuple[str, str] | None = None,
        secure: bool = False,
        check_certificate: Callable[[], CertCheck] | None = None,
    ) -> None:
        cfg = services.config
        super().__init__(
            transport,
            max_stanza_size=cfg.max_stanza_size,
            connect_timeout=cfg.auth_timeout,
            write_limit=cfg.max_write_buffer,
        )
        self.services = services
        self.local = local
        self.remote = remote
        self.events = events
        self.policy = cfg.policy_for(remote)
        self.verify = None if verify is None else _Mode(*verify)
        self.peer_id = ""
        self.auth_method = ""
        self.cert_check: CertCheck | None = None
        self.failure: LinkFailure | None = None
        self.local_domains: set[str] = set()
        """Our domains the remote accepted on this stream."""
        self.pending: dict[str, list[Element]] = {}
        """Stanzas from a local domain whose dialback is under way."""
        self.was_ready = False
        self.bidi = False
        """The remote accepted our request for a bidirectional stream (XEP-0288):
        its stanzas to us come back over this stream."""
        self._tls_done = check_certificate
        if secure and check_certificate is not None:
            self.cert_check = check_certificate()
        self._write(self._header_bytes(None))

    def summary(self) -> str:
        return f"s2s-out {self.local}→{self.remote} ({self.transport.peer})"

    @property
    def verify_result(self) -> asyncio.Future[bool] | None:
        return None if self.verify is None else self.verify.result

    def _header_bytes(self, domain: str | None) -> bytes:
        self.stream_id = "ours"  # our header is out; the remote's id is ``peer_id``
        attrs = _open_attrs(self.local, self.remote, None)
        return self.transport.framing.open(ns.SERVER, attrs, _DB_NSMAP)

    async def _on_header(self) -> None:
        header = self.reader.header
        assert header is not None
        self.peer_id = header.id or ""
        if header.version is None or not header.version.startswith("1."):
            raise self._give_up("tls", "the remote does not speak XMPP 1.0, so no TLS")

    def _give_up(self, reason: FailureReason, detail: str) -> StreamError:
        """Record why the link failed; the returned error closes the stream."""
        if self.failure is None:
            self.failure = LinkFailure(reason, detail)
        condition = {"policy": "policy-violation", "certificate": "policy-violation"}.get(
            reason, "undefined-condition"
        )
        return StreamError(condition, detail)

    # ------------------------------------------------------------------ elements

    async def _on_element(self, el: Element) -> None:
        tag = el.tag
        if tag == _FEATURES:
            await self._on_features(el)
        elif tag == _PROCEED:
            await self._starttls()
        elif tag == _TLS_FAILURE:
            raise self._give_up("tls", "the remote refused STARTTLS")
        elif tag == _DB_RESULT:
            self._on_db_result(el)
        elif tag == _DB_VERIFY:
            self._on_db_verify(el)
        elif tag == _SASL_SUCCESS:
            self._on_sasl_success()
        elif tag == _SASL_FAILURE:
            self._on_sasl_failure(el)
        elif tag in STANZA_KINDS and self.bidi:
            await self._on_bidi_stanza(el)
        elif tag == _STREAM_ERROR:
            condition = _condition(el)
            if self.failure is None:
                self.failure = LinkFailure("stream", f"the remote closed with {condition}")
            log.warning("%s: stream error from the remote: %s", self.summary(), condition)
            self.close()
        else:
            # RFC 6120 streams are one-way: nothing but protocol elements comes back.
            raise StreamError("unsupported-stanza-type")

    async def _on_features(self, features: Element) -> None:
        secure = self.transport.is_secure
        if not secure:
            if features.find(_STARTTLS) is None:
                raise self._give_up("tls", "the remote does not offer STARTTLS")
            self._write(etree.tostring(payload(ns.TLS, "starttls")))
            return
        if self.auth_method == "EXTERNAL":  # features after the SASL restart
            self._ready(self.local, "EXTERNAL")
            return
        check = self.cert_check
        cert_ok = check is not None and check.valid
        if self.verify is not None:
            self._write(
                etree.tostring(
                    _dialback_element(
                        "verify",
                        {"from": self.local, "to": self.remote, "id": self.verify.stream_id},
                        self.verify.key,
                    )
                )
            )
            return
        if self.policy == "deny":
            raise self._give_up("policy", f"federation with {self.remote} is denied")
        if not cert_ok and self.policy == "certificates":
            why = check.why() if check is not None else "no certificate"
            raise self._give_up("certificate", f"the policy requires a valid certificate: {why}")
        if self.services.config.bidi and features.find(_BIDI_FEATURE) is not None:
            # XEP-0288 §2: asked before authentication; the remote then sends its
            # stanzas for us over this stream instead of a connection of its own.
            self._write(etree.tostring(payload(ns.BIDI, "bidi")))
            self.bidi = True
        mechanisms = [
            (m.text or "").strip()
            for m in features.iterfind(f"{{{ns.SASL}}}mechanisms/{{{ns.SASL}}}mechanism")
        ]
        if cert_ok and "EXTERNAL" in mechanisms:
            self.auth_method = "EXTERNAL?"
            auth = payload(ns.SASL, "auth", {"mechanism": "EXTERNAL"})
            auth.text = base64.b64encode(self.local.encode()).decode()
            self._write(etree.tostring(auth))
            return
        self._start_dialback(features)

    def _start_dialback(self, features: Element | None) -> None:
        # Servers older than the dialback stream feature (XEP-0220 §2.4) only declare
        # xmlns:db in their header: dialback is tried without the feature too.
        if self.policy == "certificates":
            raise self._give_up("auth", "the remote did not accept our certificate (SASL EXTERNAL)")
        self.auth_method = "dialback"
        self._send_db_result(self.local)

    def _send_db_result(self, local: str) -> None:
        key = dialback_key(self.services.dialback_secret, self.remote, local, self.peer_id)
        self._write(
            etree.tostring(_dialback_element("result", {"from": local, "to": self.remote}, key))
        )

    def _on_sasl_success(self) -> None:
        if self.auth_method != "EXTERNAL?":
            raise StreamError("not-authorized", "unexpected SASL success")
        self.auth_method = "EXTERNAL"
        self.reader.reset()
        self._write(self._header_bytes(None))

    def _on_sasl_failure(self, el: Element) -> None:
        if self.auth_method != "EXTERNAL?":
            raise StreamError("not-authorized", "unexpected SASL failure")
        condition = next((etree.QName(c).localname for c in el if isinstance(c.tag, str)), "?")
        log.info("%s: SASL EXTERNAL refused (%s); trying dialback", self.summary(), condition)
        self.auth_method = ""
        self._start_dialback(None)

    def _on_db_result(self, el: Element) -> None:
        local = el.get("to", "")
        kind = el.get("type")
        if kind == "valid":
            self._ready(local, "dialback")
            return
        err = el.find("{jabber:server:dialback}error")
        if err is None:
            err = el.find("error")
        condition = _condition(err) if err is not None else kind or "?"
        detail = f"the remote refused our dialback for {local} ({condition})"
        if not self.was_ready:
            raise self._give_up("auth", detail)
        log.warning("%s: %s", self.summary(), detail)
        for stanza in self.pending.pop(local, []):
            _ = self.services.start_task(
                _bounce(self.services.router, stanza, detail), name="s2s-bounce"
            )

    def _on_db_verify(self, el: Element) -> None:
        verify = self.verify
        if verify is None or el.get("id") != verify.stream_id:
            raise StreamError("invalid-id", "unexpected db:verify")
        if not verify.result.done():
            verify.result.set_result(el.get("type") == "valid")
        self.close()

    async def _starttls(self) -> None:
        self._enter(_TLS)
        self.reader.reset()
        self._queue.clear()
        try:
            await self.transport.start_tls()
        except Exception as exc:
            raise self._give_up("tls", f"TLS handshake failed: {exc}") from None
        if self.state is not _TLS:
            return
        self._enter(_CONNECTED)
        if self._tls_done is not None:
            self.cert_check = self._tls_done()
        self._write(self._header_bytes(None))

    # ------------------------------------------------------------------ ready, sending

    def _ready(self, local: str, method: str) -> None:
        self.local_domains.add(local)
        if not self.was_ready:
            self.was_ready = True
            self._enter(_AUTHENTICATED)
            self._timeout.cancel()
            check = self.cert_check
            log.info(
                "%s: authenticated (%s; certificate: %s)%s",
                self.summary(),
                method,
                check.why() if check is not None else "none",
                "; bidirectional (XEP-0288)" if self.bidi else "",
            )
            self.services.on_authenticated("out", self.remote)
            self.events.ready(self)
        for stanza in self.pending.pop(local, []):
            self._write(serialize(stanza))

    def send(self, stanza: Element, local: str) -> None:
        """Write ``stanza`` (from our domain ``local``); a new local domain is
        authenticated first with dialback, its stanzas held meanwhile."""
        if self.state is not _AUTHENTICATED:
            return
        if local in self.local_domains:
            self._write(serialize(stanza))
            return
        waiting = self.pending.get(local)
        if waiting is None:
            self.pending[local] = [stanza]
            self._send_db_result(local)
        else:
            waiting.append(stanza)

    async def _on_bidi_stanza(self, el: Element) -> None:
        """A stanza from the remote on our bidirectional stream: it must come from the
        domain this stream authenticated and go to one of ours that it accepted."""
        if self.state is not _AUTHENTICATED:
            raise StreamError("not-authorized", "not authenticated yet")
        try:
            frm = JID.parse(el.get("from") or "")
        except InvalidJID:
            raise StreamError("invalid-from", "'from' is missing or invalid") from None
        try:
            to = JID.parse(el.get("to") or "")
        except InvalidJID:
            raise StreamError("improper-addressing", "'to' is missing or invalid") from None
        if frm.domain != self.remote:
            log.warning("%s: bidi stanza from unauthenticated %s", self.summary(), frm.domain)
            raise StreamError("invalid-from", f"{frm.domain} is not authenticated here")
        if to.domain not in self.local_domains and not self.services.is_local(to.domain):
            raise StreamError("host-unknown", f"{to.domain} is not served here")
        await self.services.router.route(el, None)

    def _answer_error(self, stanza: Element, err: StanzaError) -> None:
        """Errors go back only on a bidirectional stream (else nothing but protocol
        arrives on an outgoing one)."""
        if not self.bidi:
            return
        reply = error_reply(stanza, err)
        if reply is not None and reply.get("to"):
            _ = self.services.start_task(self.services.router.route(reply, None), name="s2s-error")

    def _on_shutdown(self, previous: StreamState) -> None:
        if self.verify is not None and not self.verify.result.done():
            self.verify.result.set_exception(
                self.failure or LinkFailure("closed", "closed before the verify answer")
            )
        if self.was_ready:
            self.events.closed(self)
            for stanzas in self.pending.values():
                for stanza in stanzas:
                    _ = self.services.start_task(
                        _bounce(self.services.router, stanza, "the link closed"),
                        name="s2s-bounce",
                    )
            self.pending.clear()
        else:
            if previous is _TLS:
                default = LinkFailure("tls", "closed during the TLS handshake")
            else:
                default = LinkFailure("closed", "the connection closed before authentication")
            self.events.failed(self, self.failure or default)

    def _connect_timed_out(self) -> None:
        if self.failure is None:
            self.failure = LinkFailure("timeout", "not authenticated in time")
        super()._connect_timed_out()


async def _bounce(router: StanzaRouter, stanza: Element, text: str) -> None:
    if stanza.tag == "presence":
        return
    reply = error_reply(stanza, StanzaError("remote-server-not-found", text))
    if reply is not None and reply.get("to"):
        await router.route(reply, None)


def _condition(el: Element) -> str:
    for sub in el:
        if isinstance(sub.tag, str) and etree.QName(sub).localname != "text":
            return etree.QName(sub).localname
    return "?"


def s2s_remote_of(stream: object) -> str:
    """The remote domain of an s2s stream, for logs and metrics (``"unknown"`` before
    its header arrived)."""
    if isinstance(stream, S2SInStream):
        return stream.remote_header or "unknown"
    if isinstance(stream, S2SOutStream):
        return stream.remote
    return "unknown"
