"""The input shaper's token bucket and the connections-per-address count, without
sockets (the real-server tests are tests/hostile/test_limits.py)."""

from __future__ import annotations

import ipaddress

import pytest

from xmppd.stream.machine import Shaper
from xmppd.transports.peerlimit import ConnectionsPerAddress, refusal


def test_shaper_lets_a_burst_through_then_asks_for_the_debt() -> None:
    shaper = Shaper(rate=1000, burst=500, now=0.0)
    assert shaper.take(500, 0.0) == 0.0
    assert shaper.take(250, 0.0) == pytest.approx(0.25)
    # Paid back at the rate: after 0.25 s nothing is owed; after 1 s more, 1000 bytes
    # are free again but never more than the burst.
    assert shaper.take(0, 0.25) == 0.0
    assert shaper.take(500, 10.0) == 0.0
    assert shaper.take(1, 10.0) == pytest.approx(0.001)


def test_shaper_average_rate_over_many_reads() -> None:
    shaper = Shaper(rate=10_000, burst=1_000, now=0.0)
    now = 0.0
    for _ in range(100):  # 100 reads of 1 000 bytes, each as soon as allowed
        now += shaper.take(1000, now)
    assert now == pytest.approx((100_000 - 1_000) / 10_000, rel=0.02)


def test_connections_per_address() -> None:
    limit = ConnectionsPerAddress(2, [ipaddress.ip_network("10.0.0.0/8")])
    assert limit.acquire("192.0.2.1") and limit.acquire("192.0.2.1")
    assert not limit.acquire("192.0.2.1")
    assert limit.acquire("192.0.2.2")
    limit.release("192.0.2.1")
    assert limit.acquire("192.0.2.1")
    assert all(limit.acquire("10.1.2.3") for _ in range(10))  # exempt
    assert limit.open_from("10.1.2.3") == 0
    for _ in range(5):
        limit.release("192.0.2.9")  # never counted: no effect
    assert limit.open_from("192.0.2.9") == 0


def test_refusal_is_a_stream_with_policy_violation() -> None:
    data = refusal("jabber:client")
    assert data.startswith(b"<?xml version='1.0'?><stream:stream")
    assert b'<policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-streams"/>' in data
    assert data.endswith(b"</stream:stream>")


def test_an_ipv6_64_counts_as_one_source() -> None:
    limits = ConnectionsPerAddress(2)
    assert limits.acquire("2001:db8:7:7::1") and limits.acquire("2001:db8:7:7::2")
    assert not limits.acquire("2001:db8:7:7:ffff::3")  # same /64: refused
    assert limits.acquire("2001:db8:7:8::1")  # another /64
    limits.release("2001:db8:7:7::2")
    assert limits.open_from("2001:db8:7:7::99") == 1
    assert limits.acquire("2001:db8:7:7::3")
