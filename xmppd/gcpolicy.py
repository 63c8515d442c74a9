"""The cyclic garbage collector, tuned for short pauses.

CPython's cycle collector stops the process for as long as it walks the objects of the
generation it collects, about a microsecond an object here. With the threshold xmppd
had (50,000, for throughput), a login storm (10,000 TLS logins, 1,000 in flight) made
each young collection walk ~50,000 objects of logins in progress: pauses of 20-54 ms
every two seconds, and every message that arrived meanwhile waited for them (measured
with ``python -m bench beside``, docs/benchmarks.md). And what survives a collection is
walked again by every collection of the older generations: the more sessions, the
longer those pauses.

So, once the server has started (:func:`install`):

- start-up objects are frozen (``gc.freeze()``): never walked;
- the young generation is collected after :data:`YOUNG_THRESHOLD` net allocations of
  containers, a pause of a few milliseconds;
- whatever survives a collection is frozen at once, so no object is walked by an
  automatic collection more than once, and the older generations, which CPython
  collects in one long pause, stay empty.

Frozen objects are freed by reference counting like any other; only garbage in
reference cycles among them (an ended session's objects often are) waits for a full
collection: :func:`collect_everything` (unfreeze, collect, freeze again), which the
memory task runs (:func:`xmppd.heap.trim_if_worthwhile`) once the objects frozen since
the last one are a quarter of those it left (:func:`grown`, CPython's own rule for its
oldest generation) and five minutes have passed, or once enough stream parsers were
dropped in cycles, within the time share :data:`xmppd.heap.MAX_SHARE` allows.

Process-wide, as the collector is. Without :func:`install` (a library embedding the
server, tests run in one process), nothing here freezes anything.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

YOUNG_THRESHOLD: Final = 5_000
"""Net allocations of containers between two young collections. Measured beside a
login storm: 5,000 paused 2-7 ms, 50,000 paused 20-54 ms; 2,000 paused as long as
5,000 (each collection also walks what the young objects refer to)."""
GROWTH: Final = 1.25
"""A full collection is due once the frozen objects are this many times as many as
after the last one..."""
FULL_INTERVAL: Final = 300.0
"""... and this many seconds have passed since it. A full collection walks every
object of every session (hundreds of milliseconds at 10,000 sessions); by growth
alone, a login storm would run several while it lasts, each a pause for everyone."""


class _State:
    __slots__ = ("after_full", "collecting_everything", "full_at", "installed", "since_full")

    def __init__(self) -> None:
        self.installed = False
        self.collecting_everything = False
        self.after_full = 0
        """Frozen objects right after the last full collection."""
        self.full_at = 0.0
        """When it ended (``time.monotonic()``)."""
        self.since_full = 0
        """Objects frozen since (deaths not subtracted, as in CPython's own count of
        what entered its oldest generation; counting the frozen objects instead walks
        all of them, 10 ms a million)."""


_state: Final = _State()


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    """``gc.callbacks``: after every collection, what survived it is frozen."""
    if phase != "stop":
        return
    if not _state.collecting_everything:
        # The survivors are in the next generation, which held nothing before.
        _state.since_full += len(gc.get_objects(generation=min(info["generation"] + 1, 2)))
    gc.freeze()


def install() -> None:
    """Collect and freeze what start-up left, then collect young objects often and
    freeze their survivors (the module's docstring says why)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 20)
    if not _state.installed:
        gc.callbacks.append(_freeze_survivors)
        _state.installed = True
    _after_full()


def uninstall() -> None:
    """Back to CPython's defaults, everything frozen unfrozen (for tests)."""
    if _state.installed:
        gc.callbacks.remove(_freeze_survivors)
        _state.installed = False
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)


def grown() -> bool:
    """Whether the objects frozen since the last full collection are a quarter
    (:data:`GROWTH` - 1) of those it left, and :data:`FULL_INTERVAL` has passed (with
    the policy installed; without it CPython's own rule runs full collections)."""
    state = _state
    return (
        state.installed
        and state.since_full > state.after_full * (GROWTH - 1)
        and time.monotonic() - state.full_at >= FULL_INTERVAL
    )


def collect_everything() -> None:
    """A full collection, frozen objects included (they are frozen again after)."""
    if not _state.installed:
        gc.collect()
        return
    _state.collecting_everything = True
    try:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
    finally:
        _state.collecting_everything = False
    _after_full()


def _after_full() -> None:
    """A full collection just ended: the count of what grows starts again."""
    _state.after_full = gc.get_freeze_count()
    _state.since_full = 0
    _state.full_at = time.monotonic()
