"""What crosses servers, between two federated xmppd servers (a.example, b.example):
carbons and the archive of a federated chat, offline storage of a remote message,
vCard and PEP (+notify) of a contact on the other server, IQs to a remote pubsub
service, and push notifications (XEP-0357) to an app server on the other domain."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.support.e2e import PASSWORD, new_account
from tests.support.mam import everything
from tests.support.offline_carbons import CARBONS, FORWARD, stored_rows
from tests.support.pep import (
    CAPS,
    DISCO_INFO,
    EVENT,
    PUBSUB,
    caps_ver,
    event_of,
    get_items,
    publish,
    share_presence,
)
from tests.support.pep import IDENTITY as CLIENT_IDENTITY
from tests.support.pep import login as pep_login
from tests.support.pubsub import create, entries, from_service, subscribe
from tests.support.push import enable, is_push, parse_push
from tests.support.s2s import Federated, federated_pair
from tests.support.server import DEFAULT_TEST_MODULES
from tests.support.xmlclient import Element, XmlClient, attrs, tag

NICK = "http://jabber.org/protocol/nick"
VCARD = "vcard-temp"
MODULES = {
    **DEFAULT_TEST_MODULES,
    "carbons": {},
    "mam": {},
    "offline": {},
    "vcard": {},
    "pep": {},
    "pubsub": {},
    "push": {"min_interval": "0s"},
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federated]:
    tmp: Path = tmp_path_factory.mktemp("federation-features")
    with federated_pair(tmp, modules=MODULES, b_services=("pubsub.b.example",)) as federated:
        yield federated


def body_is(body: str) -> Callable[[Element], bool]:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


def carbon_of(kind: str, body: str) -> Callable[[Element], bool]:
    def match(el: Element) -> bool:
        if el.tag != tag("message"):
            return False
        wrapper = el.find(f"{{{CARBONS}}}{kind}")
        if wrapper is None:
            return False
        inner = wrapper.find(f"{{{FORWARD}}}forwarded/{tag('message')}")
        return inner is not None and inner.findtext(tag("body")) == body

    return match


async def carbons_on(client: XmlClient) -> None:
    reply = await client.iq("set", f"<enable xmlns='{CARBONS}'/>", to=None)
    assert reply.get("type") == "result", etree.tostring(reply)


async def test_carbons_and_archive_of_a_federated_chat(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    alice = await pep_login(pair.a, alice_jid, "laptop")
    phone = await pep_login(pair.a, alice_jid, "phone")
    bob = await pep_login(pair.b, bob_jid, "r")
    try:
        await carbons_on(alice)
        await carbons_on(phone)
        alice.send(f"<message to='{bob_jid}/r' type='chat'><body>to bob</body></message>")
        await bob.expect(body_is("to bob"))
        sent = await phone.expect(carbon_of("sent", "to bob"))
        assert sent.get("from") == alice_jid
        bob.send(f"<message to='{alice_jid}/laptop' type='chat'><body>to alice</body></message>")
        got = await alice.expect(body_is("to alice"))
        assert got.get("from") == f"{bob_jid}/r"
        received = await phone.expect(carbon_of("received", "to alice"))
        assert received.get("from") == alice_jid
        # Both directions are in alice's archive on a.example and in bob's on b.example.
        mine = await everything(alice, {"with": bob_jid})
        assert [(i.body, i.get("from"), i.get("to")) for i in mine] == [
            ("to bob", f"{alice_jid}/laptop", f"{bob_jid}/r"),
            ("to alice", f"{bob_jid}/r", f"{alice_jid}/laptop"),
        ]
        theirs = await everything(bob, {"with": alice_jid})
        assert [i.body for i in theirs] == ["to bob", "to alice"]
    finally:
        for client in (alice, phone, bob):
            await client.close()


async def test_a_remote_message_to_an_offline_user_is_delivered_at_next_login(
    pair: Federated,
) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    async with await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob:
        bob.send(f"<message to='{alice_jid}' type='chat'><body>while away</body></message>")
        for _ in range(100):
            if await stored_rows(pair.a, alice_jid.split("@")[0]) == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the remote message was not stored for the offline user")
    alice = await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r")
    try:
        alice.send("<presence/>")
        got = await alice.expect(body_is("while away"))
        assert got.get("from") == f"{bob_jid}/r"
        delay = got.find("{urn:xmpp:delay}delay")
        assert delay is not None and delay.get("from") == pair.a.domain
    finally:
        await alice.close()


async def test_vcard_of_a_user_on_the_other_server(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    async with (
        await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        card = f"<vCard xmlns='{VCARD}'><FN>Bob Remote</FN><NICKNAME>bobby</NICKNAME></vCard>"
        assert (await bob.iq("set", card, to=None)).get("type") == "result"
        reply = await alice.iq("get", f"<vCard xmlns='{VCARD}'/>", to=bob_jid, timeout=20)
        assert reply.get("type") == "result", etree.tostring(reply)
        assert reply.get("from") == bob_jid
        assert reply.findtext(f"{{{VCARD}}}vCard/{{{VCARD}}}FN") == "Bob Remote"


def _disco_query_to(client: XmlClient) -> Callable[[Element], bool]:
    return lambda el: (
        el.tag == tag("iq")
        and el.get("type") == "get"
        and el.find(f"{{{DISCO_INFO}}}query") is not None
    )


async def test_pep_nickname_with_notify_reaches_a_contact_on_the_other_server(
    pair: Federated,
) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    alice = await pep_login(pair.a, alice_jid, "r")
    bob = await pep_login(pair.b, bob_jid, "r")
    try:
        await share_presence(bob, alice)  # alice may see bob's PEP (presence access)
        await share_presence(alice, bob)  # bob's server sees alice's caps
        features = [DISCO_INFO, CAPS, f"{NICK}+notify"]
        ver = caps_ver(features, [CLIENT_IDENTITY])
        node = "https://xmppd.test/client"
        alice.send(
            f"<presence><c xmlns='{CAPS}' hash='sha-1'{attrs(node=node, ver=ver)}/></presence>"
        )
        # Servers ask alice what her caps mean (hers and possibly bob's): answer all.
        category, kind, _, name = CLIENT_IDENTITY

        async def answer_disco() -> None:
            while True:
                query = await alice.expect(_disco_query_to(alice), 30)
                inner = f"<identity{attrs(category=category, type=kind, name=name)}/>"
                inner += "".join(f"<feature var='{f}'/>" for f in features)
                asked = query[0].get("node")
                alice.send(
                    f"<iq{attrs(type='result', id=query.get('id'), to=query.get('from'))}>"
                    f"<query xmlns='{DISCO_INFO}'{attrs(node=asked)}>{inner}</query></iq>"
                )

        answering = asyncio.create_task(answer_disco())
        try:
            await asyncio.sleep(1)  # b.example learns alice's caps
            reply = await publish(
                bob, NICK, f"<nick xmlns='{NICK}'>Bobby</nick>", item_id="current"
            )
            assert reply.get("type") == "result", etree.tostring(reply)
            event = await alice.expect(event_of(bob_jid, NICK), 20)
            nick = event.find(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item/{{{NICK}}}nick")
            assert nick is not None and nick.text == "Bobby"
            # alice can also read bob's node from her server.
            items = await get_items(alice, bob_jid, NICK)
            assert items.get("type") == "result", etree.tostring(items)
            found = items.find(
                f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item/{{{NICK}}}nick"
            )
            assert found is not None and found.text == "Bobby"
        finally:
            answering.cancel()
    finally:
        await alice.close()
        await bob.close()


async def test_pubsub_iqs_to_a_service_on_the_other_server(pair: Federated) -> None:
    service = "pubsub.b.example"
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    async with (
        await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        alice.send("<presence/>")  # headlines to the bare JID go to available resources
        await alice.expect(lambda el: el.tag == tag("presence"))
        node = f"news-{alice_jid.split('@')[0]}"
        created = await create(bob, service, node)
        assert created.get("type") == "result", etree.tostring(created)
        # alice, on a.example, discovers the node, subscribes and gets the notification.
        info = await alice.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=service)
        assert info.get("type") == "result", etree.tostring(info)
        subscribed = await subscribe(alice, service, node)
        assert subscribed.get("type") == "result", etree.tostring(subscribed)
        assert subscribed.get("from") == service
        entry = "<entry xmlns='urn:xmppd:test:pep'>over the wire</entry>"
        published = await publish(bob, node, entry, item_id="one", to=service)
        assert published.get("type") == "result", etree.tostring(published)
        event = await alice.expect(from_service(service, node), 20)
        assert entries(event) == [("one", "over the wire")]
        items = await get_items(alice, service, node)
        assert items.get("type") == "result", etree.tostring(items)
        assert [i.get("id") for i in items.iter(f"{{{PUBSUB}}}item")] == ["one"]
        # A publish from the remote user is refused by the node's publisher model.
        denied = await publish(alice, node, entry, to=service)
        assert denied.get("type") == "error" and denied.get("from") == service


async def test_push_to_an_app_server_on_the_other_domain(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    app_jid = await new_account(pair.b, "app")
    carol_jid = await new_account(pair.a, "carol")
    async with await XmlClient.login(pair.b, app_jid, PASSWORD, resource="app") as app:
        phone = await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="phone")
        reply = await enable(phone, f"{app_jid}/app", "device-token-1")
        assert reply.get("type") == "result", etree.tostring(reply)
        await phone.close()  # registrations survive logout; alice is offline now
        async with await XmlClient.login(pair.a, carol_jid, PASSWORD, resource="r") as carol:
            carol.send(f"<message to='{alice_jid}' type='chat'><body>wake up</body></message>")
            push_iq = await app.expect(is_push, 20)
        push = parse_push(push_iq)
        assert push_iq.get("from") == alice_jid
        assert push.node == "device-token-1"
        assert push.count == 1
        assert push.summary.get("last-message-sender") == carol_jid
        app.send(f"<iq{attrs(type='result', id=push_iq.get('id'), to=alice_jid)}/>")
