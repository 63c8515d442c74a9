"""Stream-management resumption across nodes (XEP-0198): a client whose connection
dropped may reconnect to any node and resume there.

Each node records in Redis which node holds each resumable session it has
(``sm:<id>`` → node, kept while the session lasts). A node asked to resume a session
it does not hold asks the holder, over the stanza bus, to hand it over: the holder
applies the client's ``h``, sends back the session (its JID, counters, unacknowledged
stanzas, presence and state) and ends its copy without telling anyone it went away;
the new node continues it. If the holder died, the session lives on in its mirror
(:mod:`xmppd.cluster.smmirror`): the node the client reconnected to claims the mirror
and continues the session from it, or the survivor that cleaned up after the dead node
adopted it already as a hibernated session and hands it over like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from xmppd.stream.sm import MOD, Handover

if TYPE_CHECKING:
    from xmppd.cluster.keys import Keys
    from xmppd.cluster.records import Signer
    from xmppd.cluster.registry import ClusterSessions
    from xmppd.cluster.smmirror import SmMirrors
    from xmppd.cluster.writer import RedisWriter
    from xmppd.jid import JID

log = logging.getLogger(__name__)

HANDOVER_TIMEOUT: Final = 5.0
"""How long a node waits for the holder of a session to hand it over."""

LIVENESS_CHECK: Final = 0.5
"""While waiting, how often to look whether the holder died meanwhile."""

CLAIM_TRIES: Final = 4
"""Looks at who holds a session (a survivor may be adopting it right then)."""

_HOLDER_DIED: Final = "holder-died"


class ResumableStream(Protocol):
    """What the holder of a session does when another node takes it over."""

    def hand_over(self, bare: JID, h: int) -> Handover | str: ...


class ResumableSessions(MutableMapping[str, Any]):
    """This node's resumable sessions by id (the c2s streams' ``resumable`` map),
    announcing in Redis which node holds each."""

    def __init__(self, keys: Keys, node: str, writer: RedisWriter, ttl: float) -> None:
        self._local: dict[str, Any] = {}
        self._keys = keys
        self._node = node
        self._writer = writer
        self._ttl_ms = int(ttl * 1000)

    def __getitem__(self, sm_id: str) -> Any:
        return self._local[sm_id]

    def __setitem__(self, sm_id: str, stream: Any) -> None:
        self._local[sm_id] = stream
        key, node, ttl = self._keys.resumption(sm_id), self._node, self._ttl_ms
        _ = self._writer.submit(lambda pipe: pipe.set(key, node, px=ttl))

    def __delitem__(self, sm_id: str) -> None:
        del self._local[sm_id]
        key, node = self._keys.resumption(sm_id), self._node
        # Only if still ours: a node that took the session over has written its name.
        _ = self._writer.submit(lambda pipe: pipe.eval(_DELETE_IF_OURS, 1, key, node))

    def __iter__(self) -> Iterator[str]:
        return iter(self._local)

    def __len__(self) -> int:
        return len(self._local)

    def republish(self) -> None:
        """Announce every held session again (Redis lost them)."""
        for sm_id, stream in list(self._local.items()):
            self[sm_id] = stream


_DELETE_IF_OURS: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Handovers:
    """Asks other nodes for sessions and answers their asks (bus operations ``smt``
    and ``smg``)."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        node: str,
        signer: Signer,
        resumable: ResumableSessions,
        send: Callable[[str, dict[str, Any]], Any],
        registry: ClusterSessions,
        *,
        mirrors: SmMirrors | None = None,
        is_dead: Callable[[str], bool] = lambda node: False,
        is_live_now: Callable[[str], Any] | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._node = node
        self._signer = signer
        self._resumable = resumable
        self._send = send
        self._registry = registry
        self._mirrors = mirrors
        self._is_dead = is_dead
        self._is_live_now = is_live_now
        self._waiting: dict[str, asyncio.Future[Handover | str]] = {}
        self.handed_over = 0
        self.taken_over = 0

    async def take_over(self, sm_id: str, bare: JID, h: int) -> Handover | str:
        """The session ``sm_id`` from the node holding it, or from its mirror when that
        node died (``item-not-found`` if there is neither)."""
        for attempt in range(CLAIM_TRIES):
            if attempt:
                await asyncio.sleep(0.3 * attempt)
            holder = await self._redis.get(self._keys.resumption(sm_id))
            node = "" if holder is None else _text(holder)
            if node == self._node:
                stream: ResumableStream | None = self._resumable._local.get(sm_id)
                if stream is None:
                    return "item-not-found"
                return stream.hand_over(bare, h)  # adopted here meanwhile
            if node and not await self._dead(node):
                result = await self._ask(node, sm_id, bare, h)
                if result != _HOLDER_DIED:
                    return result
            claimed = await self._claim(sm_id, node, bare, h)
            if claimed is not None:
                return claimed
        return "item-not-found"

    async def _dead(self, node: str) -> bool:
        if self._is_dead(node):
            return True
        if self._is_live_now is None:
            return False
        return not await self._is_live_now(node)

    async def _claim(self, sm_id: str, node: str, bare: JID, h: int) -> Handover | str | None:
        """The session from the mirror its dead holder left (``None``: none now)."""
        if self._mirrors is None:
            return "item-not-found"
        owner = await self._mirrors.owner(sm_id)
        if not owner:
            return None if node else "item-not-found"
        if owner == self._node:
            return None  # being adopted here: look again
        if owner != node and not await self._dead(owner):
            return None  # a live node holds it now: ask that one
        handover = await self._mirrors.claim(sm_id, owner, str(bare))
        if handover is None:
            return None
        log.info("cluster: session %s resumed from the mirror of dead node %s", sm_id, owner)
        self.taken_over += 1
        apply_client_h(handover, h)
        return handover

    async def _ask(self, node: str, sm_id: str, bare: JID, h: int) -> Handover | str:
        """Ask the live holder for the session (``_HOLDER_DIED`` if it died meanwhile)."""
        request = os.urandom(8).hex()
        future: asyncio.Future[Handover | str] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOVER_TIMEOUT
        try:
            self._send(
                node,
                {"o": "smt", "q": request, "n": self._node, "i": sm_id, "j": str(bare), "h": h},
            )
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    log.info("cluster: node %s did not hand over session %s in time", node, sm_id)
                    return "item-not-found"
                try:
                    async with asyncio.timeout(min(left, LIVENESS_CHECK)):
                        result = await asyncio.shield(future)
                    break
                except TimeoutError:
                    if await self._dead(node):
                        return _HOLDER_DIED
        finally:
            self._waiting.pop(request, None)
            if not future.done():
                future.cancel()
        if isinstance(result, Handover):
            self.taken_over += 1
            # The holder deleted its entry; this node holds the session now (the
            # stream registers itself in the resumable map when it adopts it).
        return result

    def asked(self, fields: Callable[[str], Any]) -> None:
        """Another node asks for a session this node holds."""
        from xmppd.jid import JID, InvalidJID

        request, asker, sm_id = _text(fields("q")), _text(fields("n")), _text(fields("i"))
        result: Handover | str = "item-not-found"
        stream = self._resumable._local.get(sm_id)
        if stream is not None:
            # Until the asker's record replaces this node's, stanzas for the session
            # come here: they go on to the asker (no window where it is nowhere).
            full: JID | None = getattr(stream, "jid", None)
            if full is not None:
                self._registry.expect_handover(full, asker)
            try:
                result = stream.hand_over(JID.parse(_text(fields("j"))), int(_text(fields("h"))))
            except (InvalidJID, ValueError):
                result = "item-not-found"
            finally:
                if full is not None:
                    self._registry.handover_done(full)
        if isinstance(result, Handover):
            self.handed_over += 1
            payload = {"o": "smg", "q": request, "d": self._signer.dumps(result)}
        else:
            payload = {"o": "smg", "q": request, "c": result}
        self._send(asker, payload)

    def answered(self, fields: Callable[[str], Any]) -> None:
        """The holder answered one of this node's asks."""
        future = self._waiting.get(_text(fields("q")))
        if future is None or future.done():
            return  # timed out meanwhile (the session ended there: nothing to do)
        data = fields("d")
        if data:
            handover = self._signer.loads(data)
            if isinstance(handover, Handover):
                from xmppd.jid import JID, InvalidJID

                with contextlib.suppress(InvalidJID):  # stanzas forwarded by the holder wait
                    self._registry.expect_adoption(JID.parse(handover.jid), HANDOVER_TIMEOUT)
            future.set_result(handover if isinstance(handover, Handover) else "item-not-found")
        else:
            future.set_result(_text(fields("c")) or "item-not-found")


def apply_client_h(handover: Handover, h: int) -> None:
    """Apply the resuming client's ``h`` to a session taken from a mirror. An ``h``
    beyond what the mirror knows (stanzas reached the client, the mirror's copy of
    them died with the node) acknowledges everything."""
    count = (h - handover.acked) % MOD
    handover.unacked = handover.unacked[count:] if count <= len(handover.unacked) else []
    handover.acked = h % MOD


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
