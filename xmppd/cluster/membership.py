"""Which nodes are alive, and who owns what.

A node is in the cluster while its heartbeat key exists (renewed every
``heartbeat_interval``, expiring after ``node_timeout``); there is no join step and no
membership protocol of our own. Every node reads the member list at each heartbeat;
a member whose heartbeat expired is dead, and one survivor (the one that takes its
reaping lock) cleans up after it.

Things placed on one node (a room, the outgoing link to a remote domain) go to the
node chosen by rendezvous (highest-random-weight) hashing of their name over the live
nodes: when a node dies only its share moves, and every node computes the same owner
without asking anyone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from xmppd.cluster.writer import OUTAGE_ERRORS, raise_if_cancelled

if TYPE_CHECKING:
    from xmppd.cluster.keys import Keys
    from xmppd.cluster.redisconn import RedisClient

log = logging.getLogger(__name__)


def default_node_name(worker: int | None = None) -> str:
    """The machine's host name (a pod name in Kubernetes), ``-w<N>`` per worker."""
    name = socket.gethostname().split(".")[0] or "xmppd"
    return name if worker is None else f"{name}-w{worker}"


def rendezvous_owner(key: str, nodes: list[str] | tuple[str, ...]) -> str | None:
    """The node with the highest hash of (node, key): the owner of ``key``."""
    best: str | None = None
    best_weight = b""
    for node in nodes:
        weight = hashlib.blake2b(f"{node}\0{key}".encode(), digest_size=8).digest()
        if best is None or weight > best_weight:
            best, best_weight = node, weight
    return best


