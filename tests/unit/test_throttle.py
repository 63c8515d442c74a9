"""Repeated failed logins from one address are slowed down; others are not affected."""

from __future__ import annotations

from xmppd.auth.throttle import FailedLoginThrottle


def test_delay_grows_after_the_free_failures_and_is_capped() -> None:
    throttle = FailedLoginThrottle(free_failures=2, max_delay=1.0)
    delays = []
    for _ in range(6):
        delays.append(throttle.delay_for("192.0.2.7"))
        throttle.failed("192.0.2.7")
    assert delays == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert throttle.delay_for("198.51.100.1") == 0.0


def test_success_clears_the_address() -> None:
    throttle = FailedLoginThrottle(free_failures=0)
    throttle.failed("192.0.2.7")
    assert throttle.delay_for("192.0.2.7") > 0
    throttle.succeeded("192.0.2.7")
    assert throttle.delay_for("192.0.2.7") == 0.0


def test_memory_is_bounded() -> None:
    throttle = FailedLoginThrottle(max_entries=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 100
