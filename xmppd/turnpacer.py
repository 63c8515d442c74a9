"""Work paced per event-loop turn, so that bound sessions do not wait behind a burst of
logins or of ending sessions.

The event loop runs every ready callback of a turn before it looks at the sockets
again. When a burst of work arrives at once, a chat message that arrives behind it
waits for the whole burst. Two such bursts come from a network blip:

* **Logins** (a blip sends every phone back at once): a TLS handshake read alone is
  ~0.4 ms. A connection whose client stream is not bound yet asks
  :meth:`TurnPacer.admit` before each read is handled; beyond ``per_turn`` such reads
  in one turn, the connection holds the bytes for a later turn (:meth:`wait`; its
  socket is paused only if more keeps coming). Measured with 10,000 logins beside
  500 chatting pairs (``python -m bench beside``): chat p99 2.6 ms alone, 250 ms
  beside the storm unpaced, 8-10 ms with 4 reads per turn, 3.3-4.0 ms with 1
  (``c2s.login_reads_per_turn``, 1 by default; 0 turns it off). A pure login ramp
  (nobody else to serve) runs 6 % slower with 1, its turns being more. A budget of 4
  that fell to 1 while bound sessions had traffic was tried and dropped: a ramp's own
  sessions, once bound, are such traffic.
* **Ending sessions** (every connection of the blip closes at once, or their
  stream-management sessions time out together): each ended session's
  ``resource_unbound`` hooks (the unavailable presence to every contact, last
  activity, caches) wait their turn (:meth:`ticket`), ``c2s.teardowns_per_turn`` at a
  time.

The turns after a full one serve those waiting first, in order; a bound session's
traffic is never held, so it waits for at most ``per_turn`` paced items; the paced
work still gets every cycle the bound sessions leave. Nothing is dropped: a held read
is handled as it came, a waiting teardown runs in full.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class TurnPacer:
    """A budget of paced work items per event-loop turn (login reads, or session
    teardowns), shared by everyone who asks; the rest wait for later turns, in order."""

    __slots__ = ("_next_scheduled", "_used", "_waiting", "per_turn")

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self._used = 0
        self._waiting: deque[Callable[[], None]] = deque()
        self._next_scheduled = False

    @property
    def waiting(self) -> int:
        """Items waiting for a later turn."""
        return len(self._waiting)

    def admit(self) -> bool:
        """An item may run now (counted against this turn's budget)."""
        if self._used >= self.per_turn or self._waiting:
            return False  # the budget is spent, or others wait already: keep the order
        self._used += 1
        self._schedule()
        return True

    def wait(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` in a later turn, after those already waiting."""
        self._waiting.append(resume)
        self._schedule()

    def ticket(self) -> asyncio.Future[None]:
        """A future done once this turn's budget admits the caller: done already, or
        in a later turn after those already waiting. Whoever holds it may set its result
        sooner (to jump the queue); cancelling it gives the place up."""
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.admit():
            admitted.set_result(None)
            return admitted

        def admit_waiter() -> None:
            if not admitted.done():  # not cancelled nor let through meanwhile
                admitted.set_result(None)

        self.wait(admit_waiter)
        return admitted

    def unlimit(self) -> None:
        """No budget any more: everyone waiting goes in the next turn, and every later
        item at once (the server stopping: nobody's messages left to protect)."""
        self.per_turn = sys.maxsize
        if self._waiting:
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
            except Exception:  # one fault must not strand the others
                log.exception("paced work held for a later turn failed")
        if waiting or self._used:
            self._schedule()
