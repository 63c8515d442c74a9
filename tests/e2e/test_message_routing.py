"""RFC 6121 §8 delivery rules end to end: bare vs full JID, priorities, offline and unknown
recipients, message types, IQ routing between users and to the server."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

from tests.support.aio import Aio
from tests.support.e2e import (
    PASSWORD,
    check_server_survived,
    new_account,
    online,
    queued,
    take,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, XmlClient, attrs, error_condition, tag, text

_ids = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _server_survives(sqlite_server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(sqlite_server)


async def available(server: XmppdServer, jid: str, resource: str, priority: int) -> XmlClient:
    """A raw resource with initial presence of ``priority``, reflected by the server."""
    client = await XmlClient.login(server, jid, PASSWORD, resource=resource)
    client.send(f"<presence><priority>{priority}</priority></presence>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client


def send_message(
    client: XmlClient, to: str, body: str, type: str | None = "chat", id: str | None = None
) -> None:
    client.send(f"<message{attrs(to=to, type=type, id=id)}><body>{text(body)}</body></message>")


def message_with(body: str) -> Callable[[Element], bool]:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def sync(sender: XmlClient, *receivers: XmlClient) -> None:
    """Everything ``sender`` sent before has reached ``receivers`` (ordered delivery)."""
    for receiver in receivers:
        marker = f"marker-{next(_ids)}"
        send_message(sender, receiver.jid, marker)
        await receiver.expect(message_with(marker))


async def error_for(client: XmlClient, stanza_id: str) -> str | None:
    reply = await client.expect(lambda el: el.get("id") == stanza_id and el.get("type") == "error")
    return error_condition(reply)


async def close_all(*clients: XmlClient) -> None:
    for client in clients:
        await client.close()


@pytest.fixture
async def users(sqlite_server: XmppdServer) -> tuple[str, str]:
    """A sender and a recipient account."""
    return await new_account(sqlite_server, "from"), await new_account(sqlite_server, "to")


async def test_bare_jid_message_goes_to_the_highest_priority_only(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    high = await available(sqlite_server, bob_jid, "high", 5)
    low = await available(sqlite_server, bob_jid, "low", 1)
    try:
        send_message(alice, bob_jid, "chat to bare")
        send_message(alice, bob_jid, "normal to bare", type=None)
        got = await high.expect(message_with("chat to bare"))
        assert got.get("from") == alice.jid
        await high.expect(message_with("normal to bare"))
        await sync(alice, low)
        assert low.pending(lambda el: el.tag == tag("message")) == []
        # The full JID still reaches the lower-priority resource.
        send_message(alice, low.jid, "to low directly")
        await low.expect(message_with("to low directly"))
    finally:
        await close_all(alice, high, low)


async def test_equal_priorities_all_get_bare_jid_messages(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    one = await available(sqlite_server, bob_jid, "one", 3)
    two = await available(sqlite_server, bob_jid, "two", 3)
    try:
        send_message(alice, bob_jid, "for both")
        await one.expect(message_with("for both"))
        await two.expect(message_with("for both"))
    finally:
        await close_all(alice, one, two)


async def test_negative_priority_never_gets_bare_jid_messages(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    shy = await available(sqlite_server, bob_jid, "shy", -1)
    normal = await available(sqlite_server, bob_jid, "normal", 0)
    try:
        send_message(alice, bob_jid, "first")
        await normal.expect(message_with("first"))
        await normal.close()
        # Only the negative-priority resource is left: as if Bob were offline.
        send_message(alice, bob_jid, "second", id="neg1")
        assert await error_for(alice, "neg1") == "service-unavailable"
        await sync(alice, shy)
        assert shy.pending(lambda el: el.tag == tag("message")) == []
        # Its full JID works.
        send_message(alice, shy.jid, "direct")
        await shy.expect(message_with("direct"))
    finally:
        await close_all(alice, shy, normal)


async def test_message_to_an_unknown_resource_goes_to_the_bare_jid(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    bob = await available(sqlite_server, bob_jid, "real", 0)
    try:
        send_message(alice, f"{bob_jid}/gone-away", "to a stale resource")
        got = await bob.expect(message_with("to a stale resource"))
        assert got.get("from") == alice.jid
    finally:
        await close_all(alice, bob)


@pytest.mark.parametrize("type", ["chat", "normal", "headline"])
async def test_message_to_an_offline_user_bounces(
    sqlite_server: XmppdServer, users: tuple[str, str], type: str
) -> None:
    """No offline storage yet: chat and normal come back as service-unavailable; a
    headline is silently dropped (RFC 6121 §8.5.2.2.1)."""
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    try:
        send_message(alice, bob_jid, "anyone home?", type=type, id="off1")
        if type == "headline":
            await alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=sqlite_server.domain)
            assert alice.pending(lambda el: el.get("id") == "off1") == []
        else:
            reply = await alice.expect(lambda el: el.get("id") == "off1")
            assert reply.get("type") == "error"
            assert reply.get("from") == bob_jid
            assert error_condition(reply) == "service-unavailable"
    finally:
        await alice.close()


async def test_message_to_a_nonexistent_user_bounces(sqlite_server: XmppdServer) -> None:
    alice = await available(sqlite_server, await new_account(sqlite_server, "nx"), "a", 0)
    nobody = f"no-such-user@{sqlite_server.domain}"
    try:
        send_message(alice, nobody, "hello?", id="nx1")
        send_message(alice, f"{nobody}/res", "hello?", id="nx2")
        assert await error_for(alice, "nx1") == "service-unavailable"
        assert await error_for(alice, "nx2") == "service-unavailable"
    finally:
        await alice.close()


async def test_headline_to_bare_jid_reaches_every_non_negative_resource(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    high = await available(sqlite_server, bob_jid, "high", 5)
    zero = await available(sqlite_server, bob_jid, "zero", 0)
    negative = await available(sqlite_server, bob_jid, "negative", -5)
    try:
        send_message(alice, bob_jid, "breaking news", type="headline")
        await high.expect(message_with("breaking news"))
        await zero.expect(message_with("breaking news"))
        await sync(alice, negative)
        assert negative.pending(message_with("breaking news")) == []
    finally:
        await close_all(alice, high, zero, negative)


async def test_groupchat_to_a_user_bounces(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    bob = await available(sqlite_server, bob_jid, "b", 0)
    try:
        send_message(alice, bob_jid, "room talk", type="groupchat", id="gc1")
        send_message(alice, f"{bob_jid}/nowhere", "room talk", type="groupchat", id="gc2")
        assert await error_for(alice, "gc1") == "service-unavailable"
        assert await error_for(alice, "gc2") == "service-unavailable"
        await sync(alice, bob)
        assert bob.pending(message_with("room talk")) == []
    finally:
        await close_all(alice, bob)


async def test_error_messages_are_never_answered(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    error = (
        "<error type='cancel'><service-unavailable"
        " xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
    )
    try:
        for i, to in enumerate(
            [bob_jid, f"{bob_jid}/res", f"nobody@{sqlite_server.domain}", sqlite_server.domain]
        ):
            alice.send(f"<message{attrs(to=to, type='error', id=f'err{i}')}>{error}</message>")
        await alice.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=sqlite_server.domain)
        assert alice.pending(lambda el: (el.get("id") or "").startswith("err")) == []
    finally:
        await alice.close()


async def test_iq_to_another_users_full_jid_is_delivered_and_answered(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    bob = await online(sqlite_server, bob_jid, resource="slix")  # answers XEP-0092 itself
    try:
        reply = await alice.iq("get", "<query xmlns='jabber:iq:version'/>", to=bob.jid)
        assert reply.get("type") == "result"
        assert reply.get("from") == bob.jid
        assert reply.findtext("{jabber:iq:version}query/{jabber:iq:version}name") == "Slixmpp"

        # And the other way: slixmpp asks the raw client, which answers by hand.
        pending = bob.xmpp.plugin["xep_0092"].get_version(alice.jid)
        request = await alice.expect(lambda el: el.tag == tag("iq") and el.get("type") == "get")
        assert request.get("from") == bob.jid
        alice.send(
            f"<iq{attrs(type='result', id=request.get('id'), to=request.get('from'))}>"
            "<query xmlns='jabber:iq:version'><name>raw</name><version>1</version></query></iq>"
        )
        result = await pending
        assert result["software_version"]["name"] == "raw"
    finally:
        await alice.close()
        await bob.stop()


async def test_iq_to_an_unavailable_resource_or_namespace_is_service_unavailable(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await available(sqlite_server, alice_jid, "a", 0)
    bob = await available(sqlite_server, bob_jid, "b", 0)
    version = "<query xmlns='jabber:iq:version'/>"
    try:
        cases = {
            "no such resource": await alice.iq("get", version, to=f"{bob_jid}/nope"),
            "offline account's resource": await alice.iq("get", version, to=f"offline-{bob_jid}/x"),
            "unknown namespace at the server": await alice.iq(
                "get", "<query xmlns='urn:example:unknown'/>", to=sqlite_server.domain
            ),
            "unknown namespace at an account": await alice.iq(
                "get", "<query xmlns='urn:example:unknown'/>", to=bob_jid
            ),
            "set of a get-only feature": await alice.iq(
                "set", "<ping xmlns='urn:xmpp:ping'/>", to=sqlite_server.domain
            ),
        }
        assert {case: error_condition(reply) for case, reply in cases.items()} == dict.fromkeys(
            cases, "service-unavailable"
        )
        # Nothing of that reached Bob's resource.
        await sync(alice, bob)
        assert bob.pending(lambda el: el.tag == tag("iq")) == []
    finally:
        await close_all(alice, bob)


async def test_priorities_across_client_libraries(
    sqlite_server: XmppdServer, users: tuple[str, str]
) -> None:
    alice_jid, bob_jid = users
    alice = await online(sqlite_server, alice_jid)
    slix = await online(sqlite_server, bob_jid, resource="slix", priority=1)
    aio = Aio(sqlite_server, bob_jid, PASSWORD, resource="aio", priority=5)
    await aio.start()
    try:
        alice.xmpp.send_message(mto=bob_jid, mbody="to the aioxmpp one", mtype="chat")
        got = await aio.next_message(lambda m: m.body.any() == "to the aioxmpp one")
        assert str(got.from_) == str(alice.xmpp.boundjid)
        alice.xmpp.send_message(mto=slix.xmpp.boundjid, mbody="marker", mtype="chat")
        await take(slix.messages, lambda m: m["body"] == "marker")
        assert queued(slix.messages, lambda m: m["body"] == "to the aioxmpp one") == []
    finally:
        await aio.stop()
        await slix.stop()
        await alice.stop()
