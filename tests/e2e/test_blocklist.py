"""XEP-0191 Blocking Command end to end: the blocklist and its pushes, what a blocked
contact can no longer do (messages, IQs, presence, subscription requests), what the user
can no longer send, JID matching rules, storage across sessions, and the error cases."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.blocking import (
    BLOCKING,
    assert_no_crash,
    blocked_condition,
    client,
    raw_login,
    raw_roundtrip,
    roundtrip,
    storage_server,
)
from tests.support.e2e import (
    befriend,
    iq_error,
    iq_with,
    new_account,
    presence,
    queued,
    settle,
    take,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, attrs, error_condition, tag, text

VERSION_QUERY = "<query xmlns='jabber:iq:version'/>"
VCARD_QUERY = "<vCard xmlns='vcard-temp'/>"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    yield from storage_server(request, tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    assert_no_crash(server)


def pushes(c: Any) -> asyncio.Queue[tuple[str, frozenset[str]]]:
    """Block and unblock pushes a slixmpp client receives, as (kind, JIDs)."""
    queue: asyncio.Queue[tuple[str, frozenset[str]]] = asyncio.Queue()
    for kind in ("block", "unblock"):
        c.xmpp.add_event_handler(
            f"{kind}ed",
            lambda iq, kind=kind: queue.put_nowait(
                (kind, frozenset(str(i["jid"]) for i in iq[kind]["items"]))
            ),
        )
    return queue


def is_blocking_push(el: Element) -> bool:
    return el.tag == tag("iq") and any(
        child.tag in (f"{{{BLOCKING}}}block", f"{{{BLOCKING}}}unblock") for child in el
    )


def chat(to: str, body: str, id: str | None = None) -> str:
    return f"<message{attrs(to=to, type='chat', id=id)}><body>{text(body)}</body></message>"


def message_with(body: str) -> Any:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def test_block_and_unblock_are_pushed_to_resources_that_asked(server: XmppdServer) -> None:
    alice = await new_account(server, "blk")
    bob, carol = f"bob-x@{server.domain}", f"carol-x@{server.domain}"
    first = await client(server, alice, resource="first")
    second = await client(server, alice, resource="second", fetch_roster=False)
    quiet = await raw_login(server, alice, "quiet")  # asked for neither roster nor list
    first_pushes, second_pushes = pushes(first), pushes(second)
    blocking = first.xmpp.plugin["xep_0191"]
    try:
        assert await second.xmpp.plugin["xep_0191"].get_blocked_jids() == set()

        await blocking.block([bob, carol])
        assert await second_pushes.get() == ("block", frozenset({bob, carol}))
        assert await first_pushes.get() == ("block", frozenset({bob, carol}))
        assert {str(j) for j in await blocking.get_blocked_jids()} == {bob, carol}

        await blocking.block(bob)  # already blocked: nothing changes, nothing pushed
        await blocking.unblock(bob)
        assert await second_pushes.get() == ("unblock", frozenset({bob}))
        assert await first_pushes.get() == ("unblock", frozenset({bob}))
        assert {str(j) for j in await blocking.get_blocked_jids()} == {carol}

        await blocking.block(bob)
        assert await second_pushes.get() == ("block", frozenset({bob}))
        unblock_all = iq_with(first, "set", f"<unblock xmlns='{BLOCKING}'/>")
        await unblock_all.send(timeout=10)
        assert await second_pushes.get() == ("unblock", frozenset())
        assert await blocking.get_blocked_jids() == set()
        assert first_pushes.qsize() == 2  # block bob, unblock all

        await raw_roundtrip(quiet)
        assert quiet.pending(is_blocking_push) == []
    finally:
        await first.stop()
        await second.stop()
        await quiet.close()


async def test_blocked_contact_and_user_cannot_reach_each_other(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "alice")
    bob_jid = await new_account(server, "bob")
    alice = await client(server, alice_jid)
    bob = await client(server, bob_jid)
    try:
        await alice.xmpp.plugin["xep_0191"].block(bob_jid)

        # Bob's message and IQ: service-unavailable, as if Alice were not there.
        bob.xmpp.send_message(mto=alice_jid, mbody="can you hear me?", mtype="chat")
        bounced = await take(bob.messages, lambda m: m["type"] == "error")
        assert bounced["error"]["condition"] == "service-unavailable"
        assert str(bounced["from"]) == alice_jid
        assert not blocked_condition(bounced)
        query = iq_with(bob, "get", VERSION_QUERY, to=alice.jid)
        assert await iq_error(bob, query) == "service-unavailable"
        assert await iq_error(bob, iq_with(bob, "get", VCARD_QUERY, to=alice_jid)) == (
            "service-unavailable"
        )
        await roundtrip(alice)
        assert queued(alice.messages) == []

        # Alice's message and IQ to Bob: not-acceptable with <blocked/>, never routed.
        alice.xmpp.send_message(mto=bob_jid, mbody="go away", mtype="chat")
        refused = await take(alice.messages, lambda m: m["type"] == "error")
        assert refused["error"]["condition"] == "not-acceptable"
        assert refused["error"]["type"] == "cancel"
        assert blocked_condition(refused)
        assert str(refused["from"]) == bob_jid
        query = iq_with(alice, "get", VERSION_QUERY, to=bob.jid)
        assert await iq_error(alice, query) == "not-acceptable"
        await roundtrip(bob)
        assert queued(bob.messages) == []

        # Unblocked: both ways again.
        await alice.xmpp.plugin["xep_0191"].unblock(bob_jid)
        bob.xmpp.send_message(mto=alice_jid, mbody="hello again", mtype="chat")
        got = await take(alice.messages, lambda m: m["body"] == "hello again")
        assert got["from"] == bob.xmpp.boundjid
        alice.xmpp.send_message(mto=bob_jid, mbody="welcome back", mtype="chat")
        await take(bob.messages, lambda m: m["body"] == "welcome back")
        version = await iq_with(bob, "get", VERSION_QUERY, to=alice.jid).send(timeout=10)
        assert version["type"] == "result"
    finally:
        await alice.stop()
        await bob.stop()


async def test_blocked_contact_sees_the_user_offline(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "pa")
    bob_jid = await new_account(server, "pb")
    alice = await client(server, alice_jid)
    bob = await client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        await alice.xmpp.plugin["xep_0191"].block(bob_jid)
        # Each sees the other go offline.
        await take(bob.presences, presence("unavailable", alice.xmpp.boundjid))
        await take(alice.presences, presence("unavailable", bob_jid))

        # Alice's presence changes no longer reach Bob.
        alice.xmpp.send_presence(pshow="away", pstatus="busy")
        await take(alice.presences, lambda p: p["from"] == alice.xmpp.boundjid)
        await roundtrip(alice)
        await roundtrip(bob)
        assert queued(bob.presences, lambda p: p["from"].bare == alice_jid) == []

        # Bob logs in again: Alice's presence is not sent to him, his not to her.
        await bob.stop()
        bob = await client(server, bob_jid)
        await roundtrip(bob)
        await roundtrip(alice)
        assert queued(bob.presences, lambda p: p["from"].bare == alice_jid) == []
        assert queued(alice.presences, lambda p: p["from"].bare == bob_jid) == []

        # Unblocked: each gets the other's current presence.
        await alice.xmpp.plugin["xep_0191"].unblock(bob_jid)
        seen = await take(bob.presences, presence("available", alice.xmpp.boundjid))
        assert (seen["show"], seen["status"]) == ("away", "busy")
        await take(alice.presences, presence("available", bob.xmpp.boundjid))
    finally:
        await alice.stop()
        await bob.stop()


async def test_blocklist_is_stored_and_applies_while_the_user_is_offline(
    server: XmppdServer,
) -> None:
    alice_jid = await new_account(server, "off")
    bob_jid = await new_account(server, "offb")
    carol_jid = await new_account(server, "offc")
    alice = await client(server, alice_jid)
    await alice.xmpp.plugin["xep_0191"].block(bob_jid)
    await alice.stop()

    bob = await raw_login(server, bob_jid)
    carol = await raw_login(server, carol_jid)
    try:
        # Alice has no vCard: Carol is told so, Bob is told there is nobody.
        seen_by_carol = await carol.iq("get", VCARD_QUERY, to=alice_jid)
        assert error_condition(seen_by_carol) == "item-not-found"
        seen_by_bob = await bob.iq("get", VCARD_QUERY, to=alice_jid)
        assert error_condition(seen_by_bob) == "service-unavailable"
        # Bob's subscription request is dropped without an answer; Carol's is kept.
        bob.send(f"<presence type='subscribe' to='{alice_jid}'/>")
        carol.send(f"<presence type='subscribe' to='{alice_jid}'/>")
        await raw_roundtrip(bob)
        await raw_roundtrip(carol)
        assert bob.pending(lambda el: el.tag == tag("presence")) == []
    finally:
        await bob.close()
        await carol.close()

    alice = await client(server, alice_jid)
    try:
        assert {str(j) for j in await alice.xmpp.plugin["xep_0191"].get_blocked_jids()} == {bob_jid}
        await take(alice.presences, presence("subscribe", carol_jid))
        await roundtrip(alice)
        assert queued(alice.presences, lambda p: p["from"].bare == bob_jid) == []
    finally:
        await alice.stop()


async def test_full_jid_and_domain_items_match_as_xep_0191_says(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "match")
    bob_jid = await new_account(server, "matchb")
    alice = await raw_login(server, alice_jid, "a")
    one = await raw_login(server, bob_jid, "one")
    two = await raw_login(server, bob_jid, "two")
    try:
        for c in (alice, one, two):
            c.send("<presence/>")
            await c.expect(lambda el, c=c: el.tag == tag("presence") and el.get("from") == c.jid)

        async def block(item: str) -> None:
            reply = await alice.iq(
                "set", f"<block xmlns='{BLOCKING}'><item jid='{item}'/></block>", to=None
            )
            assert reply.get("type") == "result"

        # One resource of Bob: only that one is blocked.
        await block(one.jid)
        one.send(chat(alice.jid, "from one", id="m1"))
        two.send(chat(alice.jid, "from two"))
        bounce = await one.expect(lambda el: el.get("id") == "m1")
        assert error_condition(bounce) == "service-unavailable"
        await alice.expect(message_with("from two"))
        await raw_roundtrip(alice)
        assert alice.pending(message_with("from one")) == []

        # The whole domain: every account on it, but not the server itself.
        reply = await alice.iq("set", f"<unblock xmlns='{BLOCKING}'/>", to=None)
        assert reply.get("type") == "result"
        await block(server.domain)
        two.send(chat(alice.jid, "still there?", id="m2"))
        bounce = await two.expect(lambda el: el.get("id") == "m2")
        assert error_condition(bounce) == "service-unavailable"
        alice.send(chat(bob_jid, "no", id="m3"))
        refused = await alice.expect(lambda el: el.get("id") == "m3")
        assert error_condition(refused) == "not-acceptable"
        assert blocked_condition(refused)
        await raw_roundtrip(alice)  # the server still answers Alice
        assert alice.pending(message_with("still there?")) == []
    finally:
        for c in (alice, one, two):
            await c.close()


async def test_bad_requests_are_refused(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "bad")
    mallory_jid = await new_account(server, "mal")
    alice = await raw_login(server, alice_jid)
    mallory = await raw_login(server, mallory_jid)
    try:
        cases = [
            (f"<block xmlns='{BLOCKING}'/>", "bad-request"),
            (f"<block xmlns='{BLOCKING}'><item/></block>", "bad-request"),
            (f"<block xmlns='{BLOCKING}'><item jid='a@b@c'/></block>", "jid-malformed"),
            (f"<unblock xmlns='{BLOCKING}'><item jid='@nowhere'/></unblock>", "jid-malformed"),
        ]
        for query, condition in cases:
            reply = await alice.iq("set", query, to=None)
            assert (query, error_condition(reply)) == (query, condition)

        # Another account's list can be neither read nor changed.
        read = await mallory.iq("get", f"<blocklist xmlns='{BLOCKING}'/>", to=alice_jid)
        assert error_condition(read) == "forbidden"
        write = await mallory.iq(
            "set", f"<block xmlns='{BLOCKING}'><item jid='x@y'/></block>", to=alice_jid
        )
        assert error_condition(write) == "forbidden"

        listed = await alice.iq("get", f"<blocklist xmlns='{BLOCKING}'/>", to=None)
        blocklist = listed.find(f"{{{BLOCKING}}}blocklist")
        assert blocklist is not None and len(blocklist) == 0

        # The server advertises the feature (XEP-0191 §3.1).
        info = await alice.iq(
            "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=server.domain
        )
        features = {f.get("var") for f in info.iter("{*}feature")}
        assert BLOCKING in features
    finally:
        await alice.close()
        await mallory.close()
