"""Stream-management sessions mirrored to Redis, so that a survivor can resume them
after their node died (XEP-0198 across a ``kill -9``).

For each resumable session its holder keeps, through its ordered writer (no round
trip of its own: the commands join the pipeline of the tick):

- ``smr:{<id>}``: a hash: the signed static part (a :class:`Handover` without queue),
  ``i`` the stanzas handled from the client, ``a`` the client's ``h``, ``n`` the
  holder, ``j`` the bare JID, ``x:<node>`` the last entry of ``<node>``'s inbox whose
  stanza was queued for the client;
- ``smq:{<id>}``: the unacknowledged stanzas (``RPUSH`` when queued, ``LTRIM`` when
  acknowledged);
- ``nodesm:<node>``: the ids each node mirrors.

``i`` is written in the same pipeline as, just after, what the client stanza's routing
wrote (its cross-node ``XADD``), so a crash may make the client send a stanza again,
never drop one it was told was handled.

Whoever takes a mirror over claims it atomically (a script that checks the holder
named in it and empties it), so two nodes never both resume it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from xmppd.cluster.records import BadRecord, SessionRecord
from xmppd.cluster.writer import TAIL, Tail
from xmppd.jid import JID, InvalidJID
from xmppd.stream.sm import Handover

if TYPE_CHECKING:
    from xmppd.cluster.keys import Keys
    from xmppd.cluster.records import Signer
    from xmppd.cluster.redisconn import RedisClient
    from xmppd.cluster.writer import RedisWriter

log = logging.getLogger(__name__)

INBOX_ENTRY: contextvars.ContextVar[str] = contextvars.ContextVar("cluster_entry", default="")
"""The id of the inbox entry this node is handling (set by the stanza bus)."""

_CLAIM: Final = """
local owner = redis.call('HGET', KEYS[1], 'n')
if owner ~= ARGV[1] then return false end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'j') ~= ARGV[2] then return false end
local r = redis.call('HMGET', KEYS[1], 'r', 'i', 'a')
if not r[1] then return false end
local q = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('HDEL', KEYS[1], 'r', 'i', 'a')
redis.call('HSET', KEYS[1], 'n', ARGV[3])
redis.call('DEL', KEYS[2])
return {r[1], r[2], r[3], q}
"""
"""Take a mirror from ``ARGV[1]`` (its dead holder) for ``ARGV[3]``; the ``x:<node>``
fields stay (what the reaper must not route again)."""

_END: Final = """
if redis.call('HGET', KEYS[1], 'n') == ARGV[1] then
  return redis.call('DEL', KEYS[1], KEYS[2])
