"""RFC 6121 §2 roster management end to end: add, update and remove items with pushes to
every interested resource, roster versioning, and the error cases of a roster set."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aioxmpp
import pytest

from tests.support.aio import Aio
from tests.support.e2e import (
    PASSWORD,
    Item,
    check_server_survived,
    new_account,
    online,
    roster_of,
    roster_push,
    take,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, XmlClient, error_condition, tag

ROSTER = "jabber:iq:roster"
ROSTER_VER = "urn:xmpp:features:rosterver"


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(server)


def roster_query(ver: str | None = None) -> str:
    attr = "" if ver is None else f" ver='{ver}'"
    return f"<query xmlns='{ROSTER}'{attr}/>"


def roster_set(item: str) -> str:
    return f"<query xmlns='{ROSTER}'>{item}</query>"


def is_push(el: Element) -> bool:
    return (
        el.tag == tag("iq")
        and el.get("type") == "set"
        and el.find(f"{{{ROSTER}}}query") is not None
    )


async def test_items_are_added_updated_and_removed_with_pushes_to_every_resource(
    server: XmppdServer,
) -> None:
    alice = await new_account(server, "rosa")
    bob = await new_account(server, "rosb")
    first = await online(server, alice, resource="first")
    second = await online(server, alice, resource="second")
    try:
        await first.xmpp.update_roster(bob, name="Bob", groups=["Friends", "Work"])
        expected = Item("none", name="Bob", groups=frozenset({"Friends", "Work"}))
        assert await roster_push(second, bob) == expected
        assert await roster_push(first, bob) == expected
        assert await roster_of(second) == {bob: expected}

        await first.xmpp.update_roster(bob, name="Robert", groups=["Family"])
        renamed = Item("none", name="Robert", groups=frozenset({"Family"}))
        assert await roster_push(second, bob) == renamed
        assert await roster_push(first, bob) == renamed
        assert await roster_of(second) == {bob: renamed}

        await second.xmpp.del_roster_item(bob)
        assert (await roster_push(first, bob)).subscription == "remove"
        assert (await roster_push(second, bob)).subscription == "remove"
        assert await roster_of(first) == {}
    finally:
        await first.stop()
        await second.stop()


async def test_a_resource_that_never_asked_for_the_roster_gets_no_push(
    server: XmppdServer,
) -> None:
    alice = await new_account(server, "quiet")
    editor = await online(server, alice, resource="editor")
    quiet = await XmlClient.login(server, alice, PASSWORD, resource="quiet")
    try:
        await editor.xmpp.update_roster(f"friend@{server.domain}", name="Friend")
        await roster_push(editor, f"friend@{server.domain}")
        # The push, if any, was written before the result; this message comes after.
        editor.xmpp.send_message(mto=quiet.jid, mbody="after the set", mtype="chat")
        await quiet.expect(lambda el: el.tag == tag("message"))
        assert quiet.pending(is_push) == []
    finally:
        await editor.stop()
        await quiet.close()


async def test_roster_versioning(server: XmppdServer) -> None:
    alice = await new_account(server, "ver")
    client = await XmlClient.login(server, alice, PASSWORD)
    try:
        assert client.features is not None
        assert client.features.find(f"{{{ROSTER_VER}}}ver") is not None

        full = await client.iq("get", roster_query(""), to=None)
        query = full.find(f"{{{ROSTER}}}query")
        assert query is not None and len(query) == 0
        first_ver = query.get("ver")
        assert first_ver

        # Nothing changed since first_ver: an empty result, no roster.
        same = await client.iq("get", roster_query(first_ver), to=None)
        assert same.get("type") == "result"
        assert len(same) == 0

        added = await client.iq(
            "set", roster_set(f"<item jid='carol@{server.domain}' name='Carol'/>"), to=None
        )
        assert added.get("type") == "result"
        push = await client.expect(is_push)
        push_query = push.find(f"{{{ROSTER}}}query")
        assert push_query is not None
        new_ver = push_query.get("ver")
        assert new_ver and new_ver != first_ver
        assert [i.get("jid") for i in push_query] == [f"carol@{server.domain}"]
        client.send(f"<iq type='result' id='{push.get('id')}'/>")

        # Up to date: empty result again; from the old version: the whole new roster.
        assert len(await client.iq("get", roster_query(new_ver), to=None)) == 0
        stale = await client.iq("get", roster_query(first_ver), to=None)
        stale_query = stale.find(f"{{{ROSTER}}}query")
        assert stale_query is not None
        assert stale_query.get("ver") == new_ver
        assert [(i.get("jid"), i.get("name")) for i in stale_query] == [
            (f"carol@{server.domain}", "Carol")
        ]
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("item", "condition"),
    [
        (
            "<item jid='one@{domain}'/><item jid='two@{domain}'/>",
            "bad-request",
        ),
        ("<item jid='{me}'/>", "not-allowed"),
        (
            "<item jid='dup@{domain}'><group>A</group><group>A</group></item>",
            "bad-request",
        ),
        ("<item jid='empty@{domain}'><group></group></item>", "not-acceptable"),
        ("<item jid='missing@{domain}' subscription='remove'/>", "item-not-found"),
    ],
    ids=["two-items", "own-jid", "duplicate-group", "empty-group", "remove-missing"],
)
async def test_bad_roster_set_is_refused(server: XmppdServer, item: str, condition: str) -> None:
    alice = await new_account(server, "bad")
    client = await XmlClient.login(server, alice, PASSWORD)
    try:
        await client.iq("get", roster_query(), to=None)  # interested: would see pushes
        reply = await client.iq(
            "set", roster_set(item.format(domain=server.domain, me=alice)), to=None
        )
        assert reply.get("type") == "error"
        assert error_condition(reply) == condition
        after = await client.iq("get", roster_query(), to=None)
        query = after.find(f"{{{ROSTER}}}query")
        assert query is not None and len(query) == 0, "a refused set changed the roster"
        assert client.pending(is_push) == []
    finally:
        await client.close()


async def test_a_roster_belongs_to_its_owner(server: XmppdServer) -> None:
    alice = await new_account(server, "owner")
    mallory = await new_account(server, "mallory")
    client = await XmlClient.login(server, mallory, PASSWORD)
    try:
        read = await client.iq("get", roster_query(), to=alice)
        write = await client.iq(
            "set", roster_set(f"<item jid='{mallory}' name='Friend'/>"), to=alice
        )
    finally:
        await client.close()
    assert error_condition(read) == "forbidden"
    assert error_condition(write) == "forbidden"
    owner = await online(server, alice)
    try:
        assert await roster_of(owner) == {}
    finally:
        await owner.stop()


async def test_a_roster_set_cannot_grant_a_subscription(server: XmppdServer) -> None:
    """The 'subscription' and 'ask' attributes of a set (other than remove) are ignored."""
    alice = await new_account(server, "cheat")
    bob = await new_account(server, "cheated")
    client = await online(server, alice)
    try:
        iq = client.xmpp.Iq()
        iq["type"] = "set"
        iq["roster"]["items"] = {bob: {"name": "B", "subscription": "both"}}
        iq["roster"].xml.find(f"{{{ROSTER}}}item").set("ask", "subscribe")
        await iq.send(timeout=10)
        assert await roster_of(client) == {bob: Item("none", name="B")}
    finally:
        await client.stop()


async def test_aioxmpp_and_slixmpp_resources_share_roster_changes(server: XmppdServer) -> None:
    alice = await new_account(server, "mixed")
    dave = await new_account(server, "dave")
    eve = await new_account(server, "eve")
    slix = await online(server, alice, resource="slix")
    aio = Aio(server, alice, PASSWORD, resource="aio")
    added: asyncio.Queue[aioxmpp.roster.Item] = asyncio.Queue()
    removed: asyncio.Queue[aioxmpp.roster.Item] = asyncio.Queue()
    aio.roster.on_entry_added.connect(added.put_nowait)
    aio.roster.on_entry_removed.connect(removed.put_nowait)
    await aio.start()
    try:
        # aioxmpp edits, slixmpp sees the push.
        await aio.roster.set_entry(
            aioxmpp.JID.fromstr(dave), name="Dave", add_to_groups={"Climbing"}
        )
        assert await roster_push(slix, dave) == Item(
            "none", name="Dave", groups=frozenset({"Climbing"})
        )
        # slixmpp edits, aioxmpp sees the push.
        await slix.xmpp.update_roster(eve, name="Eve", groups=["Chess"])
        entry = await take(added, lambda i: str(i.jid) == eve)
        assert (entry.name, entry.groups, entry.subscription) == ("Eve", {"Chess"}, "none")
        await slix.xmpp.del_roster_item(dave)
        gone = await take(removed, lambda i: str(i.jid) == dave)
        assert gone.name == "Dave"
        assert set(map(str, aio.roster.items)) == {eve}
    finally:
        await aio.stop()
        await slix.stop()
