"""External components (XEP-0114, ``jabber:component:accept``).

A component is a separate program (an app server for push notifications, a gateway,
a bot) that serves a domain of its own, such as ``push.example.org``, through this
server. It connects to a ``kind = "component"`` listener and opens a stream whose
``to`` is its domain; the server answers with a stream header carrying a fresh id;
the component proves that it knows the domain's shared secret by sending
``<handshake>`` with the lowercase hex SHA-1 of *stream id + secret*; the server
answers ``<handshake/>``. From then on every stanza for the domain (``push.example.org``,
``anyone@push.example.org/any``) is written to the component, and the component may
send stanzas from any address at its domain.

Like :mod:`xmppd.stream.c2s`, the stream does no I/O itself: it is a
:class:`~xmppd.stream.machine.StreamMachine` (input queue, drain, output, close),
fed by a transport through the :class:`~xmppd.stream.transport.Transport` interface.
Its states: ``CONNECTED`` (header, then handshake) → ``AUTHENTICATED`` → ``CLOSED``.

Choices made here:

* **Errors.** An unknown domain gets ``host-unknown`` and a wrong handshake
  ``not-authorized`` (both stream errors, closing the connection). Failed handshakes
  count against the peer's address in the failed-login throttle.
* **A second connection for a connected domain is refused** with a ``conflict``
  stream error, as Prosody does; the connection already there keeps working, and two
  instances of a component cannot push each other out in turn. The check is made
  after the handshake, so only a peer that knows the secret learns that the domain
  is taken. A dead connection is noticed through TCP keepalive (set by the
  transport), and then the domain is free again.
* **Addresses.** A stanza whose ``from`` is not at the component's domain closes the
  stream with ``invalid-from`` (XEP-0114 §3: that is the only restriction). A stanza
  without ``from`` is stamped with the component's domain, as Prosody does. A stanza
  without ``to`` is answered with ``bad-request``.
* **Routing.** Stanzas from the component go through ``Router.route`` (so
  ``filter_packet`` sees them) with no origin session: to modules a component is a
  remote entity, like a federated server, never one of the host's own clients.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from lxml import etree

from xmppd import ns
from xmppd.errors import StanzaError, StreamError
from xmppd.jid import JID, InvalidJID, domainprep
from xmppd.stanza import IQ_TYPES, STANZA_KINDS, Element, error_reply, serialize
from xmppd.stream.machine import StreamMachine, StreamState, Transitions

if TYPE_CHECKING:
    from pydantic import SecretStr

    from xmppd.auth.throttle import FailedLoginThrottle
    from xmppd.config import C2SSection, ComponentSection
    from xmppd.stream.services import StanzaRouter
    from xmppd.stream.transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ComponentServices:
    """Everything an external component stream (XEP-0114) uses."""

    limits: C2SSection
    """Stanza size, connect timeout and write buffer (shared with c2s)."""
    router: StanzaRouter
    throttle: FailedLoginThrottle
    components: ComponentRegistry


_HANDSHAKE: Final = "handshake"
_HANDSHAKE_OK: Final = b"<handshake/>"

_CONNECTED: Final = StreamState.CONNECTED
_AUTHENTICATED: Final = StreamState.AUTHENTICATED
_CLOSED: Final = StreamState.CLOSED

COMPONENT_TRANSITIONS: Final[Transitions] = {
    _CONNECTED: frozenset({_AUTHENTICATED, _CLOSED}),  # handshake accepted, or the end
    _AUTHENTICATED: frozenset({_CLOSED}),
    _CLOSED: frozenset(),
}
"""A component stream's life (XEP-0114): state → allowed next states."""


def handshake_digest(stream_id: str, secret: str) -> str:
    """The ``<handshake>`` value (XEP-0114 §3): lowercase hex SHA-1 of id + secret.

    SHA-1 because the protocol says so; the fresh random id per connection keeps a
    recorded handshake from being replayed."""
    return hashlib.sha1((stream_id + secret).encode("utf-8")).hexdigest()


class RemoteComponents(Protocol):
    """In a cluster: which node each component is connected to (the cluster node)."""

    def held_elsewhere(self, domain: str) -> str | None:
        """The other node the component of ``domain`` is connected to, if any."""

    def connected(self, domain: str) -> None:
        """The component connected to this node."""

    def disconnected(self, domain: str) -> None: ...

    async def forward(self, node: str, stanza: Element, to: JID, from_: JID) -> bool:
        """Route ``stanza`` on ``node`` (``False``: that node is gone)."""


