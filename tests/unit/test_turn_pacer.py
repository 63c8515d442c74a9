"""xmppd.turnpacer: at most ``per_turn`` paced items (login reads, session teardowns)
run in one turn of the event loop; the rest wait, in order, and the turns after serve
those waiting first; a failing resume does not strand the others; a cancelled ticket
does not hold up the next."""

from __future__ import annotations

import asyncio
import functools

import pytest

from xmppd.turnpacer import TurnPacer


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_budget_of_a_turn_then_the_waiting_in_order() -> None:
    pacer = TurnPacer(2)
    served: list[int] = []
    assert pacer.admit() and pacer.admit()
    assert not pacer.admit()
    for i in range(5):
        pacer.wait(functools.partial(served.append, i))
    assert pacer.waiting == 5 and served == []
    await _next_turn()
    assert served[:2] == [0, 1]
    # While some wait, a new read does not jump the queue, even with budget left.
    assert not pacer.admit()
    for _ in range(10):
        await asyncio.sleep(0)
    assert served == [0, 1, 2, 3, 4] and pacer.waiting == 0
    await _next_turn()
    assert pacer.admit()  # a fresh turn, nobody waiting


async def test_a_failing_resume_does_not_strand_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pacer = TurnPacer(4)
    served: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    for _ in range(4):
        assert pacer.admit()
    pacer.wait(broken)
    pacer.wait(lambda: served.append("after"))
    await _next_turn()
    assert served == ["after"]
    assert "paced work held for a later turn failed" in caplog.text


async def test_awaiting_a_turn_runs_a_few_per_turn_in_order() -> None:
    """What a burst of ending sessions does: 10 teardowns ask at once, 3 per turn run;
    each turn's 3 are the next in order, and everyone runs."""
    pacer = TurnPacer(3)
    turn = 0
    ran: list[tuple[int, int]] = []  # (teardown, the turn it ran in)

    async def teardown(i: int) -> None:
        await pacer.ticket()
        ran.append((i, turn))

    tasks = [asyncio.create_task(teardown(i)) for i in range(10)]
    while len(ran) < 10:
        await asyncio.sleep(0)
        turn += 1
        assert turn < 50, ran
    await asyncio.gather(*tasks)
    assert [i for i, _ in ran] == list(range(10))
    per_turn: dict[int, int] = {}
    for _, t in ran:
        per_turn[t] = per_turn.get(t, 0) + 1
    assert max(per_turn.values()) <= 3
    assert len(per_turn) >= 4  # 10 in threes: at least four turns


async def test_a_cancelled_ticket_does_not_hold_up_the_next() -> None:
    pacer = TurnPacer(1)
    assert pacer.admit()
    first, second = pacer.ticket(), pacer.ticket()
    assert not first.done() and not second.done()
    first.cancel()  # its holder stopped waiting (a session torn down by the shutdown)
    for _ in range(4):
        await asyncio.sleep(0)
    assert first.cancelled()
    assert second.done() and second.result() is None
    assert pacer.waiting == 0


async def test_unlimited_everyone_waiting_goes_in_the_next_turn() -> None:
    """The server stopping: the waiting go at once, and later items are not held."""
    pacer = TurnPacer(1)
    assert pacer.admit()
    tickets = [pacer.ticket() for _ in range(20)]
    pacer.unlimit()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert all(t.done() for t in tickets)
    assert all(pacer.admit() for _ in range(50))
