"""Acting on the outcome of a client's own IQ, for modules that keep two copies of
something in sync (bookmarks in PEP and in private XML, avatars in PEP and in the vCard).

The module notes the IQ on its way in (``user_send_packet``) and, when the reply passes
on its way back (``user_receive_packet``), it knows whether the change happened and
updates the other copy before the client reads the reply.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable
from typing import Generic, TypeVar

from xmppd.jid import JID, InvalidJID
from xmppd.sessions import Session, SessionKey, SessionRegistry
from xmppd.stanza import Element

T = TypeVar("T")


def addressed_to_own_account(address: str | None, session: Session) -> bool:
    """No address, or the session's own account (bare or full JID)."""
    if address is None:
        return True
    try:
        return JID.parse(address).bare == session.jid.bare
    except InvalidJID:
        return False


class OwnIqWatch(Generic[T]):
    """Notes about IQs a session sent to its own account, by IQ id, until the reply."""

    def __init__(self, name: str, *, limit: int = 32) -> None:
        self._key: SessionKey[dict[str, T] | None] = SessionKey(name, None)
        self._limit = limit
        """Notes kept per session at most (the oldest go first)."""

    @staticmethod
    def applies_to(iq: Element, session: Session) -> bool:
        """An IQ with an id, to the session's own account: one that can be noted."""
        return iq.get("id") is not None and addressed_to_own_account(iq.get("to"), session)

    def note(self, sessions: SessionRegistry, iq: Element, session: Session, value: T) -> bool:
        """Remember ``value`` for this IQ if :meth:`applies_to` it; ``False`` (nothing
        noted) otherwise."""
        iq_id = iq.get("id")
        if iq_id is None or not self.applies_to(iq, session):
            return False
        noted = sessions.get_state(session, self._key)
        notes: dict[str, T] = {} if noted is None else dict(noted)
        notes.pop(iq_id, None)
        notes[iq_id] = value
        while len(notes) > self._limit:
            del notes[next(iter(notes))]
        sessions.set_state(session, self._key, notes)
        return True

    def reply(
        self, sessions: SessionRegistry, stanza: Element, session: Session
    ) -> tuple[T, bool] | None:
        """For the reply to a noted IQ: the note, and whether the IQ succeeded."""
        if stanza.tag != "iq" or stanza.get("type") not in ("result", "error"):
            return None
        notes = sessions.get_state(session, self._key)
        iq_id = stanza.get("id")
        if not notes or iq_id is None or iq_id not in notes:
            return None
        if not addressed_to_own_account(stanza.get("from"), session):
            return None
        remaining = dict(notes)
        value = remaining.pop(iq_id)
        sessions.set_state(session, self._key, remaining or None)
        return value, stanza.get("type") == "result"


class KeyedLocks:
    """One ``asyncio.Lock`` per key (an account, say), forgotten when nobody holds it:
    keep the returned lock referenced while using it."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def lock(self, key: Hashable) -> asyncio.Lock:
        found = self._locks.get(key)
        if found is None:
            found = asyncio.Lock()
            self._locks[key] = found
        return found
