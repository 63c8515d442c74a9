"""XEP-0198 Stream Management: acks, resumption after a dropped connection with every
unacked stanza re-sent exactly once, in order; after the timeout, re-delivery elsewhere."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterator

import pytest

from tests.support.clients import Slix, register_account
from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer, running_server

SM = "urn:xmpp:sm:3"
PASSWORD = "sm-password"
_names = itertools.count()


@pytest.fixture(scope="module")
def sm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("sm"), extra="[c2s]\nresume_timeout = '3s'\n"
    ) as srv:
        yield srv


async def new_user(server: XmppdServer) -> str:
    name = f"sm{next(_names)}"
    await register_account(server, name, PASSWORD)
    return name


async def authenticated(server: XmppdServer, name: str) -> RawClient:
    """A raw stream past SASL, before resource binding."""
    client = await RawClient(server).connect()
    await client.starttls()
    await client.open_stream()
    token = base64.b64encode(f"\0{name}\0{PASSWORD}".encode()).decode()
    client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert b"<success" in await client.read_until(b"<success|<failure")
    features = await client.open_stream()
    assert f'<sm xmlns="{SM}"'.encode() in features
    return client


async def enabled(server: XmppdServer, name: str) -> tuple[RawClient, str, str]:
    client = await RawClient(server).connect()
    jid = await client.login(name, PASSWORD, resource="phone")
    client.send(f"<enable xmlns='{SM}' resume='true'/>")
    reply = await client.read_until(b"<enabled[^>]*>")
    match = re.search(rb'id="([^"]+)"', reply)
    assert match and b'resume="true"' in reply, reply
    return client, jid, match.group(1).decode()


def drop(client: RawClient) -> None:
    """Cut the TCP connection without closing the XML stream (a phone losing signal)."""
    assert client.writer is not None
    client.writer.transport.abort()


async def test_acks_count_handled_stanzas(sm_server: XmppdServer) -> None:
    client, _jid, _ = await enabled(sm_server, await new_user(sm_server))
    try:
        client.send(f"<r xmlns='{SM}'/>")
        assert b'h="0"' in await client.read_until(b"<a [^>]*/>")
        for i in range(3):
            client.send(
                f"<iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
        client.send(f"<r xmlns='{SM}'/>")
        assert b'h="3"' in await client.read_until(b"<a [^>]*/>")
    finally:
        await client.close()


async def test_server_asks_for_acks_and_drops_acked_stanzas(sm_server: XmppdServer) -> None:
    client, _jid, _ = await enabled(sm_server, await new_user(sm_server))
    try:
        for i in range(6):
            client.send(
                f"<iq type='get' id='q{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            )
        received = await client.read_until(f'<r xmlns="{SM}"/>')
        assert received.count(b'type="result"') >= ACK_EVERY
        client.send(f"<a xmlns='{SM}' h='6'/>")
        client.send(f"<a xmlns='{SM}' h='99'/>")  # more than was ever sent
        closing = await client.read_to_close()
        assert b"undefined-condition" in closing
    finally:
        await client.close()


ACK_EVERY = 5


async def test_dropped_connection_resumes_with_every_unacked_message_once_in_order(
    sm_server: XmppdServer,
) -> None:
    name, sender_name = await new_user(sm_server), await new_user(sm_server)
    client, jid, sm_id = await enabled(sm_server, name)
    async with Slix(sm_server, f"{sender_name}@localhost", PASSWORD) as sender:
        sender.xmpp.send_message(mto=jid, mbody="before the drop", mtype="chat")
        await client.read_until(b"before the drop")
        drop(client)
        for i in range(3):
            sender.xmpp.send_message(mto=jid, mbody=f"while away {i}", mtype="chat")
        # A ping round-trip on the sender's stream proves those messages were routed.
        await sender.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    resumed = await authenticated(sm_server, name)
    try:
        resumed.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
        data = await resumed.read_until(b"while away 2")
        assert re.search(rb"<resumed [^>]*previd=\"" + sm_id.encode(), data), data
        bodies = re.findall(rb"<body>([^<]+)</body>", data)
        assert bodies == [b"before the drop", b"while away 0", b"while away 1", b"while away 2"]
        # Acknowledge them: a later resume would not send them again.
        resumed.send(f"<a xmlns='{SM}' h='4'/><r xmlns='{SM}'/>")
        await resumed.read_until(b"<a [^>]*/>")
    finally:
        await resumed.close()


async def test_unknown_or_foreign_resumption_is_refused(sm_server: XmppdServer) -> None:
    owner, other = await new_user(sm_server), await new_user(sm_server)
    client, _, sm_id = await enabled(sm_server, owner)
    try:
        for name, previd in ((other, sm_id), (owner, "no-such-id")):
            intruder = await authenticated(sm_server, name)
            try:
                intruder.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
                assert b"item-not-found" in await intruder.read_until(b"</failed>")
            finally:
                await intruder.close()
    finally:
        await client.close()


async def test_after_the_timeout_unacked_messages_go_to_another_resource(
    sm_server: XmppdServer,
) -> None:
    name, sender_name = await new_user(sm_server), await new_user(sm_server)
    async with Slix(sm_server, f"{name}@localhost", PASSWORD) as laptop:
        client, jid, sm_id = await enabled(sm_server, name)
        client.send("<presence><priority>10</priority></presence>")
        async with Slix(sm_server, f"{sender_name}@localhost", PASSWORD) as sender:
            sender.xmpp.send_message(mto=jid, mbody="for the phone", mtype="chat")
            await client.read_until(b"for the phone")
            drop(client)
            # Never acknowledged: after resume_timeout it goes to the laptop instead.
            got = await laptop.next_message(lambda m: m["body"] == "for the phone", timeout=20)
            assert got["from"] == sender.xmpp.boundjid
        late = await authenticated(sm_server, name)
        try:
            late.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
            assert b"item-not-found" in await late.read_until(b"</failed>")
        finally:
            await late.close()
