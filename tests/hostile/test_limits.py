"""Throttling by source (issue 15): connections per address, in-band registrations per
address, and the per-stream input shaper, each on a real server over real sockets.

Loopback is exempt from the connection limit and the registration interval by default;
these servers exempt nothing and use small limits so that one test machine can hit them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator

import pytest

from tests.support.rawstream import RawClient, stanza_error, stream_error
from tests.support.server import XmppdServer, running_server

PER_IP = 3
RATE = 32 * 1024
BURST = 32 * 1024

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("limits"),
        modules={"ping": {}},
        extra=f"[c2s]\nmax_connections_per_ip = {PER_IP}\nconnection_limit_exempt = []\n",
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("shaped"),
        modules={
            "ping": {},
            "register": {
                "allow_registration": True,
                "min_password_length": 4,
                "registration_interval": "60s",
                "interval_exempt": [],
            },
        },
        extra=f"[c2s]\ninput_rate = {RATE}\ninput_burst = {BURST}\n",
    ) as srv:
        for user in ("fast", "other"):
            proc = srv.cli("adduser", f"{user}@{srv.domain}", input="secret-pw\n")
            assert proc.returncode == 0, proc.stderr
        yield srv


async def _open(srv: XmppdServer, local: str = "127.0.0.1", *, tls: bool = False) -> RawClient:
    client = RawClient(srv)
    port = srv.direct_tls_port if tls else srv.starttls_port
    client.reader, client.writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        local_addr=(local, 0),
        ssl=client._tls() if tls else None,
        server_hostname=srv.domain if tls else None,
    )
    return client


async def test_connections_per_address_are_limited(limited: XmppdServer) -> None:
    srv = limited
    held = [await _open(srv) for _ in range(PER_IP)]
    try:
        for client in held:  # each is served
            await client.open_stream()
        for tls in (False, True):  # one more, on either listener, is refused
            extra = await _open(srv, tls=tls)
            try:
                refused = await extra.read_to_close()
            finally:
                await extra.close()
            assert stream_error(refused) == "policy-violation", refused
            assert b"too many connections" in refused
        # Another address has its own count.
        elsewhere = await _open(srv, "127.0.0.2")
        try:
            await elsewhere.open_stream()
        finally:
            await elsewhere.close()
        # A closed connection gives its place back.
        await held.pop().close()
        for _ in range(50):
            again = await _open(srv)
            try:
                with contextlib.suppress(ConnectionError):
                    await again.open_stream()
                    break
            finally:
                await again.close()
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the address stayed refused after one of its connections closed")
    finally:
        for client in held:
            await client.close()
    assert "too many connections from this address" in srv.log_text()


async def test_input_over_the_rate_is_delayed_not_dropped(shaped: XmppdServer) -> None:
    srv = shaped
    fast, other = RawClient(srv), RawClient(srv)
    await fast.connect()
    await other.connect()
    try:
        jid = await fast.login("fast", "secret-pw")
        await other.login("other", "secret-pw")
        await asyncio.sleep(BURST / RATE)  # the login's bytes are paid for
        count, body = 24, "x" * 8192
        started = time.monotonic()
        for n in range(count):
            fast.send(f"<message to='{jid}' id='s{n}'><body>{n}:{body}</body></message>")
        # While the fast sender is held, another client is served at once.
        other.send("<iq type='get' id='op'><ping xmlns='urn:xmpp:ping'/></iq>")
        t0 = time.monotonic()
        await other.read_until("id=['\"]op['\"]", timeout=5)
        assert time.monotonic() - t0 < 1.5
        got = b""
        while len(re.findall(rb"<message ", got)) < count:
            got += await fast.read_until(b"</message>", timeout=20)
        elapsed = time.monotonic() - started
        ids = re.findall(rb"id=['\"]s(\d+)['\"]", got)
        assert sorted(int(i) for i in ids) == list(range(count)), "a message was dropped"
        assert stream_error(got) is None
        expected = (count * 8300 - BURST) / RATE  # ~5 s at 32 KiB/s
        assert elapsed > 0.6 * expected, f"{elapsed:.2f} s: not shaped (expected ~{expected:.1f})"
    finally:
        await fast.close()
        await other.close()


async def _ready_to_register(srv: XmppdServer, local: str) -> RawClient:
    client = await _open(srv, local)
    await client.starttls()
    await client.open_stream()
    return client


def _ask(client: RawClient, user: str) -> None:
    client.send(
        f"<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
        f"<username>{user}</username><password>pw-{user}</password></query></iq>"
    )


async def _answer(client: RawClient) -> bytes:
    try:
        return await client.read_until("</iq>|<iq [^>]*/>")
    finally:
        await client.close()


def _is_result(reply: bytes) -> bool:
    return b"type='result'" in reply or b'type="result"' in reply


async def test_registrations_per_address_are_limited_also_in_parallel(
    shaped: XmppdServer,
) -> None:
    """One registration per address per ``registration_interval``, even when many
    requests from it arrive together (each used to pass the check before any wrote)."""
    srv = shaped
    clients = await asyncio.gather(*(_ready_to_register(srv, "127.0.0.5") for _ in range(6)))
    for n, client in enumerate(clients):  # all at once: the server sees them together
        _ask(client, f"r{n}")
    replies = await asyncio.gather(*(_answer(c) for c in clients))
    ok = [r for r in replies if _is_result(r)]
    refused = [stanza_error(r) for r in replies if not _is_result(r)]
    assert len(ok) == 1, replies
    assert refused == ["resource-constraint"] * 5, replies
    # Another address may register.
    other = await _ready_to_register(srv, "127.0.0.6")
    _ask(other, "r-other")
    again = await _answer(other)
    assert _is_result(again), again
