"""The node-to-node stanza bus: one Redis stream per node (its inbox).

A node writes to another's inbox what must happen there: a stanza for one of its
sessions (``user_receive_packet`` runs on the receiving node, ``filter_packet`` does
not run again), a session operation (close, state, presence), or a routed stanza for a
service it holds (a room). One inbox per node, written in order through the node's
:class:`~xmppd.cluster.writer.RedisWriter`, keeps the stanzas from one sender to one
recipient in order whatever their kind.

Entries stay in the inbox until handled, so when a node dies a survivor routes what it
left unread again (:meth:`StanzaBus.reroute_inbox`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import ResponseError

from xmppd.cluster.smmirror import INBOX_ENTRY, entry_after
from xmppd.cluster.writer import OUTAGE_ERRORS, raise_if_cancelled
from xmppd.errors import StanzaError
from xmppd.jid import JID, InvalidJID
from xmppd.sessions import SessionKey
from xmppd.stanza import parse, serialize, summary

if TYPE_CHECKING:
    from xmppd.cluster.calls import Calls
    from xmppd.cluster.keys import Keys
    from xmppd.cluster.records import RemoteSession, Signer
    from xmppd.cluster.redisconn import RedisClient
    from xmppd.cluster.registry import ClusterSessions
    from xmppd.cluster.resumption import Handovers
    from xmppd.cluster.writer import RedisWriter
    from xmppd.router import Router
    from xmppd.stanza import Element

log = logging.getLogger(__name__)

RETRY_DELAY: Final = 0.25
"""Seconds between tries to write to an inbox that is missing while its node lives."""

MAX_HOPS: Final = 3
"""A stanza re-routed by a node that no longer held its session may be passed on this
many times (views of a session that just moved converge within milliseconds)."""

_hops: contextvars.ContextVar[int] = contextvars.ContextVar("cluster_hops", default=0)

RECIPIENT_UNAVAILABLE: Final = StanzaError(
    "recipient-unavailable", "the recipient's server node could not be reached in time"
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class StanzaBus:
    """Writes to other nodes' inboxes and handles this node's."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        signer: Signer,
        node: str,
        writer: RedisWriter,
        registry: ClusterSessions,
        router: Router,
        *,
        is_dead: Callable[[str], bool],
        start_task: Callable[..., asyncio.Task[None]],
        hold_seconds: float = 30.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._signer = signer
        self.node = node
        self._writer = writer
        self._registry = registry
        self._router = router
        self._is_dead = is_dead
        self._start_task = start_task
        self.hold_seconds = hold_seconds
        self.received = 0
        self.rerouted = 0
        self.handovers: Handovers | None = None
        """Stream-management handovers (ops ``smt``/``smg``), set by the node."""
        self.calls: Calls | None = None
        """Node-to-node calls (ops ``cll``/``clr``), set by the node."""
        self.message_handlers: dict[str, Callable[[Any], Awaitable[None]]] = {}
        """Handlers of node messages (op ``msg``) by topic: what modules hand to the
        node that holds something of theirs (``ctx.cluster.send``)."""

    # ------------------------------------------------------------------ out

    def _send(
        self,
        node: str,
        fields: dict[str, Any],
        stanza: Element | None = None,
        *,
        no_inbox: Callable[[], None] | None = None,
    ) -> Any:
        """Queue an entry for ``node``'s inbox; ``no_inbox`` runs if it has none when
        the write reaches Redis (the node is gone, or Redis lost everything and the
        node has not opened its inbox again yet)."""
        inbox = self._keys.inbox(node)

        def build(pipe: Any) -> None:
            pipe.xadd(inbox, fields, nomkstream=True)

        on_drop = None
        if stanza is not None:

            async def on_drop() -> None:
                await self._router.bounce(stanza, RECIPIENT_UNAVAILABLE)

        def on_result(replies: list[Any]) -> None:
            if replies and replies[0] is None and no_inbox is not None:
                no_inbox()

        return self._writer.submit(build, on_drop=on_drop, on_result=on_result)

    def _retry_or_reroute(
        self, node: str, fields: dict[str, Any], stanza: Element, full: JID, sid: str, since: float
    ) -> None:
        """An entry found no inbox: try again shortly while its node is alive (it opens
        its inbox again after Redis came back empty), within ``outage_hold``; route it
        again (another resource, offline storage) once the node is known dead."""
        loop = asyncio.get_running_loop()
        if self._is_dead(node) or loop.time() - since > self.hold_seconds:
            hops = int(fields.get("h", 0))
            _ = self._start_task(
                self._gone_with_hops(full, sid, stanza, hops), name="cluster-reroute"
            )
            return

        def again() -> None:
            _ = self._send(
                node,
                fields,
                stanza,
                no_inbox=lambda: self._retry_or_reroute(node, fields, stanza, full, sid, since),
            )

        loop.call_later(RETRY_DELAY, again)

    async def _gone_with_hops(self, full: JID, sid: str, stanza: Element, hops: int) -> None:
        token = _hops.set(hops)
        try:
            await self._session_gone(full, sid, stanza)
        finally:
            _hops.reset(token)

    async def deliver(self, session: RemoteSession, stanza: Element, data: bytes | None) -> None:
        node = session.node
        if self._is_dead(node):
            await self._session_gone(session.jid, session.stream_id, stanza)
            return
        full, sid = session.jid, session.stream_id
        fields = {
            "o": "dlv",
            "f": str(full),
            "s": sid,
            "d": data if data is not None else serialize(stanza),
            "h": _hops.get(),
        }
        fence = self._registry.fence_for(full)
        if fence:
            fields["w"] = fence
        since = asyncio.get_running_loop().time()
        await self._send(
            node,
            fields,
            stanza,
            no_inbox=lambda: self._retry_or_reroute(node, fields, stanza, full, sid, since),
        )

    async def dispatch_on(self, node: str, stanza: Element, to: JID, from_: JID) -> bool:
        """Route ``stanza`` (filtered already) on ``node``, which holds its destination
        (a room, an outgoing link). ``False``: that node has no inbox (gone)."""
        fields = {"o": "dsp", "t": str(to), "r": str(from_), "d": serialize(stanza)}
        replies = await self._send(node, fields, stanza)
        return not (replies and replies[0] is None)

    def send_message(self, node: str, topic: str, value: object) -> None:
        """Hand ``value`` to ``node``'s handler of ``topic`` (in order with everything
        else this node writes there). When ``node`` has no inbox (it left, or was
        reaped) the handler runs here instead; a dead node's unread messages are
        handled by the survivor that reaps it."""

        def here() -> None:
            _ = self._start_task(self._on_message(topic, value), name="cluster-message")

        fields = {"o": "msg", "k": topic, "d": self._signer.dumps(value)}
        if node == self.node or self._is_dead(node):
            here()
            return
        _ = self._send(node, fields, no_inbox=here)

    async def _on_message(self, topic: str, value: object) -> None:
        handler = self.message_handlers.get(topic)
        if handler is None:
            log.debug("cluster: no handler for a message of %s", topic)
            return
        await handler(value)

    def send_op(self, node: str, fields: dict[str, Any]) -> None:
        """Write an operation to ``node``'s inbox (nobody waits for it)."""
        _ = self._send(node, fields)

    def fence(self, old: str, full: JID, fence: str, new: str) -> bool:
        if self._is_dead(old):
            return False
        _ = self._send(
            old,
            {"o": "fnc", "f": str(full), "i": fence, "b": new},
            no_inbox=lambda: self._fence_reached(new, str(full), fence),
        )
        return True

    def _fence_reached(self, node: str, full: str, fence: str) -> None:
        """Tell ``node`` that nothing more comes for ``full`` before ``fence``."""
        if node == self.node:
            self._registry.fence_passed(JID.parse(full), fence)
        else:
            self.send_op(node, {"o": "fnf", "f": full, "i": fence})

    def send_raw(self, session: RemoteSession, stanza: Element) -> None:
        self._op(session, {"o": "raw", "d": serialize(stanza)})

    def close(self, session: RemoteSession, condition: str | None, text: str | None) -> None:
        self._op(session, {"o": "cls", "c": condition or "", "x": text or ""})

    def set_state(self, session: RemoteSession, name: str, value: object) -> None:
        self._op(session, {"o": "set", "k": name, "d": self._signer.dumps(value)})

    def set_presence(self, session: RemoteSession, presence: bytes | None, priority: int) -> None:
        self._op(session, {"o": "prs", "d": presence or b"", "p": priority})

    def set_interested(self, session: RemoteSession) -> None:
        self._op(session, {"o": "int"})

    def _op(self, session: RemoteSession, fields: dict[str, Any]) -> None:
        if self._is_dead(session.node):
            return
        fields["f"] = str(session.jid)
        fields["s"] = session.stream_id
        self._send(session.node, fields)

    async def _session_gone(self, full: JID, stream_id: str, stanza: Element) -> None:
        """The session a stanza was for is not where the view said: forget it and
        route the stanza again (another resource, offline storage, or an error)."""
        self._registry.remove_remote(full, stream_id)
        hops = _hops.get()
        if hops >= MAX_HOPS:
            log.warning("cluster: gave up re-routing %s", summary(stanza))
            await self._router.bounce(stanza, RECIPIENT_UNAVAILABLE)
            return
        self.rerouted += 1
        token = _hops.set(hops + 1)
        try:
            from_ = JID.parse(stanza.get("from") or "")
            await self._router.dispatch(stanza, full, from_, None)
        except InvalidJID:
            pass
        finally:
            _hops.reset(token)

    async def route_abandoned(self, full: JID, held: list[tuple[Element, bytes | None]]) -> None:
        """Stanzas held for a session whose adoption here never came: route them again
        (another resource, offline storage, or an error)."""
        for stanza, _data in held:
            try:
                from_ = JID.parse(stanza.get("from") or "")
                await self._router.dispatch(stanza, full, from_, None)
            except InvalidJID:
                continue

    # ------------------------------------------------------------------ in

    async def open_inbox(self) -> None:
        """Create this node's inbox (others write with NOMKSTREAM, so a dead node's
        deleted inbox is never recreated by a late writer)."""
        try:
            await self._redis.xgroup_create(self._keys.inbox(self.node), "n", id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def consume(self) -> None:
        """Handle this node's inbox in order (a task of the cluster node)."""
        inbox = self._keys.inbox(self.node)
        last = "0-0"
        while True:
            raise_if_cancelled()
            try:
                found = await self._redis.xread({inbox: last}, count=500, block=1000)
            except OUTAGE_ERRORS:
                await asyncio.sleep(0.5)
                continue
            if not found:
                continue
            done: list[str] = []
            for _name, entries in found:
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    done.append(last)
                    self.received += 1
                    token = INBOX_ENTRY.set(last)
                    try:
                        await self._handle(fields)
                    except Exception:
                        log.exception("cluster: could not handle an inbox entry")
                    finally:
                        INBOX_ENTRY.reset(token)
            # Handled: deleted after (in the writer's order) what handling them wrote,
            # such as the copies queued in stream-management mirrors.
            _ = self._writer.submit(_xdel(inbox, done))

    async def reroute_inbox(
        self, node: str, mirrored: dict[str, tuple[str, str]] | None = None
    ) -> int:
        """Route again what a dead node left unread. The inbox is renamed first, in one
        step: from then on writers find no inbox and route their stanzas again
        themselves, so nothing lands where nobody reads. ``mirrored``: full JID → (the
        last entry the dead node queued for that session in its mirror, the node
        holding the session now): the session lives on from the mirror with those (not
        routed again), and what follows goes to that node (whatever this node's view
        of the session says yet)."""
        inbox, reaped = self._keys.inbox(node), self._keys.reaped_inbox(node)
        try:
            await self._redis.rename(inbox, reaped)
        except ResponseError:  # no such key: nothing left
            return 0
        entries = await self._redis.xrange(reaped, count=1_000_000)
        await self._redis.delete(reaped)
        skipped = 0
        mirrored = mirrored or {}
        for entry_id, fields in entries:
            get = _getter(fields)
            where = mirrored.get(_text(get("f") or b"")) if _text(get("o")) == "dlv" else None
            if where is not None:
                last, holder = where
                if not entry_after(_text(entry_id), last):
                    skipped += 1
                    continue
                if holder and holder not in (node, self.node) and not self._is_dead(holder):
                    # Claimed by the node its client resumed on: delivered there.
                    data = get("d")
                    moved = {"o": "dlv", "f": _text(get("f")), "s": "", "d": data, "h": 1}
                    _ = self._send(holder, moved, parse(data) if data else None)
                    continue
            try:
                await self._reroute(fields)
            except Exception:
                log.exception("cluster: could not re-route an entry of %s", node)
        if skipped:
            log.info("cluster: %d entries of %s were in mirrored sessions already", skipped, node)
        return len(entries) - skipped

    def _pass_fence(self, get: Callable[[str], Any]) -> None:
        self._fence_reached(_text(get("b")), _text(get("f")), _text(get("i")))

    async def _reroute(self, fields: dict[Any, Any]) -> None:
        get = _getter(fields)
        op, data = _text(get("o")), get("d")
        if op == "fnc":
            self._pass_fence(get)
            return
        if op == "dlv" and data:
            full = JID.parse(_text(get("f")))
            await self._session_gone(full, _text(get("s")), parse(data))
        elif op == "dsp" and data:
            await self._router.dispatch(
                parse(data), JID.parse(_text(get("t"))), JID.parse(_text(get("r"))), None
            )
        elif op == "msg" and data:
            await self._on_message(_text(get("k")), self._signer.loads(data))

    async def _handle(self, fields: dict[Any, Any]) -> None:
        get = _getter(fields)
        op = _text(get("o"))
        data = get("d") or b""
        if op == "dsp":
            await self._router.dispatch(
                parse(data), JID.parse(_text(get("t"))), JID.parse(_text(get("r"))), None
            )
            return
        if op == "msg":
            await self._on_message(_text(get("k")), self._signer.loads(data))
            return
        if op in ("smt", "smg"):
            if self.handovers is not None:
                if op == "smt":
                    self.handovers.asked(get)
                else:
                    self.handovers.answered(get)
            return
        if op == "fnc":  # pass the fence on, behind what this node forwarded
            self._pass_fence(get)
            return
        if op == "fnf":
            self._registry.fence_passed(JID.parse(_text(get("f"))), _text(get("i")))
            return
        if op in ("cll", "clr"):
            if self.calls is not None:
                if op == "cll":
                    self.calls.asked_for(get)
                else:
                    self.calls.answered(get)
            return
        full = JID.parse(_text(get("f")))
        sid = _text(get("s"))
        registry = self._registry
        endpoint = registry.local_endpoint(full, sid)
        if op == "dlv":
            stanza = parse(data)
            fence = _text(get("w") or b"")
            # Sent here directly after the sender's view moved: what it sent through
            # the old node comes first (the fence follows that).
            if (
                endpoint is not None
                and fence
                and registry.wait_for_fence(full, fence, stanza, data or None)
            ):
                return
            if endpoint is None and not sid:
                # Forwarded by the node that handed the session to this one (it does
                # not know the new stream): held until the session is bound here.
                if registry.hold_for_adoption(full, stanza, data or None):
                    return
                endpoint = registry.local_bound(full)
            if endpoint is None:
                token = _hops.set(int(_text(get("h") or b"0")) + 1)
                try:
                    await self._session_gone(full, sid, stanza)
                finally:
                    _hops.reset(token)
                return
            await registry.deliver_arrived(endpoint, stanza, data)
            return
        if endpoint is None:
            return
        if op == "raw":
            endpoint.send_raw(parse(data))
        elif op == "cls":
            endpoint.close(_text(get("c")) or None, _text(get("x")) or None)
        elif op == "set":
            value = self._signer.loads(data)
            registry.set_state(endpoint, SessionKey(_text(get("k")), None), value)
        elif op == "prs":
            registry.set_presence(
                endpoint, parse(data) if data else None, int(_text(get("p") or b"0"))
            )
        elif op == "int":
            registry.set_interested(endpoint)


def _xdel(inbox: str, done: list[str]) -> Callable[[Any], None]:
    def build(pipe: Any) -> None:
        pipe.xdel(inbox, *done)

    return build


def _getter(fields: dict[Any, Any]) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        value = fields.get(name.encode())
        return fields.get(name) if value is None else value

    return get
