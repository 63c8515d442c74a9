"""mod_offline end to end (XEP-0160, XEP-0203): messages to an offline user wait for the
user's next non-negative available presence, stamped with a delay, in order, once; what is
not stored comes back as service-unavailable or is dropped; deleting the account deletes
them. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.clients import Slix, register_account
from tests.support.e2e import (
    PASSWORD,
    check_server_survived,
    new_account,
    online,
    queued,
    take,
)
from tests.support.offline_carbons import (
    DELAY,
    HINTS,
    OFFLINE_PLUGINS,
    ping_server,
    send_message,
    server_features,
    stored_rows,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, tag

MAX_MESSAGES = 5


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """xmppd with mod_offline (a small quota), once per storage backend."""
    modules = {**DEFAULT_TEST_MODULES, "offline": {"max_messages": MAX_MESSAGES}}
    tmp = tmp_path_factory.mktemp(f"xmppd-offline-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv
        check_server_survived(srv)


async def sender(server: XmppdServer) -> Slix:
    return await online(server, await new_account(server, "sender"), plugins=OFFLINE_PLUGINS)


def bodies(client: Slix) -> list[str]:
    """Bodies of the messages ``client`` has received so far (left queued)."""
    return [m["body"] for m in queued(client.messages, lambda m: m["type"] != "error")]


async def error_for(client: Slix, msg_id: str) -> str:
    got = await take(client.messages, lambda m: m["id"] == msg_id and m["type"] == "error")
    return str(got["error"]["condition"])


async def raw_online(server: XmppdServer, jid: str, priority: int = 0) -> XmlClient:
    """A raw resource whose initial presence the server has handled completely."""
    client = await XmlClient.login(server, jid, PASSWORD, resource="raw")
    client.send(f"<presence><priority>{priority}</priority></presence>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    await client.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=server.domain)
    return client


def raw_messages(client: XmlClient) -> list[Element]:
    return client.pending(lambda el: el.tag == tag("message"))


async def test_messages_wait_for_initial_presence_in_order_with_a_delay(
    server: XmppdServer,
) -> None:
    alice = await sender(server)
    bob_jid = await new_account(server, "bob")
    try:
        assert "msgoffline" in await server_features(alice)
        before = datetime.now(UTC) - timedelta(seconds=1)
        send_message(alice, bob_jid, "one", type="chat")
        send_message(alice, bob_jid, "two", type=None)  # normal
        send_message(alice, f"{bob_jid}/gone", "three", type="chat")  # a stale full JID
        await ping_server(alice)  # all three handled: stored, or bounced
        after = datetime.now(UTC) + timedelta(seconds=1)
        assert queued(alice.messages) == [], "nothing bounced"

        bob = Slix(server, bob_jid, PASSWORD, plugins=OFFLINE_PLUGINS, initial_presence=False)
        await bob.start()
        try:
            await ping_server(bob)
            assert queued(bob.messages) == [], "nothing before initial presence"
            bob.xmpp.send_presence()
            got = [await bob.next_message() for _ in range(3)]
            assert [m["body"] for m in got] == ["one", "two", "three"]
            assert [m["type"] for m in got] == ["chat", "normal", "chat"]
            for msg in got:
                assert msg["from"] == alice.xmpp.boundjid
                assert msg["delay"]["from"] == server.domain
                assert before <= msg["delay"]["stamp"] <= after
            stamps = [m["delay"]["stamp"] for m in got]
            assert stamps == sorted(stamps)
        finally:
            await bob.stop()

        # Delivered means gone: the next login gets nothing again.
        bob = await online(server, bob_jid, plugins=OFFLINE_PLUGINS)
        try:
            await ping_server(bob)
            assert queued(bob.messages) == []
        finally:
            await bob.stop()
        assert await stored_rows(server, bob_jid.split("@")[0]) == 0
    finally:
        await alice.stop()


async def test_only_chat_and_normal_messages_are_stored(server: XmppdServer) -> None:
    alice = await sender(server)
    bob_jid = await new_account(server, "bob")
    try:
        send_message(alice, bob_jid, "headline", type="headline", id="h1")
        send_message(alice, bob_jid, "room talk", type="groupchat", id="g1")
        error = (
            "<error xmlns='jabber:client' type='cancel'>"
            "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        )
        send_message(alice, bob_jid, "an error", type="error", id="e1", payloads=[error])
        send_message(alice, bob_jid, "no store", id="n1", payloads=[f"<no-store xmlns='{HINTS}'/>"])
        send_message(
            alice,
            bob_jid,
            "off the record",
            payloads=[f"<no-permanent-store xmlns='{HINTS}'/>"],
        )
        send_message(alice, bob_jid, "last", type="chat")
        assert await error_for(alice, "g1") == "service-unavailable"
        assert await error_for(alice, "n1") == "service-unavailable"
        await ping_server(alice)
        assert queued(alice.messages, lambda m: m["id"] in ("h1", "e1")) == []

        bob = await online(server, bob_jid, plugins=OFFLINE_PLUGINS)
        try:
            await ping_server(bob)
            # <no-permanent-store/> allows storage for an offline recipient (XEP-0334).
            assert bodies(bob) == ["off the record", "last"]
        finally:
            await bob.stop()
    finally:
        await alice.stop()


async def test_bodyless_messages(server: XmppdServer) -> None:
    """Receipts and markers are kept for the user's client; chat states alone are not
    (XEP-0160 §3), and are dropped without an error."""
    alice = await sender(server)
    bob_jid = await new_account(server, "bob")
    try:
        states = "<composing xmlns='http://jabber.org/protocol/chatstates'/>"
        receipt = "<received xmlns='urn:xmpp:receipts' id='m-1'/>"
        marker = "<displayed xmlns='urn:xmpp:chat-markers:0' id='m-1'/>"
        send_message(alice, bob_jid, None, id="cs", payloads=[states])
        send_message(alice, bob_jid, None, id="rc", payloads=[receipt])
        send_message(alice, bob_jid, None, id="mk", type=None, payloads=[marker])
        await ping_server(alice)
        assert queued(alice.messages) == []

        bob = await raw_online(server, bob_jid)
        try:
            got = raw_messages(bob)
            assert [m.get("id") for m in got] == ["rc", "mk"]
            assert got[0].find("{urn:xmpp:receipts}received") is not None
            assert got[1].find("{urn:xmpp:chat-markers:0}displayed") is not None
            assert all(m.find(f"{{{DELAY}}}delay") is not None for m in got)
        finally:
            await bob.close()
    finally:
        await alice.stop()


async def test_a_full_store_refuses_with_service_unavailable(server: XmppdServer) -> None:
    alice = await sender(server)
    bob_jid = await new_account(server, "bob")
    try:
        for i in range(MAX_MESSAGES + 1):
            send_message(alice, bob_jid, f"m{i}", id=f"q{i}")
        refused = await take(alice.messages, lambda m: m["type"] == "error")
        assert refused["id"] == f"q{MAX_MESSAGES}"
        assert refused["from"] == bob_jid
        assert refused["error"]["condition"] == "service-unavailable"
        await ping_server(alice)
        assert queued(alice.messages, lambda m: m["type"] == "error") == []

        bob = await online(server, bob_jid, plugins=OFFLINE_PLUGINS)
        try:
            await ping_server(bob)
            assert bodies(bob) == [f"m{i}" for i in range(MAX_MESSAGES)]
        finally:
            await bob.stop()
        # Collected: there is room again.
        send_message(alice, bob_jid, "room again", id="again")
        await ping_server(alice)
        assert queued(alice.messages, lambda m: m["id"] == "again") == []
    finally:
        await alice.stop()


async def test_messages_stored_together_keep_each_accounts_quota(server: XmppdServer) -> None:
    """Messages from many senders at once are stored in shared transactions: each
    account's quota still holds message by message, the rest come back refused.

    In the cluster pass the senders share one node: nodes count an account's stored
    messages each in its own transaction, so two nodes storing for it at the same
    moment may both see room for one more (the quota is a bound per node's write)."""
    bob_jid = await new_account(server, "bob")
    carol_jid = await new_account(server, "carol")
    node = server.cluster_nodes[0] if server.cluster_nodes else server
    senders = [await raw_online(node, await new_account(server, "s")) for _ in range(8)]
    try:
        for i, client in enumerate(senders):  # written in one turn, read in one
            client.send(
                f"<message to='{bob_jid}' id='b{i}' type='chat'><body>b{i}</body></message>"
            )
            client.send(
                f"<message to='{carol_jid}' id='c{i}' type='chat'><body>c{i}</body></message>"
            )
        for client in senders:
            await client.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=server.domain)
        await asyncio.sleep(0.3)
        refused = {
            str(m.get("id"))
            for client in senders
            for m in raw_messages(client)
            if m.get("type") == "error"
        }
        assert len(refused) == 2 * (len(senders) - MAX_MESSAGES), refused
        for jid, prefix in ((bob_jid, "b"), (carol_jid, "c")):
            reader = await raw_online(server, jid)
            try:
                got = {m.findtext(tag("body")) for m in raw_messages(reader)}
                assert len(got) == MAX_MESSAGES
                everything = {f"{prefix}{i}" for i in range(len(senders))}
                assert got == everything - refused
            finally:
                await reader.close()
    finally:
        for client in senders:
            await client.close()


