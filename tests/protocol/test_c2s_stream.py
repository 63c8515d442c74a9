"""The c2s stream state machine driven with bytes through an in-memory transport (no sockets)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.memtransport import MemoryTransport
from xmppd.config import parse_config
from xmppd.jid import JID
from xmppd.server import Server

HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>"
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    config = parse_config(
        {
            "server": {"data_dir": str(tmp_path)},
            "storage": {"url": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"},
            "auth": {"allow_insecure_plain": True},
            "c2s": {"require_encryption": False},
            "hosts": {"example.org": {}},
            "modules": {"roster": {}, "presence": {}},
        }
    )
    srv = Server(config)
    await srv.start(listen=False)
    await srv.register_user(JID.parse("alice@example.org"), "wonderland")
    try:
        yield srv
    finally:
        await srv.stop()


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


async def test_login_bind_and_message_to_self(server: Server) -> None:
    t = MemoryTransport()
    stream = server.open_c2s(t, offer_starttls=False)
    stream.data_received(HEADER)
    features = await t.until(b"</stream:features>")
    assert b"<mechanism>PLAIN</mechanism>" in features
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in features
    stream.data_received(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
        + plain("alice", "wonderland")
        + b"</auth>"
    )
    assert b"<success" in await t.until(b"success")
    stream.data_received(HEADER)
    features = await t.until(b"</stream:features>")
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in features
    stream.data_received(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        b"<resource>mem</resource></bind></iq>"
    )
    assert b"<jid>alice@example.org/mem</jid>" in await t.until(b"</iq>")
    assert server.sessions.get(JID.parse("alice@example.org/mem")) is stream
    stream.data_received(
        b"<message to='alice@example.org/mem' type='chat'><body>me</body></message>"
    )
    echoed = await t.until(b"</message>")
    assert b'from="alice@example.org/mem"' in echoed and b"<body>me</body>" in echoed
    stream.data_received(b"</stream:stream>")
    await t.until(b"</stream:stream>")
    assert t.closed
    assert server.sessions.get(JID.parse("alice@example.org/mem")) is None


async def test_wrong_password_fails_and_five_failures_close_the_stream(server: Server) -> None:
    t = MemoryTransport()
    stream = server.open_c2s(t, offer_starttls=False)
    stream.data_received(HEADER)
    await t.until(b"</stream:features>")
    for _ in range(5):
        stream.data_received(
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
            + plain("alice", "wrong")
            + b"</auth>"
        )
        last = await t.until(b"</failure>")
        assert b"<not-authorized/>" in last
    assert b"<policy-violation" in last and last.endswith(b"</stream:stream>")
    assert t.closed


async def test_unknown_mechanism_and_bad_base64(server: Server) -> None:
    t = MemoryTransport()
    stream = server.open_c2s(t, offer_starttls=False)
    stream.data_received(HEADER)
    await t.until(b"</stream:features>")
    stream.data_received(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'/>")
    assert b"<invalid-mechanism/>" in await t.until(b"</failure>")
    stream.data_received(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!notbase64</auth>"
    )
    assert b"<incorrect-encoding/>" in await t.until(b"</failure>")


async def test_stanza_before_authentication_is_not_authorized(server: Server) -> None:
    t = MemoryTransport()
    stream = server.open_c2s(t, offer_starttls=False)
    stream.data_received(HEADER)
    await t.until(b"</stream:features>")
    stream.data_received(b"<message to='alice@example.org'><body>x</body></message>")
    assert b"<not-authorized" in await t.until(b"</stream:stream>")