end
return 0
"""


@dataclass(slots=True)
class _Handling:
    tail: Tail
    reset: contextvars.Token[Tail | None]


class SmMirrors:
    """This node's mirrored sessions, and taking over those of dead nodes."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        node: str,
        writer: RedisWriter,
        signer: Signer,
        ttl: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.node = node
        self._writer = writer
        self._signer = signer
        self._ttl_ms = int(ttl * 1000)
        self.handles: dict[str, MirrorHandle] = {}

    # ------------------------------------------------------------------ writing

    def start(
        self, handover: Handover, snapshot: Callable[[], Handover] | None = None
    ) -> MirrorHandle:
        """Mirror a session from now on (enabled, taken over, adopted): ``handover``
        says what it is now, ``snapshot`` what it is later (to write it all again when
        Redis lost it)."""
        self._write(handover)
        handle = MirrorHandle(
            self,
            handover.sm_id,
            self._keys.sm_mirror(handover.sm_id),
            self._keys.sm_queue(handover.sm_id),
            snapshot,
        )
        self.handles[handover.sm_id] = handle
        return handle

    def republish(self) -> None:
        """Write every mirror again (Redis came back empty)."""
        for handle in list(self.handles.values()):
            if handle.snapshot is not None:
                self._write(handle.snapshot())

    def _write(self, handover: Handover) -> None:
        sm_id = handover.sm_id
        record, queue = self._keys.sm_mirror(sm_id), self._keys.sm_queue(sm_id)
        index, ttl = self._keys.node_mirrors(self.node), self._ttl_ms
        static = Handover(
            jid=handover.jid,
            sm_id=sm_id,
            inbound=0,
            acked=0,
            unacked=[],
            mechanism=handover.mechanism,
        )
        fields: dict[str, Any] = {
            "r": self._signer.dumps(static),
            "i": handover.inbound,
            "a": handover.acked,
            "n": self.node,
            "j": handover.jid.partition("/")[0],
            "f": handover.jid,
        }
        unacked = list(handover.unacked)

        def build(pipe: Any) -> None:
            pipe.delete(queue)
            pipe.hset(record, mapping=fields)
            if unacked:
                pipe.rpush(queue, *unacked)
            pipe.pexpire(record, ttl)
            pipe.pexpire(queue, ttl)
            pipe.sadd(index, sm_id)
            pipe.pexpire(index, ttl)

        _ = self._writer.submit(build)

    def submit(self, build: Any) -> None:
        _ = self._writer.submit(build)

    def ended(self, handle: MirrorHandle) -> None:
        if self.handles.get(handle.sm_id) is handle:
            del self.handles[handle.sm_id]
        record, queue, node = handle.record, handle.queue, self.node
        index, sm_id = self._keys.node_mirrors(node), handle.sm_id

        def build(pipe: Any) -> None:
            pipe.eval(_END, 2, record, queue, node)
            pipe.srem(index, sm_id)

        _ = self._writer.submit(build)

    def refresh(self) -> None:
        """Keep the mirrors (and the holder entries, ``sm:<id>``) from expiring while
        their sessions last."""
        if not self.handles:
            return
        keys, ttl = self._keys, self._ttl_ms
        ids = list(self.handles)
        index = keys.node_mirrors(self.node)

        def build(pipe: Any) -> None:
            for sm_id in ids:
                pipe.pexpire(keys.sm_mirror(sm_id), ttl)
                pipe.pexpire(keys.sm_queue(sm_id), ttl)
                pipe.pexpire(keys.resumption(sm_id), ttl)
            pipe.pexpire(index, ttl)

        _ = self._writer.submit(build)

    # ------------------------------------------------------------------ taking over

    async def owner(self, sm_id: str) -> str:
        """The node named as holder in a mirror ('' when there is none)."""
        value = await self._redis.hget(self._keys.sm_mirror(sm_id), "n")
        return _text(value)

    async def claim(self, sm_id: str, owner: str, bare: str = "") -> Handover | None:
        """Take the mirror of ``sm_id`` from its dead holder ``owner`` (for the bare
        JID ``bare``, when given): the session as the holder last wrote it, with the
        presence it published; ``None`` if there is none (or another node took it)."""
        keys = self._keys
        reply = await self._redis.eval(
            _CLAIM, 2, keys.sm_mirror(sm_id), keys.sm_queue(sm_id), owner, bare, self.node
        )
        if not reply:
            return None
        blob, inbound, acked, queue = reply
        try:
            static = self._signer.loads(blob)
        except (BadRecord, ValueError):
            return None
        if not isinstance(static, Handover):
            return None
        static.inbound = int(_text(inbound) or 0)
        static.acked = int(_text(acked) or 0)
        static.unacked = [bytes(item) for item in queue]
        static.lenient = True
        await self._add_published(static, owner)
        return static

    async def left_by(self, sm_ids: list[str], node: str) -> dict[str, tuple[str, str]]:
        """Full JID → (the last entry of ``node``'s inbox already queued for it, the
        node holding it now) for the mirrors of ``sm_ids``, claimed or not."""
        found: dict[str, tuple[str, str]] = {}
        for sm_id in sm_ids:
            jid, entry, holder = await self._redis.hmget(
                self._keys.sm_mirror(sm_id), "f", f"x:{node}", "n"
            )
            if jid:
                found[_text(jid)] = (_text(entry) or "0-0", _text(holder))
        return found

    async def _add_published(self, handover: Handover, owner: str) -> None:
        """Presence, priority and shared state as the dead holder published them."""
        try:
            full = JID.parse(handover.jid)
        except InvalidJID:
            return
        value = await self._redis.hget(self._keys.sessions(str(full.bare)), full.resource)
        if not value:
            return
        try:
            record = self._signer.loads(value[value.find(b"\0") + 1 :])
        except (BadRecord, ValueError):
            return
        if not isinstance(record, SessionRecord) or record.node != owner:
            return
        handover.presence = record.presence
        handover.priority = record.priority
        handover.interested = record.interested
        handover.state = dict(record.state)


class MirrorHandle:
    """One session's mirror (``SmState.mirror``): writes what changes."""

    __slots__ = ("_mirrors", "queue", "record", "sm_id", "snapshot")

    def __init__(
        self,
        mirrors: SmMirrors,
        sm_id: str,
        record: str,
        queue: str,
        snapshot: Callable[[], Handover] | None,
    ) -> None:
        self._mirrors = mirrors
        self.sm_id = sm_id
        self.record = record
        self.queue = queue
        self.snapshot = snapshot

    def sent(self, data: bytes) -> None:
        record, queue = self.record, self.queue
        entry = INBOX_ENTRY.get()
        if entry:
            field = f"x:{self._mirrors.node}"

            def build(pipe: Any) -> None:
                pipe.rpush(queue, data)
                pipe.hset(record, field, entry)

        else:

            def build(pipe: Any) -> None:
                pipe.rpush(queue, data)

        self._mirrors.submit(build)

    def acked(self, count: int, acked: int) -> None:
        if count == 0:
            return
        record, queue = self.record, self.queue

        def build(pipe: Any) -> None:
            pipe.ltrim(queue, count, -1)
            pipe.hset(record, "a", acked)

        self._mirrors.submit(build)

    def handling(self, inbound: int) -> object:
        record = self.record

        def build(pipe: Any) -> None:
            pipe.hset(record, "i", inbound)

        tail = Tail(build)
        return _Handling(tail, TAIL.set(tail))

    def handled(self, token: object) -> None:
        assert isinstance(token, _Handling)
        TAIL.reset(token.reset)
        tail = token.tail
        tail.open = False
        if not tail.used:
            self._mirrors.submit(tail.build)

    def end(self) -> None:
        self._mirrors.ended(self)


def entry_after(entry: str, last: str) -> bool:
    """Whether stream entry id ``entry`` comes after ``last``."""
    return _entry_key(entry) > _entry_key(last)


def _entry_key(entry: str) -> tuple[int, int]:
    ms, _, seq = entry.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
