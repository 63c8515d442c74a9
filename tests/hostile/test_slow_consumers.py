"""Gap 2 of issue 15: a client that stops reading its socket (over TLS) is cut off once
its pending output passes ``c2s.max_write_buffer``, and its memory is given back.

Slow clients log in over STARTTLS with a tiny receive buffer and never read again; a
sender writes them large messages. Each slow client must be disconnected, the server's
RSS must stay bounded during the attack and come back to within 64 MB of its baseline
10 s after, and a pair of other users must be served all along.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.hostile import MIB, rss
from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer, running_server

SLOW = 30
"""Clients that never read."""
WRITE_LIMIT = 1 * MIB
"""``c2s.max_write_buffer`` of the server under test."""
BODY = 32 * 1024
"""Each message's body (far below the 256 KiB stanza limit)."""
PER_CLIENT = 6 * MIB
"""What is sent to each slow client at most (its kernel buffers hold up to ~4 MiB
before the server's userland buffer even starts to fill)."""
DURING_BOUND = 120 * MIB
"""How much RSS may grow while the attack runs: 30 times the 1 MiB limit, TLS buffers and
allocator slack. Before the fix each slow client held all that was sent to it."""
AFTER_BOUND = 64 * MIB
"""Issue 15: back within 64 MB of the baseline 10 s after the attack."""

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("slow"),
        modules={"ping": {}, "register": {"allow_registration": True, "min_password_length": 4}},
        extra=f"[c2s]\nmax_write_buffer = {WRITE_LIMIT}\ninput_rate = 0\n",
    ) as srv:
        users = ["sender", "alice", "bob", *(f"slow{i}" for i in range(SLOW))]
        asyncio.run(_register_all(srv, users))
        yield srv


async def _register_all(srv: XmppdServer, users: list[str]) -> None:
    """In-band registration (loopback is exempt from its interval): one CLI process per
    account would take minutes on a loaded machine."""

    async def one(user: str) -> None:
        client = RawClient(srv)
        await client.connect()
        try:
            await client.starttls()
            await client.open_stream()
            client.send(
                "<iq type='set' id='reg'><query xmlns='jabber:iq:register'>"
                f"<username>{user}</username><password>secret-pw</password></query></iq>"
            )
            reply = await client.read_until("</iq>|<iq [^>]*/>", timeout=60)
            assert b"type='result'" in reply or b'type="result"' in reply, reply
        finally:
            await client.close()

    await asyncio.gather(*(one(user) for user in users))


async def _slow_client(srv: XmppdServer, n: int) -> RawClient:
    """Log in with a 4 KiB receive buffer (no autotuning: the kernel holds little)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.starttls_port))
    client = RawClient(srv)
    client.reader, client.writer = await asyncio.open_connection(sock=sock, limit=4096)
    await client.login(f"slow{n}", "secret-pw")
    return client


@dataclass
class Watch:
    """The server's RSS sampled while the attack runs, and the other users' round trips."""

    peak: int = 0
    round_trips: list[float] = field(default_factory=list)


async def _is_closed(client: RawClient, timeout: float) -> bool:
    """Read what the server sent (now that the attack is over) until it closes."""
    assert client.reader is not None
    try:
        async with asyncio.timeout(timeout):
            while await client.reader.read(1024 * 1024):
                pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def _ping_pong(alice: RawClient, bob: RawClient, watch: Watch, stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        started = time.monotonic()
        alice.send(
            f"<message to='bob@{alice.server.domain}/raw' id='pp{n}'><body>ping {n}</body></message>"
        )
        await bob.read_until(f"id=['\"]pp{n}['\"]", timeout=30)
        watch.round_trips.append(time.monotonic() - started)
        await asyncio.sleep(0.05)


async def _drain(client: RawClient) -> None:
    """The sender reads everything it is sent (errors about closed sessions)."""
    assert client.reader is not None
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while await client.reader.read(1024 * 1024):
            pass


async def test_non_reading_tls_clients_are_cut_off_and_memory_returns(
    slow_server: XmppdServer,
) -> None:
    srv = slow_server
    pid = srv.process.pid
    sender, alice, bob = RawClient(srv), RawClient(srv), RawClient(srv)
    slow: list[RawClient] = []
    watch = Watch()
    stop = asyncio.Event()
    try:
        for client, name in ((sender, "sender"), (alice, "alice"), (bob, "bob")):
            await client.connect()
            await client.login(name, "secret-pw")
        slow = list(await asyncio.gather(*(_slow_client(srv, i) for i in range(SLOW))))
        await asyncio.sleep(1)
        baseline = rss(pid)
        watch.peak = baseline
        drain = asyncio.get_running_loop().create_task(_drain(sender))
        pinger = asyncio.get_running_loop().create_task(_ping_pong(alice, bob, watch, stop))

        body = "x" * BODY
        assert sender.writer is not None
        for k in range(PER_CLIENT // BODY):
            for i in range(SLOW):
                sender.send(
                    f"<message to='slow{i}@{srv.domain}/raw' id='m{i}-{k}'>"
                    f"<body>{body}</body></message>"
                )
            await sender.writer.drain()
            watch.peak = max(watch.peak, rss(pid))
        # Let the server catch up with what the sender wrote, still sampling.
        for _ in range(20):
            await asyncio.sleep(0.1)
            watch.peak = max(watch.peak, rss(pid))
        stop.set()
        await pinger
        drain.cancel()

        print(
            f"RSS baseline {baseline / MIB:.1f} MiB, peak {watch.peak / MIB:.1f} MiB during "
            f"the attack; round trips max {max(watch.round_trips, default=0):.2f} s"
        )
        closed = await asyncio.gather(*(_is_closed(c, 10) for c in slow))
        assert all(closed), f"{closed.count(False)} of {SLOW} slow clients still connected"
        for client in slow:
            await client.close()
        slow = []
        await asyncio.sleep(10)
        after = rss(pid)
        print(
            f"RSS baseline {baseline / MIB:.1f} MiB, peak {watch.peak / MIB:.1f} MiB, "
            f"10 s after {after / MIB:.1f} MiB; round trips max "
            f"{max(watch.round_trips):.2f} s over {len(watch.round_trips)}"
        )
        assert watch.peak - baseline < DURING_BOUND, f"peak {(watch.peak - baseline) / MIB:.1f}"
        assert after - baseline < AFTER_BOUND, f"after {(after - baseline) / MIB:.1f} MiB"
        # The other users were served during the attack and still are.
        assert len(watch.round_trips) >= 3
        assert max(watch.round_trips) < 10
        alice.send(
            f"<message to='bob@{srv.domain}/raw' id='last'><body>still here</body></message>"
        )
        await bob.read_until("still here", timeout=10)
        assert "peer too slow to read" in srv.log_text()
    finally:
        stop.set()
        for client in (sender, alice, bob, *slow):
            await client.close()
