"""Password hashing (PBKDF2) in threads that give the core back to the event loop.

PBKDF2 is the dearest step of an in-band registration (SCRAM-SHA-1, -256 and -512
credentials: three derivations of 4,096 rounds) and of a PLAIN login. ``hashlib``
releases the GIL while it hashes, so it runs beside the event loop, but on the same
core when the server has one, and at equal priority the kernel shares the core
between the loop and every thread that hashes: measured with 100 registrations at once
beside 500 chatting pairs (``python -m bench beside``, docs/benchmarks.md,
"Registrations beside the chat"), the chat's p99 went from 0.8 to 174 ms while they
ran, on asyncio's default pool of six threads.

So hashing runs in a pool of its own, one thread per core the process may use (at most
:data:`MAX_THREADS`), and each of its threads lowers its own priority to
``auth.hashing_niceness`` (:data:`NICENESS` by default, the lowest; Linux keeps a
niceness per thread): the kernel preempts it as soon as the event loop's thread has
work, and the hashing gets every cycle the loop leaves, so no work is lost, only
reordered. A registration or PLAIN login waits longer when the server is busy;
logged-in users do not wait for it. The kernel weighs niceness within a session
(autogroups) or a service's cgroup: against other busy processes of the same session
(a test suite starting servers beside its workers: registrations took twice as long)
the hashing loses too, hence the setting. Not ``SCHED_IDLE``, which runs a thread only
when the whole core is idle, whoever keeps it busy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_THREADS: Final = 4
"""Hashing threads at most, whatever the number of cores."""
NICENESS: Final = 19
"""Niceness of the hashing threads by default (``auth.hashing_niceness``; the lowest
priority: 1.5 % of the kernel's weight for a thread at 0, which it serves first)."""


def _threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def _yield_to_the_loop(niceness: int) -> None:
    """Run in each hashing thread as it starts: ``niceness`` for this thread only (on
    Linux; elsewhere the call may set it for the process, or fail)."""
    if niceness == 0 or not sys.platform.startswith("linux"):
        return  # a process-wide niceness would slow the event loop too
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError as exc:
        log.debug("password hashing runs at normal priority: %s", exc)


class _Pool:
    __slots__ = ("executor", "niceness")

    def __init__(self) -> None:
        self.executor: ThreadPoolExecutor | None = None
        self.niceness = NICENESS

    def get(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(
                max_workers=_threads(),
                thread_name_prefix="xmppd-hashing",
                initializer=_yield_to_the_loop,
                initargs=(self.niceness,),
            )
        return self.executor

    def forget(self) -> None:
        """A forked child has none of its parent's threads: start afresh."""
        self.executor = None


_pool: Final = _Pool()


def configure(*, niceness: int) -> None:
    """The niceness of hashing threads started from now on (``auth.hashing_niceness``;
    threads already started keep theirs: the pool is replaced)."""
    if niceness != _pool.niceness:
        old, _pool.executor = _pool.executor, None
        _pool.niceness = niceness
        if old is not None:
            old.shutdown(wait=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool.forget)


async def off_the_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a hashing thread (CPU-bound work that releases the GIL)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool.get(), functools.partial(fn, *args))
