"""Slows down failed logins by their source: the address and, separately, the account.

A failure is recorded against the peer's address and against the account it named
(so that guessing one account's password from many addresses is slowed too). After
``free_failures`` failures of a source, each further failure of that source is
answered later: 0.25 s, then twice as long each time, up to ``max_delay``. The delay
holds the *failure's answer* (the guesser's connection waits), never a correct
password: a client that authenticates right is answered at once, even from an
address under attack.

Failures of one source are answered one after another, not side by side: a source has
a single schedule (``next_slot``), and each failure's answer takes the next slot. So
100 parallel connections from one address get their failures answered no faster than
one connection would, and as each connection can only guess again once answered, they
make no more guesses per second than one.

A success clears the *account's* count (its owner proved who they are), never the
address's: an attacker holding one valid account cannot reset its address's count by
logging in with it. Entries expire after ``window`` seconds; the table is bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from xmppd.peeraddress import source_key


@dataclass(slots=True)
class _Source:
    count: int
    last: float
    next_slot: float


class FailedLoginThrottle:
    """Failed-login accounting by address and by account (see the module docstring)."""

    def __init__(
        self,
        *,
        free_failures: int = 3,
        max_delay: float = 10.0,
        window: float = 600.0,
        max_entries: int = 100_000,
    ) -> None:
        self.free_failures = free_failures
        self.max_delay = max_delay
        self.window = window
        self.max_entries = max_entries
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.outcomes: Counter[tuple[str, bool]] = Counter()
        """Logins by (SASL mechanism, succeeded): every outcome passes through here, so
        this is where they are counted (read by the metrics at scrape time)."""

    def failures(self, address: str, account: str | None = None) -> int:
        """Failures counted against ``address`` (or ``account`` when given) in the window."""
        src = self._live(
            f"account:{account}" if account else f"ip:{source_key(address)}", time.monotonic()
        )
        return 0 if src is None else src.count

    def _live(self, key: str, now: float) -> _Source | None:
        src = self._sources.get(key)
        if src is not None and now - src.last > self.window and src.next_slot <= now:
            del self._sources[key]
            return None
        return src

    def _step(self, count: int) -> float:
        extra = count - self.free_failures
        return 0.0 if extra <= 0 else float(min(self.max_delay, 0.25 * 2 ** (extra - 1)))

    def failed(self, address: str, mechanism: str = "", *, account: str | None = None) -> float:
        """Count a failure; returns the seconds its answer must wait (its slot): the
        caller sleeps that long before answering (see :func:`answer_failure`)."""
        self.outcomes[mechanism, False] += 1
        now = time.monotonic()
        answer_at = now
        keys = [f"ip:{source_key(address)}"] + ([f"account:{account}"] if account else [])
        for key in keys:
            src = self._live(key, now)
            if src is None:
                src = _Source(0, now, now)
            else:
                self._sources.pop(key)
            src.count += 1
            src.last = now
            step = self._step(src.count)
            if step:
                src.next_slot = max(now, src.next_slot) + step
                answer_at = max(answer_at, src.next_slot)
            self._sources[key] = src
        while len(self._sources) > self.max_entries:
            self._sources.popitem(last=False)
        return answer_at - now

    async def answer_failure(
        self, address: str, mechanism: str = "", *, account: str | None = None
    ) -> None:
        """Count a failure, then wait for its slot before the caller answers it."""
        delay = self.failed(address, mechanism, account=account)
        if delay > 0:
            await asyncio.sleep(delay)

    def succeeded(self, address: str, mechanism: str = "", *, account: str | None = None) -> None:
        """A login succeeded: clears the account's count, never the address's."""
        self.outcomes[mechanism, True] += 1
        if account:
            self._sources.pop(f"account:{account}", None)
