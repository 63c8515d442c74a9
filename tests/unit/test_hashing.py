"""xmppd.auth.hashing: password hashing runs in threads of its own that run only when
the event loop's thread leaves the core (SCHED_IDLE on Linux), and gives the result
back to the coroutine that asked."""

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


@pytest.mark.skipif(sys.platform != "linux", reason="SCHED_IDLE is Linux's")
async def test_hashing_threads_yield_the_core_to_the_event_loop() -> None:
    policy = await hashing.off_the_loop(os.sched_getscheduler, 0)
    assert policy == os.SCHED_IDLE
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the loop's own thread is untouched


async def test_errors_reach_the_caller() -> None:
    with pytest.raises(ValueError, match="iteration"):
        await hashing.off_the_loop(lambda: derive_credentials("pw", "SHA-1", iterations=0))
