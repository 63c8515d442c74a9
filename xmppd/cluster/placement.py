"""Placement: what must live on one node of a cluster (a room, the PubSub service,
the outgoing link to a remote domain) lives on the node that rendezvous hashing of its
key chooses among the live nodes, and every other node forwards its stanzas there.

A :class:`PlacedDestination` wraps the destination that holds the thing (the MUC
service, the s2s links): for each stanza it derives a key from the ``to`` address
(``None``: handle it here, e.g. a query to the service itself), delivers locally when
this node owns the key, else hands the stanza to the owner through the stanza bus
(:meth:`~xmppd.cluster.bus.StanzaBus.dispatch_on`; ``filter_packet`` ran here and does
not run again there). Every node computes the same owner from the same live set, and
while two nodes' views differ (a node just joined or died) a stanza only ever moves to
a node ranked higher for its key, so it never loops.

When the owner has no inbox any more (it left, or was found dead and reaped) the
stanza goes to the owner among the remaining nodes: the node the membership will
choose once it has noticed, so no wait is needed; if that one cannot take it either,
it is delivered here.

:class:`Placement` is the facade modules get as ``ctx.cluster`` (``None`` outside a
cluster): the owner of a key, whether it is this node, and a callback when the live
set changes (a node unloads what it no longer owns).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from xmppd.cluster.membership import rendezvous_owner
from xmppd.cluster.writer import OUTAGE_ERRORS

if TYPE_CHECKING:
    import asyncio

    from xmppd.cluster.redisconn import RedisClient
    from xmppd.jid import JID
    from xmppd.router import Destination
    from xmppd.sessions import Session
    from xmppd.stanza import Element

log = logging.getLogger(__name__)

KeyOf = Callable[["JID"], "str | None"]
"""The placement key of a stanza's ``to`` (``None``: handled on the node it reaches)."""


def by_bare_jid(to: JID) -> str | None:
    """Place by the bare JID (``room@conference.example.org``); stanzas to the bare
    domain (the service itself) are handled on the node they reach."""
    return str(to.bare) if to.local else None


def by_domain(to: JID) -> str:
    """Place everything for a domain on one node (a service with shared state, the
    outgoing link to a remote domain)."""
    return to.domain


class ClusterView(Protocol):
    """What placement uses of the cluster node (:class:`~xmppd.cluster.node.ClusterNode`
    has it)."""

    name: str

    def owner_of(self, key: str) -> str: ...

    def on_live_change(self, listener: Callable[[tuple[str, ...]], None]) -> None: ...

    @property
    def live(self) -> tuple[str, ...]: ...

    async def dispatch_on(self, node: str, stanza: Element, to: JID, from_: JID) -> bool: ...

    def send_message(self, node: str, topic: str, value: object) -> None: ...

    def on_message(self, topic: str, handler: Callable[[Any], Awaitable[None]] | None) -> None: ...


class PlacedDestination:
    """A destination whose stanzas are handled on the node owning their key."""

    __slots__ = ("_cluster", "_key_of", "forwarded", "inner", "rescued")

    def __init__(self, inner: Destination, cluster: ClusterView, key_of: KeyOf) -> None:
        self.inner = inner
        self._cluster = cluster
        self._key_of = key_of
        self.forwarded = 0
        """Stanzas handed to the owning node."""
        self.rescued = 0
        """Stanzas whose owner had vanished, placed again."""

    def __repr__(self) -> str:
        return f"PlacedDestination({self.inner!r})"

    def is_mine(self, to: JID) -> bool:
        """Whether this node handles stanzas to ``to`` now."""
        key = self._key_of(to)
        return key is None or self._cluster.owner_of(key) == self._cluster.name

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        cluster = self._cluster
        key = self._key_of(to)
        if key is None:
            await self.inner.deliver(stanza, to, from_, origin)
            return
        owner = cluster.owner_of(key)
        if owner == cluster.name:
            await self.inner.deliver(stanza, to, from_, origin)
            return
        self.forwarded += 1
        if await cluster.dispatch_on(owner, stanza, to, from_):
            return
        # The owner's inbox is gone: it left or was reaped, and the membership drops it
        # at its next reading. Its successor is the owner among the others.
        self.rescued += 1
        successor = rendezvous_owner(key, [n for n in cluster.live if n != owner])
        log.info("cluster: %s is gone; %s placed on %s", owner, key, successor or cluster.name)
        if (
            successor is not None
            and successor != cluster.name
            and await cluster.dispatch_on(successor, stanza, to, from_)
        ):
            return
        await self.inner.deliver(stanza, to, from_, origin)


