"""xmppd.invalidation: handlers by topic, the generation, "drop everything", and what
``publish`` hands back to await."""

from __future__ import annotations

import asyncio

from xmppd.invalidation import ALL, CacheInvalidations


def test_received_runs_the_topics_handlers_and_bumps_the_generation() -> None:
    inv = CacheInvalidations()
    seen: list[tuple[str, str]] = []
    inv.subscribe("a", lambda key: seen.append(("a", key)))
    inv.subscribe("b", lambda key: seen.append(("b", key)))
    inv.received("a", "alice@example.org")
    assert seen == [("a", "alice@example.org")]
    assert inv.generation == 1
    inv.received_all()
    assert sorted(seen[1:]) == [("a", ALL), ("b", ALL)]
    assert inv.generation == 3


def test_a_failing_handler_does_not_stop_the_others() -> None:
    inv = CacheInvalidations()
    seen: list[str] = []

    def broken(key: str) -> None:
        raise RuntimeError(key)

    inv.subscribe("t", broken)
    inv.subscribe("t", seen.append)
    inv.received("t", "k")
    assert seen == ["k"]
    inv.unsubscribe("t", seen.append)
    inv.received("t", "again")
    assert seen == ["k"]


async def test_publish_without_a_cluster_sends_nothing_and_awaits_at_once() -> None:
    inv = CacheInvalidations()
    inv.publish("t", "k")
    await inv.send("t", "k")  # nothing to wait for
    assert inv.generation == 0


async def test_send_hands_back_what_the_publisher_returns() -> None:
    inv = CacheInvalidations()
    sent: list[tuple[str, str]] = []
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def publisher(topic: str, key: str) -> asyncio.Future[None]:
        sent.append((topic, key))
        return future

    inv.publisher = publisher
    waiting = inv.send("t", "k")
    assert sent == [("t", "k")]  # sent whether awaited or not
    asyncio.get_running_loop().call_soon(future.set_result, None)
    await waiting
    assert future.done()