class ComponentRegistry:
    """The configured components (domain → secret) and which of them are connected.

    The router asks ``domain in registry`` only for domains that are not local hosts,
    then :meth:`connected` for the stream to deliver to. In a cluster a component
    connects to one node; ``remote`` tells where, and the others forward to it.
    """

    __slots__ = ("_connected", "_secrets", "remote")

    def __init__(self, sections: Iterable[ComponentSection]) -> None:
        self._secrets: dict[str, SecretStr] = {c.domain: c.secret for c in sections}
        self._connected: dict[str, ComponentStream] = {}
        self.remote: RemoteComponents | None = None

    def __contains__(self, domain: str) -> bool:
        return domain in self._secrets

    def __len__(self) -> int:
        return len(self._secrets)

    def subdomains_of(self, domain: str) -> list[str]:
        """Configured component domains under ``domain`` (``push.example.org`` for
        ``example.org``), sorted: what the host lists in its disco#items."""
        return sorted(d for d in self._secrets if d.endswith("." + domain))

    def secret(self, domain: str) -> str | None:
        """The shared secret of a configured component."""
        secret = self._secrets.get(domain)
        return None if secret is None else secret.get_secret_value()

    def connected(self, domain: str) -> ComponentStream | None:
        """The authenticated stream serving ``domain``, if any."""
        return self._connected.get(domain)

    def register(self, stream: ComponentStream) -> bool:
        """Make ``stream`` the one serving its domain; ``False`` if another already is."""
        current = self._connected.get(stream.domain)
        if current is not None and current is not stream:
            return False
        remote = self.remote
        if remote is not None and current is None and remote.held_elsewhere(stream.domain):
            return False
        self._connected[stream.domain] = stream
        if remote is not None and current is None:
            remote.connected(stream.domain)
        return True

    def unregister(self, stream: ComponentStream) -> None:
        if self._connected.get(stream.domain) is stream:
            del self._connected[stream.domain]
            if self.remote is not None:
                self.remote.disconnected(stream.domain)

    def close_all(self, condition: str) -> None:
        for stream in list(self._connected.values()):
            stream.close(condition)