class Listing:
    """What each node holds and lists for the others (a Redis hash per node, removed
    when the node leaves or is reaped): the temporary public rooms of a MUC service,
    which are not stored, so that every node can list them."""

    __slots__ = ("_key", "_node", "_redis")

    def __init__(self, redis: RedisClient, key: Callable[[str], str], node: str) -> None:
        self._redis = redis
        self._key = key
        self._node = node

    async def put(self, kind: str, key: str, value: str | None) -> None:
        field = f"{kind}\0{key}"
        try:
            if value is None:
                await self._redis.hdel(self._key(self._node), field)
            else:
                await self._redis.hset(self._key(self._node), field, value)
        except OUTAGE_ERRORS as exc:
            log.warning("cluster: could not update the listing of %s: %s", key, exc)

    async def read(self, kind: str, nodes: tuple[str, ...]) -> dict[str, str]:
        prefix = f"{kind}\0".encode()
        pipe = self._redis.pipeline(transaction=False)
        for node in nodes:
            pipe.hgetall(self._key(node))
        try:
            found = await pipe.execute()
        except OUTAGE_ERRORS as exc:
            log.warning("cluster: could not read the nodes' listings: %s", exc)
            return {}
        listed: dict[str, str] = {}
        for entries in found:
            for field, value in entries.items():
                name = field if isinstance(field, bytes) else str(field).encode()
                if name.startswith(prefix):
                    text = value.decode() if isinstance(value, bytes) else str(value)
                    listed[name[len(prefix) :].decode()] = text
        return listed


class Placement:
    """This node's share of the cluster, as modules see it (``ctx.cluster``)."""

    __slots__ = ("_cluster", "_listeners", "_listing", "_start_task")

    def __init__(
        self,
        cluster: ClusterView,
        start_task: Callable[..., asyncio.Task[None]],
        listing: Listing | None = None,
    ) -> None:
        self._cluster = cluster
        self._start_task = start_task
        self._listing = listing
        self._listeners: list[Callable[[], Awaitable[None]]] = []
        cluster.on_live_change(self._changed)

    async def announce(self, kind: str, key: str, value: str | None) -> None:
        """List ``key`` (of ``kind``, e.g. ``"muc-room"``) as held by this node, with
        ``value`` (``None``: no longer). Entries go with the node when it leaves or
        dies."""
        if self._listing is not None:
            await self._listing.put(kind, key, value)

    async def announced(self, kind: str) -> dict[str, str]:
        """Every live node's entries of ``kind`` (key → value), this node's included."""
        if self._listing is None:
            return {}
        return await self._listing.read(kind, self._cluster.live)

    @property
    def node(self) -> str:
        """This node's name."""
        return self._cluster.name

    @property
    def live(self) -> tuple[str, ...]:
        """The live nodes, sorted (this one included)."""
        return self._cluster.live

    def owner_of(self, key: str) -> str:
        """The live node that holds ``key`` (rendezvous hashing)."""
        return self._cluster.owner_of(key)

    def is_mine(self, key: str) -> bool:
        """Whether this node holds ``key`` now."""
        return self._cluster.owner_of(key) == self._cluster.name

    def send(self, node: str, topic: str, value: object) -> None:
        """Hand ``value`` (picklable) to the handler of ``topic`` on ``node`` (the owner
        of something, :meth:`owner_of`), in order with the other stanzas and
        operations this node sends there; nobody waits for it. When ``node`` is this
        node, has left, or is found dead, the handler runs on this node (a dead node's
        unread messages run on the survivor that cleans up after it). Modules use
        ``ModuleContext.send_to_node`` and ``on_node_message``."""
        self._cluster.send_message(node, topic, value)

    def on_message(self, topic: str, handler: Callable[[Any], Awaitable[None]] | None) -> None:
        """Run ``await handler(value)`` for each message of ``topic`` sent to this node
        (``None``: stop). Messages are handled one at a time, in inbox order."""
        self._cluster.on_message(topic, handler)

    def place(self, inner: Destination, key_of: KeyOf) -> PlacedDestination:
        """``inner`` wrapped so that each stanza is handled on the owner of its key."""
        return PlacedDestination(inner, self._cluster, key_of)

    def on_change(self, listener: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Run ``listener()`` (as a task) each time nodes join or die, after the new
        owners are known. Returns the function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _changed(self, live: tuple[str, ...]) -> None:
        for listener in list(self._listeners):
            _ = self._start_task(listener(), name="cluster-placement-change")
