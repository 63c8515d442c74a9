"""What a node publishes about each of its sessions, and how other nodes see them.

A record travels through Redis as a signed pickle: the HMAC (a key derived from the
cluster's shared server secret) is checked before anything is unpickled, so whoever
can write to Redis without the secret cannot make a node run code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pickle
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from xmppd.jid import JID
from xmppd.stanza import parse

if TYPE_CHECKING:
    from xmppd.stanza import Element

_MAC_BYTES: Final = 32


class BadRecord(ValueError):
    """Bytes from Redis that were not signed with this cluster's secret."""


class Signer:
    """Signs and checks what nodes publish (pickled records and state values)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def dumps(self, value: object) -> bytes:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return hmac.new(self._key, data, hashlib.sha256).digest() + data

    def loads(self, blob: bytes) -> Any:
        mac, data = blob[:_MAC_BYTES], blob[_MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.new(self._key, data, hashlib.sha256).digest()):
            raise BadRecord("a cluster record with a bad signature (another secret?)")
        return pickle.loads(data)


@dataclass(slots=True)
class SessionRecord:
    """One session as its node publishes it (``sess:<bare>`` hash, field = resource)."""

    node: str
    stream_id: str
    peer: str = ""
    is_secure: bool = False
    is_detached: bool = False
    priority: int = 0
    presence: bytes | None = None
    interested: bool = False
    last_activity: float = 0.0
    """Wall-clock time (``time.time()``) of the last bytes from the client."""
    state: dict[str, Any] = field(default_factory=dict)
    """Shared per-session state (``SessionKey.shared``) by key name."""


class RemoteSession:
    """A session bound on another node, as this node's registry hands it out
    (the ``Session`` protocol of :mod:`xmppd.sessions`)."""

    __slots__ = ("_jid", "record")

    def __init__(self, jid: JID, record: SessionRecord) -> None:
        self._jid = jid
        self.record = record

    @property
    def node(self) -> str:
        return self.record.node

    @property
    def jid(self) -> JID:
        return self._jid

    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    @property
    def domain(self) -> str:
        return self._jid.domain

    @property
    def peer(self) -> str:
        return self.record.peer

    @property
    def is_secure(self) -> bool:
        return self.record.is_secure

    @property
    def is_detached(self) -> bool:
        return self.record.is_detached

    @property
    def priority(self) -> int:
        return self.record.priority

    @property
    def presence(self) -> Element | None:
        data = self.record.presence
        return None if data is None else parse(data)

    @property
    def is_available(self) -> bool:
        return self.record.presence is not None

    @property
    def is_interested(self) -> bool:
        return self.record.interested

    @property
    def last_activity(self) -> float:
        """In this node's event-loop time, like a local session's."""
        elapsed = max(0.0, time.time() - self.record.last_activity)
        return asyncio.get_running_loop().time() - elapsed

    def __repr__(self) -> str:
        return f"RemoteSession({self._jid}, node={self.record.node!r})"
