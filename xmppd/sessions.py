"""The session registry: who is connected, under which full JID, with what presence and
per-session feature state.

Three roles, three types:

* :class:`Session` is what modules see of a client session: a read-only handle (its
  JID, priority, presence...). Modules never change a session through it.
* :class:`Endpoint` is the live local connection behind a session (the c2s stream,
  ``xmppd.stream.c2s``): it writes bytes to a socket. Only the core holds endpoints.
* :class:`SessionRegistry` is the interface between them: modules look sessions up
  by JID, deliver to them, read and write their per-session state (``SessionKey``)
  and their presence through it, never through the objects themselves.

Two implementations: :class:`MemorySessions`, the default (a handle *is* the live
endpoint, so nothing is copied on the hot path), and :class:`SerialisedSessions`,
which keeps every session's presence, flags and state as serialised bytes and hands
out snapshots, exactly as a registry in Redis will (docs/architecture.md). Running
the suite on the second one proves that modules keep no live reference to a session
and write back every change they make.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar, cast

from lxml import etree

from xmppd.jid import JID
from xmppd.stanza import serialize

if TYPE_CHECKING:
    from xmppd.stanza import Element

T = TypeVar("T")

RegistryKind = Literal["memory", "serialised"]


class SessionKey(Generic[T]):
    """A typed key for per-session feature state that modules keep
    (``ctx.sessions.get_state(session, KEY)``). Values must be picklable: a registry
    may keep them outside this process. The registry returns ``default`` until a
    value is set; never change a returned value in place, set a new one.

    ``shared=False``: only the node holding the session reads the value (a queue the
    session's own delivery hook keeps, say); a cluster registry does not publish it
    to the other nodes, and reads of it on another node see ``default``."""

    __slots__ = ("default", "name", "shared")

    def __init__(self, name: str, default: T, *, shared: bool = True) -> None:
        self.name = name
        self.default = default
        self.shared = shared

    def __repr__(self) -> str:
        return f"SessionKey({self.name!r})"


class Session(Protocol):
    """A client session as modules see it: read-only facts about it.

    Obtain one from the registry (``ctx.sessions.get(full_jid)``) or from a hook event;
    act on it through the registry (``ctx.sessions.deliver(session, stanza)``...).
    """

    @property
    def jid(self) -> JID:
        """Full JID once bound (bare before)."""

    @property
    def stream_id(self) -> str:
        """Tells this session from others bound to the same full JID before or after it
        (a reconnect with the same resource is a new session)."""

    @property
    def domain(self) -> str: ...

    @property
    def peer(self) -> str:
        """Remote IP address."""

    @property
    def is_secure(self) -> bool: ...

    @property
    def is_detached(self) -> bool:
        """The connection dropped and the session waits to be resumed (XEP-0198); it
        stays routable and keeps what it is sent."""

    @property
    def priority(self) -> int:
        """Priority of the last available presence (0 before any)."""

    @property
    def presence(self) -> Element | None:
        """A fresh copy of the last available presence broadcast (yours to change);
        ``None`` while unavailable."""

    @property
    def is_available(self) -> bool:
        """The session has sent available presence (cheap; does not build an element)."""

    @property
    def is_interested(self) -> bool:
        """True once the client has requested its roster (it receives roster pushes)."""

    @property
    def last_activity(self) -> float:
        """Event-loop time of the last bytes received from the client."""


CONTINUED_ELSEWHERE: Final = "the session was resumed on another node"
"""The ``conflict`` text that closes a session continued by another stream
(:attr:`Endpoint.continues_session`)."""


class Endpoint(Session, Protocol):
    """A live local connection (the c2s stream): what the registry drives."""

    priority: int  # writable on the live object
    is_interested: bool
    continues_session: bool
    """A stream management session resumed here that began elsewhere (handed over by
    another cluster node, or taken from a dead node's mirror): what its client never
    acknowledged came with it, so an older copy of the session, closed because of this
    one, must not deliver that again."""

    @property
    def transport_name(self) -> str:
        """``tcp``, ``websocket`` or ``bosh`` (metrics and logs)."""

    @property
    def presence(self) -> Element | None: ...

    @presence.setter
    def presence(self, stanza: Element | None) -> None: ...

    def get(self, key: SessionKey[T]) -> T: ...

    def set(self, key: SessionKey[T], value: T) -> None: ...

    async def deliver(self, stanza: Element, data: bytes | None = None) -> None:
        """Send a stanza to the client, through the ``user_receive_packet`` hook.

        ``data``: the stanza already serialised (a fan-out serialises its copies once);
        written as is when no ``user_receive_packet`` handler replaced the stanza."""

    def send_raw(self, stanza: Element) -> None:
        """Write a stanza to the client as is (no hooks)."""

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream, with a stream error when ``condition`` is given (``text``
        :data:`CONTINUED_ELSEWHERE`: the session goes on in another stream, with its
        unacknowledged stanzas)."""

    async def wait_closed(self) -> None:
        """After ``close``: wait until the session's teardown hooks have run."""


class SessionRegistry(Protocol):
    """Bound client sessions of the whole server, and their per-session state.

    Modules reach sessions only through this interface; an implementation may keep
    the sessions of other processes too (clustering)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Session]: ...

    def get(self, full: JID) -> Session | None:
        """The routable session bound to ``full``."""

    def of(self, bare: JID) -> list[Session]:
        """Every routable session of an account."""

    def available(self, bare: JID) -> list[Session]:
        """Sessions of ``bare`` that have sent available presence."""

    def message_targets(self, bare: JID) -> list[Session]:
        """Recipients of a chat/normal message to a bare JID (RFC 6121 §8.5.2.1.1):
        the available resources of highest non-negative priority."""

    def is_online(self, bare: JID) -> bool: ...

    def is_current(self, session: Session) -> bool:
        """``session`` is still the one bound to its full JID (not closed, not replaced
        by a new session with the same resource)."""

    async def deliver(self, session: Session, stanza: Element, data: bytes | None = None) -> None:
        """Send ``stanza`` to the client (``user_receive_packet`` runs). ``data``: its
        serialisation, written instead of serialising again when no
        ``user_receive_packet`` handler replaced the stanza."""

    def send_raw(self, session: Session, stanza: Element) -> None:
        """Write ``stanza`` to the client as is (no hooks)."""

    def close(
        self, session: Session, condition: str | None = None, text: str | None = None
    ) -> None:
        """Close the session's stream (with a stream error when ``condition`` is given)."""

    async def wait_closed(self, session: Session) -> None:
        """After ``close``: wait until its teardown hooks (``resource_unbound``) are done."""

    def get_state(self, session: Session, key: SessionKey[T]) -> T:
        """Per-session feature state (``key.default`` until set)."""

    def set_state(self, session: Session, key: SessionKey[T], value: T) -> None: ...

    async def published(self) -> None:
        """Wait until the changes made so far to this node's sessions (state, presence)
        are where the other nodes of a cluster read them (nothing to wait for in a
        single process). A module that changes shared state on a client's request
        awaits it before answering, so that the client's next stanza, or a contact's
        through another node, finds the change (the other nodes follow within
        milliseconds)."""

    async def caught_up(self) -> None:
        """Wait until this node's view holds every session change the other nodes of
        a cluster published before now (nothing to wait for in a single process).
        Asked before a user is taken for offline: a contact who has just come online
        on another node (and seen their own presence, so their session is published)
        is found, not sent to offline storage."""

    def set_presence(self, session: Session, presence: Element | None, priority: int) -> Session:
        """Record the session's last available presence broadcast (``None``: unavailable)
        and its priority; returns the session as it is now (a handle may be a snapshot)."""

    def set_interested(self, session: Session) -> None:
        """The client requested its roster: it receives roster pushes from now on."""

    # -- the core's side
    def view(self, endpoint: Endpoint) -> Session:
        """The handle modules get for a local endpoint (also before it is bound)."""

    def bind(self, endpoint: Endpoint) -> Endpoint | None:
        """Make ``endpoint`` routable under its full JID; returns the local endpoint it
        replaces (same full JID), which the caller closes."""

    def unbind(self, endpoint: Endpoint) -> bool:
        """Stop routing to ``endpoint``; its state stays readable until :meth:`release`
        (the ``resource_unbound`` hooks read it). ``False`` when it was not bound."""

    def release(self, endpoint: Endpoint) -> None:
        """Forget an unbound endpoint's state."""

    def connection_changed(self, endpoint: Endpoint) -> None:
        """A bound endpoint was detached or resumed (stream management): a registry
        that publishes sessions publishes it again."""

    def endpoints(self) -> list[Endpoint]:
        """Every local bound endpoint (server stop, idle-memory release, the pings of
        idle clients): in a cluster, this node's own sessions."""

    def endpoints_of(self, bare: JID) -> list[Endpoint]:
        """The local bound endpoints of an account (account removal)."""


class SessionData:
    """Storage behind an endpoint's ``get``/``set``; mixed into session classes."""

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


class _JidMaps:
    """Full-JID and bare-JID maps of bound endpoints (shared by both registries)."""

    __slots__ = ("_bare", "_full")

    def __init__(self) -> None:
        self._full: dict[JID, Endpoint] = {}
        self._bare: dict[JID, dict[str, Endpoint]] = {}

    def __len__(self) -> int:
        return len(self._full)

    def is_online(self, bare: JID) -> bool:
        return bare in self._bare

    def bind(self, endpoint: Endpoint) -> Endpoint | None:
        full = endpoint.jid
        old = self._full.get(full)
        self._full[full] = endpoint
        self._bare.setdefault(full.bare, {})[full.resource] = endpoint
        return old

    def unbind(self, endpoint: Endpoint) -> bool:
        full = endpoint.jid
        if self._full.get(full) is not endpoint:
            return False
        del self._full[full]
        resources = self._bare.get(full.bare)
        if resources is not None:
            resources.pop(full.resource, None)
            if not resources:
                del self._bare[full.bare]
        return True

    def endpoints(self) -> list[Endpoint]:
        return list(self._full.values())

    def connection_changed(self, endpoint: Endpoint) -> None:
        """Nothing to publish in one process."""

    def endpoints_of(self, bare: JID) -> list[Endpoint]:
        resources = self._bare.get(bare)
        return list(resources.values()) if resources else []


async def end_sessions(
    registry: SessionRegistry,
    sessions: list[Session],
    condition: str,
    text: str | None = None,
    *,
    timeout: float = 10.0,
) -> int:
    """Close ``sessions``, local or on other nodes, and wait (up to ``timeout``)
    until their teardown is done: a local one's hooks have run, a remote one is no
    longer bound (its node unbinds it when its stream ends). How many were closed."""
    for session in sessions:
        registry.close(session, condition, text)

    async def gone(session: Session) -> None:
        await registry.wait_closed(session)
        # On another node: no local event tells when it ends; its record goes then.
        for _ in range(int(timeout / 0.05) + 1):
            if not registry.is_current(session):
                return
            await asyncio.sleep(0.05)

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(gone(s) for s in sessions))
    return len(sessions)


def _best_priority(sessions: list[Session]) -> list[Session]:
    best = -1
    chosen: list[Session] = []
    for s in sessions:
        if not s.is_available or s.priority < 0:
            continue
        if s.priority > best:
            best = s.priority
            chosen = [s]
        elif s.priority == best:
            chosen.append(s)
    return chosen


class MemorySessions(_JidMaps):
    """The in-process registry: a session handle is the live endpoint itself."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._full.values()))

    def get(self, full: JID) -> Session | None:
        return self._full.get(full)

    def of(self, bare: JID) -> list[Session]:
        resources = self._bare.get(bare)
        return list(resources.values()) if resources else []

    def available(self, bare: JID) -> list[Session]:
        resources = self._bare.get(bare)
        if not resources:
            return []
        return [s for s in resources.values() if s.is_available]

    def message_targets(self, bare: JID) -> list[Session]:
        resources = self._bare.get(bare)
        if not resources:
            return []
        if len(resources) == 1:  # one resource (the common case): no ranking
            (only,) = resources.values()
            return [only] if only.is_available and only.priority >= 0 else []
        return _best_priority(list(resources.values()))

    def is_current(self, session: Session) -> bool:
        return self._full.get(session.jid) is session

    def deliver(
        self, session: Session, stanza: Element, data: bytes | None = None
    ) -> Coroutine[Any, Any, None]:
        # Not a coroutine of its own: the caller awaits the endpoint's (one frame less
        # per delivered stanza).
        return cast(Endpoint, session).deliver(stanza, data)

    def send_raw(self, session: Session, stanza: Element) -> None:
        cast(Endpoint, session).send_raw(stanza)

    def close(
        self, session: Session, condition: str | None = None, text: str | None = None
    ) -> None:
        cast(Endpoint, session).close(condition, text)

    async def wait_closed(self, session: Session) -> None:
        await cast(Endpoint, session).wait_closed()

    async def published(self) -> None:
        return

    async def caught_up(self) -> None:
        return

    def get_state(self, session: Session, key: SessionKey[T]) -> T:
        return cast(Endpoint, session).get(key)

    def set_state(self, session: Session, key: SessionKey[T], value: T) -> None:
        cast(Endpoint, session).set(key, value)

    def set_presence(self, session: Session, presence: Element | None, priority: int) -> Session:
        endpoint = cast(Endpoint, session)
        endpoint.presence = presence
        endpoint.priority = priority
        return endpoint

    def set_interested(self, session: Session) -> None:
        cast(Endpoint, session).is_interested = True

    def view(self, endpoint: Endpoint) -> Session:
        return endpoint

    def release(self, endpoint: Endpoint) -> None:
        pass


@dataclass(slots=True)
class _Record:
    """What the serialised registry keeps of one session (pickled between uses)."""

    priority: int = 0
    presence: bytes | None = None
    interested: bool = False
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    """A session as :class:`SerialisedSessions` hands it out: presence, priority and
    flags decoded from the stored bytes when it was looked up; the connection facts
    (JID, address, TLS, detached) read from the endpoint it stands for, which in a
    cluster the owning node would publish with the record."""

    endpoint: Endpoint
    priority: int
    is_interested: bool
    presence_bytes: bytes | None

    @property
    def jid(self) -> JID:
        return self.endpoint.jid

    @property
    def stream_id(self) -> str:
        return self.endpoint.stream_id

    @property
    def domain(self) -> str:
        return self.endpoint.domain

    @property
    def peer(self) -> str:
        return self.endpoint.peer

    @property
    def is_secure(self) -> bool:
        return self.endpoint.is_secure

    @property
    def is_detached(self) -> bool:
        return self.endpoint.is_detached

    @property
    def last_activity(self) -> float:
        return self.endpoint.last_activity

    @property
    def transport_name(self) -> str:
        """``tcp``, ``websocket`` or ``bosh`` (what the admin API shows)."""
        return self.endpoint.transport_name

    @property
    def presence(self) -> Element | None:
        return None if self.presence_bytes is None else etree.fromstring(self.presence_bytes)

    @property
    def is_available(self) -> bool:
        return self.presence_bytes is not None


class SerialisedSessions(_JidMaps):
    """A registry that keeps each session's presence, flags and feature state as bytes
    (pickled), as the Redis registry will, and hands out decoded snapshots.

    Slower than :class:`MemorySessions`; it exists so the end-to-end suite can prove
    that modules work with a registry whose sessions are not live objects
    (``[sessions] registry = "serialised"``)."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[int, bytes] = {}

    # -- records
    def _endpoint(self, session: Session) -> Endpoint:
        if isinstance(session, SessionSnapshot):
            return session.endpoint
        return cast(Endpoint, session)

    def _load(self, endpoint: Endpoint) -> _Record:
        data = self._records.get(id(endpoint))
        if data is None:
            return _Record()
        return cast(_Record, pickle.loads(data))

    def _store(self, endpoint: Endpoint, record: _Record) -> None:
        self._records[id(endpoint)] = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)

    def _snapshot(self, endpoint: Endpoint) -> SessionSnapshot:
        record = self._load(endpoint)
        return SessionSnapshot(endpoint, record.priority, record.interested, record.presence)

    # -- lookups
    def __iter__(self) -> Iterator[Session]:
        return iter([self._snapshot(e) for e in self._full.values()])

    def get(self, full: JID) -> Session | None:
        endpoint = self._full.get(full)
        return None if endpoint is None else self._snapshot(endpoint)

    def of(self, bare: JID) -> list[Session]:
        return [self._snapshot(e) for e in self.endpoints_of(bare)]

    def available(self, bare: JID) -> list[Session]:
        return [s for s in self.of(bare) if s.is_available]

    def message_targets(self, bare: JID) -> list[Session]:
        return _best_priority(self.of(bare))

    def is_current(self, session: Session) -> bool:
        return self._full.get(session.jid) is self._endpoint(session)

    # -- actions
    async def deliver(self, session: Session, stanza: Element, data: bytes | None = None) -> None:
        await self._endpoint(session).deliver(stanza, data)

    def send_raw(self, session: Session, stanza: Element) -> None:
        self._endpoint(session).send_raw(stanza)

    def close(
        self, session: Session, condition: str | None = None, text: str | None = None
    ) -> None:
        self._endpoint(session).close(condition, text)

    async def wait_closed(self, session: Session) -> None:
        await self._endpoint(session).wait_closed()

    async def published(self) -> None:
        return

    async def caught_up(self) -> None:
        return

    # -- state
    def get_state(self, session: Session, key: SessionKey[T]) -> T:
        state = self._load(self._endpoint(session)).state
        return cast(T, state.get(key.name, key.default))

    def set_state(self, session: Session, key: SessionKey[T], value: T) -> None:
        endpoint = self._endpoint(session)
        record = self._load(endpoint)
        record.state[key.name] = value
        self._store(endpoint, record)

    def set_presence(self, session: Session, presence: Element | None, priority: int) -> Session:
        endpoint = self._endpoint(session)
        record = self._load(endpoint)
        record.presence = None if presence is None else serialize(presence)
        record.priority = priority
        self._store(endpoint, record)
        return self._snapshot(endpoint)

    def set_interested(self, session: Session) -> None:
        endpoint = self._endpoint(session)
        record = self._load(endpoint)
        record.interested = True
        self._store(endpoint, record)

    # -- the core's side
    def view(self, endpoint: Endpoint) -> Session:
        return self._snapshot(endpoint)

    def release(self, endpoint: Endpoint) -> None:
        self._records.pop(id(endpoint), None)


def make_registry(kind: RegistryKind) -> SessionRegistry:
    """The configured registry implementation."""
    if kind == "serialised":
        return SerialisedSessions()
    return MemorySessions()
