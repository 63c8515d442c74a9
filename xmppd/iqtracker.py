"""Matches IQ results and errors to requests the server sent (``ctx.request``)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from xmppd.jid import JID

if TYPE_CHECKING:
    from xmppd.stanza import Element


class IqTimeout(Exception):
    """No answer to a server-sent IQ in time."""


class IqTracker:
    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, asyncio.Future[Element]]] = {}

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
            return False
        expected_to, fut = entry
        if expected_to != str(from_) and expected_to != str(from_.bare):
            return False  # an answer from someone we did not ask
        del self._pending[iq_id]
        if not fut.done():
            fut.set_result(stanza)
        return True
