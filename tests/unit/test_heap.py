"""xmppd.heap: dropped parsers are collected (they sit in an lxml reference cycle) and
the heap trimmed, once enough were dropped, no more often than its time share allows."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from lxml import etree

from xmppd import heap


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    heap._freed.count = 0
    heap._freed.not_before = 0.0
    yield
    heap._freed.count = 0
    heap._freed.not_before = 0.0


class _Parser(etree.XMLPullParser):
    """A subclass, so that it can be weakly referenced."""


def test_a_dropped_pull_parser_needs_the_cycle_collector() -> None:
    """Why the module exists: refcounting alone does not free a fed XMLPullParser."""
    gc.disable()
    try:
        parser = _Parser(events=("start", "end"))
        parser.feed(b"<root><a>")
        list(parser.read_events())
        gone = weakref.ref(parser)
        del parser
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
