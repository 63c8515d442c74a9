"""Session records in and out of Redis.

Out: each change to a local session (bind, presence, shared state, unbind) is written
to the account's hash and appended to the session log, once per event-loop turn for
all the changes made in it. In: the log is tailed, and applied to the registry's view
of other nodes; a node that starts, or that lost track (Redis restarted, the log was
trimmed past where it was), reads every hash again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from xmppd.cluster.records import BadRecord, SessionRecord, Signer
from xmppd.cluster.writer import OUTAGE_ERRORS, raise_if_cancelled
from xmppd.jid import JID, InvalidJID

if TYPE_CHECKING:
    from xmppd.cluster.keys import Keys
    from xmppd.cluster.redisconn import RedisClient
    from xmppd.cluster.registry import ClusterSessions
    from xmppd.cluster.writer import RedisWriter
    from xmppd.invalidation import CacheInvalidations

log = logging.getLogger(__name__)

LOG_LENGTH: Final = 100_000
"""About how many changes the session log keeps (a node that falls further behind
reads the hashes again)."""

CATCH_UP_MAX: Final = 10_000
"""At most how many log entries :meth:`SessionFeed.catch_up` reads at once."""

DELETE_IF_SAME: Final = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, string.len(ARGV[2]) + 1) == ARGV[2] .. '\\0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
"""Remove a session's record only if it is still the same session (stream id)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SessionFeed:
    """Publishes this node's session changes and keeps the view of the others."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        signer: Signer,
        registry: ClusterSessions,
        writer: RedisWriter,
        *,
        invalidations: CacheInvalidations,
        is_dead: Callable[[str], bool] = lambda node: False,
        on_removed: Callable[[JID, str], None] = lambda full, sid: None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._signer = signer
        self._registry = registry
        self._writer = writer
        self._on_removed = on_removed
        self._invalidations = invalidations
        self._is_dead = is_dead
        invalidations.publisher = self.publish_invalidation
        self._scheduled = False
        self._last_id = "0-0"
        self.applied = 0
        registry.on_change = self._schedule
        registry.publish_now = self.publish_now
        registry.catch_up = self.catch_up
        self._last_write: Any = None
        """What the last publication's write returned (done once it is in Redis)."""

    # ------------------------------------------------------------------ out

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._scheduled = False
        dirty, gone = self._registry.take_changes()
        if not dirty and not gone:
            return
        keys, node, signer, registry = self._keys, self._registry.node, self._signer, self._registry
        updates = [(e.jid, e.stream_id, registry.record_of(e)) for e in dirty]
        removals = [(e.jid, e.stream_id) for e in gone]

        def build(pipe: Any) -> None:
            for full, sid, record in updates:
                value = sid.encode() + b"\0" + signer.dumps(record)
                bare = str(full.bare)
                pipe.hset(keys.sessions(bare), full.resource, value)
                pipe.sadd(keys.node_sessions(node), str(full))
                pipe.xadd(
                    keys.session_log(),
                    {"b": bare, "r": full.resource, "s": sid, "v": value},
                    maxlen=LOG_LENGTH,
                    approximate=True,
                )
            for full, sid in removals:
                self.remove_commands(pipe, node, full, sid)

        # Nobody waits (presence and state are not acks), except a module that asks
        # (``published``).
        self._last_write = self._writer.submit(build)

    def publish_now(self) -> Any:
        """Publish what is waiting (rather than at the end of this loop turn); what to
        await for it to be in Redis (``None``: nothing was ever published). The
        writer keeps submission order, so the last write covers every earlier one."""
        if self._scheduled:
            self._publish()
        return self._last_write

    def remove_commands(self, pipe: Any, node: str, full: JID, sid: str) -> None:
        """Commands that remove a session's record (if still ``sid``) and log it."""
        bare = str(full.bare)
        keys = self._keys
        pipe.eval(DELETE_IF_SAME, 1, keys.sessions(bare), full.resource, sid)
        pipe.srem(keys.node_sessions(node), str(full))
        pipe.xadd(
            keys.session_log(),
            {"b": bare, "r": full.resource, "s": sid, "v": b""},
            maxlen=LOG_LENGTH,
            approximate=True,
        )

    def publish_invalidation(self, topic: str, key: str) -> asyncio.Future[list[Any]]:
        """Tell the other nodes to drop what they cached of ``key`` (through the
        session log, in order with session changes); done once it is in Redis."""
        log_key, node = self._keys.session_log(), self._registry.node

        def build(pipe: Any) -> None:
            fields = {"i": topic, "k": key, "n": node}
            pipe.xadd(log_key, fields, maxlen=LOG_LENGTH, approximate=True)

        return self._writer.submit(build)

    def republish_all(self) -> None:
        """Publish every local session again (Redis lost them, or this node was taken
        for dead during an outage)."""
        for endpoint in self._registry.endpoints():
            self._registry._mark(endpoint)

    # ------------------------------------------------------------------ in

    async def load(self) -> None:
        """Read every session hash into the view, then follow the log from where it
        stood before the read (changes in between are applied twice, harmlessly).

        Sessions in the view that Redis no longer has stay while their node is alive:
        after Redis restarted empty, each node publishes its sessions again, and until
        then the others must not take them for gone."""
        redis = self._redis
        last = await redis.xrevrange(self._keys.session_log(), count=1)
        self._last_id = _text(last[0][0]) if last else "0-0"
        self._invalidations.received_all()
        seen: set[tuple[str, str]] = set()
        async for key in redis.scan_iter(match=self._keys.sessions_pattern(), count=1000):
            bare = _text(key).split(":sess:", 1)[1]
            fields = await redis.hgetall(key)
            for resource, value in fields.items():
                seen.add((bare, _text(resource)))
                self._apply(bare, _text(resource), value)
        registry = self._registry
        for session in list(registry.remote_sessions()):
            jid = session.jid
            if (str(jid.bare), jid.resource) not in seen and self._is_dead(session.node):
                registry.remove_remote(jid, session.stream_id)

    async def follow(self) -> None:
        """Tail the session log (a task of the cluster node); read everything again
        after losing track."""
        stream = self._keys.session_log()
        while True:
            raise_if_cancelled()
            try:
                found = await self._redis.xread({stream: self._last_id}, count=1000, block=1000)
            except OUTAGE_ERRORS:
                await asyncio.sleep(0.5)
                continue
            for _name, entries in found or ():
                self._apply_entries(entries)

    async def catch_up(self) -> None:
        """Apply now what the log holds beyond what this node applied: one round trip
        (the tail usually has it all already; it may lag on a loaded node, or be
        reconnecting)."""
        entries = await self._redis.xrange(
            self._keys.session_log(), min=f"({self._last_id}", count=CATCH_UP_MAX
        )
        self._apply_entries(entries)

    def _apply_entries(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        """Apply log entries in order, skipping those already applied (the tail and
        :meth:`catch_up` may both read one)."""
        for entry_id, fields in entries:
            entry = _text(entry_id)
            if not _id_less(self._last_id, entry):
                continue
            self._last_id = entry
            self._apply_entry(fields)

    async def catch_up_or_reload(self) -> None:
        """After an outage: reload when the log no longer reaches back to where this
        node stopped reading (trimmed, or Redis restarted empty)."""
        first = await self._redis.xrange(self._keys.session_log(), count=1)
        if self._last_id == "0-0" or not first or _id_less(self._last_id, _text(first[0][0])):
            await self.load()

    def _apply_entry(self, fields: dict[Any, Any]) -> None:
        def field(name: str) -> Any:
            return fields.get(name.encode(), fields.get(name))

        topic = field("i")
        if topic is not None:
            if _text(field("n")) != self._registry.node:
                self._invalidations.received(_text(topic), _text(field("k")))
            return
        bare, resource, sid, value = field("b"), field("r"), field("s"), field("v")
        if bare is None or resource is None:
            return
        if value:
            self._apply(_text(bare), _text(resource), value)
            return
        try:
            full = JID.parse(f"{_text(bare)}/{_text(resource)}")
        except InvalidJID:
            return
        if self._registry.remove_remote(full, _text(sid or "")) is not None:
            self._on_removed(full, _text(sid or ""))

    def _apply(self, bare: str, resource: str, value: bytes) -> None:
        sep = value.find(b"\0")
        if sep < 0:
            return
        try:
            record = self._signer.loads(value[sep + 1 :])
            full = JID.parse(f"{bare}/{resource}")
        except (BadRecord, InvalidJID, ValueError) as exc:
            log.warning("cluster: ignored the session record of %s/%s: %s", bare, resource, exc)
            return
        if isinstance(record, SessionRecord):
            self.applied += 1
            self._registry.apply_remote(full, record)


def _id_less(a: str, b: str) -> bool:
    """Stream id ``a`` comes before ``b``."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) < (int(bms), int(bseq or 0))


__all__ = ["SessionFeed"]
