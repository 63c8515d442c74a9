"""Telling the other nodes of a cluster that something they may have cached changed.

A module that keeps a copy of stored data in memory (a roster, a block list) keeps it
right on its own node by updating it where it writes. In a cluster, another node may
hold a copy of the same data; :meth:`CacheInvalidations.publish` tells every other node
to drop it (``ctx.invalidate(topic, key)``), and the handlers a module registered for
the topic (``ctx.on_invalidate``) run there. In a single process nothing is sent.

A node that lost track of what others published (Redis was unreachable) is told to
drop everything: its handlers get :data:`ALL` as the key.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

log = logging.getLogger(__name__)

ALL: Final = "*"
"""The key handlers get when every cached entry of the topic must go."""

Handler = Callable[[str], None]


class _Sent:
    """What :meth:`CacheInvalidations.publish` returns in a single process: nothing to
    wait for."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # an empty generator: awaiting it returns at once


SENT: Final = _Sent()


class CacheInvalidations:
    """Topic → handlers on this node; a publisher to the others when clustered."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self.publisher: Callable[[str, str], Awaitable[object]] | None = None
        """Set by the cluster node (``None``: a single process); what it returns is done
        when the invalidation is in Redis, where the other nodes read it."""
        self.generation = 0
        """Bumped by every invalidation received: a cache that loaded data across an
        await may compare it before and after, and not keep what may be stale."""

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._handlers.setdefault(topic, []).append(handler)

    def unsubscribe(self, topic: str, handler: Handler) -> None:
        handlers = self._handlers.get(topic)
        if handlers and handler in handlers:
            handlers.remove(handler)

    def publish(self, topic: str, key: str) -> None:
        """Tell the other nodes (none in a single process)."""
        _ = self.send(topic, key)

    def send(self, topic: str, key: str) -> Awaitable[object]:
        """:meth:`publish`, handing back what to await to know the other nodes can read
        it (before answering a client whose next stanza may reach another node)."""
        if self.publisher is not None:
            return self.publisher(topic, key)
        return SENT

    def received(self, topic: str, key: str) -> None:
        """Another node changed ``key`` of ``topic``."""
        self.generation += 1
        for handler in list(self._handlers.get(topic, ())):
            try:
                handler(key)
            except Exception:
                log.exception("cache invalidation handler of %s failed", topic)

    def received_all(self) -> None:
        """Drop everything (this node may have missed invalidations)."""
        for topic in list(self._handlers):
            self.received(topic, ALL)
