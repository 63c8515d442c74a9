"""RFC 6121 §4 presence end to end: broadcast to subscribers, probes at login, unavailable
on disconnect (clean or abrupt), directed presence to non-contacts."""

from __future__ import annotations

from collections.abc import Iterator

import aioxmpp
import pytest

from tests.support.aio import Aio
from tests.support.e2e import (
    PASSWORD,
    barrier,
    check_server_survived,
    new_account,
    online,
    presence,
    queued,
    subscribe,
    take,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient, tag


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(server)


async def raw_online(server: XmppdServer, jid: str, resource: str) -> XmlClient:
    """A raw-socket resource that sent initial presence (and saw it reflected)."""
    client = await XmlClient.login(server, jid, PASSWORD, resource=resource)
    client.send("<presence><status>raw and ready</status></presence>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client


async def test_initial_presence_reaches_subscribers_only(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "ipa")
    alice = await online(server, alice_jid)
    bob = await online(server, await new_account(server, "ipb"))
    carol = await online(server, await new_account(server, "ipc"))
    try:
        await subscribe(bob, alice)
        await alice.stop()
        await take(bob.presences, presence("unavailable", alice.xmpp.boundjid))

        alice = await online(server, alice_jid, resource="phone", status="back again")
        seen = await take(bob.presences, presence("available", f"{alice_jid}/phone"))
        assert seen["status"] == "back again"
        await barrier(alice, carol)
        assert queued(carol.presences, lambda p: p["from"].bare == alice_jid) == []
    finally:
        for client in (alice, bob, carol):
            await client.stop()


async def test_contacts_already_online_are_probed_at_login(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "proa")
    alice = await online(server, alice_jid)
    bob = await online(server, await new_account(server, "prob"))
    try:
        await subscribe(alice, bob)
        await alice.stop()
        bob.xmpp.send_presence(pshow="dnd", pstatus="here before you")

        # slixmpp: Bob's current presence arrives right after Alice's initial presence.
        alice = await online(server, alice_jid)
        seen = await take(alice.presences, presence("available", bob.xmpp.boundjid))
        assert (seen["show"], seen["status"]) == ("dnd", "here before you")
        await alice.stop()

        # aioxmpp, same account: the same.
        async with Aio(server, alice_jid, PASSWORD, resource="aio") as aio:
            got = await aio.next_presence(lambda p: str(p.from_) == str(bob.xmpp.boundjid))
            assert got.type_ == aioxmpp.PresenceType.AVAILABLE
            assert got.show == aioxmpp.PresenceShow.DND
            assert got.status.any() == "here before you"
    finally:
        await alice.stop()
        await bob.stop()


async def test_unavailable_broadcast_then_available_again(server: XmppdServer) -> None:
    alice = await online(server, await new_account(server, "uba"))
    bob = await online(server, await new_account(server, "ubb"))
    try:
        await subscribe(bob, alice)
        await subscribe(alice, bob)
        alice.xmpp.send_presence(ptype="unavailable", pstatus="gone fishing")
        off = await take(bob.presences, presence("unavailable", alice.xmpp.boundjid))
        assert off["status"] == "gone fishing"
        # Available again: a new initial presence, so Bob is probed again.
        alice.xmpp.send_presence(pstatus="back")
        await take(bob.presences, presence("available", alice.xmpp.boundjid))
        await take(alice.presences, presence("available", bob.xmpp.boundjid))
    finally:
        await alice.stop()
        await bob.stop()


async def test_clean_disconnect_is_seen_as_unavailable(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "cda")
    alice = await online(server, alice_jid, resource="laptop")
    other = await online(server, alice_jid, resource="phone")
    bob = await online(server, await new_account(server, "cdb"))
    try:
        await subscribe(bob, alice)
        await alice.stop()  # </stream:stream>
        await take(bob.presences, presence("unavailable", f"{alice_jid}/laptop"))
        await take(other.presences, presence("unavailable", f"{alice_jid}/laptop"))
    finally:
        await other.stop()
        await bob.stop()


async def test_abrupt_disconnect_is_seen_as_unavailable(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "ada")
    alice = await online(server, alice_jid, resource="desk")
    bob = await online(server, await new_account(server, "adb"))
    try:
        await subscribe(bob, alice)
        raw = await raw_online(server, alice_jid, "flaky")
        seen = await take(bob.presences, presence("available", raw.jid))
        assert seen["status"] == "raw and ready"
        await take(alice.presences, presence("available", raw.jid))

        raw.abort()  # TCP gone, no </stream:stream>
        await take(bob.presences, presence("unavailable", raw.jid))
        await take(alice.presences, presence("unavailable", raw.jid))
        # The account's other resource is still online for Bob.
        bob.xmpp.send_message(mto=alice_jid, mbody="are you there?", mtype="chat")
        await take(alice.messages, lambda m: m["body"] == "are you there?")
    finally:
        await alice.stop()
        await bob.stop()


async def test_directed_presence_to_a_non_contact(server: XmppdServer) -> None:
    alice = await online(server, await new_account(server, "dpa"))
    carol = await online(server, await new_account(server, "dpc"))
    try:
        alice.xmpp.send_presence(pto=carol.xmpp.boundjid, pstatus="just for you")
        seen = await take(carol.presences, presence("available", alice.xmpp.boundjid))
        assert seen["status"] == "just for you"
        # A broadcast goes to subscribers, not to whoever got directed presence.
        alice.xmpp.send_presence(pstatus="for my contacts")
        await barrier(alice, carol)
        assert queued(carol.presences, lambda p: p["status"] == "for my contacts") == []
        # But going offline is announced to Carol.
        await alice.stop()
        await take(carol.presences, presence("unavailable", alice.xmpp.boundjid))
    finally:
        await alice.stop()
        await carol.stop()


async def test_directed_presence_to_a_bare_jid_then_abrupt_disconnect(
    server: XmppdServer,
) -> None:
    alice_jid = await new_account(server, "dba")
    carol_jid = await new_account(server, "dbc")
    carol = await online(server, carol_jid)
    raw = await raw_online(server, alice_jid, "raw")
    try:
        raw.send(f"<presence to='{carol_jid}'><show>chat</show></presence>")
        seen = await take(carol.presences, presence("available", raw.jid))
        assert seen["show"] == "chat"
        raw.abort()
        await take(carol.presences, presence("unavailable", raw.jid))
    finally:
        await raw.close()
        await carol.stop()
