"""One ordered, batched way to write to the cluster's Redis.

Everything a node writes (session records, stanzas for other nodes) goes through a
:class:`RedisWriter`: commands are sent in the order they were submitted, those that
arrive while a batch is in flight go together in the next pipeline (one round trip for
many), and a submitter may await its batch, so what the server acknowledges to a
client is in Redis first.

While Redis is unreachable, submissions are held in order (``[cluster] outage_hold``
seconds and ``outage_hold_stanzas`` at most) and sent when it returns; those held
longer, or pushed out by the bound, are given up and their ``on_drop`` runs (a stanza
bounces to its sender).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

if TYPE_CHECKING:
    from xmppd.cluster.redisconn import RedisClient

log = logging.getLogger(__name__)

Build = Callable[[Any], None]
"""Adds commands to a redis-py pipeline."""

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
"""What makes Redis count as unreachable."""


def raise_if_cancelled() -> None:
    """For a loop that retries after an outage error: end if the task is being
    cancelled. The Redis client can turn the cancellation of a blocked read into a
    connection error, or into nothing at all, and a retry would then swallow it (a
    node's stop waited forever on its session-log tail): call it at the top of every
    pass of a retrying loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Tail:
    """Commands that go right after every write submitted while it is open (in the
    same pipeline): the stream-management count of the client stanza whose routing
    made those writes, so Redis never holds the count without the routing."""

    __slots__ = ("build", "open", "used")

    def __init__(self, build: Build) -> None:
        self.build = build
        self.open = True
        self.used = False


TAIL: contextvars.ContextVar[Tail | None] = contextvars.ContextVar("cluster_tail", default=None)
"""The tail of the stanza being routed in this context (set by the c2s stream)."""


def _with_tail(build: Build, tail: Build) -> Build:
    def both(pipe: Any) -> None:
        build(pipe)
        tail(pipe)

    return both


@dataclass(slots=True)
class _Pending:
    build: Build
    created: float
    on_drop: Callable[[], Awaitable[None]] | None
    future: asyncio.Future[list[Any]] | None = field(default=None)
    on_result: Callable[[list[Any]], None] | None = None


class RedisWriter:
    """Sends submitted commands in order, batched; holds them through an outage."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        hold_seconds: float,
        hold_max: int,
        on_outage: Callable[[bool], None],
        start_task: Callable[..., asyncio.Task[None]],
    ) -> None:
        self._redis = redis
        self._hold_seconds = hold_seconds
        self._hold_max = max(1, hold_max)
        self._on_outage = on_outage
        self._start_task = start_task
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self.down = False
        """Redis did not answer the last batch (submissions are being held)."""
        self.sent = 0
        self.dropped = 0
        self.batches = 0

    def submit(
        self,
        build: Build,
        *,
        on_drop: Callable[[], Awaitable[None]] | None = None,
        on_result: Callable[[list[Any]], None] | None = None,
    ) -> asyncio.Future[list[Any]]:
        """Queue commands; the future gives their replies once sent. While Redis is down
        it resolves at once with no replies (the commands stay queued). ``on_result``
        gets the replies whenever they come, also after an outage."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        tail = TAIL.get()
        if tail is not None and tail.open:
            tail.used = True
            build = _with_tail(build, tail.build)
        pending = _Pending(build, loop.time(), on_drop, future, on_result)
        if self.down:
            future.set_result([])
            pending.future = None
            if len(self._queue) >= self._hold_max:
                self._drop(self._queue.popleft())
        self._queue.append(pending)
        self._wake.set()
        return future

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """The writer loop (a task of the cluster node)."""
        loop = asyncio.get_running_loop()
        while True:
            raise_if_cancelled()
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = list(self._queue)
                pipe = self._redis.pipeline(transaction=False)
                sizes = []
                for pending in batch:
                    before = len(pipe)
                    pending.build(pipe)
                    sizes.append(len(pipe) - before)
                try:
                    replies = await pipe.execute(raise_on_error=False)
                except OUTAGE_ERRORS as exc:
                    raise_if_cancelled()  # this inner loop retries on its own
                    self._set_down(True, exc)
                    self._expire(loop.time())
                    await asyncio.sleep(0.5)
                    continue
                finally:
                    await _reset(pipe)
                self._set_down(False, None)
                for _ in batch:
                    self._queue.popleft()
                self.batches += 1
                self.sent += len(batch)
                offset = 0
                for pending, size in zip(batch, sizes, strict=True):
                    mine = replies[offset : offset + size]
                    offset += size
                    if pending.future is not None and not pending.future.done():
                        pending.future.set_result(mine)
                    if pending.on_result is not None:
                        try:
                            pending.on_result(mine)
                        except Exception:
                            log.exception("cluster: a write's result handler failed")

    def _set_down(self, down: bool, exc: BaseException | None) -> None:
        if down == self.down:
            return
        self.down = down
        if down:
            log.warning("cluster: Redis is unreachable (%s); holding cross-node traffic", exc)
            for pending in self._queue:  # nobody waits through an outage
                if pending.future is not None and not pending.future.done():
                    pending.future.set_result([])
                pending.future = None
        else:
            log.info("cluster: Redis is reachable again; sending %d held", len(self._queue))
        self._on_outage(down)

    def _expire(self, now: float) -> None:
        while self._queue and now - self._queue[0].created > self._hold_seconds:
            self._drop(self._queue.popleft())

    def _drop(self, pending: _Pending) -> None:
        self.dropped += 1
        if pending.on_drop is not None:
            _ = self._start_task(pending.on_drop(), name="cluster-drop")


async def _reset(pipe: Any) -> None:
    reset = getattr(pipe, "reset", None)
    if reset is not None:
        result = reset()
        if asyncio.iscoroutine(result):
            await result
