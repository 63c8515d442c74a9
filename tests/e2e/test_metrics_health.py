"""An operator reads the server's metrics and health while users log in, chat and leave.

The server runs in the test's process (``tests.support.inprocess``) so the test reads
its registries directly, as the HTTP endpoint will; clients use real sockets and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.support.clients import AuthFailed, Slix
from tests.support.inprocess import InProcessServer, inprocess_server
from tests.support.server import postgres_database
from xmppd import hooks
from xmppd.jid import JID

PASSWORD = "metrics-pw"


@pytest.fixture(params=["sqlite", "postgresql"])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[InProcessServer]:
    async with inprocess_server(tmp_path, backend=request.param) as srv:
        yield srv


def client(srv: InProcessServer, jid: str, password: str, mechanism: str) -> Slix:
    """A slixmpp client on the STARTTLS port (on one stdlib asyncio loop, the client's
    new stream header can reach the server before its ``start_tls`` has returned; the
    c2s stream keeps what the TLS layer hands it during the handshake)."""
    return Slix(srv, jid, password, mechanism=mechanism)  # type: ignore[arg-type]


def value(srv: InProcessServer, sample: str, **labels: str) -> float:
    """A sample's value; a labelled counter not yet seen counts as 0."""
    found = srv.server.metrics.value(sample, labels)
    return 0.0 if found is None else found


@contextlib.asynccontextmanager
async def unbound(srv: InProcessServer, jid: str) -> AsyncIterator[asyncio.Event]:
    """An event set once the server has unbound ``jid`` (its resource_unbound ran)."""
    done = asyncio.Event()

    async def seen(event: hooks.SessionEvent) -> None:
        if str(event.session.jid) == jid:
            done.set()

    bus = srv.server.hosts[srv.domain].bus
    reg = bus.add(hooks.RESOURCE_UNBOUND, seen, owner="test")
    try:
        yield done
    finally:
        bus.remove(reg)


async def test_sessions_logins_and_routing_as_users_see_them(served: InProcessServer) -> None:
    srv = served
    assert value(srv, "xmppd_c2s_sessions") == 0
    registered = value(srv, "xmppd_registrations_total", host=srv.domain)
    alice_jid, bob_jid = f"alice@{srv.domain}", f"bob@{srv.domain}"
    await srv.server.register_user(JID.parse(alice_jid), PASSWORD)
    await srv.server.register_user(JID.parse(bob_jid), PASSWORD)
    assert value(srv, "xmppd_registrations_total", host=srv.domain) == registered + 2

    plain_ok = {"mechanism": "PLAIN", "result": "success"}
    plain_bad = {"mechanism": "PLAIN", "result": "failure"}
    alice = await client(srv, alice_jid, PASSWORD, "PLAIN").start()
    try:
        assert value(srv, "xmppd_c2s_sessions") == 1
        assert value(srv, "xmppd_logins_total", **plain_ok) == 1

        intruder = client(srv, alice_jid, "wrong password", "PLAIN")
        with pytest.raises(AuthFailed):
            await intruder.start()
        await intruder.stop()
        assert value(srv, "xmppd_logins_total", **plain_bad) == 1
        assert value(srv, "xmppd_c2s_sessions") == 1

        async with client(srv, bob_jid, PASSWORD, "SCRAM-SHA-256") as bob:
            assert value(srv, "xmppd_c2s_sessions") == 2
            scram_ok = {"mechanism": "SCRAM-SHA-256", "result": "success"}
            assert value(srv, "xmppd_logins_total", **scram_ok) == 1
            messages = value(srv, "xmppd_stanzas_routed_total", kind="message")
            alice.xmpp.send_message(mto=bob_jid, mbody="hi", mtype="chat")
            await bob.next_message(lambda m: m["body"] == "hi")
            assert value(srv, "xmppd_stanzas_routed_total", kind="message") == messages + 1
            assert value(srv, "xmppd_stanzas_routed_total", kind="iq") > 0  # roster gets

            async with unbound(srv, str(alice.xmpp.boundjid)) as gone:
                await alice.stop()
                await gone.wait()
            assert value(srv, "xmppd_c2s_sessions") == 1
    finally:
        await alice.stop()
    assert value(srv, "xmppd_logins_total", **plain_ok) == 1  # counters never go down

    text = srv.server.metrics.render().decode()
    assert 'xmppd_info{version="' in text
    assert "xmppd_uptime_seconds" in text and "process_resident_memory_bytes" in text


async def test_removing_an_account_is_counted(served: InProcessServer) -> None:
    srv = served
    carol = JID.parse(f"carol@{srv.domain}")
    await srv.server.register_user(carol, PASSWORD)
    before = value(srv, "xmppd_accounts_removed_total", host=srv.domain)
    assert await srv.server.remove_user(carol)
    assert value(srv, "xmppd_accounts_removed_total", host=srv.domain) == before + 1


async def test_a_running_server_is_ready(served: InProcessServer) -> None:
    report = await served.server.health.check()
    assert report.ready, report.as_dict()
    assert {p.name for p in report.parts} >= {"database", "listeners", "host"}
    assert report.part("host", served.domain).ready


class TcpProxy:
    """Forwards loopback connections to a TCP service until :meth:`cut`: then the service
    is unreachable (open connections reset, new ones refused) until :meth:`restore`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._listener = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._open.discard(writer)

    async def cut(self) -> None:
        assert self._listener is not None
        self._listener.close()
        for writer in list(self._open):
            writer.transport.abort()
        await self._listener.wait_closed()

    async def restore(self) -> None:
        await self.start()


async def test_database_unreachable_makes_the_server_not_ready(tmp_path: Path) -> None:
    """PostgreSQL goes away under a running server: the database part says why, and the
    server is ready again once the database is back."""
    with contextlib.ExitStack() as stack:
        url = make_url(await asyncio.to_thread(stack.enter_context, postgres_database()))
        try:
            assert url.host is not None and url.port is not None
            proxy = TcpProxy(url.host, url.port)
            await proxy.start()
            through_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
            async with inprocess_server(tmp_path, storage_url=through_proxy) as srv:
                health = srv.server.health
                report = await health.check()
                assert report.ready, report.as_dict()

                await proxy.cut()
                report = await health.check()
                assert not report.ready
                database = report.part("database")
                assert not database.ready
                assert database.reason.startswith("cannot connect: "), database.reason
                assert report.part("listeners").ready  # only the database is at fault

                await proxy.restore()
                report = await health.check()
                assert report.ready, report.as_dict()
                await proxy.cut()  # the server's pool connections end before the drop
        finally:
            await asyncio.to_thread(stack.close)
