"""RFC 6121 §3 presence subscriptions end to end: the handshake and the roster states it
goes through, requests to offline contacts, cancellation both ways, pre-approval."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aioxmpp
import pytest

from tests.support.aio import Aio
from tests.support.e2e import (
    PASSWORD,
    Item,
    barrier,
    befriend,
    check_server_survived,
    new_account,
    online,
    presence,
    queued,
    roster_of,
    roster_push,
    settle,
    subscribe,
    take,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient

PREAPPROVAL = "urn:xmpp:features:pre-approval"


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(server)


async def test_full_subscription_handshake(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "alice")
    bob_jid = await new_account(server, "bob")
    alice = await online(server, alice_jid)
    bob = await online(server, bob_jid)
    try:
        # Alice asks: her roster shows the pending request, Bob gets it.
        alice.xmpp.send_presence(pto=bob_jid, ptype="subscribe")
        assert await roster_push(alice, bob_jid) == Item("none", ask=True)
        request = await take(bob.presences, presence("subscribe", alice_jid))
        assert request["to"].bare == bob_jid
        assert alice_jid not in await roster_of(bob)

        # Bob approves: "from" for him, "to" for her, and she sees him online.
        bob.xmpp.send_presence(pto=alice_jid, ptype="subscribed")
        assert await roster_push(bob, alice_jid) == Item("from")
        assert await roster_push(alice, bob_jid) == Item("to")
        await take(alice.presences, presence("subscribed", bob_jid))
        await take(alice.presences, presence("available", bob.xmpp.boundjid))

        # And the other way round: "both" on each side.
        bob.xmpp.send_presence(pto=alice_jid, ptype="subscribe")
        assert await roster_push(bob, alice_jid) == Item("from", ask=True)
        await take(alice.presences, presence("subscribe", bob_jid))
        alice.xmpp.send_presence(pto=bob_jid, ptype="subscribed")
        assert await roster_push(alice, bob_jid) == Item("both")
        assert await roster_push(bob, alice_jid) == Item("both")
        await take(bob.presences, presence("available", alice.xmpp.boundjid))

        # Presence now flows both ways.
        alice.xmpp.send_presence(pshow="away", pstatus="at lunch")
        seen = await take(bob.presences, presence("available", alice.xmpp.boundjid))
        assert (seen["show"], seen["status"]) == ("away", "at lunch")
        bob.xmpp.send_presence(pstatus="coding")
        seen = await take(alice.presences, presence("available", bob.xmpp.boundjid))
        assert seen["status"] == "coding"

        assert await roster_of(alice) == {bob_jid: Item("both")}
        assert await roster_of(bob) == {alice_jid: Item("both")}
    finally:
        await alice.stop()
        await bob.stop()


async def test_request_to_an_offline_contact_waits_until_answered(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "asker")
    bob_jid = await new_account(server, "sleeper")
    alice = await online(server, alice_jid)
    try:
        request = alice.xmpp.make_presence(pto=bob_jid, ptype="subscribe", pstatus="it's Alice")
        request.send()
        assert await roster_push(alice, bob_jid) == Item("none", ask=True)

        # Bob logs in: the request comes after his initial presence, with its text.
        bob = await online(server, bob_jid)
        got = await take(bob.presences, presence("subscribe", alice_jid))
        assert got["status"] == "it's Alice"
        await bob.stop()

        # Unanswered, it comes again at the next login; then Bob approves.
        bob = await online(server, bob_jid)
        await take(bob.presences, presence("subscribe", alice_jid))
        bob.xmpp.send_presence(pto=alice_jid, ptype="subscribed")
        await take(alice.presences, presence("subscribed", bob_jid))
        await take(alice.presences, presence("available", bob.xmpp.boundjid))
        await bob.stop()

        # Answered: not delivered any more.
        bob = await online(server, bob_jid)
        await barrier(alice, bob)
        assert queued(bob.presences, presence("subscribe", alice_jid)) == []
        await bob.stop()
        assert (await roster_of(alice))[bob_jid] == Item("to")
    finally:
        await alice.stop()


async def test_subscription_to_an_unknown_account_is_refused(server: XmppdServer) -> None:
    alice = await online(server, await new_account(server, "lonely"))
    ghost = f"ghost-nobody@{server.domain}"
    try:
        alice.xmpp.send_presence(pto=ghost, ptype="subscribe")
        await take(alice.presences, presence("unsubscribed", ghost))
        assert (await roster_of(alice))[ghost] == Item("none")
    finally:
        await alice.stop()


async def test_unsubscribe_then_unsubscribed_end_the_subscription(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "unsa")
    bob_jid = await new_account(server, "unsb")
    alice = await online(server, alice_jid)
    bob = await online(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)

        # Alice stops receiving Bob's presence; Bob still receives hers.
        alice.xmpp.send_presence(pto=bob_jid, ptype="unsubscribe")
        assert await roster_push(alice, bob_jid) == Item("from")
        assert await roster_push(bob, alice_jid) == Item("to")
        await take(bob.presences, presence("unsubscribe", alice_jid))
        bob.xmpp.send_presence(pstatus="you cannot see this")
        await barrier(bob, alice)
        assert queued(alice.presences, lambda p: p["status"] == "you cannot see this") == []
        alice.xmpp.send_presence(pstatus="you can see this")
        await take(bob.presences, lambda p: p["status"] == "you can see this")

        # Alice revokes Bob's subscription: he sees her go offline, then the cancellation.
        alice.xmpp.send_presence(pto=bob_jid, ptype="unsubscribed")
        assert await roster_push(alice, bob_jid) == Item("none")
        assert await roster_push(bob, alice_jid) == Item("none")
        await take(bob.presences, presence("unavailable", alice.xmpp.boundjid))
        await take(bob.presences, presence("unsubscribed", alice_jid))
        alice.xmpp.send_presence(pstatus="nobody sees this")
        await barrier(alice, bob)
        assert queued(bob.presences, lambda p: p["status"] == "nobody sees this") == []

        assert await roster_of(alice) == {bob_jid: Item("none")}
        assert await roster_of(bob) == {alice_jid: Item("none")}
    finally:
        await alice.stop()
        await bob.stop()


async def test_denied_request_keeps_the_existing_subscription(server: XmppdServer) -> None:
    """Alice already shares her presence with Bob ("from"); Bob refuses to share his."""
    alice_jid = await new_account(server, "dena")
    bob_jid = await new_account(server, "denb")
    alice = await online(server, alice_jid)
    bob = await online(server, bob_jid)
    try:
        await subscribe(bob, alice)
        await settle(alice, bob)
        alice.xmpp.send_presence(pto=bob_jid, ptype="subscribe")
        assert await roster_push(alice, bob_jid) == Item("from", ask=True)
        await take(bob.presences, presence("subscribe", alice_jid))

        bob.xmpp.send_presence(pto=alice_jid, ptype="unsubscribed")
        await take(alice.presences, presence("unsubscribed", bob_jid))
        assert await roster_push(alice, bob_jid) == Item("from")
        assert await roster_of(alice) == {bob_jid: Item("from")}
        assert await roster_of(bob) == {alice_jid: Item("to")}
        # Bob keeps seeing Alice.
        alice.xmpp.send_presence(pstatus="still visible to Bob")
        await take(bob.presences, lambda p: p["status"] == "still visible to Bob")
    finally:
        await alice.stop()
        await bob.stop()


async def test_withdrawn_request_keeps_the_existing_subscription(server: XmppdServer) -> None:
    """Alice ("from" Bob) asks for Bob's presence, then withdraws with unsubscribe."""
    alice_jid = await new_account(server, "wda")
    bob_jid = await new_account(server, "wdb")
    alice = await online(server, alice_jid)
    bob = await online(server, bob_jid)
    try:
        await subscribe(bob, alice)
        await settle(alice, bob)
        alice.xmpp.send_presence(pto=bob_jid, ptype="subscribe")
        assert await roster_push(alice, bob_jid) == Item("from", ask=True)
        await take(bob.presences, presence("subscribe", alice_jid))

        alice.xmpp.send_presence(pto=bob_jid, ptype="unsubscribe")
        assert await roster_push(alice, bob_jid) == Item("from")
        assert await roster_of(bob) == {alice_jid: Item("to")}
        alice.xmpp.send_presence(pstatus="Bob still sees me")
        await take(bob.presences, lambda p: p["status"] == "Bob still sees me")
        # Bob can no longer approve a request that was withdrawn.
        bob.xmpp.send_presence(pto=alice_jid, ptype="subscribed")
        await barrier(bob, alice)
        assert await roster_of(alice) == {bob_jid: Item("from")}
    finally:
        await alice.stop()
        await bob.stop()


