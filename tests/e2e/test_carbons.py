"""mod_carbons end to end (XEP-0280): a user's carbons-enabled resources get copies of the
messages their other resources receive and send; only while enabled, never for private
messages, and never to the resource that already has the message."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from lxml import etree

from tests.support.e2e import (
    PASSWORD,
    check_server_survived,
    iq_error,
    iq_with,
    new_account,
    online,
    queued,
    take,
)
from tests.support.offline_carbons import (
    CARBON_PLUGINS,
    CARBONS,
    FORWARD,
    HINTS,
    RecordingClient,
    Resource,
    forwarded_message,
    resource,
    send_message,
    server_features,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import tag

_markers = itertools.count()
PRIVATE = f"<private xmlns='{CARBONS}'/>"


@pytest.fixture(scope="module")
def carbons_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    """Carbons store nothing: SQLite only."""
    modules = {**DEFAULT_TEST_MODULES, "carbons": {}}
    with running_server(tmp_path_factory.mktemp("xmppd-carbons"), modules=modules) as srv:
        yield srv
        check_server_survived(srv)


async def sync(sender: Resource, *receivers: Resource) -> None:
    """A marker message from ``sender`` to each receiver (full JID), awaited. Carbons of
    what ``sender`` sent before were written before the marker: what has not arrived by
    then never will. The markers are private (not copied themselves) and are taken off
    the queue."""
    for receiver in receivers:
        marker = f"marker-{next(_markers)}"
        send_message(sender.client, receiver.jid, marker, payloads=[PRIVATE])
        await take(receiver.client.messages, lambda m, body=marker: m["body"] == body)


def no_carbons(*resources: Resource) -> None:
    for res in resources:
        assert queued(res.received) == [], f"{res.jid} got a received carbon"
        assert queued(res.sent) == [], f"{res.jid} got a sent carbon"


async def close(*resources: Resource) -> None:
    for res in resources:
        await res.client.stop()


@pytest.fixture
async def accounts(carbons_server: XmppdServer) -> tuple[str, str]:
    return await new_account(carbons_server, "alice"), await new_account(carbons_server, "bob")


async def test_received_and_sent_copies_reach_the_other_resource(
    carbons_server: XmppdServer, accounts: tuple[str, str]
) -> None:
    alice_jid, bob_jid = accounts
    alice = await resource(carbons_server, alice_jid, "a", carbons=False)
    desk = await resource(carbons_server, bob_jid, "desk")
    phone = await resource(carbons_server, bob_jid, "phone")
    try:
        assert CARBONS in await server_features(phone.client)

        send_message(alice.client, desk.jid, "hello desk")
        got = await take(desk.client.messages, lambda m: m["body"] == "hello desk")
        assert got["from"] == alice.jid
        carbon = await take(phone.received, lambda _: True)
        assert carbon["from"] == bob_jid
        assert carbon["to"] == phone.jid
        assert carbon["type"] == "chat"
        inner = forwarded_message(carbon, "received")
        assert (inner["from"], inner["to"], inner["body"]) == (alice.jid, desk.jid, "hello desk")

        send_message(desk.client, alice_jid, "hi alice")
        await take(alice.client.messages, lambda m: m["body"] == "hi alice")
        carbon = await take(phone.sent, lambda _: True)
        assert (carbon["from"], carbon["to"]) == (bob_jid, phone.jid)
        inner = forwarded_message(carbon, "sent")
        assert (inner["from"], inner["to"], inner["body"]) == (desk.jid, alice_jid, "hi alice")

        # Nobody gets a copy of what it received or sent itself.
        await sync(alice, desk, phone)
        no_carbons(desk, phone)
        assert queued(phone.client.messages) == []
    finally:
        await close(alice, desk, phone)


async def test_bare_jid_message_is_copied_to_the_resources_that_did_not_get_it(
    carbons_server: XmppdServer, accounts: tuple[str, str]
) -> None:
    alice_jid, bob_jid = accounts
    alice = await resource(carbons_server, alice_jid, "a", carbons=False)
    desk = await resource(carbons_server, bob_jid, "desk", priority=5)
    phone = await resource(carbons_server, bob_jid, "phone", priority=1)
    try:
        send_message(alice.client, bob_jid, "to the account", type=None)  # normal, with body
        await take(desk.client.messages, lambda m: m["body"] == "to the account")
        carbon = await take(phone.received, lambda _: True)
        inner = forwarded_message(carbon, "received")
        assert (inner["to"], inner["body"], inner["type"]) == (bob_jid, "to the account", "normal")
        await sync(alice, desk, phone)
        no_carbons(desk)
        assert queued(phone.client.messages) == []
    finally:
        await close(alice, desk, phone)


async def test_copies_only_while_enabled(
    carbons_server: XmppdServer, accounts: tuple[str, str]
) -> None:
    alice_jid, bob_jid = accounts
    alice = await resource(carbons_server, alice_jid, "a", carbons=False)
    desk = await resource(carbons_server, bob_jid, "desk")
    phone = await resource(carbons_server, bob_jid, "phone", carbons=False)
    tablet = await resource(carbons_server, bob_jid, "tablet", carbons=False)
    try:
        send_message(alice.client, desk.jid, "before enabling")
        send_message(desk.client, alice_jid, "sent before enabling")
        await sync(desk, phone, tablet)
        await sync(alice, phone, tablet)
        no_carbons(phone, tablet)

        await phone.enable()
        await phone.enable()  # enabling twice is fine (XEP-0280 §10.1)
        send_message(alice.client, desk.jid, "while enabled")
        carbon = await take(phone.received, lambda _: True)
        assert forwarded_message(carbon, "received")["body"] == "while enabled"

        await phone.disable()
        send_message(alice.client, desk.jid, "after disabling")
        send_message(desk.client, alice_jid, "sent after disabling")
        await sync(desk, phone, tablet)
        await sync(alice, phone, tablet)
        no_carbons(phone, tablet)
    finally:
        await close(alice, desk, phone, tablet)


async def test_private_and_no_copy_messages_are_not_copied(
    carbons_server: XmppdServer, accounts: tuple[str, str]
) -> None:
    alice_jid, bob_jid = accounts
    alice = await resource(carbons_server, alice_jid, "a")
    alice2 = await resource(carbons_server, alice_jid, "a2")
    desk = await resource(carbons_server, bob_jid, "desk")
    phone = await resource(carbons_server, bob_jid, "phone")
    try:
        send_message(alice.client, desk.jid, "just for the desk", payloads=[PRIVATE])
        got = await take(desk.client.messages, lambda m: m["body"] == "just for the desk")
        # The receiving server removes <private/> (XEP-0280 §8).
        assert got.xml.find(f"{{{CARBONS}}}private") is None
        send_message(alice.client, desk.jid, "no copies", payloads=[f"<no-copy xmlns='{HINTS}'/>"])
        send_message(alice.client, desk.jid, "news", type="headline")
        await take(desk.client.messages, lambda m: m["body"] == "news")
        send_message(desk.client, alice_jid, "private reply", payloads=[PRIVATE])
        await take(alice.client.messages, lambda m: m["body"] == "private reply")
        await sync(alice, phone, alice2)
        await sync(desk, phone, alice2)
        no_carbons(phone, alice2, desk)
    finally:
        await close(alice, alice2, desk, phone)


async def test_the_forwarded_message_is_jabber_client_xml(
    carbons_server: XmppdServer, accounts: tuple[str, str]
) -> None:
    alice_jid, bob_jid = accounts
    alice = await online(carbons_server, alice_jid, plugins=CARBON_PLUGINS)
    desk = await online(carbons_server, bob_jid, resource="desk", plugins=CARBON_PLUGINS)
    raw = await RecordingClient.login(carbons_server, bob_jid, PASSWORD, resource="raw")
    try:
        reply = await raw.iq("set", f"<enable xmlns='{CARBONS}'/>", to=None)
        assert reply.get("type") == "result"
        raw.raw.clear()
        send_message(
            alice,
            str(desk.xmpp.boundjid),
            "a < b & c",
            payloads=[
                "<thread>t-1</thread>",
                "<active xmlns='http://jabber.org/protocol/chatstates'/>",
            ],
        )
        carbon = await raw.expect(lambda el: el.tag == tag("message"))
        wire = bytes(raw.raw)
        assert b"ns0:" not in wire
        assert (
            b'<received xmlns="urn:xmpp:carbons:2"><forwarded xmlns="urn:xmpp:forward:0">'
            b'<message xmlns="jabber:client" ' in wire
        )
        assert (carbon.get("from"), carbon.get("to"), carbon.get("type")) == (
            bob_jid,
            raw.jid,
            "chat",
        )
        inner = carbon.find(f"{{{CARBONS}}}received/{{{FORWARD}}}forwarded/{tag('message')}")
        assert inner is not None
        assert inner.get("from") == str(alice.xmpp.boundjid)
        assert inner.get("to") == str(desk.xmpp.boundjid)
        assert inner.findtext(tag("body")) == "a < b & c"
        assert inner.findtext(tag("thread")) == "t-1"
        assert inner.find("{http://jabber.org/protocol/chatstates}active") is not None
        assert etree.QName(inner).namespace == "jabber:client"
    finally:
        await raw.close()
        await alice.stop()
        await desk.stop()


async def test_only_the_owner_switches_carbons(
    carbons_server: XmppdServer, accounts: tuple[str, str]
) -> None:
    alice_jid, bob_jid = accounts
    alice = await online(carbons_server, alice_jid, plugins=CARBON_PLUGINS)
    try:
        for payload in (f"<enable xmlns='{CARBONS}'/>", f"<disable xmlns='{CARBONS}'/>"):
            iq = iq_with(alice, "set", payload, to=bob_jid)
            assert await iq_error(alice, iq) == "not-allowed"
    finally:
        await alice.stop()
