"""External components (XEP-0114) in a cluster: a component connects to one node;
the others forward what is addressed to it there.

Where each component is connected is kept in Redis (``components`` hash) and in every
node's memory, kept current through the session log (cache invalidation topic
:data:`TOPIC`, key ``<domain> <node>``, an empty node when it went away)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from xmppd.invalidation import ALL

if TYPE_CHECKING:
    from xmppd.cluster.keys import Keys
    from xmppd.cluster.writer import RedisWriter
    from xmppd.invalidation import CacheInvalidations
    from xmppd.jid import JID
    from xmppd.stanza import Element

log = logging.getLogger(__name__)

TOPIC: Final = "cluster:components"

_DELETE_IF_OURS: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class ClusterComponents:
    """``RemoteComponents`` (xmppd.stream.component) for a cluster node."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        node: str,
        writer: RedisWriter,
        invalidations: CacheInvalidations,
        *,
        forward: Callable[[str, Element, JID, JID], Awaitable[bool]],
        is_dead: Callable[[str], bool],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._node = node
        self._writer = writer
        self._invalidations = invalidations
        self._forward = forward
        self._is_dead = is_dead
        self._where: dict[str, str] = {}
        self._mine: set[str] = set()
        self._stale = False
        invalidations.subscribe(TOPIC, self._changed)

    async def load(self) -> None:
        """Read where every component is (at start, and after losing track)."""
        found = await self._redis.hgetall(self._keys.components())
        self._where = {
            _text(domain): _text(node)
            for domain, node in found.items()
            if _text(node) != self._node
        }
        self._stale = False

    def _changed(self, key: str) -> None:
        if key == ALL:
            self._stale = True  # reloaded by the node (it lost track of the log)
            return
        domain, _, node = key.partition(" ")
        if node and node != self._node:
            self._where[domain] = node
        else:
            self._where.pop(domain, None)

    @property
    def stale(self) -> bool:
        return self._stale

    def held_elsewhere(self, domain: str) -> str | None:
        node = self._where.get(domain)
        if node is None or self._is_dead(node):
            return None
        return node

    def connected(self, domain: str) -> None:
        self._mine.add(domain)
        self._where.pop(domain, None)
        key, node = self._keys.components(), self._node
        _ = self._writer.submit(lambda pipe: pipe.hset(key, domain, node))
        self._invalidations.publish(TOPIC, f"{domain} {node}")

    def disconnected(self, domain: str) -> None:
        self._mine.discard(domain)
        key, node = self._keys.components(), self._node
        _ = self._writer.submit(lambda pipe: pipe.eval(_DELETE_IF_OURS, 1, key, domain, node))
        self._invalidations.publish(TOPIC, f"{domain} ")

    def republish(self) -> None:
        """Announce this node's components again (Redis lost them)."""
        for domain in list(self._mine):
            self.connected(domain)

    async def forget_node(self, node: str) -> None:
        """A dead node's components are connected nowhere."""
        key = self._keys.components()
        for domain, holder in list(self._where.items()):
            if holder == node:
                await self._redis.eval(_DELETE_IF_OURS, 1, key, domain, node)
                del self._where[domain]
                self._invalidations.publish(TOPIC, f"{domain} ")

    async def forward(self, node: str, stanza: Element, to: JID, from_: JID) -> bool:
        return await self._forward(node, stanza, to, from_)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
