"""Ended client sessions announced a few per event-loop turn, without letting a new
session of the same address overtake its predecessor's end.

When thousands of connections end at once (a network blip, or their stream-management
sessions timing out together), every ended session's ``resource_unbound`` hooks (the
unavailable presence to each subscribed contact, last activity, caches) would run in
the same turn, and a logged-in user's message waits behind all of them. Each ended
session waits for a :class:`~xmppd.turnpacer.TurnPacer` ticket instead
(``c2s.teardowns_per_turn`` per turn, in order). The session is unbound before it
waits: nothing is routed to it meanwhile; only its announcements wait.

One order must hold whatever the queue: a client that comes back under the same full
JID (the same resource) must not have its predecessor's unavailable presence reach its
contacts after its own available one. So when a session goes live under a full JID
whose ended predecessor is still waiting (or, replaced by it, is about to), that
predecessor's announcements go first, at once: they are then as early as they were
before pacing.
"""

from __future__ import annotations

import asyncio

from xmppd.turnpacer import TurnPacer


class Teardowns:
    """The queue of ended sessions' announcements, shared by the client streams."""

    __slots__ = ("_expedited", "_pacer", "_waiting")

    def __init__(self, per_turn: int) -> None:
        self._pacer = TurnPacer(per_turn)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        """Full JID → the ticket of its ended session waiting for a turn."""
        self._expedited: set[str] = set()
        """Full JIDs whose replaced session will ask for a turn: let it through."""

    @property
    def waiting(self) -> int:
        """Ended sessions waiting to announce their end."""
        return self._pacer.waiting

    async def turn(self, full_jid: str) -> None:
        """Return when the session that was bound to ``full_jid`` may announce its end."""
        if full_jid in self._expedited:
            self._expedited.discard(full_jid)
            return
        ticket = self._pacer.ticket()
        if ticket.done():
            return
        earlier = self._waiting.get(full_jid)
        if earlier is not None and not earlier.done():
            earlier.set_result(None)  # two ended sessions of one address: in order
        self._waiting[full_jid] = ticket
        try:
            await ticket
        finally:
            if self._waiting.get(full_jid) is ticket:
                del self._waiting[full_jid]

    def going_live(self, full_jid: str, *, replaced: bool) -> None:
        """A session goes live under ``full_jid`` (``replaced``: it closed another one
        bound there): the ended one's announcements first."""
        ticket = self._waiting.pop(full_jid, None)
        if ticket is not None:
            if not ticket.done():
                ticket.set_result(None)
        elif replaced:
            self._expedited.add(full_jid)

    def unpace(self) -> None:
        """The server stops: every waiting end is announced now, later ones at once."""
        self._pacer.unlimit()
