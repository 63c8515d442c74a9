"""The input shaper (ejabberd's ``shaper``): a token bucket on the bytes read from one
peer; over it, reading the peer's connection pauses. One type for both users:

- client streams (``c2s.input_rate``, bursts of ``c2s.input_burst``), in
  :class:`xmppd.stream.machine.StreamMachine`, so TCP, WebSocket and BOSH alike;
- server-to-server connections (``s2s.incoming_rate``, bursts of one second's worth),
  in front of their stream in :mod:`xmppd.transports.tcp`, incoming and outgoing
  (XEP-0288 brings a remote's stanzas back on ours).

Nothing is dropped: a read that goes over the budget is held (one read's worth, in
memory already), reading pauses (the peer's TCP window closes: back-pressure), and
once the debt is paid at the rate the held bytes are delivered and reading resumes.
The owner keeps its own reasons to pause (a full input queue): the shaper asks it
to pause and to resume, and the owner resumes only when no reason is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def _nothing() -> None:
    pass


def _drop(data: bytes) -> None:
    pass


class Shaper:
    """``rate`` bytes per second on average, ``burst`` at once (the bucket's size)."""

    __slots__ = (
        "_deliver",
        "_held",
        "_on_throttle",
        "_pause",
        "_resume",
        "_stamp",
        "_timer",
        "_tokens",
        "burst",
        "rate",
    )

    def __init__(
        self,
        rate: float,
        burst: float,
        now: float = 0.0,
        *,
        deliver: Callable[[bytes], None] = _drop,
        pause: Callable[[], None] = _nothing,
        resume: Callable[[], None] = _nothing,
        on_throttle: Callable[[], None] | None = None,
    ) -> None:
        """``deliver`` gets the bytes within the budget (in order); ``pause`` and
        ``resume`` stop and restart reading the connection; ``on_throttle`` is called
        when a pause starts (metrics, logs). The bucket starts full at ``now``."""
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self._tokens = self.burst
        self._stamp = now
        self._deliver = deliver
        self._pause = pause
        self._resume = resume
        self._on_throttle = on_throttle
        self._timer: asyncio.TimerHandle | None = None
        self._held: list[bytes] = []

    @property
    def holding(self) -> bool:
        """Reading is paused until the bucket refills."""
        return self._timer is not None

    def take(self, size: int, now: float) -> float:
        """Count ``size`` bytes read at ``now``; the seconds to stop reading (0: none)."""
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        tokens -= size
        self._tokens = tokens
        self._stamp = now
        return -tokens / self.rate if tokens < 0 else 0.0

    def received(self, data: bytes, now: float) -> None:
        """Bytes read at ``now`` (loop time): delivered at once within the budget;
        otherwise held, and reading pauses until they are paid for. The per-read path:
        :meth:`take` is inlined."""
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        tokens -= len(data)
        self._tokens = tokens
        self._stamp = now
        if self._timer is None:
            if tokens >= 0:
                self._deliver(data)
                return
            # Over the rate: these bytes wait, and nothing more is read until paid.
            self._timer = asyncio.get_running_loop().call_later(-tokens / self.rate, self._release)
            self._pause()
            if self._on_throttle is not None:
                self._on_throttle()
        # (While holding: read before the pause took effect; after what is held.)
        self._held.append(data)

    def _release(self) -> None:
        """The pause is over: deliver what was held, then resume (or wait longer when
        more arrived meanwhile)."""
        self._timer = None
        wait = self.take(0, asyncio.get_running_loop().time())
        if wait > 0:
            self._timer = asyncio.get_running_loop().call_later(wait, self._release)
            return
        held, self._held = self._held, []
        for data in held:
            self._deliver(data)  # may cancel() us (a stream error): then _drop
        self._resume()

    def cancel(self) -> None:
        """The connection is gone: forget what is held, deliver and resume nothing."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = []
        self._deliver = _drop
        self._resume = _nothing
