"""xmppd.auth.hashing: password hashing runs in threads of its own at the lowest
niceness (the event loop's thread keeps its own), and gives the result back to the
coroutine that asked."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from xmppd.auth import hashing
from xmppd.auth.scram import derive_credentials


async def test_the_result_comes_back_from_another_thread() -> None:
    here = threading.get_ident()
    creds, thread = await hashing.off_the_loop(
        lambda: (derive_credentials("pencil", "SHA-256", iterations=4096), threading.get_ident())
    )
    assert thread != here
    again = derive_credentials("pencil", "SHA-256", iterations=4096, salt=creds.salt)
    assert again.stored_key == creds.stored_key


@pytest.mark.skipif(sys.platform != "linux", reason="a niceness per thread is Linux's")
async def test_hashing_threads_yield_the_core_to_the_event_loop() -> None:
    hashing.configure(niceness=hashing.NICENESS)  # the default (another test's server may differ)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    niceness = await hashing.off_the_loop(
        lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    )
    assert niceness == hashing.NICENESS
    # The event loop's own thread is untouched.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before < niceness


async def test_errors_reach_the_caller() -> None:
    with pytest.raises(ValueError, match="iteration"):
        await hashing.off_the_loop(lambda: derive_credentials("pw", "SHA-1", iterations=0))


@pytest.mark.skipif(sys.platform != "linux", reason="a niceness per thread is Linux's")
async def test_the_niceness_is_configurable() -> None:
    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        hashing.configure(niceness=0)
        assert await hashing.off_the_loop(niceness) == 0
        hashing.configure(niceness=7)
        assert await hashing.off_the_loop(niceness) == 7
    finally:
        hashing.configure(niceness=hashing.NICENESS)
    assert await hashing.off_the_loop(niceness) == hashing.NICENESS
