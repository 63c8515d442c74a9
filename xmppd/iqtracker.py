"""Matches IQ results and errors to requests the server sent (``ctx.request``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from xmppd.jid import JID

if TYPE_CHECKING:
    from xmppd.stanza import Element


class IqTimeout(Exception):
    """No answer to a server-sent IQ in time."""


class IqTracker:
    """Requests this process sent and waits for. In a cluster the answer may arrive at
    another node (the addressee answers to the host or the user's bare JID, which any
    node serves): a request's id names the node that sent it (``<id>~<node>``), and an
    answer for another node's request is passed there (``elsewhere``)."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, asyncio.Future[Element]]] = {}
        self.node = ""
        """This node's name in a cluster (``""``: a single process)."""
        self.elsewhere: Callable[[str, Element, JID], None] | None = None
        """Passes an answer to the node that sent the request (set in a cluster)."""

    def request_id(self, base: str) -> str:
        """The id to send a request with (names this node in a cluster)."""
        return f"{base}~{self.node}" if self.node else base

    def expect(self, iq_id: str, to: str) -> asyncio.Future[Element]:
        fut: asyncio.Future[Element] = asyncio.get_running_loop().create_future()
        self._pending[iq_id] = (to, fut)
        return fut

    def forget(self, iq_id: str) -> None:
        self._pending.pop(iq_id, None)

    def resolve(self, stanza: Element, from_: JID) -> bool:
        """Complete the request this result/error answers; ``False`` if none matches."""
        iq_id = stanza.get("id")
        if iq_id is None:
            return False
        entry = self._pending.get(iq_id)
        if entry is None:
            node = iq_id.rpartition("~")[2] if "~" in iq_id else ""
            if node and node != self.node and self.elsewhere is not None:
                self.elsewhere(node, stanza, from_)
                return True
            return False
        expected_to, fut = entry
        if expected_to != str(from_) and expected_to != str(from_.bare):
            return False  # an answer from someone we did not ask
        del self._pending[iq_id]
        if not fut.done():
            fut.set_result(stanza)
        return True
