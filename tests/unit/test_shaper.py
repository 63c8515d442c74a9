"""The shaper's hold and release, without sockets: what c2s streams and s2s
connections share (tests/unit/test_peer_limits.py has the bucket's arithmetic; the
real-server tests are tests/hostile/test_limits.py and tests/e2e/test_federation_limits.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from xmppd.stream.shaper import Shaper


@dataclass
class Owner:
    """What a stream or a connection does when the shaper calls it."""

    delivered: list[bytes] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    resumed: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, data: bytes) -> None:
        self.delivered.append(data)

    def pause(self) -> None:
        self.events.append("pause")

    def resume(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def throttled(self) -> None:
        self.events.append("throttled")

    def shaper(self, rate: float, burst: float) -> Shaper:
        return Shaper(
            rate,
            burst,
            asyncio.get_running_loop().time(),
            deliver=self.deliver,
            pause=self.pause,
            resume=self.resume,
            on_throttle=self.throttled,
        )


def holding(shaper: Shaper) -> bool:
    """(A call, not the property: mypy would narrow it across the awaits.)"""
    return shaper.holding


async def test_within_the_budget_bytes_go_through_at_once() -> None:
    owner = Owner()
    shaper = owner.shaper(1_000_000, 10_000)
    now = asyncio.get_running_loop().time()
    for n in range(5):
        shaper.received(b"x%d" % n, now)
    assert owner.delivered == [b"x0", b"x1", b"x2", b"x3", b"x4"]
    assert owner.events == [] and not holding(shaper)


async def test_over_the_budget_reading_pauses_until_paid_then_delivers_in_order() -> None:
    owner = Owner()
    shaper = owner.shaper(10_000, 1_000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    shaper.received(b"a" * 1_000, started)  # the burst
    shaper.received(b"b" * 1_000, started)  # 1 000 bytes of debt: 0.1 s
    shaper.received(b"c" * 500, started)  # read before the pause took effect
    assert owner.delivered == [b"a" * 1_000]
    assert owner.events == ["pause", "throttled"] and holding(shaper)
    await asyncio.wait_for(owner.resumed.wait(), 5)
    assert not holding(shaper)
    assert loop.time() - started >= 0.15 - 0.01  # 1 500 bytes of debt at 10 000/s
    assert owner.delivered == [b"a" * 1_000, b"b" * 1_000, b"c" * 500]
    assert owner.events == ["pause", "throttled", "resume"]


async def test_cancel_drops_what_is_held_and_resumes_nothing() -> None:
    owner = Owner()
    shaper = owner.shaper(10_000, 100)
    now = asyncio.get_running_loop().time()
    shaper.received(b"x" * 1_000, now)
    assert holding(shaper)
    shaper.cancel()
    assert not holding(shaper)
    await asyncio.sleep(0.15)
    shaper.received(b"late", now + 1)
    assert owner.delivered == [] and owner.events == ["pause", "throttled"]


async def test_a_delivery_that_cancels_stops_the_rest() -> None:
    """A stream error in held input closes the stream: what follows is not fed."""
    owner = Owner()
    shaper: Shaper
    fed = asyncio.Event()

    def deliver(data: bytes) -> None:
        owner.delivered.append(data)
        shaper.cancel()
        fed.set()

    shaper = Shaper(10_000, 100, asyncio.get_running_loop().time(), deliver=deliver)
    now = asyncio.get_running_loop().time()
    shaper.received(b"x" * 500, now)
    shaper.received(b"y" * 10, now)
    await asyncio.wait_for(fed.wait(), 5)
    await asyncio.sleep(0.05)
    assert owner.delivered == [b"x" * 500] and not holding(shaper)