async def test_pre_approved_subscription_is_granted_without_asking(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "prea")
    bob_jid = await new_account(server, "preb")
    raw = await XmlClient.login(server, bob_jid, PASSWORD)
    try:
        assert raw.features is not None
        assert raw.features.find(f"{{{PREAPPROVAL}}}sub") is not None
    finally:
        await raw.close()
    alice = await online(server, alice_jid)
    bob = await online(server, bob_jid)
    try:
        # Bob pre-approves Alice: only his roster changes; nothing reaches her.
        bob.xmpp.send_presence(pto=alice_jid, ptype="subscribed")
        assert await roster_push(bob, alice_jid) == Item("none", approved=True)
        await barrier(bob, alice)
        assert queued(alice.presences, lambda p: str(p["from"].bare) == bob_jid) == []

        # Alice asks: approved at once; Bob is not asked.
        alice.xmpp.send_presence(pto=bob_jid, ptype="subscribe")
        await take(alice.presences, presence("subscribed", bob_jid))
        await take(alice.presences, presence("available", bob.xmpp.boundjid))
        assert await roster_push(bob, alice_jid) == Item("from")
        await barrier(alice, bob)
        assert queued(bob.presences, presence("subscribe", alice_jid)) == []
        assert await roster_of(alice) == {bob_jid: Item("to")}
    finally:
        await alice.stop()
        await bob.stop()


