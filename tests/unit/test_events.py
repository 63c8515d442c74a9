"""The hook bus: priority order, STOP and DROP, crash isolation."""

from __future__ import annotations

import logging

import pytest

from xmppd.errors import StanzaError
from xmppd.events import DROP, STOP, Drop, EventBus, EventHook, FoldHook, Priority, Stop

EV: EventHook[list[str]] = EventHook("ev", "host", "test event")
FOLD: FoldHook[int, str] = FoldHook("fold", "host", "test fold")


async def test_handlers_run_highest_priority_first_ties_in_registration_order() -> None:
    bus = EventBus("t")

    def record(tag: str):  # type: ignore[no-untyped-def]
        async def handler(seen: list[str]) -> None:
            seen.append(tag)

        return handler

    bus.add(EV, record("default-1"))
    bus.add(EV, record("late"), priority=Priority.LATE)
    bus.add(EV, record("first"), priority=Priority.FIRST)
    bus.add(EV, record("default-2"))
    seen: list[str] = []
    assert await bus.run(EV, seen) is False
    assert seen == ["first", "default-1", "default-2", "late"]


async def test_stop_ends_the_chain() -> None:
    bus = EventBus("t")
    seen: list[str] = []

    async def stopper(s: list[str]) -> Stop:
        s.append("stopper")
        return STOP

    async def after(s: list[str]) -> None:
        s.append("after")

    bus.add(EV, stopper, priority=Priority.EARLY)
    bus.add(EV, after)
    assert await bus.run(EV, seen) is True
    assert seen == ["stopper"]


async def test_fold_threads_the_value_and_drop_ends_it() -> None:
    bus = EventBus("t")

    async def double(v: int, _c: str) -> int:
        return v * 2

    async def drop_big(v: int, _c: str) -> int | Drop:
        return DROP if v > 10 else v

    bus.add(FOLD, double, priority=Priority.EARLY)
    bus.add(FOLD, drop_big)
    assert await bus.fold(FOLD, 3, "") == 6
    assert await bus.fold(FOLD, 7, "") is DROP


async def test_crashing_handler_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus("t")

    async def broken(v: int, _c: str) -> int:
        raise RuntimeError("boom")

    async def plus_one(v: int, _c: str) -> int:
        return v + 1

    bus.add(FOLD, broken, priority=Priority.FIRST, owner="mod_broken")
    bus.add(FOLD, plus_one)
    with caplog.at_level(logging.ERROR):
        assert await bus.fold(FOLD, 1, "") == 2
    assert "mod_broken" in caplog.text and "fold" in caplog.text


async def test_stanza_error_propagates() -> None:
    bus = EventBus("t")

    async def refuse(v: int, _c: str) -> int:
        raise StanzaError("forbidden")

    bus.add(FOLD, refuse)
    with pytest.raises(StanzaError):
        await bus.fold(FOLD, 1, "")


async def test_removed_handler_no_longer_runs() -> None:
    bus = EventBus("t")

    async def plus_one(v: int, _c: str) -> int:
        return v + 1

    reg = bus.add(FOLD, plus_one)
    assert await bus.fold(FOLD, 1, "") == 2
    bus.remove(reg)
    assert not bus.has_handlers(FOLD)
    assert await bus.fold(FOLD, 1, "") == 1
