"""xmppd's own TLS layer on client connections (:mod:`xmppd.transports.tlslayer`):
many sessions at once over STARTTLS and direct TLS with stanzas both ways, stanzas
larger than a TLS record, records cut into pieces and one byte at a time, TLS 1.2 and
1.3 clients, and clients that vanish in the middle of a record."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import socket
import ssl
import struct

import pytest

from tests.support.clients import register_account
from tests.support.rawstream import STREAM_HEADER, RawClient
from tests.support.server import XmppdServer

PASSWORD = "tls-layer-pw"
_names = itertools.count()


async def new_user(server: XmppdServer) -> str:
    name = f"tlsl{next(_names)}"
    await register_account(server, name, PASSWORD)
    return name


class ManualTls:
    """A client whose TLS is an SSLObject over memory BIOs, so a test decides exactly
    which encrypted bytes reach the server and how they are cut."""

    def __init__(self, server: XmppdServer, context: ssl.SSLContext | None = None) -> None:
        self.server = server
        self.context = context or ssl.create_default_context(cafile=str(server.cafile))
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = self.context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=server.domain
        )
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received = b""

    async def connect(self) -> ManualTls:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.server.direct_tls_port
        )
        async with asyncio.timeout(10):
            while True:
                try:
                    self.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    await self._pull()
        self._flush()
        return self

    def _flush(self) -> None:
        assert self.writer is not None
        if self.outgoing.pending:
            self.writer.write(self.outgoing.read())

    async def _pull(self) -> None:
        assert self.reader is not None
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionError("closed")
        self.incoming.write(data)

    def records(self, text: str) -> bytes:
        """``text`` encrypted (not sent)."""
        self.obj.write(text.encode())
        return self.outgoing.read()

    def send(self, text: str) -> None:
        assert self.writer is not None
        self.writer.write(self.records(text))

    async def read_until(self, pattern: bytes, timeout: float = 10) -> bytes:
        rx = re.compile(pattern, re.S)
        async with asyncio.timeout(timeout):
            while not rx.search(self.received):
                try:
                    self.received += self.obj.read(65536)
                except ssl.SSLWantReadError:
                    self._flush()
                    await self._pull()
        data, self.received = self.received, b""
        return data

    async def login(self, user: str, resource: str = "m") -> None:
        self.send(STREAM_HEADER.format(to=self.server.domain))
        await self.read_until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
        self.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await self.read_until(b"<success")
        self.send(STREAM_HEADER.format(to=self.server.domain))
        await self.read_until(b"</stream:features>")
        self.send(
            "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            f"<resource>{resource}</resource></bind></iq>"
        )
        await self.read_until(b"</iq>")

    async def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    def abort(self) -> None:
        """Vanish: an RST, no close_notify."""
        assert self.writer is not None
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def _raw_login(server: XmppdServer, user: str, *, direct: bool) -> RawClient:
    client = await RawClient(server).connect(direct_tls=direct)
    if not direct:
        await client.starttls()
    await client.open_stream()
    token = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert b"<success" in await client.read_until(b"<success|<failure")
    await client.open_stream()
    client.send(
        "<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        "<resource>r</resource></bind></iq>"
    )
    await client.read_until(b"</iq>")
    return client


def _message(to: str, body: str, ident: str) -> str:
    return f"<message to='{to}' id='{ident}' type='chat'><body>{body}</body></message>"


async def test_many_sessions_exchange_small_and_large_stanzas(sqlite_server: XmppdServer) -> None:
    server = sqlite_server
    pairs = 20
    users = [await new_user(server) for _ in range(2 * pairs)]
    clients = await asyncio.gather(
        *(_raw_login(server, user, direct=i % 2 == 0) for i, user in enumerate(users))
    )
    # A body that fills several TLS records (16 KiB each) and the server's 4 KiB slices.
    sizes = (10, 5000, 16384, 70000, 200000)

    async def exchange(k: int) -> None:
        a, b = clients[2 * k], clients[2 * k + 1]
        to_b = f"{users[2 * k + 1]}@{server.domain}/r"
        to_a = f"{users[2 * k]}@{server.domain}/r"
        for size in sizes:
            body_ab = (f"{k}-{size}-ab-" * (size // 8 + 1))[:size]
            body_ba = (f"{k}-{size}-ba-" * (size // 8 + 1))[:size]
            a.send(_message(to_b, body_ab, f"ab{size}"))
            b.send(_message(to_a, body_ba, f"ba{size}"))
            got_b = await b.read_until(rb"id=.ab%d.*?</message>" % size, timeout=30)
            got_a = await a.read_until(rb"id=.ba%d.*?</message>" % size, timeout=30)
            assert f"<body>{body_ab}</body>".encode() in got_b
            assert f"<body>{body_ba}</body>".encode() in got_a

    await asyncio.gather(*(exchange(k) for k in range(pairs)))
    for client in clients:
        await client.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_12_and_13_clients(sqlite_server: XmppdServer, version: ssl.TLSVersion) -> None:
    server = sqlite_server
    user = await new_user(server)
    ctx = ssl.create_default_context(cafile=str(server.cafile))
    ctx.minimum_version = ctx.maximum_version = version
    client = await ManualTls(server, ctx).connect()
    assert (
        client.obj.version()
        == {
            ssl.TLSVersion.TLSv1_2: "TLSv1.2",
            ssl.TLSVersion.TLSv1_3: "TLSv1.3",
        }[version]
    )
    await client.login(user)
    client.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"p1" in await client.read_until(rb"id=.p1")
    # One stateless ticket to resume with (tests/e2e/test_tls_session_cache.py).
    assert client.obj.session is not None and client.obj.session.has_ticket
    await client.close()


async def test_records_cut_anywhere_are_reassembled(sqlite_server: XmppdServer) -> None:
    server = sqlite_server
    user = await new_user(server)
    client = await ManualTls(server).connect()
    await client.login(user)
    assert client.writer is not None
    # Three stanzas' records, delivered one byte at a time, then in odd-sized pieces.
    data = b"".join(
        client.records(f"<iq type='get' id='c{i}'><ping xmlns='urn:xmpp:ping'/></iq>")
        for i in range(3)
    )
    for i in range(len(data)):
        client.writer.write(data[i : i + 1])
        await client.writer.drain()
        await asyncio.sleep(0)
    big = client.records(_message(f"{user}@{server.domain}/m", "x" * 50000, "self"))
    for start in range(0, len(big), 7777):
        client.writer.write(big[start : start + 7777])
        await client.writer.drain()
        await asyncio.sleep(0.001)
    got = await client.read_until(rb"id=.self.*?</message>", timeout=20)
    for i in range(3):
        assert re.search(rb"id=.c%d" % i, got)
    assert b"x" * 50000 in got
    await client.close()


async def test_client_vanishing_mid_record(sqlite_server: XmppdServer) -> None:
    server = sqlite_server
    user, other = await new_user(server), await new_user(server)
    gone = await ManualTls(server).connect()
    await gone.login(user)
    assert gone.writer is not None
    # Half of a large record, then an RST.
    records = gone.records(_message(f"{other}@{server.domain}", "y" * 12000, "half"))
    gone.writer.write(records[: len(records) // 2])
    await gone.writer.drain()
    await asyncio.sleep(0.1)
    gone.abort()
    # Half of a record's header, then an orderly TCP close without close_notify.
    gone2 = await ManualTls(server).connect()
    await gone2.login(user, resource="m2")
    assert gone2.writer is not None
    gone2.writer.write(gone2.records("<presence/>")[:3])
    await gone2.writer.drain()
    gone2.writer.close()
    # The server is unharmed: the same account logs in again and talks to itself.
    again = await ManualTls(server).connect()
    await again.login(user)
    again.send(_message(f"{user}@{server.domain}/m", "still here", "ok"))
    assert b"still here" in await again.read_until(rb"id=.ok.*?</message>")
    # The half-sent message never arrived as a message (the other account's
    # offline store is empty).
    reader = await ManualTls(server).connect()
    await reader.login(other)
    reader.send("<presence/>")
    reader.send("<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = await reader.read_until(rb"id=.after")
    assert b"half" not in got
    for client in (gone2, again, reader):
        await client.close()


async def test_close_notify_from_client_closes_stream(sqlite_server: XmppdServer) -> None:
    server = sqlite_server
    user = await new_user(server)
    client = await ManualTls(server).connect()
    await client.login(user)
    assert client.writer is not None and client.reader is not None
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    client._flush()
    # The server answers with its own close_notify and closes the TCP connection.
    async with asyncio.timeout(10):
        while data := await client.reader.read(65536):
            client.incoming.write(data)
    client.obj.unwrap()  # the server's close_notify arrived: no exception
    await client.close()


async def test_nothing_pipelined_after_starttls_is_taken(sqlite_server: XmppdServer) -> None:
    """RFC 6120 §5.4.3.3: what a client sent in the clear after ``<starttls/>`` is not
    handled once TLS is up (STARTTLS injection)."""
    server = sqlite_server
    client = await RawClient(server).connect()
    await client.open_stream()
    client.send(
        "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        "<iq type='get' id='injected'><ping xmlns='urn:xmpp:ping'/></iq>"
    )
    await client.read_until(b"<proceed")
    assert client.writer is not None
    await client.writer.start_tls(client._tls(), server_hostname=server.domain)
    features = await client.open_stream()
    assert b"mechanisms" in features
    client.send("<iq type='get' id='after'><ping xmlns='urn:xmpp:ping'/></iq>")
    got = await client.read_until(rb"id=.after")
    assert b"injected" not in got
    await client.close()
