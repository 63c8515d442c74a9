"""Login work paced per event-loop turn, so that bound sessions do not wait behind a
login storm.

The event loop runs every ready callback of a turn before it looks at the sockets
again. In a login storm (a network blip sends every phone back at once) a turn holds
hundreds of login steps, a TLS handshake read alone ~0.4 ms, and a chat message that
arrives behind them waits for the whole turn: measured with 10,000 logins beside 500
chatting pairs (``python -m bench beside``), chat p99 went from 2.6 to 250 ms.

A connection whose client stream is not bound yet asks :meth:`LoginPacer.admit` before
each read is handled. Beyond ``per_turn`` such reads in one turn, the connection holds
the bytes for a later turn (:meth:`wait`; its socket is paused only if more keeps
coming); the turns after serve waiting connections first, in order. A bound session is
never held, so its traffic waits for at most ``per_turn`` login steps; the logins still
get every cycle the bound sessions leave. Nothing is dropped: a held read is handled as it came.
``c2s.login_reads_per_turn``, 1 by default (0 turns it off). Measured beside 10,000
logins (docs/benchmarks.md, "One login read per turn"): chat p99 8-10 ms with 4 per
turn, 3.3-4.0 ms with 1; a pure login ramp (nobody else to serve) runs 6 % slower with
1, its turns being more. A budget of 4 that fell to 1 while bound sessions had traffic
was tried and dropped: a ramp's own sessions, once bound, are such traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class LoginPacer:
    """The budget of login reads per turn, shared by the server's client connections."""

    __slots__ = ("_next_scheduled", "_used", "_waiting", "per_turn")

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self._used = 0
        self._waiting: deque[Callable[[], None]] = deque()
        self._next_scheduled = False

    @property
    def waiting(self) -> int:
        """Connections holding a read for a later turn."""
        return len(self._waiting)

    def admit(self) -> bool:
        """A login read may be handled now (counted against this turn's budget)."""
        if self._used >= self.per_turn or self._waiting:
            return False  # the budget is spent, or others wait already: keep the order
        self._used += 1
        self._schedule()
        return True

    def wait(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` in a later turn, after those already waiting."""
        self._waiting.append(resume)
        self._schedule()

    def _schedule(self) -> None:
        if not self._next_scheduled:
            self._next_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """A new turn: a fresh budget, first for those waiting."""
        self._next_scheduled = False
        self._used = 0
        waiting = self._waiting
        while waiting and self._used < self.per_turn:
            self._used += 1
            try:
                waiting.popleft()()
            except Exception:  # one connection's fault must not strand the others
                log.exception("handling a held login read failed")
        if waiting or self._used:
            self._schedule()
