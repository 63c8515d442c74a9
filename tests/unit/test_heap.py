"""xmppd.heap: dropped parsers are collected (they sit in an lxml reference cycle) and
the heap trimmed, once enough were dropped, no more often than its time share allows;
a parser the reader ends cleanly (between stanzas) is freed at once, and drops of
those alone trim without a collection."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from lxml import etree

from xmppd import heap
from xmppd.stream.xmlreader import XmlReader

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>"
)


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    heap._freed.count = heap._freed.cyclic = 0
    heap._freed.not_before = 0.0
    yield
    heap._freed.count = heap._freed.cyclic = 0
    heap._freed.not_before = 0.0


class _Parser(etree.XMLPullParser):
    """A subclass, so that it can be weakly referenced."""


def _dropped_in_a_cycle() -> weakref.ref[_Parser]:
    """A fed pull parser, dropped mid-document: only the cycle collector frees it."""
    parser = _Parser(events=("start", "end"))
    parser.feed(b"<root><a>")
    list(parser.read_events())
    return weakref.ref(parser)


def test_a_dropped_pull_parser_needs_the_cycle_collector() -> None:
    """Why the module exists: refcounting alone does not free a fed XMLPullParser."""
    gc.disable()
    try:
        gone = _dropped_in_a_cycle()
        assert gone() is not None
        heap.note_freed(heap.TRIM_AFTER)
        assert heap.trim_if_worthwhile()
        assert gone() is None
    finally:
        gc.enable()


def test_nothing_before_enough_were_dropped() -> None:
    heap.note_freed(heap.TRIM_AFTER - 1)
    assert not heap.trim_if_worthwhile()
    heap.note_freed()
    assert heap.trim_if_worthwhile()
    assert heap._freed.count == 0
    assert not heap.trim_if_worthwhile()


def test_the_next_one_waits_for_its_time_share() -> None:
    heap.note_freed(heap.TRIM_AFTER)
    assert heap.trim_if_worthwhile()
    heap._freed.not_before += 3600  # as if the last one had taken 72 s
    heap.note_freed(heap.TRIM_AFTER)
    assert not heap.trim_if_worthwhile()
    heap._freed.not_before = 0.0
    assert heap.trim_if_worthwhile()


def test_a_parser_released_between_stanzas_is_freed_without_the_collector() -> None:
    gc.disable()
    try:
        reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=10_000)
        reader.feed(HEADER + b"<message><body>hi</body></message><presence/>")
        gc.collect()
        assert reader.release_if_idle()
        assert gc.collect() == 0, "the released parser was left in a cycle"
        # The reader still works: a new parser for the next stanza.
        (msg,) = reader.feed(b"<message><body>again</body></message>")
        assert msg.findtext("body") == "again"
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("rest", "left_in_a_cycle"),
    [
        (b"", False),  # dropped between stanzas
        (b"</stream:stream>", False),  # closed by the peer
        (b"<message><body>half", True),  # dropped mid-stanza
    ],
    ids=["between-stanzas", "closed-by-peer", "mid-stanza"],
)
def test_a_stream_that_ends_leaves_its_parser_in_a_cycle_only_mid_stanza(
    rest: bytes, left_in_a_cycle: bool
) -> None:
    """What a stream's end counts towards: a full collection (a pause that walks every
    session's objects) only when the parser stays in lxml's cycle."""
    gc.disable()
    try:
        reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=10_000)
        reader.feed(HEADER + b"<message><body>hi</body></message>" + rest)
        gc.collect()
        assert reader.release_at_end() is left_in_a_cycle
        del reader
        assert (gc.collect() > 0) is left_in_a_cycle
    finally:
        gc.enable()


def test_clean_drops_trim_without_collecting() -> None:
    gc.disable()
    try:
        in_a_cycle = _dropped_in_a_cycle()
        heap.note_freed(heap.TRIM_AFTER, cyclic=False)
        assert heap.trim_if_worthwhile()  # trimmed...
        assert in_a_cycle() is not None  # ...but not collected
        heap._freed.not_before = 0.0  # its time share aside
        heap.note_freed(heap.TRIM_AFTER)
        assert heap.trim_if_worthwhile()
        assert in_a_cycle() is None
        assert heap._freed.cyclic == 0
    finally:
        gc.enable()


class _IdleStream:
    """What the sweep sees of a client stream: a reader between stanzas, last active
    at ``last_activity`` (event-loop time)."""

    def __init__(self, last_activity: float) -> None:
        self.reader = XmlReader(expected_namespace="jabber:client", max_stanza_size=10_000)
        self.reader.feed(HEADER + b"<message to='a@example.org'><body>hi</body></message>")
        self.last_activity = last_activity

    def release_idle_memory(self, now: float, idle_for: float) -> bool:
        if now - self.last_activity < idle_for:
            return False
        return self.reader.release_if_idle()


async def test_idle_sessions_are_released_without_holding_the_loop() -> None:
    """Thousands of sessions that fell idle together (after a login storm) free their
    parsers over several turns of the event loop: others are served in between."""
    import asyncio

    loop = asyncio.get_running_loop()
    base = loop.time()
    idle = [_IdleStream(last_activity=base - 10.0) for _ in range(3000)]
    busy = [_IdleStream(last_activity=base) for _ in range(10)]  # active a moment ago
    turns = 0
    sweeping = True

    def other_work() -> None:
        nonlocal turns
        turns += 1
        if sweeping:
            loop.call_soon(other_work)

    loop.call_soon(other_work)
    released = await heap.release_idle([*idle, object(), *busy], idle_for=5.0)
    sweeping = False
    assert released == 3000
    assert all(s.reader._parser is None for s in idle)
    assert all(s.reader._parser is not None for s in busy)
    assert heap._freed.count == 3000 and heap._freed.cyclic == 0  # ended cleanly
    assert turns >= 2, "the sweep held the event loop from start to end"
