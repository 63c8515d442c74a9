"""What unauthenticated remote servers, and local users writing to made-up domains, can
make the server hold: connections per source address on the s2s and component
listeners (``s2s.max_connections_per_ip``), refused dialback requests per stream
(RFC 6120 §6.4.5: a few retries, then ``policy-violation``), the ``domain`` label of
the federation metrics (never a made-up name) and the back-off entries of domains that
could not be reached (forgotten once their wait is long over)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from contextlib import ExitStack

import aiohttp
import pytest

from tests.support.dnsserver import threaded_dns_server
from tests.support.e2e import PASSWORD, STANZA_ERRORS, new_account
from tests.support.push import logged
from tests.support.rawstream import RawClient
from tests.support.s2s import S2S_HEADER, RawServer, s2s_extra, wait_port
from tests.support.server import XmppdServer, free_port, running_server
from tests.support.xmlclient import XmlClient, tag
from xmppd.stream.s2s import MAX_AUTH_FAILURES

PER_ADDRESS = 3
"""``s2s.max_connections_per_ip`` of the limited server (nothing exempt)."""
COMPONENT = "comp.localhost"
COMPONENT_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' "
    f"xmlns:stream='http://etherx.jabber.org/streams' to='{COMPONENT}'>"
)
RETRY = 0.2
"""``s2s.retry_initial`` and ``retry_max`` of the open server (seconds)."""


class Peer:
    """A raw server, ``port``: the port it listens on for s2s (or components)."""

    def __init__(self, server: XmppdServer, port: int) -> None:
        self.server, self.port = server, port


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """Loopback not exempt: every test connection counts."""
    port = free_port()
    more = f"max_connections_per_ip = {PER_ADDRESS}\nconnection_limit_exempt = []\n"
    with running_server(
        tmp_path_factory.mktemp("s2s-per-address"),
        extra=s2s_extra(port, {}, more),
        components={COMPONENT: "comp-secret"},
    ) as server:
        wait_port(port)
        yield Peer(server, port)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """Dialback refused to every domain (a certificate is required), and DNS that
    knows no domain: every outgoing link fails at once."""
    port = free_port()
    with ExitStack() as stack:
        dns_port, _answers = stack.enter_context(threaded_dns_server({}))
        more = (
            'default_policy = "certificates"\n'
            f'resolver = "127.0.0.1:{dns_port}"\n'
            f"retry_initial = {RETRY}\n"
            f"retry_max = {RETRY}\n"
        )
        server = stack.enter_context(
            running_server(
                tmp_path_factory.mktemp("s2s-abuse"),
                extra=s2s_extra(port, {}, more),
                http=True,
                server={"log_level": "info"},
            )
        )
        wait_port(port)
        yield Peer(server, port)


async def connect(port: int, header: str) -> RawClient:
    """A plain connection to ``port`` that sent ``header``."""
    raw = RawClient.__new__(RawClient)
    raw.received = b""
    raw.reader, raw.writer = await asyncio.open_connection("127.0.0.1", port)
    raw.send(header)
    return raw


async def answer_header(raw: RawClient) -> bytes:
    """The server's stream header (the refusal's has the id ``refused``)."""
    header: bytes = await raw.read_until(rb"<stream:stream[^>]*>")
    return header


def is_refusal(header: bytes) -> bool:
    return re.search(rb"\bid=['\"]refused['\"]", header) is not None


async def assert_limited(port: int, header: str, namespace: str) -> None:
    """``PER_ADDRESS`` connections are let in, the next one is refused, and once one
    of them goes a new one is let in again."""
    held: list[RawClient] = []
    try:
        for _ in range(PER_ADDRESS):
            raw = await connect(port, header)
            held.append(raw)
            assert not is_refusal(await answer_header(raw))
        over = await connect(port, header)
        held.append(over)
        refused = await answer_header(over)
        assert is_refusal(refused), refused
        refused += await over.read_to_close()
        assert re.search(rf"xmlns=['\"]{namespace}['\"]".encode(), refused), refused
        assert b"<policy-violation" in refused, refused
        assert b"too many connections from your address" in refused, refused
        assert refused.endswith(b"</stream:stream>"), refused
        await close(held.pop(0))
        # Its slot is free once the server saw it close: no event tells when.
        async with asyncio.timeout(10):
            while True:
                again = await connect(port, header)
                held.append(again)
                if not is_refusal(await answer_header(again)):
                    break
    finally:
        for raw in held:
            await close(raw)


async def close(raw: RawClient) -> None:
    assert raw.writer is not None
    raw.writer.close()
    with contextlib.suppress(OSError):
        await raw.writer.wait_closed()


async def test_s2s_connections_per_address_are_limited(limited: Peer) -> None:
    header = S2S_HEADER.format(frm="a.example", to=limited.server.domain)
    await assert_limited(limited.port, header, "jabber:server")
    await logged(limited.server, "s2s-in 127.0.0.1: too many connections from this address")


async def test_component_connections_per_address_are_limited(limited: Peer) -> None:
    port = limited.server.component_port
    assert port is not None
    await assert_limited(port, COMPONENT_HEADER, "jabber:component:accept")
    await logged(limited.server, "component 127.0.0.1: too many connections from this address")


async def test_repeated_refused_dialback_requests_close_the_stream(open_server: Peer) -> None:
    domain = open_server.server.domain
    peer = RawServer(open_server.port, "mallory.example", domain)
    try:
        await peer.connect()
        said = b""
        for n in range(MAX_AUTH_FAILURES):
            peer.raw.send(f"<db:result from='made-up{n}.example' to='{domain}'>k</db:result>")
            answer = await peer.raw.read_until(rb"</db:result>")
            assert re.search(rb"type=['\"]error", answer), answer
            assert b"<not-authorized" in answer, answer
            said += answer
        closed = said.split(b"</db:result>")[-1] + await peer.raw.read_to_close()
        assert b"<policy-violation" in closed, closed
        assert b"too many failed authentication attempts" in closed, closed
        assert closed.endswith(b"</stream:stream>"), closed
    finally:
        await peer.close()


async def test_refusals_do_not_add_a_series_per_claimed_domain(open_server: Peer) -> None:
    domain = open_server.server.domain
    streams = 4
    for s in range(streams):
        peer = RawServer(open_server.port, f"claimed{s}.example", domain)
        try:
            await peer.connect()
            for n in range(MAX_AUTH_FAILURES):
                peer.raw.send(
                    f"<db:result from='claimed{s}-{n}.example' to='{domain}'>k</db:result>"
                )
            await peer.raw.read_to_close()
        finally:
            await peer.close()
    series = await samples(open_server.server, "xmppd_s2s_refused_total")
    assert len(series) == 1, series
    assert 'domain="other"' in series[0], series
    assert 'reason="certificate"' in series[0], series
    assert float(series[0].rsplit(" ", 1)[1]) >= streams * MAX_AUTH_FAILURES


async def test_unreachable_made_up_domains_leave_nothing_behind(open_server: Peer) -> None:
    server = open_server.server
    alice_jid = await new_account(server, "alice")
    count = 30
    async with await XmlClient.login(server, alice_jid, PASSWORD, resource="r") as alice:
        for n in range(count):
            alice.send(f"<message to='nobody@gone{n}.example' id='m{n}'><body>hi</body></message>")
        for _ in range(count):
            bounced = await alice.expect(
                lambda el: el.tag == tag("message") and el.get("type") == "error", timeout=20
            )
            assert bounced.find(f".//{{{STANZA_ERRORS}}}remote-server-not-found") is not None
        assert await gauge(server, "xmppd_s2s_backing_off") >= 1
        for name in ("xmppd_s2s_failures_total", "xmppd_s2s_stanzas_out_total"):
            series = await samples(server, name)
            assert all('domain="other"' in line for line in series), series
            assert len(series) == 1, series  # one reason (dns): one series
        # Every back-off is long over (RETRY, plus retry_max to forget it): the next
        # failure sweeps them away. A duration has to pass; no event marks it.
        await asyncio.sleep(RETRY * 2 + 0.3)
        alice.send("<message to='nobody@last.example' id='last'><body>hi</body></message>")
        await alice.expect(lambda el: el.get("id") == "last", timeout=20)
        assert await gauge(server, "xmppd_s2s_backing_off") == 1


async def gauge(server: XmppdServer, name: str) -> float:
    """The value of the label-less metric ``name``."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


async def samples(server: XmppdServer, name: str) -> list[str]:
    """The sample lines of metric ``name`` on ``/metrics``."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    return [line for line in text.splitlines() if line.startswith(name + "{")]
