"""xmppd.gcpolicy: what survives a collection is frozen (never walked again by an
automatic collection), and its garbage in cycles is still freed: by the memory task's
full collection once the frozen objects grew by a quarter, five minutes after the last."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from xmppd import gcpolicy, heap


class Node:
    """A container that can be weakly referenced and put in a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def policy() -> Iterator[None]:
    before = gc.get_threshold()
    # Parsers dropped by earlier tests in this process (an in-process server's) must not
    # count towards this test's trims.
    heap._freed.count = heap._freed.cyclic = 0
    heap._freed.not_before = 0.0
    gcpolicy.install()
    yield
    gcpolicy.uninstall()
    gc.set_threshold(*before)
    heap._freed.count = heap._freed.cyclic = 0
    heap._freed.not_before = 0.0


def _pairs(count: int) -> tuple[list[Node], weakref.ref[Node]]:
    """``count`` two-node cycles, and a weak reference to one of them."""
    nodes = []
    for _ in range(count):
        a, b = Node(), Node()
        a.other, b.other = b, a
        nodes.append(a)
    return nodes, weakref.ref(nodes[0])


@pytest.mark.usefixtures("policy")
def test_survivors_of_a_collection_are_frozen_and_their_cycles_wait_for_a_full_one() -> None:
    frozen_before = gc.get_freeze_count()
    nodes, first = _pairs(1000)
    gc.collect(0)  # a young collection: they survive it
    assert gc.get_freeze_count() >= frozen_before + 2000
    assert gc.get_count()[0] == 0
    del nodes
    gc.collect()  # an automatic-style collection does not walk frozen objects
    assert first() is not None, "a frozen cycle is only freed by a full collection"
    gcpolicy.collect_everything()
    assert first() is None


@pytest.mark.usefixtures("policy")
def test_automatic_collections_run_young_and_keep_the_older_generations_empty() -> None:
    assert gc.get_threshold()[0] == gcpolicy.YOUNG_THRESHOLD
    kept = [[i] for i in range(4 * gcpolicy.YOUNG_THRESHOLD)]  # several automatic runs
    older = gc.get_objects(generation=1) + gc.get_objects(generation=2)
    assert not any(obj is kept[0] for obj in older)
    assert len(older) < gcpolicy.YOUNG_THRESHOLD
    del kept


@pytest.mark.usefixtures("policy")
def test_the_memory_task_collects_once_the_frozen_objects_grew_by_a_quarter_in_five_minutes() -> (
    None
):
    assert not gcpolicy.grown()
    assert not heap.trim_if_worthwhile(), "nothing dropped, nothing grown: no work"
    count = int(gc.get_freeze_count() * (gcpolicy.GROWTH - 1)) // 2 + 1000
    nodes, first = _pairs(count)
    gc.collect(0)
    del nodes
    assert not gcpolicy.grown(), "not within five minutes of the last full collection"
    gcpolicy._state.full_at -= gcpolicy.FULL_INTERVAL  # as if they had passed
    assert gcpolicy.grown()
    assert heap.trim_if_worthwhile()
    assert first() is None, "the cycles that made the growth were freed"
    assert not gcpolicy.grown()


def test_without_the_policy_nothing_is_frozen_and_a_full_collection_is_plain() -> None:
    assert not gcpolicy.grown()
    frozen_before = gc.get_freeze_count()
    nodes, first = _pairs(10)
    gc.collect(0)
    assert gc.get_freeze_count() == frozen_before
    del nodes
    gcpolicy.collect_everything()
    assert first() is None
