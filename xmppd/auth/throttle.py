"""Slows down repeated failed logins from one address (brute-force protection)."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict


class FailedLoginThrottle:
    """After ``free_failures`` failures from an address, each further attempt waits
    twice as long as the previous one, up to ``max_delay`` seconds. A success clears
    the address; entries expire after ``window`` seconds. Bounded in size."""

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
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.outcomes: Counter[tuple[str, bool]] = Counter()
        """Logins by (SASL mechanism, succeeded): every outcome passes through here, so
        this is where they are counted (read by the metrics at scrape time)."""

    def delay_for(self, address: str) -> float:
        """Seconds to wait before answering the next attempt from ``address``."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        count, last = entry
        if time.monotonic() - last > self.window:
            del self._failures[address]
            return 0.0
        extra = count - self.free_failures
        if extra < 0:
            return 0.0
        return float(min(self.max_delay, 0.25 * (2**extra)))

    def failed(self, address: str, mechanism: str = "") -> None:
        self.outcomes[mechanism, False] += 1
        count, _ = self._failures.pop(address, (0, 0.0))
        self._failures[address] = (count + 1, time.monotonic())
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def succeeded(self, address: str, mechanism: str = "") -> None:
        self.outcomes[mechanism, True] += 1
        self._failures.pop(address, None)
