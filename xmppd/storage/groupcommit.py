"""Group commit: writes that callers would each make in a transaction of their own,
gathered and made in one, each caller told once it committed.

A transaction costs far more than a small row in it: on SQLite a write transaction
is a few hundred microseconds of CPU whatever it holds, on PostgreSQL a round trip and
a commit wait. When many writes arrive together (every message for a hibernated
session during a reconnect storm, every FAST token used for the first time), one
transaction per write makes the commits the cost. :class:`GroupCommit` queues the
items submitted in one turn of the event loop (and, on a database that yields,
during the transaction before), and hands them to its ``write`` function as one list.

On SQLite, whose transactions do not yield, a batch is what one turn brings, and turns
are short while logins are paced (one read each): in a storm of FAST logins nearly
every batch held one item. With a ``linger``, a batch that starts within
:data:`BURST_WINDOW` of the previous one's end first waits ``linger`` seconds for
others to join it; a write after a quiet spell goes at once, so only a burst pays the
wait. Use it where callers can wait a few milliseconds and nothing reads the items in
between in a way their order matters.

``write`` runs everything in one transaction and returns one result per item, in
order; it retries unavailability itself if it should (:class:`WriteRetry`). When it
raises one of :data:`REFUSED_FOR_DATA` for a batch of several, each item is written
again alone, so one bad row does not fail the others; any other exception goes to
every caller of the batch. Callers that stop waiting (cancelled) do not take their
item back: it is written with the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

from xmppd.storage.retry import REFUSED_FOR_DATA, StorageUnavailable

log = logging.getLogger(__name__)

BURST_WINDOW: Final = 0.1
"""Seconds after a batch within which the next one counts as part of a burst."""

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Batches :meth:`submit` calls into calls of ``write`` (one transaction each).

    The writing task exists only while something is queued. If it is cancelled (the
    event loop shutting down), the callers still waiting get
    :class:`StorageUnavailable`.
    """

    __slots__ = ("_last_end", "_linger", "_queue", "_task", "_write")

    def __init__(
        self, write: Callable[[list[T]], Awaitable[list[R]]], *, linger: float = 0.0
    ) -> None:
        self._write = write
        self._linger = linger
        self._last_end = float("-inf")
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is submitted meanwhile; its result."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._task is None:
            self._start()
        return await done

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="group-commit")
        self._task.add_done_callback(self._ended)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._linger and loop.time() - self._last_end < BURST_WINDOW:
            await asyncio.sleep(self._linger)
        while self._queue:
            batch, self._queue = self._queue, []
            if not await self._batch(batch):  # a row refused: the others alone
                for one in batch:
                    await self._batch([one])
        self._last_end = loop.time()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The writer ended. Cancelled (even before it started): what it had not
        written fails. Done: what was submitted after its last look gets a new one."""
        self._task = None
        failed = not task.cancelled() and task.exception() is not None
        if failed:  # a write function that broke its contract (results per item)
            log.error("group commit writer failed", exc_info=task.exception())
        if not self._queue:
            return
        if task.cancelled() or failed:
            left, self._queue = self._queue, []
            _fail(left, StorageUnavailable("the server is stopping"))
        else:
            self._start()

    async def _batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> bool:
        """Write ``batch`` and tell its callers; ``False`` (nobody told) when the
        database refused the data of a batch of several."""
        try:
            results = await self._write([item for item, _ in batch])
        except REFUSED_FOR_DATA as exc:
            if len(batch) > 1:
                return False
            _fail(batch, exc)
        except Exception as exc:
            _fail(batch, exc)
        except BaseException:
            _fail(batch, StorageUnavailable("the server is stopping"))
            raise
        else:
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(result)
        return True


def _fail(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)
