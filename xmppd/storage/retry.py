"""Database work retried while the database is unavailable (down, unreachable), with
back-off, for the writes behind an acknowledgement: a module awaits
:meth:`WriteRetry.run` instead of the bare call, and its health part says meanwhile
that it cannot write, and why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import sqlalchemy as sa

if TYPE_CHECKING:
    from xmppd.health import HealthPart

T = TypeVar("T")

RETRY_FIRST: Final = 0.1
RETRY_MAX: Final = 5.0
"""Back-off between attempts: doubling from RETRY_FIRST, capped at RETRY_MAX seconds."""

REFUSED_FOR_DATA: Final = (sa.exc.IntegrityError, sa.exc.DataError)
"""What the database answers about the data itself: retrying cannot help."""


class StorageUnavailable(Exception):
    """The database stayed unavailable for the whole of the caller's deadline."""


class WriteRetry:
    """Runs database work, retrying it while the database is unavailable.

    Everything but :data:`REFUSED_FOR_DATA` (and cancellation) counts as unavailable:
    the work is retried after a back-off until ``deadline`` seconds have passed, then
    :class:`StorageUnavailable` is raised. The work must be safe to repeat: a commit
    whose answer was lost with the connection is retried too (make it refuse a second
    copy through a key chosen before the first attempt). One instance per module and
    host; ``health`` is not ready from the first failure to the next success.
    """

    __slots__ = ("_failing", "_health", "_log", "_what", "deadline")

    def __init__(
        self,
        health: HealthPart,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        what: str,
        *,
        deadline: float = 30.0,
    ) -> None:
        self._health = health
        self._log = log
        self._what = what
        self._failing = False
        self.deadline = deadline

    @property
    def failing(self) -> bool:
        """The last attempt failed for unavailability."""
        return self._failing

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()``, retried while the database is unavailable."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline
        delay = RETRY_FIRST
        while True:
            try:
                result = await work()
            except REFUSED_FOR_DATA:
                raise
            except Exception as exc:
                self._unavailable(exc)
                if loop.time() + delay > give_up:
                    raise StorageUnavailable(f"cannot {self._what}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._failing:
                self._failing = False
                self._health.set_ready()
                self._log.warning("can %s again", self._what)
            return result

    def _unavailable(self, exc: Exception) -> None:
        reason = f"cannot {self._what}: {type(exc).__name__}: {str(exc)[:200]}"
        self._health.set_not_ready(reason)
        if not self._failing:
            self._failing = True
            self._log.warning("%s; retrying", reason)