async def test_pre_approval_can_be_cancelled(server: XmppdServer) -> None:
    carol_jid = await new_account(server, "prec")
    dave_jid = await new_account(server, "pred")
    bob_jid = await new_account(server, "prebob")
    carol = await online(server, carol_jid)
    dave = await online(server, dave_jid)
    bob = await online(server, bob_jid)
    try:
        await subscribe(bob, dave)  # Bob receives Dave's presence: "to"
        await settle(bob, carol, dave)
        for contact in (carol_jid, dave_jid):
            bob.xmpp.send_presence(pto=contact, ptype="subscribed")
        assert await roster_push(bob, carol_jid) == Item("none", approved=True)
        assert await roster_push(bob, dave_jid) == Item("to", approved=True)

        for contact in (carol_jid, dave_jid):
            bob.xmpp.send_presence(pto=contact, ptype="unsubscribed")
        assert await roster_push(bob, carol_jid) == Item("none")
        assert await roster_push(bob, dave_jid) == Item("to")
        # A cancelled pre-approval is not routed: neither contact hears of it.
        await barrier(bob, carol)
        await barrier(bob, dave)
        assert queued(carol.presences, lambda p: str(p["from"].bare) == bob_jid) == []
        assert queued(dave.presences, lambda p: str(p["from"].bare) == bob_jid) == []

        # Carol's request is no longer approved automatically.
        carol.xmpp.send_presence(pto=bob_jid, ptype="subscribe")
        await take(bob.presences, presence("subscribe", carol_jid))
        await barrier(bob, carol)
        assert queued(carol.presences, presence("subscribed", bob_jid)) == []
        assert await roster_of(bob) == {carol_jid: Item("none"), dave_jid: Item("to")}
    finally:
        await carol.stop()
        await dave.stop()
        await bob.stop()


async def test_handshake_between_aioxmpp_and_slixmpp(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "aioa")
    bob_jid = await new_account(server, "slixb")
    bob = await online(server, bob_jid)
    async with Aio(server, alice_jid, PASSWORD) as alice:
        changes: asyncio.Queue[aioxmpp.roster.Item] = asyncio.Queue()
        alice.roster.on_entry_subscription_state_changed.connect(changes.put_nowait)
        try:
            alice.roster.subscribe(aioxmpp.JID.fromstr(bob_jid))
            await take(bob.presences, presence("subscribe", alice_jid))
            bob.xmpp.send_presence(pto=alice_jid, ptype="subscribed")
            seen = await alice.next_presence(lambda p: str(p.from_) == str(bob.xmpp.boundjid))
            assert seen.type_ == aioxmpp.PresenceType.AVAILABLE

            bob.xmpp.send_presence(pto=alice_jid, ptype="subscribe")
            asked = await take(alice.subscription_requests, lambda p: str(p.from_) == bob_jid)
            assert asked.type_ == aioxmpp.PresenceType.SUBSCRIBE
            alice.roster.approve(aioxmpp.JID.fromstr(bob_jid))
            await take(bob.presences, presence("subscribed", alice_jid))
            await take(bob.presences, presence("available", alice.jid))

            entry = await take(changes, lambda item: item.subscription == "both")
            assert str(entry.jid) == bob_jid
            assert await roster_of(bob) == {alice_jid: Item("both")}
        finally:
            await bob.stop()
