"""Limits on what remote servers may cost us: the time to authenticate, connections
per remote domain, and the rate one connection may send (a flooding remote is slowed
down by pausing reads from its connection; nobody else notices)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e import PASSWORD, new_account
from tests.support.push import logged
from tests.support.s2s import Federated, RawServer, federated_pair, key_of, metric
from tests.support.xmlclient import Element, XmlClient, tag

RATE = 32 * 1024
"""b's incoming_rate in these tests (bytes per second per connection)."""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federated]:
    tmp: Path = tmp_path_factory.mktemp("federation-limits")
    b_more = f'incoming_rate = {RATE}\nmax_incoming_per_domain = 2\nauth_timeout = "2s"\n'
    with federated_pair(tmp, b_more=b_more, http=True) as federated:
        yield federated


async def authenticated_raw(pair: Federated) -> RawServer:
    """A raw peer that proves a.example to b (it knows a's dialback secret)."""
    peer = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
    await peer.connect()
    peer.dialback(key_of(pair.a, pair.b.domain, peer.stream_id))
    answer = await peer.raw.read_until(b"<db:result[^>]*type=['\"]\\w+")
    assert re.search(rb"type=['\"]valid", answer), answer
    return peer


def is_body(prefix: str) -> object:
    return lambda el: (
        el.tag == tag("message") and (el.findtext(tag("body")) or "").startswith(prefix)
    )


async def test_a_flooding_remote_is_throttled_without_hurting_others(pair: Federated) -> None:
    bob_jid = await new_account(pair.b, "bob")
    alice_jid = await new_account(pair.a, "alice")
    async with (
        await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
        await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
    ):
        # a's own link to b is up before the flood starts.
        alice.send(f"<message to='{bob_jid}/r' type='chat'><body>warm-up</body></message>")
        await bob.expect(lambda el: el.findtext(tag("body")) == "warm-up", timeout=20)
        peer = await authenticated_raw(pair)
        padding = "x" * 1000
        count = 200  # about 200 KB: six seconds' worth at RATE
        flood = "".join(
            f"<message from='mallory@a.example/f' to='{bob_jid}/r' type='chat'>"
            f"<body>flood{n} {padding}</body></message>"
            for n in range(count)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        peer.raw.send(flood)
        # Meanwhile alice (a's real link, another connection) writes to bob.
        alice.send(f"<message to='{bob_jid}/r' type='chat'><body>urgent</body></message>")
        flooded = 0
        got: Element = await bob.expect(lambda el: el.findtext(tag("body")) == "urgent")
        assert got.get("from") == f"{alice_jid}/r"
        urgent_after = loop.time() - started
        # bob's queue holds whatever arrived before 'urgent': count the flood so far.
        while True:
            try:
                await bob.expect(is_body("flood"), timeout=0.01)  # type: ignore[arg-type]
                flooded += 1
            except TimeoutError:
                break
        # alice's message did not wait for the flood.
        assert urgent_after < 3, urgent_after
        assert flooded < count, (flooded, urgent_after)
        # Nothing is dropped: the rest arrives, at about RATE.
        for _ in range(count - flooded):
            await bob.expect(is_body("flood"), timeout=15)  # type: ignore[arg-type]
        took = loop.time() - started
        budget = (len(flood) - RATE) / RATE  # beyond the first second's burst
        assert took >= budget * 0.9, (took, budget)
        await peer.close()
        assert await metric(pair.b, "s2s_throttled_total", direction="in", domain="a.example") >= 1


async def test_a_remote_that_does_not_authenticate_in_time_is_closed(pair: Federated) -> None:
    peer = RawServer(pair.b_s2s_port, "slow.example", pair.b.domain)
    try:
        await peer.connect()  # TLS, then nothing: no dialback, no SASL
        closed = await peer.raw.read_until(b"</stream:stream>", timeout=10)
        assert b"<connection-timeout" in closed, closed
    finally:
        await peer.close()


async def test_connections_per_remote_domain_are_limited(pair: Federated) -> None:
    # b allows 2 authenticated incoming connections from a.example (a's own link to b,
    # from the other tests, may hold one of them).
    opened: list[RawServer] = []
    try:
        accepted: list[RawServer] = []
        refused = b""
        for _ in range(3):
            peer = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
            opened.append(peer)
            await peer.connect()
            peer.dialback(key_of(pair.a, pair.b.domain, peer.stream_id))
            answer = await peer.raw.read_until(b"</db:result>|<db:result[^>]*/>")
            if re.search(rb"type=['\"]valid", answer):
                accepted.append(peer)
                continue
            refused = answer
            break
        assert b"<resource-constraint" in refused, refused
        assert 1 <= len(accepted) <= 2
        await logged(pair.b, "a.example refused: it has 2 incoming connections already (limit 2)")
        assert await metric(pair.b, "s2s_refused_total", domain="a.example", reason="limit") >= 1
        # A slot frees when one goes.
        closed_line = f"s2s-in {pair.a.domain} (127.0.0.1): closed"
        before = pair.b.log_text().count(closed_line)
        accepted[0].raw.send("</stream:stream>")
        await accepted[0].close()
        async with asyncio.timeout(10):
            # A file written by another process: there is no event to wait for.
            while pair.b.log_text().count(closed_line) < before + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        again = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
        opened.append(again)
        await again.connect()
        again.dialback(key_of(pair.a, pair.b.domain, again.stream_id))
        fine = await again.raw.read_until(b"<db:result[^>]*type=['\"]\\w+")
        assert re.search(rb"type=['\"]valid", fine), fine
    finally:
        for each in opened:
            await each.close()


async def test_a_remote_flooding_over_our_bidirectional_connection_is_throttled(
    tmp_path: Path,
) -> None:
    """XEP-0288: b sends its stanzas for a over a's outgoing connection; a applies its
    incoming_rate to them as to an incoming connection's, and counts it."""
    a_more = f"incoming_rate = {RATE}\n"
    with federated_pair(tmp_path, a_more=a_more, http=True) as pair:
        alice_jid = await new_account(pair.a, "alice")
        bob_jid = await new_account(pair.b, "bob")
        async with (
            await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
            await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
        ):
            alice.send(f"<message to='{bob_jid}/r' type='chat'><body>open</body></message>")
            await bob.expect(lambda el: el.findtext(tag("body")) == "open", timeout=20)
            await logged(pair.b, "a.example authenticated for b.example (dialback; bidirectional)")
            padding = "x" * 1000
            count = 100  # about 110 KB: over three seconds' worth at RATE
            loop = asyncio.get_running_loop()
            started = loop.time()
            for n in range(count):
                bob.send(
                    f"<message to='{alice_jid}/r' type='chat'><body>flood{n} {padding}</body>"
                    "</message>"
                )
            for _ in range(count):
                await alice.expect(is_body("flood"), timeout=15)  # type: ignore[arg-type]
            took = loop.time() - started
            assert took >= (count * 1100 - RATE) / RATE * 0.8, took
            await logged(pair.a, "s2s-out b.example: the remote sends faster than incoming_rate")
            throttled = await metric(
                pair.a, "s2s_throttled_total", direction="out", domain="b.example"
            )
            assert throttled >= 1
            # Only one connection between them: b did not open its own.
            authenticated = "s2s_streams_authenticated_total"
            assert await metric(pair.a, authenticated, direction="out", domain="b.example") == 1
            assert await metric(pair.a, authenticated, direction="in", domain="b.example") == 0
