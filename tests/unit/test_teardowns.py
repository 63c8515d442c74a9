"""xmppd.stream.teardowns: ended sessions announce their end a few per turn, in order;
a session going live under the same full JID lets its predecessor's announcement
through at once (waiting, or replaced and about to ask), so it is never overtaken."""

from __future__ import annotations

import asyncio

from xmppd.stream.teardowns import Teardowns


class Ends:
    """Ended sessions asking for their turn, and the order they announced in."""

    def __init__(self, per_turn: int) -> None:
        self.teardowns = Teardowns(per_turn)
        self.announced: list[str] = []

    def start(self, jid: str) -> asyncio.Task[None]:
        return asyncio.create_task(self._announce(jid))

    async def _announce(self, jid: str) -> None:
        await self.teardowns.turn(jid)
        self.announced.append(jid)


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_burst_is_announced_a_few_per_turn_in_order() -> None:
    ends = Ends(2)
    teardowns, announced = ends.teardowns, ends.announced
    jids = [f"u{i}@example.org/phone" for i in range(8)]

    tasks = [ends.start(jid) for jid in jids]
    await _turns(1)
    assert announced == jids[:2]  # the first turn's budget
    assert teardowns.waiting == 6
    await asyncio.gather(*tasks)
    assert announced == jids


async def test_a_session_going_live_lets_its_waiting_predecessor_through() -> None:
    ends = Ends(1)
    teardowns, announced = ends.teardowns, ends.announced

    jids = [f"u{i}@example.org/phone" for i in range(20)]
    tasks = [ends.start(jid) for jid in jids]
    await _turns(1)
    assert announced == jids[:1]
    # The last of the queue comes back under the same address: its end goes now.
    teardowns.going_live(jids[-1], replaced=False)
    await _turns(2)
    assert jids[-1] in announced and len(announced) < len(jids) // 2
    await asyncio.gather(*tasks)
    assert sorted(announced) == sorted(jids)


async def test_a_replaced_session_is_not_queued() -> None:
    ends = Ends(1)
    teardowns, announced = ends.teardowns, ends.announced

    others = [ends.start(f"u{i}@example.org/pc") for i in range(10)]
    await _turns(1)
    # A new session replaced the one bound to this address; that one's teardown task
    # asks for its turn only afterwards, and is let through at once.
    teardowns.going_live("bob@example.org/phone", replaced=True)
    replaced = ends.start("bob@example.org/phone")
    await _turns(1)
    assert "bob@example.org/phone" in announced
    await asyncio.gather(replaced, *others)
    # Used once: a later end under that address waits its turn like any other.
    assert teardowns.waiting == 0
    await _turns(3)
    blockers = [ends.start(f"v{i}@example.org/pc") for i in range(5)]
    later = ends.start("bob@example.org/phone")
    await _turns(1)
    assert not later.done()
    await asyncio.gather(later, *blockers)


async def test_going_live_with_no_predecessor_changes_nothing() -> None:
    ends = Ends(1)
    teardowns, announced = ends.teardowns, ends.announced
    teardowns.going_live("carol@example.org/phone", replaced=False)

    blockers = [ends.start(f"w{i}@example.org/pc") for i in range(5)]
    later = ends.start("carol@example.org/phone")
    await _turns(1)
    assert not later.done()
    await asyncio.gather(later, *blockers)
    assert announced[-1] == "carol@example.org/phone"
