"""Failed logins are slowed down by source (address, account); others are not affected.

Issue 15 changed the rules: the delay holds a failure's answer (the wait returned by
``failed``), failures of one source queue one after another, and a success clears the
account, never the address. Real-socket tests: tests/hostile/test_login_throttle.py.
"""

from __future__ import annotations

import pytest

from xmppd.auth.throttle import FailedLoginThrottle


def test_delay_grows_after_the_free_failures_and_is_capped() -> None:
    throttle = FailedLoginThrottle(free_failures=2, max_delay=1.0)
    waits = [throttle.failed("192.0.2.7") for _ in range(6)]
    # Steps 0, 0, 0.25, 0.5, 1, 1 (capped); taken at once, they queue one after another.
    assert waits == pytest.approx([0.0, 0.0, 0.25, 0.75, 1.75, 2.75], abs=0.05)
    assert throttle.failed("198.51.100.1") == 0.0


def test_accounts_are_counted_across_addresses() -> None:
    throttle = FailedLoginThrottle(free_failures=1, max_delay=1.0)
    waits = [throttle.failed(f"192.0.2.{i}", account="victim@example.org") for i in range(3)]
    assert waits[0] == 0.0 and waits[1] > 0 and waits[2] > waits[1]
    assert throttle.failures("", "victim@example.org") == 3


def test_success_clears_the_account_not_the_address() -> None:
    throttle = FailedLoginThrottle(free_failures=0)
    throttle.failed("192.0.2.7", account="victim@example.org")
    throttle.succeeded("192.0.2.7", account="mallory@example.org")
    assert throttle.failures("192.0.2.7") == 1
    throttle.succeeded("192.0.2.7", account="victim@example.org")
    assert throttle.failures("", "victim@example.org") == 0
    assert throttle.failures("192.0.2.7") == 1


def test_memory_is_bounded() -> None:
    throttle = FailedLoginThrottle(max_entries=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._sources) == 100


def test_an_ipv6_64_is_one_source() -> None:
    """A host given a /64 cannot step past the throttle by changing its low 64 bits;
    another /64 is another source, and an IPv4-mapped address is its IPv4 address."""
    throttle = FailedLoginThrottle(free_failures=1, max_delay=1.0)
    waits = [throttle.failed(f"2001:db8:1:2::{i:x}") for i in range(1, 4)]
    assert waits[0] == 0.0 and waits[1] > 0 and waits[2] > waits[1]
    assert throttle.failures("2001:db8:1:2:ffff:ffff:ffff:ffff") == 3
    assert throttle.failed("2001:db8:1:3::1") == 0.0
    throttle.failed("::ffff:192.0.2.9")
    assert throttle.failures("192.0.2.9") == 1
