"""RFC 6120 §3.2 / XEP-0368 look-ups against a DNS server of the test's own: SRV
(direct TLS and STARTTLS) in priority order, A/AAAA fallback on 5269, '.' refusals,
missing domains, and pins that bypass DNS."""

from __future__ import annotations

from collections import Counter

from tests.support.dnsserver import dns_server
from xmppd.s2s.resolve import Target, make_resolver, order_srv, resolve


async def test_srv_records_in_priority_order_with_addresses_of_both_families() -> None:
    zone = {
        ("_xmpps-server._tcp.x.test", "SRV"): ["20 0 5270 tls.x.test."],
        ("_xmpp-server._tcp.x.test", "SRV"): ["10 0 5269 main.x.test.", "30 0 5269 spare.x.test."],
        ("main.x.test", "A"): ["127.0.0.2"],
        ("main.x.test", "AAAA"): ["::1"],
        ("tls.x.test", "A"): ["127.0.0.3"],
        ("spare.x.test", "A"): ["127.0.0.4"],
    }
    async with dns_server(zone) as (address, _server):
        res = await resolve("x.test", make_resolver(address, 5), {})
    assert res.error is None
    assert res.targets == [
        Target("::1", 5269, False, "main.x.test"),
        Target("127.0.0.2", 5269, False, "main.x.test"),
        Target("127.0.0.3", 5270, True, "tls.x.test"),
        Target("127.0.0.4", 5269, False, "spare.x.test"),
    ]


async def test_without_srv_the_domain_itself_on_5269() -> None:
    async with dns_server({("plain.test", "A"): ["127.0.0.5"]}) as (address, server):
        res = await resolve("plain.test", make_resolver(address, 5), {})
    assert res.targets == [Target("127.0.0.5", 5269, False, "plain.test")]
    assert ("_xmpps-server._tcp.plain.test", "SRV") in server.queries
    assert any("falling back" in step for step in res.steps)


async def test_a_missing_domain_and_a_refused_service_are_dns_errors() -> None:
    zone = {("_xmpp-server._tcp.none.test", "SRV"): ["0 0 0 ."]}
    async with dns_server(zone) as (address, _server):
        resolver = make_resolver(address, 5)
        missing = await resolve("missing.test", resolver, {})
        refused = await resolve("none.test", resolver, {})
    assert missing.targets == [] and missing.error is not None
    assert missing.error.startswith("DNS: no address found for missing.test")
    assert refused.targets == []
    assert refused.error == "DNS: none.test says it offers no XMPP server-to-server service"


async def test_a_pin_is_used_instead_of_dns() -> None:
    async with dns_server({}) as (address, server):
        res = await resolve(
            "pinned.test", make_resolver(address, 5), {"pinned.test": "tls://127.0.0.9:5999"}
        )
    assert res.targets == [Target("127.0.0.9", 5999, True, "127.0.0.9")]
    assert server.queries == []


def test_weights_share_one_priority_in_proportion() -> None:
    records = [(0, 90, 1, "heavy", False), (0, 10, 2, "light", False), (1, 0, 3, "later", False)]
    firsts = Counter(order_srv(records)[0][1] for _ in range(2000))
    assert firsts["heavy"] > firsts["light"] * 4
    assert all(order_srv(records)[-1][1] == "later" for _ in range(50))
