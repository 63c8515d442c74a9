"""The router: every stanza passes ``filter_packet`` once, then goes to the destination
that serves its ``to`` domain in the routing table.

The table maps a domain to a :class:`Destination`: a local host, an external
component (XEP-0114), a service a module serves (``pubsub.example.org``), later the
s2s link to a remote server (the default route) or another cluster node. Nothing in
the router knows which kind a destination is.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Final, Protocol, cast

from xmppd import hooks
from xmppd.errors import StanzaError
from xmppd.events import Drop, EventBus
from xmppd.hooks import RouteInfo
from xmppd.jid import JID, InvalidJID
from xmppd.metrics import LatencyHistogram, tally
from xmppd.stanza import Addressed, Element, copy, error_reply, summary

if TYPE_CHECKING:
    from xmppd.sessions import Session

log = logging.getLogger(__name__)


class Destination(Protocol):
    """Where the router hands a stanza after ``filter_packet``."""

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        """Take ``stanza`` addressed to ``to`` (parsed), from ``from_``; ``origin`` is the
        local client session it came from (``None``: the server, a component, a peer)."""


class PreparedDestination(Protocol):
    """A destination that can write a fan-out copy already serialised (a local host)."""

    async def deliver_prepared(
        self, stanza: Element, to: JID, from_: JID, origin: Session | None, data: bytes
    ) -> bool:
        """Deliver ``stanza`` (``data`` is its serialisation) to the live session bound
        to the full JID ``to``, running every per-recipient hook :meth:`deliver` runs;
        ``data`` is written unless a hook replaced the stanza. ``False`` (nothing done):
        no such session, the caller delivers it the ordinary way."""


class ServedDomain(Destination, Protocol):
    """A destination that knows its own domain and display name (``ServiceDomain``)."""

    @property
    def domain(self) -> str: ...

    @property
    def name(self) -> str: ...


LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
"""Routing is sub-millisecond in memory; storage hooks (archive, offline) add more."""


class DomainTaken(Exception):
    """A domain is already in the routing table."""


class Router:
    """The routing table and the one way into it (:meth:`route`)."""

    __slots__ = ("_bus", "_table", "default", "latency", "routed")

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._table: dict[str, Destination] = {}
        self.routed: defaultdict[str, int] = tally()  # by stanza kind, read by xmppd.observe
        self.latency = LatencyHistogram(LATENCY_BUCKETS)
        """Seconds :meth:`route` takes, hooks and delivery included (xmppd.observe)."""
        self.default: Destination = RemoteDomains(self)
        """The route for every domain not in the table (federation replaces it)."""

    # ------------------------------------------------------------------ the table

    def add(self, domain: str, destination: Destination) -> None:
        """Serve ``domain`` by ``destination`` (``DomainTaken`` if something else does)."""
        current = self._table.get(domain)
        if current is not None and current is not destination:
            raise DomainTaken(f"{domain} is already served by {current!r}")
        self._table[domain] = destination

    def remove(self, domain: str, destination: Destination) -> None:
        """Stop serving ``domain`` (only if ``destination`` is the one serving it)."""
        if self._table.get(domain) is destination:
            del self._table[domain]

    def destination(self, domain: str) -> Destination | None:
        """What serves ``domain`` locally (``None``: the default route)."""
        return self._table.get(domain)

    def __contains__(self, domain: str) -> bool:
        return domain in self._table

    def domains(self) -> list[str]:
        return list(self._table)

    # ------------------------------------------------------------------ routing

    async def route(self, stanza: Element, origin: Session | None) -> None:
        """Run ``filter_packet`` once, then hand the stanza to its destination."""
        self.routed[stanza.tag] += 1
        started = perf_counter()  # inline, not a wrapper coroutine: this runs per stanza
        try:
            bus = self._bus
            if bus.has_handlers(hooks.FILTER_PACKET):
                result = await bus.fold(hooks.FILTER_PACKET, stanza, RouteInfo(origin))
                if isinstance(result, Drop):
                    log.debug("dropped by filter_packet: %s", summary(stanza))
                    return
                stanza = result
            try:
                to = JID.parse(stanza.get("to") or "")
                from_ = JID.parse(stanza.get("from") or "")
            except InvalidJID:
                log.debug("unroutable (bad address): %s", summary(stanza))
                return
            # dispatch() inline: this runs per stanza.
            await self._table.get(to.domain, self.default).deliver(stanza, to, from_, origin)
        finally:
            # LatencyHistogram.observe() inline, for the same reason.
            spent = perf_counter() - started
            latency = self.latency
            bounds = latency.bounds
            # Most routes fall in the first bucket: no bisect for those.
            latency.buckets[0 if spent <= bounds[0] else bisect_left(bounds, spent)] += 1
            latency.total += spent
            latency.count += 1

    async def fanout(
        self, template: Element, recipients: Iterable[JID], origin: Session | None = None
    ) -> None:
        """Route a copy of ``template`` to each of ``recipients`` (its ``to`` set to the
        recipient), serialising it once for all of them.

        Each copy is a routed stanza of its own, exactly as if it went through
        :meth:`route`: ``filter_packet`` runs once per copy (it sees the recipient's
        ``to``), then the destination's hooks and the session's ``user_receive_packet``.
        Only the bytes are shared: a copy that reaches a local session unchanged by
        every hook is written from the template's serialisation with its ``to``
        spliced in; a copy some handler replaced is serialised on its own, and copies
        for other destinations (components, remote servers) are routed as usual."""
        try:
            from_ = JID.parse(template.get("from") or "")
        except InvalidJID:
            log.debug("unroutable fan-out (bad from): %s", summary(template))
            return
        addressed = Addressed.of(template)
        bus = self._bus
        kind = template.tag
        for to in recipients:
            self.routed[kind] += 1
            stanza = copy(template)
            stanza.set("to", str(to))
            target = to
            if bus.has_handlers(hooks.FILTER_PACKET):
                result = await bus.fold(hooks.FILTER_PACKET, stanza, RouteInfo(origin))
                if isinstance(result, Drop):
                    log.debug("dropped by filter_packet: %s", summary(stanza))
                    continue
                if result is not stanza:  # replaced: route it as it now is
                    try:
                        target = JID.parse(result.get("to") or "")
                    except InvalidJID:
                        continue
                    await self.dispatch(result, target, from_, origin)
                    continue
            destination = self._table.get(target.domain, self.default)
            # getattr, not isinstance: a runtime-checkable Protocol check costs more than
            # the serialisation it saves.
            prepared = getattr(destination, "deliver_prepared", None)
            if (
                addressed is not None
                and prepared is not None
                and await cast(PreparedDestination, destination).deliver_prepared(
                    stanza, target, from_, origin, addressed.to(str(target))
                )
            ):
                continue
            await destination.deliver(stanza, target, from_, origin)

    async def dispatch(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        """Hand an already filtered stanza to its destination (what a cluster node that
        receives a stanza from another node does: ``filter_packet`` ran there)."""
        destination = self._table.get(to.domain, self.default)
        await destination.deliver(stanza, to, from_, origin)

    async def bounce(self, stanza: Element, err: StanzaError) -> None:
        """Answer ``stanza`` with an error from its recipient, routed back to its sender
        (never for an error or a result; RFC 6120 §8.3.1)."""
        reply = error_reply(stanza, err)
        if reply is not None and reply.get("to"):
            await self.route(reply, None)


REMOTE_SERVER_NOT_FOUND: Final = StanzaError("remote-server-not-found")


class RemoteDomains:
    """The default route while there is no federation: every stanza to a domain that is
    not served here bounces with ``remote-server-not-found``."""

    __slots__ = ("_router",)

    def __init__(self, router: Router) -> None:
        self._router = router

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        await self._router.bounce(stanza, REMOTE_SERVER_NOT_FOUND)

    def __repr__(self) -> str:
        return "RemoteDomains()"
