"""The cluster's session registry: this node's live sessions plus a current view of
every other node's, behind the same :class:`~xmppd.sessions.SessionRegistry`
interface as the single-process one.

Lookups never wait for Redis: each node keeps the other nodes' sessions in memory
(:class:`RemoteSession` records), kept current by tailing the session log
(:mod:`xmppd.cluster.feed`). What a module does to a session on another node (deliver,
close, set state) becomes an operation on that node's inbox (:mod:`xmppd.cluster.bus`).
Changes to this node's sessions are published as they happen (batched per event-loop
turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias, TypeVar, cast

from xmppd.cluster.records import RemoteSession, SessionRecord
from xmppd.cluster.writer import OUTAGE_ERRORS
from xmppd.jid import JID
from xmppd.sessions import CONTINUED_ELSEWHERE, MemorySessions, _best_priority
from xmppd.stanza import serialize

if TYPE_CHECKING:
    from xmppd.sessions import Endpoint, Session, SessionKey
    from xmppd.stanza import Element

log = logging.getLogger(__name__)

Held: TypeAlias = tuple["Element", "bytes | None"]
"""A stanza kept for a session being adopted, with its serialized form if known."""

FENCE_WAIT: Final = 3.0
"""Seconds stanzas wait on a session's new node for the fence through its old node
(when the old node died, the fence never comes)."""

MOVED_FOR: Final = 10.0
"""Seconds a node forwards stanzas for a session it handed over, waiting for the new
node's record (it comes in milliseconds)."""

T = TypeVar("T")

PUBLISHED_WAIT = 1.0
"""Seconds :meth:`ClusterSessions.published` waits at most (Redis unreachable)."""


class RemoteOps(Protocol):
    """What the registry asks of the stanza bus for sessions on other nodes."""

    async def deliver(self, session: RemoteSession, stanza: Element, data: bytes | None) -> None:
        """Send ``stanza`` to the session on its node (its ``user_receive_packet`` runs
        there)."""

    def send_raw(self, session: RemoteSession, stanza: Element) -> None: ...

    def close(self, session: RemoteSession, condition: str | None, text: str | None) -> None: ...

    def set_state(self, session: RemoteSession, name: str, value: object) -> None: ...

    def set_presence(self, session: RemoteSession, presence: bytes | None, priority: int) -> None:
        """Ask the node holding the session to record its presence."""

    def set_interested(self, session: RemoteSession) -> None: ...

    def fence(self, old: str, full: JID, fence: str, new: str) -> bool:
        """Ask node ``old`` to pass ``fence`` on to node ``new`` behind what this node
        sent it for ``full`` (``False``: ``old`` is gone, nothing to wait for)."""


