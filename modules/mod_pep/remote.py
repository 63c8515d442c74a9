"""Remote contacts' resources for PEP notifications over federation (XEP-0163 §4).

A contact on another server has no session here: what its resources want (their
verified ``+notify`` features, from XEP-0115 caps) is learnt from the available
presence they send to our users, and forgotten when they become unavailable. The table
is bounded (the oldest entries go first) and per server process: a resource that went
away without an unavailable presence (its server's link died) lingers until pushed out,
and a notification to it is simply not delivered by its server."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from xmppd.api import JID, ServiceKey

MAX_REMOTE_RESOURCES: Final = 10_000
"""Remote resources remembered at once."""


@dataclass(frozen=True, slots=True)
class RemoteResource:
    """An available remote resource: its ``+notify`` features, the caps they come from
    (``None`` while unknown) and its presence priority."""

    features: frozenset[str]
    adopted: tuple[str, str] | None
    priority: int


class RemoteResources:
    """Available remote resources by full JID, oldest first."""

    def __init__(self, limit: int = MAX_REMOTE_RESOURCES) -> None:
        self._limit = limit
        self._by_jid: OrderedDict[JID, RemoteResource] = OrderedDict()
        self._by_bare: dict[JID, set[JID]] = {}
        self.pending: set[JID] = set()
        """Full JIDs whose caps are being looked up (one lookup each at a time)."""

    def get(self, jid: JID) -> RemoteResource | None:
        return self._by_jid.get(jid)

    def set(self, jid: JID, resource: RemoteResource) -> None:
        self._by_jid[jid] = resource
        self._by_jid.move_to_end(jid)
        self._by_bare.setdefault(jid.bare, set()).add(jid)
        while len(self._by_jid) > self._limit:
            old, _ = self._by_jid.popitem(last=False)
            self._unindex(old)

    def remove(self, jid: JID) -> None:
        if self._by_jid.pop(jid, None) is not None:
            self._unindex(jid)

    def of(self, bare: JID) -> list[tuple[JID, RemoteResource]]:
        """The available resources of the remote account ``bare``."""
        return [(j, self._by_jid[j]) for j in self._by_bare.get(bare, ())]

    def _unindex(self, jid: JID) -> None:
        full = self._by_bare.get(jid.bare)
        if full is not None:
            full.discard(jid)
            if not full:
                del self._by_bare[jid.bare]


REMOTE: Final[ServiceKey[RemoteResources]] = ServiceKey("pep.remote")
