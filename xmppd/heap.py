"""Giving the memory of ended streams back to the operating system.

A stream's XML parser (lxml's ``XMLPullParser``, ~20-30 KB of libxml2 state) sits in a
reference cycle inside lxml (its root element's document points back to the parser),
so dropping it frees nothing until a full collection runs, and the server's automatic
collections never reach objects that lived a while (:mod:`xmppd.gcpolicy` freezes
them): after thousands of half-open streams ended, their parsers stayed in memory.
And what the collector frees, glibc keeps in its heap between live objects, so the RSS
does not shrink without ``malloc_trim``.

A parser that stands between stanzas can be ended cleanly instead (the synthetic
root closed, the parser closed, its events read: :meth:`XmlReader.release_if_idle`),
which leaves no cycle: reference counting frees it at once. Idle sessions release
their parsers that way (a login burst's thousands of them need no collection), and so
does a stream that ends between stanzas or after the peer's ``</stream:stream>``
(:meth:`XmlReader.release_at_end`). Only a stream that ends mid-stanza leaves its
parser in the cycle; nothing else of an ended stream is (measured: no unreachable
object after 200 sessions closed or dropped). Until 7 Dec 2026 every ended stream
counted as cyclic, "what else it held may be", and a peer's ``</stream:stream>`` left
the parser in its cycle: every 64 logouts made a full collection, 60-80 ms with 1,000
sessions online, every 5 s through a login churn and in the middle of registrations.

Idle sessions are looked at in slices (:func:`release_idle`): a login storm leaves
thousands of sessions falling idle together, and releasing a thousand parsers in one
go held the event loop 10-27 ms, every other pass, beside a 10,000-login storm
(``python -m bench beside``).

Whoever drops parsers calls :func:`note_freed` (a stream that ends, an idle session
that releases its parser), saying whether they were left in cycles; the server's
memory task calls :func:`trim_if_worthwhile` every few seconds, which trims once at
least :data:`TRIM_AFTER` were dropped since the last time (collecting first only when
as many were left in cycles, or when :func:`xmppd.gcpolicy.grown` says the frozen
objects grew enough that their garbage is worth a collection: a full collection walks
every object of every session, hundreds of milliseconds at 10,000 sessions, while the
trim alone takes a few), and no more often than keeps the time spent in it under
:data:`MAX_SHARE` of the wall clock.
Measured with 2,700 half-open streams (a header, then a start tag that never ends;
``python -m xmppd run``): +41 MiB while held, and before this still +42 MiB after they
closed; now +6.5 MiB. Process-wide, as the heap is.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from xmppd import gcpolicy

log = logging.getLogger(__name__)

TRIM_AFTER: Final = 64
"""Dropped parsers (ended streams, released idle parsers) that make a collection and a
trim worth it."""
MAX_SHARE: Final = 0.02
"""At most this share of the time goes to these collections: after one that took
``t`` seconds, the next waits at least ``t / MAX_SHARE`` (a full collection on a server
with many sessions takes tens of milliseconds)."""

RELEASE_SLICE_SECONDS: Final = 0.0005
"""Longest run of idle-parser releases in one event-loop turn (:func:`release_idle`)."""
_CLOCK_EVERY: Final = 16
"""Sessions looked at between two readings of the clock."""


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim: Final = _load_malloc_trim()


class _Freed:
    """How many parsers were dropped since the last trim (and how many of them are
    left in cycles since the last collection), and when the next trim may be."""

    __slots__ = ("count", "cyclic", "not_before")

    def __init__(self) -> None:
        self.count = 0
        self.cyclic = 0
        self.not_before = 0.0


_freed: Final = _Freed()


def note_freed(count: int = 1, *, cyclic: bool = True) -> None:
    """``count`` streams' parsers were (or are about to be) dropped; ``cyclic``: left
    in reference cycles (only the collector frees them), not ended cleanly."""
    _freed.count += count
    if cyclic:
        _freed.cyclic += count


async def release_idle(endpoints: Sequence[object], idle_for: float) -> int:
    """Have every endpoint idle for ``idle_for`` seconds free its parser (those with a
    ``release_idle_memory(now, idle_for)`` method: client streams), at most
    :data:`RELEASE_SLICE_SECONDS` per event-loop turn, so that a sweep over many
    sessions never holds the others' traffic; how many released theirs."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    released = 0
    now = loop.time()
    turn_ends = clock() + RELEASE_SLICE_SECONDS
    for index, endpoint in enumerate(endpoints):
        if index % _CLOCK_EVERY == _CLOCK_EVERY - 1 and clock() >= turn_ends:
            await asyncio.sleep(0)  # one turn for everyone else
            now = loop.time()
            turn_ends = clock() + RELEASE_SLICE_SECONDS
        release = getattr(endpoint, "release_idle_memory", None)
        if release is not None and release(now, idle_for):
            released += 1
    if released:
        log.debug("released the parsers of %d idle sessions", released)
        note_freed(released, cyclic=False)  # ended cleanly (xmlreader)
    return released


def return_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; elsewhere nothing)."""
    _freed.count = 0
    if _malloc_trim is not None:
        _malloc_trim(0)


def trim_if_worthwhile() -> bool:
    """Collect cyclic garbage and trim the heap when at least :data:`TRIM_AFTER`
    parsers were dropped since the last time, or the frozen objects grew enough
    (:func:`xmppd.gcpolicy.grown`), and :data:`MAX_SHARE` allows; whether it did."""
    freed = _freed
    now = time.monotonic()
    if now < freed.not_before:
        return False
    grown = gcpolicy.grown()
    if freed.count < TRIM_AFTER and not grown:
        return False
    dropped = freed.count
    collect = grown or freed.cyclic >= TRIM_AFTER
    if collect:
        freed.cyclic = 0
        gcpolicy.collect_everything()
    return_free_memory()
    took = time.monotonic() - now
    freed.not_before = now + took / MAX_SHARE
    log.debug(
        "%d parsers dropped%s: %s in %.1f ms",
        dropped,
        ", frozen objects grew" if grown else "",
        "collected and trimmed" if collect else "trimmed",
        took * 1000,
    )
    return True