class Membership:
    """This node's heartbeat and the live set of nodes."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        node: str,
        *,
        interval: float,
        timeout: float,
        on_dead: Callable[[str], Awaitable[None]],
        on_change: Callable[[tuple[str, ...]], None],
        on_outage: Callable[[bool], None],
        on_rejoin: Callable[[], Awaitable[None]],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.node = node
        self._interval = interval
        self._timeout = timeout
        self._on_dead = on_dead
        self._on_change = on_change
        self._on_outage = on_outage
        self._on_rejoin = on_rejoin
        self._failing = False  # the last step failed with an unexpected error (logged once)
        self.live: tuple[str, ...] = (node,)
        """Live nodes, sorted (this one included while it can reach Redis)."""
        self.dead: frozenset[str] = frozenset()
        """Members whose heartbeat had expired at the last look."""
        self.heartbeat_age: dict[str, float] = {}
        """Seconds since each live node's last heartbeat (``xmppd cluster status``)."""
        self.down = False
        self.draining = False
        """Leaving: no more heartbeats, and no longer an owner of anything."""
        self.public_address = ""
        """Published in this node's info: where clients reach it directly."""
        self.addresses: dict[str, str] = {}
        """The public address each live node published (those that have one)."""
        self._healthy_since = 0.0
        self.incarnation = os.urandom(8).hex()
        """Tells this run of the node from an earlier one with the same name."""
        self._rejoin_again_at = 0.0
        self._lapsed = False
        """A heartbeat (this loop's or :meth:`ClusterNode.announce`'s) found the
        previous one expired: :meth:`run` publishes everything again."""
        self.info: dict[str, object] = {}
        """What else this node tells the others in its entry of the nodes hash (such
        as ``http``: where it takes HTTP requests passed on by other nodes)."""

    def owner_of(self, key: str) -> str:
        """The live node that owns ``key`` (a room JID, a remote domain)."""
        return rendezvous_owner(key, self.live) or self.node

    def is_live(self, node: str) -> bool:
        return node in self.live

    def is_dead(self, node: str) -> bool:
        """Seen as a member without a heartbeat at the last look, by a node whose own
        view can be trusted (:meth:`_trusted`); a node that joined since is neither
        live nor dead yet: its inbox says whether it exists."""
        return node in self.dead

    def _trusted(self, now: float) -> bool:
        """Whether an expired heartbeat means a dead node. Not until this node has been
        in touch with Redis for a full timeout (since its start, an outage or a lapse):
        after a failover every heartbeat may have expired, and the others need a
        chance to renew theirs. Until then nobody is dead: stanzas go to the members'
        inboxes, which their node reads when it beats again, or its reaper routes
        again (taking a member for dead then sent a live user's messages to offline
        storage)."""
        return bool(self._healthy_since) and now - self._healthy_since >= self._timeout

    async def beat(self) -> None:
        """Renew the heartbeat and announce this node (also the first time). Finding
        the previous heartbeat expired (the others may have taken this node for dead
        and cleaned up after it) sets :attr:`_lapsed` for :meth:`run`."""
        info = json.dumps(
            {
                **self.info,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.time(),
                "address": self.public_address,
            },
            separators=(",", ":"),
        )
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(
            self._keys.heartbeat(self.node),
            f"{self.incarnation}:{time.time():.3f}",
            px=int(self._timeout * 1000),
            get=True,
        )
        pipe.hset(self._keys.nodes(), self.node, info)
        previous, _ = await pipe.execute()
        if previous is None and self._healthy_since:
            self._lapsed = True

    async def previous_life(self) -> bool:
        """An earlier run of this node name left state behind (it crashed, or was
        restarted before its heartbeat expired)."""
        found = await self._redis.hexists(self._keys.nodes(), self.node)
        return bool(found)

    async def drain(self) -> None:
        """Stop being a member (others take over rooms and links) but keep running: the
        node still answers for its sessions until they have moved."""
        self.draining = True
        live = tuple(n for n in self.live if n != self.node)
        if live != self.live:
            self.live = live
            self._on_change(live)
        await self.leave()

    async def leave(self) -> None:
        """Leave cleanly. The member entry goes before the heartbeat: a node that
        finds a member without a heartbeat then finds the entry gone when it looks
        again (:meth:`_watch`), and does not take this node for dead."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hdel(self._keys.nodes(), self.node)
        pipe.delete(self._keys.heartbeat(self.node))
        await pipe.execute()

    async def run(self) -> None:
        """Heartbeat and watch the others, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            raise_if_cancelled()
            if self.draining:
                await asyncio.sleep(self._interval)
                continue
            try:
                await self.beat()
                lapsed, self._lapsed = self._lapsed, False
                if self.down:
                    self.down = False
                    self._healthy_since = loop.time()
                    self._on_outage(False)
                    await self._rejoin()
                elif not self._healthy_since:
                    self._healthy_since = loop.time()
                elif lapsed:
                    # No error, but out of touch for longer than the timeout (the
                    # process stalled, or the client's own retries hid a failover):
                    # the others may have reaped this node, and could not beat either.
                    log.warning(
                        "cluster: this node's heartbeat had expired (out of touch for "
                        "longer than node_timeout); publishing its sessions again"
                    )
                    self._healthy_since = loop.time()
                    await self._rejoin()
                elif self._rejoin_again_at and loop.time() >= self._rejoin_again_at:
                    self._rejoin_again_at = 0.0
                    await self._on_rejoin()
                await self._watch(loop.time())
                if self._failing:
                    self._failing = False
                    log.warning("cluster: the heartbeat works again")
            except OUTAGE_ERRORS as exc:
                if not self.down:
                    log.warning("cluster: cannot reach Redis for the heartbeat: %s", exc)
                    self.down = True
                    self._on_outage(True)
            except Exception:
                # Anything else (a key of the wrong type, a bug in a callback) must not
                # end the heartbeat: a node that stops beating is taken for dead by the
                # others while it still serves its users. Log it (once) and go on.
                if not self._failing:
                    self._failing = True
                    log.exception("cluster: heartbeat step failed; trying again")
            await asyncio.sleep(self._interval)

    async def _rejoin(self) -> None:
        """Publish everything again now, and once more a timeout later (from
        :meth:`run`): a survivor that took this node for dead may be cleaning up
        after it right now, removing what this node publishes before it is done."""
        self._rejoin_again_at = asyncio.get_running_loop().time() + self._timeout
        await self._on_rejoin()

    async def refresh(self) -> None:
        """Read the live nodes now (at start, so that placement is right before the
        first stanza), without declaring anyone dead."""
        await self._read_live()

    async def _watch(self, now: float) -> None:
        dead = await self._read_live()
        if not self._trusted(now):
            return
        for member in dead:
            if member == self.node:
                continue
            if not await self._redis.hexists(self._keys.nodes(), member):
                continue  # it left cleanly while we looked (a drain): not dead
            taken = await self._redis.set(
                self._keys.reaping(member), self.node, nx=True, px=int(self._timeout * 6000)
            )
            if taken:
                log.warning("cluster: node %s is dead (no heartbeat); taking over", member)
                await self._on_dead(member)

    async def _read_live(self) -> list[str]:
        """Update :attr:`live` (and the addresses, ages, dead set) from the heartbeats;
        the members whose heartbeat expired (dead or not, see :meth:`_trusted`)."""
        infos = {
            _text(k): _text(v) for k, v in (await self._redis.hgetall(self._keys.nodes())).items()
        }
        members = list(infos)
        if not members:
            return []
        pipe = self._redis.pipeline(transaction=False)  # not MGET: keys in several slots
        for member in members:
            pipe.get(self._keys.heartbeat(member))
        beats = await pipe.execute()
        live: list[str] = []
        dead: list[str] = []
        ages: dict[str, float] = {}
        wall = time.time()
        for member, beat in zip(members, beats, strict=True):
            if beat is None:
                dead.append(member)
                continue
            live.append(member)
            stamp = _text(beat).rpartition(":")[2]
            try:
                ages[member] = max(0.0, wall - float(stamp))
            except ValueError:
                ages[member] = 0.0
        if self.node not in live and not self.draining:
            live.append(self.node)
        if self.draining and self.node in live:
            live.remove(self.node)
        addresses = {}
        for member in live:
            try:
                # This node may have no entry right now: a survivor that took it for
                # dead removed it since its last beat (the next beat writes it again).
                address = json.loads(infos.get(member, "")).get("address", "")
            except (ValueError, AttributeError):
                address = ""
            if address:
                addresses[member] = str(address)
        self.addresses = addresses
        self.heartbeat_age = ages
        trusted = self._trusted(asyncio.get_running_loop().time())
        self.dead = frozenset(dead) if trusted else frozenset()
        live_sorted = tuple(sorted(live))
        if live_sorted != self.live:
            log.info("cluster: live nodes: %s", ", ".join(live_sorted))
            self.live = live_sorted
            self._on_change(live_sorted)
        return dead


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