async def test_nonexistent_user_gets_nothing_stored(server: XmppdServer) -> None:
    alice = await sender(server)
    nobody = f"nobody-here@{server.domain}"
    try:
        send_message(alice, nobody, "hello?", id="x1")
        send_message(alice, f"{nobody}/res", "hello?", id="x2")
        assert await error_for(alice, "x1") == "service-unavailable"
        assert await error_for(alice, "x2") == "service-unavailable"
    finally:
        await alice.stop()
    assert await stored_rows(server, "nobody-here") == 0


async def test_negative_priority_waits_until_it_is_raised(server: XmppdServer) -> None:
    """Messages are delivered on the next *non-negative* available presence (XEP-0160 §2),
    even from a session that was already available with a negative priority."""
    alice = await sender(server)
    bob_jid = await new_account(server, "bob")
    try:
        send_message(alice, bob_jid, "while away")
        await ping_server(alice)
        bob = await raw_online(server, bob_jid, priority=-1)
        try:
            assert raw_messages(bob) == []
            send_message(alice, bob_jid, "still away")  # no non-negative resource: stored
            await ping_server(alice)
            assert queued(alice.messages) == []
            bob.send("<presence><priority>2</priority></presence>")
            await bob.expect(lambda el: el.tag == tag("presence") and el.get("from") == bob.jid)
            await bob.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=server.domain)
            got = raw_messages(bob)
            assert [m.findtext(tag("body")) for m in got] == ["while away", "still away"]
        finally:
            await bob.close()
    finally:
        await alice.stop()


async def test_deleting_the_account_deletes_its_offline_messages(server: XmppdServer) -> None:
    alice = await sender(server)
    bob_jid = await new_account(server, "gone")
    bob_name = bob_jid.split("@")[0]
    try:
        send_message(alice, bob_jid, "you will never read this")
        send_message(alice, bob_jid, "nor this")
        await ping_server(alice)
        assert await stored_rows(server, bob_name) == 2

        # The admin deletes Bob's account; the command returns once his data is gone.
        result = await asyncio.to_thread(server.cli, "deluser", bob_jid)
        assert result.returncode == 0, result.stderr
        assert await stored_rows(server, bob_name) == 0

        # A new account of the same name starts empty.
        await register_account(server, bob_name, PASSWORD)
        bob2 = await raw_online(server, bob_jid)
        try:
            assert raw_messages(bob2) == []
        finally:
            await bob2.close()
    finally:
        await alice.stop()
