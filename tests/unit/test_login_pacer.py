"""xmppd.transports.loginpacer: at most ``per_turn`` login reads are handled in one
turn of the event loop; the rest wait, in order, and the turns after serve those
waiting first; a failing resume does not strand the others."""

from __future__ import annotations

import asyncio
import functools

import pytest

from xmppd.transports.loginpacer import LoginPacer


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_the_budget_of_a_turn_then_the_waiting_in_order() -> None:
    pacer = LoginPacer(2)
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
    pacer = LoginPacer(4)
    served: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    for _ in range(4):
        assert pacer.admit()
    pacer.wait(broken)
    pacer.wait(lambda: served.append("after"))
    await _next_turn()
    assert served == ["after"]
    assert "held login read failed" in caplog.text