class ClusterSessions(MemorySessions):
    """Local endpoints (as :class:`MemorySessions`) plus the other nodes' sessions."""

    __slots__ = (
        "_adopting",
        "_dirty",
        "_emptied",
        "_fences",
        "_fences_done",
        "_gates",
        "_gone",
        "_moved",
        "_moving",
        "_remote_bare",
        "_remote_full",
        "_shared",
        "_waiting",
        "catch_up",
        "node",
        "on_abandoned",
        "on_change",
        "ops",
        "publish_now",
        "start_task",
    )

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self.ops: RemoteOps | None = None
        """Set by the cluster node before the first session binds."""
        self._remote_full: dict[JID, RemoteSession] = {}
        self._remote_bare: dict[JID, dict[str, RemoteSession]] = {}
        self._dirty: dict[JID, Endpoint] = {}
        """Local sessions whose record changed since the last publication."""
        self._gone: dict[JID, Endpoint] = {}
        """Local sessions unbound since the last publication."""
        self._shared: dict[int, dict[str, object]] = {}
        """Shared per-session state of local sessions (``SessionKey.shared``), by
        ``id(endpoint)``: what their records carry."""
        self._emptied: asyncio.Event | None = None
        self._moving: dict[JID, str] = {}
        """Local sessions being handed to another node right now: full JID → node."""
        self._moved: dict[JID, tuple[RemoteSession, float, Endpoint]] = {}
        """Sessions handed over, until the new node's record arrives: full JID → (where
        stanzas for it go meanwhile, until when, the local endpoint it was)."""
        self._adopting: dict[JID, list[Held]] = {}
        """Sessions another node handed to this one that are not bound here yet: full
        JID → the stanzas forwarded for it meanwhile (delivered first once bound)."""
        self._gates: dict[JID, list[Held]] = {}
        """Adopted sessions whose held stanzas are being delivered: what comes for
        them meanwhile queues behind (one sender's stanzas stay in order)."""
        self._fences: dict[JID, tuple[str, float]] = {}
        """Sessions whose view moved from one node to another: full JID → (fence, until
        when). Stanzas this node sends them meanwhile wait on their new node for the
        fence, which comes through the old node behind what went that way."""
        self._waiting: dict[tuple[JID, str], list[Held]] = {}
        """Stanzas for a local session waiting for a fence (:meth:`wait_for_fence`)."""
        self._fences_done: dict[str, float] = {}
        """Fences passed lately (fence → until when it is remembered)."""
        self.start_task: Callable[..., asyncio.Task[None]] | None = None
        """Set by the cluster node (delivering held stanzas is a task of its own)."""
        self.on_abandoned: Callable[[JID, list[Held]], Awaitable[None]] | None = None
        """Route again what was held for a session whose adoption never came (set by
        the stanza bus)."""
        self.on_change: Callable[[], None] = lambda: None
        """Called when something is waiting to be published (the node schedules it)."""
        self.publish_now: Callable[[], Awaitable[object] | None] = lambda: None
        """Publish what is waiting now; what to await for it to be in Redis (set by
        the session feed)."""
        self.catch_up: Callable[[], Awaitable[None]] | None = None
        """Apply every change logged before now (set by the session feed)."""

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self._full) + len(self._remote_full)

    def __iter__(self) -> Iterator[Session]:
        return iter([*self._full.values(), *self._remote_full.values()])

    @property
    def local_count(self) -> int:
        return len(self._full)

    @property
    def remote_count(self) -> int:
        return len(self._remote_full)

    def is_online(self, bare: JID) -> bool:
        return bare in self._bare or bare in self._remote_bare

    def get(self, full: JID) -> Session | None:
        local = self._full.get(full)
        if local is not None:
            return local
        remote = self._remote_full.get(full)
        if remote is not None:
            return remote
        return self._moved_to(full)

    def of(self, bare: JID) -> list[Session]:
        found: list[Session] = []
        local = self._bare.get(bare)
        if local:
            found.extend(local.values())
        remote = self._remote_bare.get(bare)
        if remote:
            found.extend(remote.values())
        return found

    def available(self, bare: JID) -> list[Session]:
        return [s for s in self.of(bare) if s.is_available]

    def message_targets(self, bare: JID) -> list[Session]:
        if bare not in self._remote_bare:
            return super().message_targets(bare)
        return _best_priority(self.of(bare))

    def is_current(self, session: Session) -> bool:
        if isinstance(session, RemoteSession):
            current = self._remote_full.get(session.jid)
            return current is not None and current.stream_id == session.stream_id
        return self._full.get(session.jid) is session

    def local_endpoint(self, full: JID, stream_id: str) -> Endpoint | None:
        """The local endpoint bound to ``full``, if it is the session ``stream_id``."""
        endpoint = self._full.get(full)
        if endpoint is None or endpoint.stream_id != stream_id:
            return None
        return endpoint

    def local_bound(self, full: JID) -> Endpoint | None:
        """The local endpoint bound to ``full``, whichever its stream."""
        return self._full.get(full)

    # ------------------------------------------------------------------ handovers

    def expect_handover(self, full: JID, node: str) -> None:
        """The local session ``full`` is about to be handed to ``node``: when it
        unbinds, its record stays in Redis (the new node's replaces it) and stanzas
        for it go on to ``node`` (:meth:`handover_done` after the attempt)."""
        self._moving[full] = node

    def handover_done(self, full: JID) -> None:
        self._moving.pop(full, None)

    def _moved_to(self, full: JID) -> RemoteSession | None:
        """Where a session handed over a moment ago went (its new record is on its way
        through the session feed), or ``None``."""
        moved = self._moved.get(full)
        if moved is None:
            return None
        session, until, endpoint = moved
        if _loop_time() > until:  # the new node never published: forget it here
            self._settle(full, endpoint)
            return None
        return session

    def _settle(self, full: JID, endpoint: Endpoint) -> None:
        """Stop forwarding for a handed-over session; publish the removal of its old
        record (only if still its own: a no-op once the new node's replaced it)."""
        del self._moved[full]
        if full not in self._full:
            self._gone[full] = endpoint
            self.on_change()

    async def settle_moves(self, timeout: float) -> None:
        """Before leaving: wait (at most ``timeout``) for the new nodes' records of the
        sessions handed over, then give up on the others."""
        for _ in range(max(1, int(timeout / 0.05))):  # records come through the feed
            if not self._moved:
                break
            await asyncio.sleep(0.05)
        for full, (_session, _until, endpoint) in list(self._moved.items()):
            self._settle(full, endpoint)

    def expect_adoption(self, full: JID, timeout: float) -> None:
        """Another node handed session ``full`` to this one; its stream binds it in a
        moment. Stanzas the old node forwards for it until then are held
        (:meth:`hold_for_adoption`); after ``timeout`` without a bind they are routed
        again (:attr:`on_abandoned`)."""
        if full in self._adopting:
            return
        held: list[Held] = []
        self._adopting[full] = held
        asyncio.get_running_loop().call_later(timeout, self._adoption_expired, full, held)

    def hold_for_adoption(self, full: JID, stanza: Element, data: bytes | None) -> bool:
        """Keep a stanza for a session being adopted here (``False``: none is)."""
        held = self._adopting.get(full)
        if held is None:
            return False
        held.append((stanza, data))
        return True

    def _adoption_expired(self, full: JID, held: list[Held]) -> None:
        if self._adopting.get(full) is not held:
            return  # bound meanwhile
        del self._adopting[full]
        if held and self.on_abandoned is not None and self.start_task is not None:
            _ = self.start_task(self.on_abandoned(full, held), name="cluster-abandoned")

    def _open_gate(self, endpoint: Endpoint, held: list[Held]) -> None:
        """The adopted session is bound: deliver what was held for it, in order, ahead
        of anything routed to it from now on (which queues behind)."""
        if not held or self.start_task is None:
            return
        gate = self._gates.get(endpoint.jid)
        if gate is not None:
            gate.extend(held)
            return
        self._gates[endpoint.jid] = held
        _ = self.start_task(self._flush_gate(endpoint, held), name="cluster-adopted")

    async def _flush_gate(self, endpoint: Endpoint, gate: list[Held]) -> None:
        full = endpoint.jid
        try:
            while gate:
                if self._full.get(full) is not endpoint:
                    # The session ended or moved on meanwhile: route the rest again.
                    rest = gate[:]
                    gate.clear()
                    if self.on_abandoned is not None:
                        await self.on_abandoned(full, rest)
                    return
                stanza, data = gate.pop(0)
                try:
                    await endpoint.deliver(stanza, data)
                except Exception:
                    log.exception("cluster: could not deliver a held stanza to %s", full)
        finally:
            if self._gates.get(full) is gate:
                del self._gates[full]

    # ------------------------------------------------------------------ fences

    def _start_fence(self, full: JID, old: str, new: str) -> None:
        """The view of ``full`` moves from node ``old`` to node ``new``: what this node
        sent through ``old`` may still be on its way, so what it sends ``new`` from
        now on waits there for a fence that ``old`` passes on behind it."""
        fence = os.urandom(6).hex()
        if self._ops().fence(old, full, fence, new):
            self._fences[full] = (fence, _loop_time() + FENCE_WAIT)

    def fence_for(self, full: JID) -> str:
        """The fence stanzas this node sends to ``full`` carry now (``""``: none)."""
        found = self._fences.get(full)
        if found is None:
            return ""
        fence, until = found
        if _loop_time() > until:
            del self._fences[full]
            return ""
        return fence

    def wait_for_fence(self, full: JID, fence: str, stanza: Element, data: bytes | None) -> bool:
        """Keep a stanza for the local session ``full`` until ``fence`` has passed
        (``False``: it has, deliver now)."""
        if fence in self._fences_done:
            return False
        key = (full, fence)
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = []
            asyncio.get_running_loop().call_later(FENCE_WAIT, self.fence_passed, full, fence)
        waiting.append((stanza, data))
        return True

    def fence_passed(self, full: JID, fence: str) -> None:
        """``fence`` came through the old node (or waited long enough): deliver what
        waited for it, behind anything still being delivered to the session."""
        now = _loop_time()
        self._fences_done[fence] = now + 2 * FENCE_WAIT
        for old, until in list(self._fences_done.items()):
            if until < now:
                del self._fences_done[old]
        waiting = self._waiting.pop((full, fence), None)
        if not waiting:
            return
        endpoint = self._full.get(full)
        if endpoint is not None:
            self._open_gate(endpoint, waiting)
        elif self.on_abandoned is not None and self.start_task is not None:
            _ = self.start_task(self.on_abandoned(full, waiting), name="cluster-abandoned")

    def remote_sessions(self) -> list[RemoteSession]:
        return list(self._remote_full.values())

    def _ops(self) -> RemoteOps:
        assert self.ops is not None, "the cluster node is not started"
        return self.ops

    async def deliver(self, session: Session, stanza: Element, data: bytes | None = None) -> None:
        if isinstance(session, RemoteSession):
            await self._ops().deliver(session, stanza, data)
            return
        endpoint = cast("Endpoint", session)
        fence = self.fence_for(endpoint.jid)
        if fence and self.wait_for_fence(endpoint.jid, fence, stanza, data):
            return  # this node's own stanzas sent to the old node come first
        await self.deliver_arrived(endpoint, stanza, data)

    async def deliver_arrived(
        self, endpoint: Endpoint, stanza: Element, data: bytes | None
    ) -> None:
        """Deliver a stanza another node sent to a local session: behind what is held
        for it after an adoption or a fence, if anything is."""
        gate = self._gates.get(endpoint.jid)
        if gate is not None and self._full.get(endpoint.jid) is endpoint:
            gate.append((stanza, data))
            return
        await endpoint.deliver(stanza, data)

    def send_raw(self, session: Session, stanza: Element) -> None:
        if isinstance(session, RemoteSession):
            self._ops().send_raw(session, stanza)
        else:
            cast("Endpoint", session).send_raw(stanza)

    def close(
        self, session: Session, condition: str | None = None, text: str | None = None
    ) -> None:
        if isinstance(session, RemoteSession):
            self._ops().close(session, condition, text)
        else:
            cast("Endpoint", session).close(condition, text)

    async def wait_closed(self, session: Session) -> None:
        if isinstance(session, RemoteSession):
            return  # the other node runs its teardown; its record goes when done
        await cast("Endpoint", session).wait_closed()

    async def published(self) -> None:
        done = self.publish_now()
        if done is None:
            return
        await _at_most_a_moment(asyncio.shield(done))  # the write waits out an outage

    async def caught_up(self) -> None:
        if self.catch_up is not None:
            await _at_most_a_moment(self.catch_up())  # the view stays as it is

    def get_state(self, session: Session, key: SessionKey[T]) -> T:
        if isinstance(session, RemoteSession):
            return cast(T, session.record.state.get(key.name, key.default))
        return cast("Endpoint", session).get(key)

    def set_state(self, session: Session, key: SessionKey[T], value: T) -> None:
        if isinstance(session, RemoteSession):
            if key.shared:
                session.record.state[key.name] = value
                self._ops().set_state(session, key.name, value)
            return
        endpoint = cast("Endpoint", session)
        endpoint.set(key, value)
        if key.shared:
            self._shared.setdefault(id(endpoint), {})[key.name] = value
            self._mark(endpoint)

    def set_presence(self, session: Session, presence: Element | None, priority: int) -> Session:
        if isinstance(session, RemoteSession):
            data = None if presence is None else serialize(presence)
            session.record.presence = data
            session.record.priority = priority
            self._ops().set_presence(session, data, priority)
            return session
        endpoint = cast("Endpoint", session)
        endpoint.presence = presence
        endpoint.priority = priority
        self._mark(endpoint)
        return endpoint

    def set_interested(self, session: Session) -> None:
        if isinstance(session, RemoteSession):
            session.record.interested = True
            self._ops().set_interested(session)
            return
        endpoint = cast("Endpoint", session)
        endpoint.is_interested = True
        self._mark(endpoint)

    # ------------------------------------------------------------------ the core's side

    def bind(self, endpoint: Endpoint) -> Endpoint | None:
        replaced = super().bind(endpoint)
        full = endpoint.jid
        self._gone.pop(full, None)
        self._moved.pop(full, None)
        held = self._adopting.pop(full, None)
        if held is not None:
            self._open_gate(endpoint, held)
        remote = self._remote_full.get(full)
        if remote is not None:  # the same full JID on another node: that one goes
            self._forget_remote(full, remote.stream_id)
            text = CONTINUED_ELSEWHERE if endpoint.continues_session else None
            self._ops().close(remote, "conflict", text)
            self._start_fence(full, remote.node, self.node)
        self._mark(endpoint)
        return replaced

    def unbind(self, endpoint: Endpoint) -> bool:
        if not super().unbind(endpoint):
            return False
        full = endpoint.jid
        self._dirty.pop(full, None)
        node = self._moving.pop(full, None)
        if node is not None:  # handed over: see expect_handover
            stub = RemoteSession(full, SessionRecord(node=node, stream_id=""))
            self._moved[full] = (stub, _loop_time() + MOVED_FOR, endpoint)
        else:
            self._gone[full] = endpoint
            self.on_change()
        if not self._full and self._emptied is not None:
            self._emptied.set()
        return True

    async def no_local_sessions(self) -> None:
        """Wait until no session is bound on this node (a drain)."""
        if not self._full:
            return
        self._emptied = asyncio.Event()
        await self._emptied.wait()

    def release(self, endpoint: Endpoint) -> None:
        self._shared.pop(id(endpoint), None)

    def connection_changed(self, endpoint: Endpoint) -> None:
        self._mark(endpoint)

    def _mark(self, endpoint: Endpoint) -> None:
        if self._full.get(endpoint.jid) is not endpoint:
            return  # not bound (yet): bind publishes it
        self._dirty[endpoint.jid] = endpoint
        self.on_change()

    def take_changes(self) -> tuple[list[Endpoint], list[Endpoint]]:
        """What to publish: (changed local sessions, unbound local sessions)."""
        dirty, gone = list(self._dirty.values()), list(self._gone.values())
        self._dirty.clear()
        self._gone.clear()
        return dirty, gone

    def record_of(self, endpoint: Endpoint) -> SessionRecord:
        """The record this node publishes for a local session."""
        presence = endpoint.presence
        elapsed = max(0.0, _loop_time() - endpoint.last_activity)
        return SessionRecord(
            node=self.node,
            stream_id=endpoint.stream_id,
            peer=endpoint.peer,
            is_secure=endpoint.is_secure,
            is_detached=endpoint.is_detached,
            priority=endpoint.priority,
            presence=None if presence is None else serialize(presence),
            interested=endpoint.is_interested,
            last_activity=time.time() - elapsed,
            state=dict(self._shared.get(id(endpoint), ())),
        )

    # ------------------------------------------------------------------ the view

    def apply_remote(self, full: JID, record: SessionRecord) -> None:
        """A session on another node was bound or changed."""
        if record.node == self.node:
            return
        moved = self._moved.get(full)
        if moved is not None:  # the new node's record replaced ours
            self._settle(full, moved[2])
        local = self._full.get(full)
        if local is not None and local.stream_id != record.stream_id:
            # Bound here and there: the newer bind wins; the node that binds second
            # closes the other (see bind), so a record for a session we hold is stale.
            return
        session = self._remote_full.get(full)
        if session is not None and session.stream_id == record.stream_id:
            session.record = record
            return
        if session is not None and session.node != record.node:
            self._start_fence(full, session.node, record.node)
        session = RemoteSession(full, record)
        self._remote_full[full] = session
        self._remote_bare.setdefault(full.bare, {})[full.resource] = session

    def remove_remote(self, full: JID, stream_id: str) -> RemoteSession | None:
        """A session on another node ended (only if it is still the one with
        ``stream_id``; ``""``: whichever it is)."""
        return self._forget_remote(full, stream_id)

    def _forget_remote(self, full: JID, stream_id: str) -> RemoteSession | None:
        session = self._remote_full.get(full)
        if session is None or (stream_id and session.stream_id != stream_id):
            return None
        del self._remote_full[full]
        resources = self._remote_bare.get(full.bare)
        if resources is not None:
            resources.pop(full.resource, None)
            if not resources:
                del self._remote_bare[full.bare]
        return session


async def _at_most_a_moment(step: Awaitable[object]) -> None:
    """Await ``step`` for at most ``PUBLISHED_WAIT`` seconds: during a Redis outage a
    client or sender is not kept waiting long."""
    with contextlib.suppress(TimeoutError, *OUTAGE_ERRORS):
        async with asyncio.timeout(PUBLISHED_WAIT):
            await step


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