class ComponentStream(StreamMachine):
    """One component connection, from stream header to close.

    Implements the delivering side of ``Session`` (``jid``, ``deliver``, ``send_raw``,
    ``close``), which is all the router needs.
    """

    __slots__ = ("_jid", "domain", "services")

    KIND = "component"
    TRANSITIONS = COMPONENT_TRANSITIONS
    CONTENT_NAMESPACE = ns.COMPONENT

    def __init__(self, services: ComponentServices, transport: Transport) -> None:
        cfg = services.limits
        super().__init__(
            transport,
            max_stanza_size=cfg.max_stanza_size,
            connect_timeout=cfg.connect_timeout,
            write_limit=cfg.max_write_buffer,
        )
        self.services = services
        self.domain = ""
        """The component's domain, once its stream header named a configured one."""
        self._jid: JID | None = None

    # ------------------------------------------------------------------ the Session side

    @property
    def jid(self) -> JID:
        """The component's domain as a JID (after the stream header)."""
        assert self._jid is not None
        return self._jid

    @property
    def peer(self) -> str:
        return self.transport.peer

    @property
    def is_secure(self) -> bool:
        return self.transport.is_secure

    async def deliver(self, stanza: Element) -> None:
        """Write a routed stanza to the component (no per-user hooks apply)."""
        self.send_raw(stanza)

    def send_raw(self, stanza: Element) -> None:
        if self.state is _AUTHENTICATED:
            self._write(serialize(stanza))

    @property
    def is_authenticated(self) -> bool:
        return self.state is _AUTHENTICATED

    async def wait_closed(self) -> None:
        """Nothing runs after a component's close: there is no teardown to wait for."""

    def summary(self) -> str:
        return f"component {self.domain or '?'} ({self.peer})"

    def _answer_error(self, stanza: Element, err: StanzaError) -> None:
        """A stanza the server refused: the error goes back on this stream, from the
        server (no ``from``), even before the component is authenticated."""
        reply = error_reply(stanza, err)
        if reply is None or self.closed:
            return
        if "from" in reply.attrib:
            del reply.attrib["from"]
        self._write(serialize(reply))

    # ------------------------------------------------------------------ header and handshake

    async def _on_header(self) -> None:
        header = self.reader.header
        assert header is not None
        try:
            domain = domainprep(header.to or "")
        except InvalidJID:
            domain = ""
        known = bool(domain) and domain in self.services.components
        self._write(self._header_bytes(domain if known else None))
        if not known:
            log.warning("%s: no component is configured for %r", self.summary(), header.to)
            raise StreamError("host-unknown", "no such component")
        self.domain = domain
        self._jid = JID.parse(domain)

    def _header_bytes(self, domain: str | None) -> bytes:
        """Our stream header (XEP-0114 §3: no version, so no stream features)."""
        self.stream_id = secrets.token_hex(16)
        attrs = {"id": self.stream_id}
        if domain:
            attrs["from"] = domain
        return self.transport.framing.open(ns.COMPONENT, attrs)

    async def _handshake(self, el: Element) -> None:
        throttle = self.services.throttle
        peer = self.peer
        secret = self.services.components.secret(self.domain)
        assert secret is not None
        expected = handshake_digest(self.stream_id, secret).encode("ascii")
        given = (el.text or "").strip().lower().encode("utf-8")
        if not hmac.compare_digest(expected, given):
            await throttle.answer_failure(peer, _HANDSHAKE, account=f"component:{self.domain}")
            log.warning("%s: wrong handshake (secret)", self.summary())
            raise StreamError("not-authorized")
        throttle.succeeded(peer, _HANDSHAKE, account=f"component:{self.domain}")
        if not self.services.components.register(self):
            log.warning("%s: refused, the component is already connected", self.summary())
            raise StreamError("conflict", "this component is already connected")
        self._enter(_AUTHENTICATED)
        self._timeout.cancel()
        self._write(_HANDSHAKE_OK)
        log.info("%s: connected", self.summary())

    # ------------------------------------------------------------------ elements

    async def _on_element(self, el: Element) -> None:
        if self.state is not _AUTHENTICATED:
            if el.tag == _HANDSHAKE and self.domain:
                await self._handshake(el)
                return
            raise StreamError("not-authorized", "send the handshake first")
        if el.tag not in STANZA_KINDS:
            raise StreamError("unsupported-stanza-type")
        await self._on_stanza(el)

    async def _on_stanza(self, el: Element) -> None:
        """Check a stanza from the component, then route it like any other."""
        frm = el.get("from")
        if frm is None:
            el.set("from", self.domain)
        else:
            try:
                claimed = JID.parse(frm)
            except InvalidJID:
                raise StreamError("invalid-from", "'from' is not a valid address") from None
            if claimed.domain != self.domain:
                log.warning("%s: sent a stanza from %r", self.summary(), frm)
                raise StreamError("invalid-from", f"'from' must be at {self.domain}")
            el.set("from", str(claimed))
        if el.tag == "iq":
            itype = el.get("type")
            if itype not in IQ_TYPES or el.get("id") is None:
                raise StanzaError("bad-request", "an IQ needs an id and a valid type")
            if itype in ("get", "set") and len(el) != 1:
                raise StanzaError("bad-request", "a get or set IQ carries exactly one child")
        _neutralize_client_children(el)
        to = el.get("to")
        if to is None:
            raise StanzaError("bad-request", "a component must address its stanzas ('to')")
        try:
            JID.parse(to)
        except InvalidJID:
            raise StanzaError("jid-malformed", "invalid 'to' address") from None
        await self.services.router.route(el, None)

    # ------------------------------------------------------------------ teardown

    def _on_shutdown(self, previous: StreamState) -> None:
        """Unregister: stanzas for the domain bounce again."""
        if previous is _AUTHENTICATED:
            self.services.components.unregister(self)
            log.info("%s: disconnected", self.summary())


_CLIENT_PREFIX: Final = f"{{{ns.CLIENT}}}"


def _neutralize_client_children(stanza: Element) -> None:
    """Rebuild direct children in ``jabber:client`` stream-neutral, like the rest.

    COMPAT: slixmpp's ComponentXMPP (1.8 to 1.17 at least, unless ``fix_error_ns``)
    writes ``<error xmlns='jabber:client'>`` inside component stanzas; without this the
    server's own consumers (the IQ tracker's callers, such as mod_push) would not find
    the ``error`` child of an answer.
    """
    for index, sub in enumerate(stanza):
        tag = sub.tag
        if isinstance(tag, str) and tag.startswith(_CLIENT_PREFIX):
            neutral = etree.Element(tag[len(_CLIENT_PREFIX) :], _attrs(sub))
            neutral.text, neutral.tail = sub.text, sub.tail
            for grandchild in sub:
                neutral.append(deepcopy(grandchild))
            stanza[index] = neutral


def _attrs(el: Element) -> dict[str, str]:
    return {str(k): str(v) for k, v in el.attrib.items()}
