"""The session manager: who is connected, under which full JID, and their presence.

``Session`` is the view of a connected client that modules get; the c2s stream
(``xmppd.stream.c2s``) implements it. ``SessionManager`` keeps the full and bare
JID maps and picks recipients by the RFC 6121 §8 rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from xmppd.jid import JID

if TYPE_CHECKING:
    from xmppd.stanza import Element

T = TypeVar("T")


class SessionKey(Generic[T]):
    """A typed key for per-session data that modules keep (``session.get(KEY)``)."""

    __slots__ = ("default", "name")

    def __init__(self, name: str, default: T) -> None:
        self.name = name
        self.default = default


class Session(Protocol):
    """A client session as modules see it."""

    @property
    def jid(self) -> JID:
        """Full JID once bound (bare before)."""

    @property
    def domain(self) -> str: ...

    @property
    def peer(self) -> str:
        """Remote IP address."""

    @property
    def is_secure(self) -> bool: ...

    @property
    def is_authenticated(self) -> bool: ...

    @property
    def is_bound(self) -> bool: ...

    @property
    def is_detached(self) -> bool:
        """The connection dropped and the session waits to be resumed (XEP-0198); it
        stays routable and keeps what it is sent."""

    priority: int
    """Priority of the last available presence (0 before any)."""

    @property
    def presence(self) -> Element | None:
        """A fresh copy of the last available presence broadcast (yours to change);
        ``None`` while unavailable. Set it to record a new one, or ``None``."""

    @presence.setter
    def presence(self, stanza: Element | None) -> None: ...

    @property
    def is_available(self) -> bool:
        """The session has sent available presence (cheap; does not build an element)."""

    is_interested: bool
    """True once the client has requested its roster (it receives roster pushes)."""
    last_activity: float
    """Event-loop time of the last bytes received from the client."""

    def get(self, key: SessionKey[T]) -> T: ...

    def set(self, key: SessionKey[T], value: T) -> None: ...

    async def deliver(self, stanza: Element) -> None:
        """Send a stanza to the client, through the ``user_receive_packet`` hook."""

    def send_raw(self, stanza: Element) -> None:
        """Write a stanza to the client as is (no hooks)."""

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream, with a stream error when ``condition`` is given."""

    async def wait_closed(self) -> None:
        """After ``close``: wait until the session's teardown hooks have run."""


class SessionData:
    """Storage behind ``Session.get``/``set``; mixed into session classes."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, Any] | None = None

    def get(self, key: SessionKey[T]) -> T:
        if self._data is None:
            return key.default
        return cast(T, self._data.get(key.name, key.default))

    def set(self, key: SessionKey[T], value: T) -> None:
        if self._data is None:
            self._data = {}
        self._data[key.name] = value


class SessionManager:
    """Full-JID and bare-JID maps of bound sessions on this server (all hosts)."""

    __slots__ = ("_bare", "_full")

    def __init__(self) -> None:
        self._full: dict[JID, Session] = {}
        self._bare: dict[JID, dict[str, Session]] = {}

    def __len__(self) -> int:
        return len(self._full)

    def get(self, full: JID) -> Session | None:
        return self._full.get(full)

    def of(self, bare: JID) -> list[Session]:
        """Every bound session of an account."""
        resources = self._bare.get(bare)
        return list(resources.values()) if resources else []

    def is_online(self, bare: JID) -> bool:
        return bare in self._bare

    def add(self, session: Session) -> Session | None:
        """Register a bound session; returns the session it replaces (same full JID)."""
        full = session.jid
        old = self._full.get(full)
        self._full[full] = session
        self._bare.setdefault(full.bare, {})[full.resource] = session
        return old

    def remove(self, session: Session) -> bool:
        """Forget ``session`` if it is the one registered under its JID."""
        full = session.jid
        if self._full.get(full) is not session:
            return False
        del self._full[full]
        resources = self._bare.get(full.bare)
        if resources is not None:
            resources.pop(full.resource, None)
            if not resources:
                del self._bare[full.bare]
        return True

    def available(self, bare: JID) -> list[Session]:
        """Sessions of ``bare`` that have sent available presence."""
        resources = self._bare.get(bare)
        if not resources:
            return []
        return [s for s in resources.values() if s.is_available]

    def message_targets(self, bare: JID) -> list[Session]:
        """Recipients of a chat/normal message to a bare JID (RFC 6121 §8.5.2.1.1):
        the available resources of highest non-negative priority."""
        resources = self._bare.get(bare)
        if not resources:
            return []
        best = -1
        chosen: list[Session] = []
        for s in resources.values():
            if not s.is_available or s.priority < 0:
                continue
            if s.priority > best:
                best = s.priority
                chosen = [s]
            elif s.priority == best:
                chosen.append(s)
        return chosen

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._full.values()))
