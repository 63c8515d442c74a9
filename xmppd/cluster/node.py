"""One node of a cluster: assembles the Redis client, the writer, the session feed,
the stanza bus and the membership, and cleans up after dead nodes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from xmppd import hooks
from xmppd.cluster.bus import StanzaBus
from xmppd.cluster.calls import CallHandler, Calls
from xmppd.cluster.components import ClusterComponents
from xmppd.cluster.feed import SessionFeed
from xmppd.cluster.keys import Keys
from xmppd.cluster.membership import Membership
from xmppd.cluster.placement import Listing, Placement
from xmppd.cluster.records import BadRecord, RemoteSession, SessionRecord, Signer
from xmppd.cluster.redisconn import RedisClient, connect
from xmppd.cluster.resumption import Handovers, ResumableSessions
from xmppd.cluster.smmirror import SmMirrors
from xmppd.cluster.writer import OUTAGE_ERRORS, RedisWriter
from xmppd.jid import JID, InvalidJID
from xmppd.server_secret import derive
from xmppd.stream.sm import Handover

if TYPE_CHECKING:
    from xmppd.cluster.registry import ClusterSessions
    from xmppd.config import ClusterSection
    from xmppd.health import HealthPart
    from xmppd.host import Host
    from xmppd.invalidation import CacheInvalidations
    from xmppd.iqtracker import IqTracker
    from xmppd.metrics import Metrics
    from xmppd.router import Router
    from xmppd.stanza import Element

log = logging.getLogger(__name__)

LEAVE_TIMEOUT: Final = 5.0
"""Longest wait for each step of leaving the cluster at stop (Redis unreachable or slow)."""


class ClusterStartError(RuntimeError):
    """The node could not join (Redis unreachable at start)."""


class ClusterNode:
    """This process's membership of the cluster."""

    def __init__(
        self,
        section: ClusterSection,
        registry: ClusterSessions,
        router: Router,
        hosts: dict[str, Host],
        secret: bytes,
        *,
        invalidations: CacheInvalidations,
        resume_timeout: float = 300.0,
        start_task: Callable[..., asyncio.Task[None]],
        health: HealthPart,
        redis: RedisClient | None = None,
    ) -> None:
        self.section = section
        self.name = registry.node
        self.registry = registry
        self._router = router
        self._hosts = hosts
        self._start_task = start_task
        self._health = health
        self.redis: RedisClient = (
            redis if redis is not None else connect(section, f"xmppd:{self.name}")
        )
        self.keys = Keys(section.key_prefix)
        self.signer = Signer(derive(secret, "cluster-records"))
        self.writer = RedisWriter(
            self.redis,
            hold_seconds=section.outage_hold,
            hold_max=section.outage_hold_stanzas,
            on_outage=self._outage,
            start_task=start_task,
        )
        self.membership = Membership(
            self.redis,
            self.keys,
            self.name,
            interval=section.heartbeat_interval,
            timeout=section.node_timeout,
            on_dead=self.reap,
            on_change=self._live_changed,
            on_outage=self._outage,
            on_rejoin=self._rejoin,
        )
        self.membership.public_address = section.public_address
        self.feed = SessionFeed(
            self.redis,
            self.keys,
            self.signer,
            registry,
            self.writer,
            invalidations=invalidations,
            is_dead=lambda node: self.membership.is_dead(node),
        )
        self.bus = StanzaBus(
            self.redis,
            self.keys,
            self.signer,
            self.name,
            self.writer,
            registry,
            router,
            is_dead=self.membership.is_dead,
            start_task=start_task,
            hold_seconds=section.outage_hold,
        )
        registry.ops = self.bus
        registry.start_task = start_task
        registry.on_abandoned = self.bus.route_abandoned
        sm_ttl = resume_timeout + section.node_timeout
        self.resumable = ResumableSessions(self.keys, self.name, self.writer, ttl=sm_ttl)
        """The c2s streams' map of resumable sessions (announced in Redis)."""
        self.mirrors = SmMirrors(
            self.redis, self.keys, self.name, self.writer, self.signer, ttl=sm_ttl + 60.0
        )
        """Copies of the resumable sessions' counters and queues (taken over when this
        node dies)."""
        self._mirror_refresh = max(1.0, sm_ttl / 3)
        self.adopt: Callable[[Handover], bool] | None = None
        """Continue a dead node's session here, hibernated (set by the server)."""
        self.end_replaced: Callable[[Handover], None] = lambda handover: None
        """End a dead node's session whose JID is bound again (set by the server)."""
        self.handovers = Handovers(
            self.redis,
            self.keys,
            self.name,
            self.signer,
            self.resumable,
            self.bus.send_op,
            registry,
            mirrors=self.mirrors,
            is_dead=self.membership.is_dead,
            is_live_now=self.is_live_now,
        )
        self.bus.handovers = self.handovers
        self.calls = Calls(self.name, self.signer, self.bus.send_op, start_task)
        """Requests to other nodes (:meth:`call`, :meth:`serve`)."""
        self.bus.calls = self.calls
        self.components = ClusterComponents(
            self.redis,
            self.keys,
            self.name,
            self.writer,
            invalidations,
            forward=self.bus.dispatch_on,
            is_dead=self.membership.is_dead,
        )
        """Where external components are connected (set as the component registry's
        ``remote`` by the server)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[tuple[str, ...]], None]] = []
        self.reaped: list[str] = []
        self.placement = Placement(
            self, start_task, Listing(self.redis, self.keys.listing, self.name)
        )
        """Who holds what (rooms, services, outgoing links): ``ctx.cluster``."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Join: clean up after an earlier run of this node name, open the inbox, read
        the other nodes' sessions, then heartbeat, publish and follow."""
        try:
            await self.redis.ping()
            if await self.membership.previous_life():
                log.info("cluster: cleaning up after an earlier run of node %s", self.name)
                await self.reap(self.name)
            await self.bus.open_inbox()
            await self.membership.beat()
            await self.membership.refresh()
            await self.feed.load()
            await self.components.load()
        except OUTAGE_ERRORS as exc:
            raise ClusterStartError(
                f"cluster: cannot reach Redis at {self.section.redis_url}: {exc}"
            ) from None
        for coro, name in (
            (self.writer.run(), "cluster-writer"),
            (self.feed.follow(), "cluster-feed"),
            (self.bus.consume(), "cluster-inbox"),
            (self.membership.run(), "cluster-membership"),
            (self._refresh_mirrors(), "cluster-sm-mirrors"),
        ):
            self._tasks.append(self._start_task(coro, name=name))
        self._health.set_ready()
        log.info(
            "cluster: node %s joined (%d nodes, %d sessions elsewhere)",
            self.name,
            len(self.membership.live),
            self.registry.remote_count,
        )

    async def _refresh_mirrors(self) -> None:
        """Keep this node's stream-management entries in Redis while their sessions
        last (they expire ``resume_timeout`` and a margin after it died)."""
        while True:
            await asyncio.sleep(self._mirror_refresh)
            self.resumable.republish()
            self.mirrors.refresh()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until what this node published so far is in Redis."""
        await asyncio.sleep(0)  # let the per-turn publication queue itself
        try:
            async with asyncio.timeout(timeout):
                key = self.keys.heartbeat(self.name)
                await self.writer.submit(lambda pipe: pipe.exists(key))
        except TimeoutError:
            log.warning("cluster: %d writes still queued at stop", self.writer.queued)

    def answers_elsewhere(self, tracker: IqTracker) -> None:
        """Answers to requests another node sent reach that node (``IqTracker``)."""
        tracker.node = self.name

        def forward(node: str, stanza: Element, from_: JID) -> None:
            try:
                to = JID.parse(stanza.get("to") or "")
            except InvalidJID:
                return
            _ = self._start_task(self.bus.dispatch_on(node, stanza, to, from_), name="iq-answer")

        tracker.elsewhere = forward

    def can_drain(self) -> bool:
        """Other nodes are alive to take this one's clients."""
        return any(node != self.name for node in self.membership.live)

    async def drain(self) -> str | None:
        """Leave the cluster's placement (rooms and links move to the others) while
        still serving this node's sessions; the public address of another node for
        ``see-other-host`` (``None``: none published)."""
        self._health.set_not_ready("draining", expected=True)
        others = [n for n in self.membership.live if n != self.name]
        await self.membership.drain()
        addresses = self.membership.addresses
        for node in others:
            if node in addresses:
                return addresses[node]
        return None

    async def stop(self) -> None:
        """Leave after this node's sessions were closed: publish their removal, hand
        what is left in the inbox to the others, and stop heartbeating."""
        self._health.set_not_ready("stopping", expected=True)
        await self.registry.settle_moves(timeout=2.0)
        await self.flush()
        consume = [t for t in self._tasks if t.get_name() == "cluster-inbox"]
        for task in consume:
            task.cancel()
        try:
            # Bounded: a node that cannot leave in time is left by the others once its
            # heartbeat expires, as if it had died; its stop must not hang.
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self.membership.leave()
                # Another node alive (this one may no longer count itself among the
                # live once it drained or left): what is left in the inbox goes there.
                if self.can_drain():
                    await self.bus.reroute_inbox(self.name)
                else:
                    await self.redis.delete(self.keys.inbox(self.name))
                await self.redis.delete(
                    self.keys.node_sessions(self.name), self.keys.listing(self.name)
                )
        except (TimeoutError, *OUTAGE_ERRORS) as exc:
            log.warning("cluster: could not leave cleanly: %s", exc or "timed out")
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=LEAVE_TIMEOUT)
            if pending:
                names = ", ".join(sorted(t.get_name() for t in pending))
                log.warning("cluster: tasks still running at stop: %s", names)
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self.redis.aclose()
        except TimeoutError:
            log.warning("cluster: the Redis connections did not close in time")

    async def announce(self, **fields: object) -> None:
        """Add ``fields`` to what this node publishes about itself in the nodes hash
        (kept at every heartbeat; written now)."""
        self.membership.info.update(fields)
        try:
            await self.membership.beat()
        except OUTAGE_ERRORS as exc:
            log.warning("cluster: could not announce %s yet: %s", ", ".join(fields), exc)

    async def node_info(self, node: str) -> dict[str, Any]:
        """What ``node`` published about itself (empty when it is not a member)."""
        raw = await self.redis.hget(self.keys.nodes(), node)
        if not raw:
            return {}
        try:
            info = json.loads(raw)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    async def is_live_now(self, node: str) -> bool:
        """Whether ``node`` is live: in this node's view, or (a node that joined since
        the last look at the members) by its heartbeat key in Redis."""
        if self.membership.is_live(node):
            return True
        try:
            return bool(await self.redis.exists(self.keys.heartbeat(node)))
        except OUTAGE_ERRORS:
            return False

    # ------------------------------------------------------------------ placement

    def owner_of(self, key: str) -> str:
        """The live node that owns ``key`` (rendezvous hashing)."""
        return self.membership.owner_of(key)

    @property
    def live(self) -> tuple[str, ...]:
        """The live nodes, sorted (this one included)."""
        return self.membership.live

    async def call(self, node: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run handler ``name`` on ``node`` (:meth:`serve` there) with ``args`` (plain
        values); its answer, or :class:`~xmppd.cluster.calls.CallFailed`."""
        return await self.calls.call(node, name, args)

    def serve(self, name: str, handler: CallHandler) -> None:
        """Answer other nodes' calls named ``name``."""
        self.calls.serve(name, handler)

    async def dispatch_on(self, node: str, stanza: Element, to: JID, from_: JID) -> bool:
        """Route ``stanza`` on ``node`` (:meth:`StanzaBus.dispatch_on`)."""
        return await self.bus.dispatch_on(node, stanza, to, from_)

    def send_message(self, node: str, topic: str, value: object) -> None:
        """Hand ``value`` to ``topic``'s handler on ``node`` (:meth:`StanzaBus.send_message`)."""
        self.bus.send_message(node, topic, value)

    def on_message(self, topic: str, handler: Callable[[Any], Awaitable[None]] | None) -> None:
        """Handle messages of ``topic`` sent to this node with ``handler`` (``None``: stop)."""
        if handler is None:
            self.bus.message_handlers.pop(topic, None)
        else:
            self.bus.message_handlers[topic] = handler

    def on_live_change(self, listener: Callable[[tuple[str, ...]], None]) -> None:
        """Call ``listener(live nodes)`` when nodes join or die (placement moves)."""
        self._listeners.append(listener)

    def _live_changed(self, live: tuple[str, ...]) -> None:
        for listener in self._listeners:
            try:
                listener(live)
            except Exception:
                log.exception("cluster: a placement listener failed")

    # ------------------------------------------------------------------ failures

    def _outage(self, down: bool) -> None:
        if down:
            self._health.set_not_ready("Redis is unreachable")
        elif not self.writer.down and not self.membership.down:
            self._health.set_ready()

    async def _rejoin(self) -> None:
        """Redis is back: it may have lost everything (a restart without persistence)
        or the others may have taken this node for dead; publish every local session
        again and read the others' again."""
        await self.bus.open_inbox()
        self.feed.republish_all()
        self.resumable.republish()
        self.mirrors.republish()
        self.components.republish()
        await self.feed.catch_up_or_reload()
        if self.components.stale:
            await self.components.load()

    async def reap(self, node: str) -> None:
        """Clean up after a dead node (or an earlier run of this one): remove its
        sessions (their contacts get unavailable presence through the usual
        ``resource_unbound`` handlers), route again what its inbox held, forget it."""
        keys = self.keys
        queued = await self._adopt_mirrored(node) if node != self.name else {}
        members = await self.redis.smembers(keys.node_sessions(node))
        ended: list[RemoteSession] = []
        for member in members:
            full_text = member.decode() if isinstance(member, bytes) else str(member)
            if full_text in queued:
                continue  # lives on here (or on the node its client resumed on)
            try:
                full = JID.parse(full_text)
            except InvalidJID:
                continue
            value = await self.redis.hget(keys.sessions(str(full.bare)), full.resource)
            record = self._record(value)
            if record is None or record.node != node:
                continue
            session = self.registry.remove_remote(full, record.stream_id) or RemoteSession(
                full, record
            )
            ended.append(session)

            def build(pipe: Any, full: JID = full, sid: str = record.stream_id) -> None:
                self.feed.remove_commands(pipe, node, full, sid)

            _ = self.writer.submit(build)
        await self.flush()
        for session in ended:
            host = self._hosts.get(session.jid.domain)
            if host is not None:
                try:
                    await host.bus.run(hooks.RESOURCE_UNBOUND, hooks.SessionEvent(session))
                except Exception:
                    log.exception("cluster: resource_unbound failed for %s", session.jid)
        await self.components.forget_node(node)
        rerouted = await self.bus.reroute_inbox(node, queued)
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.node_sessions(node), keys.listing(node), keys.node_mirrors(node))
        if node != self.name:
            pipe.hdel(keys.nodes(), node)
        await pipe.execute()
        self.reaped.append(node)
        log.info(
            "cluster: node %s: %d sessions ended, %d inbox entries routed again",
            node,
            len(ended),
            rerouted,
        )

    async def _adopt_mirrored(self, node: str) -> dict[str, tuple[str, str]]:
        """Take over the dead node's mirrored sessions as hibernated sessions of this
        node (those a client resumed elsewhere already are left to it). Full JID → (the
        last entry of the dead node's inbox already in the session's queue, the node
        holding the session now)."""
        if self.adopt is None:
            return {}
        raw = await self.redis.smembers(self.keys.node_mirrors(node))
        sm_ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)
        adopted = 0
        for sm_id in sm_ids:
            replaced = await self._bound_again(sm_id, node)
            handover = await self.mirrors.claim(sm_id, node)
            if handover is None:
                continue
            try:
                if replaced:
                    self.end_replaced(handover)
                elif self.adopt(handover):
                    adopted += 1
            except Exception:
                log.exception("cluster: could not adopt session %s of %s", sm_id, node)
        # Every mirrored session lives on: here, or where its client resumed it.
        left = await self.mirrors.left_by(sm_ids, node)
        await self.flush()
        if sm_ids:
            log.info("cluster: node %s: %d mirrored sessions adopted here", node, adopted)
        return left

    async def _bound_again(self, sm_id: str, node: str) -> bool:
        """Whether the full JID of a dead node's mirrored session is bound elsewhere
        already (its client logged in again instead of resuming)."""
        full = await self.redis.hget(self.keys.sm_mirror(sm_id), "f")
        if not full:
            return False
        try:
            jid = JID.parse(full.decode() if isinstance(full, bytes) else str(full))
        except InvalidJID:
            return False
        current = self.registry.get(jid)
        return current is not None and getattr(current, "node", None) != node

    def _record(self, value: bytes | None) -> SessionRecord | None:
        if not value:
            return None
        sep = value.find(b"\0")
        try:
            record = self.signer.loads(value[sep + 1 :])
        except (BadRecord, ValueError):
            return None
        return record if isinstance(record, SessionRecord) else None

    # ------------------------------------------------------------------ metrics

    def register_metrics(self, metrics: Metrics) -> None:
        registry, bus, writer = self.registry, self.bus, self.writer
        metrics.gauge_function(
            "cluster_nodes", "Live nodes of the cluster", lambda: len(self.membership.live)
        )
        metrics.gauge_function(
            "cluster_local_sessions", "Sessions on this node", lambda: registry.local_count
        )
        metrics.gauge_function(
            "cluster_remote_sessions",
            "Sessions on other nodes this node knows of",
            lambda: registry.remote_count,
        )
        metrics.counter_function(
            "cluster_inbox_received", "Entries this node's inbox handled", lambda: bus.received
        )
        metrics.counter_function(
            "cluster_rerouted",
            "Stanzas routed again because their session had moved or ended",
            lambda: bus.rerouted,
        )
        handovers = self.handovers
        metrics.counter_function(
            "cluster_sessions_handed_over",
            "Stream-management sessions this node handed to another node",
            lambda: handovers.handed_over,
        )
        metrics.counter_function(
            "cluster_sessions_taken_over",
            "Stream-management sessions this node took over from another node",
            lambda: handovers.taken_over,
        )
        metrics.counter_function(
            "cluster_redis_batches", "Pipelines written to Redis", lambda: writer.batches
        )
        metrics.counter_function(
            "cluster_dropped",
            "Cross-node writes given up after a Redis outage (stanzas bounced)",
            lambda: writer.dropped,
        )
        metrics.gauge_function("cluster_queued", "Writes waiting for Redis", lambda: writer.queued)
