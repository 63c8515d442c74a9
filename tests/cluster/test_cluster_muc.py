"""Group chat in a cluster: each room lives on the node chosen by rendezvous hashing
of its JID, whatever node its occupants are connected to; when that node dies the room
comes back on a survivor from storage (its archive with it), and when a node joins,
the rooms it owns move to it (their occupants are told, status 332)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lxml import etree

from tests.e2e.test_muc import closing, login
from tests.e2e.test_muc_archive import forwarded_body, mam_query
from tests.support.cluster import ClusterNodes, running_cluster, start_node
from tests.support.e2e import until_equal
from tests.support.muc import (
    DISCO_ITEMS,
    MUC_ADMIN,
    admin_set,
    body,
    codes,
    groupchat,
    instant_room,
    is_from,
    join,
    next_groupchat,
    submit_config,
    user_in_room,
)
from tests.support.xmlclient import Element, XmlClient, error_condition, tag
from xmppd.cluster.membership import rendezvous_owner

NODES = ("node1", "node2")
PERSISTENT = {"muc#roomconfig_persistentroom": "1"}
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path_factory.mktemp("muc-cluster"), nodes=2) as nodes:
        yield nodes


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    """A cluster of its own, for a test that kills a node."""
    with running_cluster(tmp_path, nodes=2) as nodes:
        yield nodes


def room_on(node: str, domain: str = "localhost") -> str:
    """A fresh room JID that rendezvous hashing places on ``node`` (of both nodes)."""
    while True:
        room = f"placed{next(_names)}@conference.{domain}"
        if rendezvous_owner(room, NODES) == node:
            return room


async def persistent_room(owner: XmlClient, room: str) -> None:
    joined = await join(owner, room, "owner")
    assert {"110", "201"} <= codes(joined.self_presence)
    reply = await submit_config(owner, room, PERSISTENT)
    assert reply.get("type") == "result", etree.tostring(reply)


async def self_ping(client: XmlClient, room: str, nick: str, timeout: float = 10) -> Element:
    """XEP-0410: ping one's own occupant JID."""
    return await client.iq(
        "get", "<ping xmlns='urn:xmpp:ping'/>", to=f"{room}/{nick}", timeout=timeout
    )


def unavailable_from(room: str, nick: str) -> Callable[[Element], bool]:
    def match(el: Element) -> bool:
        return bool(el.get("from") == f"{room}/{nick}" and el.get("type") == "unavailable")

    return match


def unavailable_332(room: str, nick: str) -> Callable[[Element], bool]:
    def match(el: Element) -> bool:
        return bool(
            el.tag == tag("presence")
            and el.get("from") == f"{room}/{nick}"
            and el.get("type") == "unavailable"
            and {"110", "332"} <= codes(el)
        )

    return match


@pytest.mark.parametrize("owner_index", [0, 1])
async def test_occupants_on_both_nodes_share_one_room(
    cluster: ClusterNodes, owner_index: int
) -> None:
    """Whichever node holds the room, occupants joining through either node are in the
    same room: presence, groupchat messages both ways, history for a later joiner."""
    room = room_on(NODES[owner_index])
    a_node, b_node = cluster.nodes
    owner, _, _ = await user_in_room(a_node, room, "owner", prefix="own")
    async with closing(owner):
        assert (await instant_room(owner, room)).get("type") == "result"
        bob, joined, _ = await user_in_room(b_node, room, "bob")
        async with closing(bob):
            assert joined.nicks == {"owner"}
            await owner.expect(is_from(room, "bob"))
            await groupchat(owner, room, "from node one")
            await next_groupchat(bob, room, "from node one")
            await next_groupchat(owner, room, "from node one")
            await groupchat(bob, room, "from node two")
            await next_groupchat(owner, room, "from node two")
            await next_groupchat(bob, room, "from node two")
            carol, joined, _ = await user_in_room(a_node, room, "carol")
            async with closing(carol):
                assert joined.nicks == {"owner", "bob"}
                assert [body(m) for m in joined.history] == ["from node one", "from node two"]
                # XEP-0410 through both nodes: still in the room.
                assert (await self_ping(bob, room, "bob")).get("type") == "result"
                assert (await self_ping(carol, room, "carol")).get("type") == "result"


async def listed_rooms(client: XmlClient) -> set[str]:
    reply = await client.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to="conference.localhost")
    assert reply.get("type") == "result", etree.tostring(reply)
    return {i.get("jid", "") for i in reply.iter(f"{{{DISCO_ITEMS}}}item")}


async def test_public_rooms_are_listed_by_every_node(cluster: ClusterNodes) -> None:
    """disco#items of the service lists the public rooms through both nodes, whichever
    node holds them: persistent ones (stored) and temporary ones (announced by their
    node while they exist)."""
    persistent = [room_on("node1"), room_on("node2")]
    temporary = [room_on("node1"), room_on("node2")]
    client, _ = await login(cluster.nodes[0], "lst")
    askers = [(await login(node, "lst"))[0] for node in cluster.nodes]
    async with closing(client, *askers):
        for room in persistent:
            await persistent_room(client, room)
        for room in temporary:
            await join(client, room, "owner")
            assert (await instant_room(client, room)).get("type") == "result"
        for asker in askers:
            listed = await listed_rooms(asker)
            assert set(persistent + temporary) <= listed, listed
        # The temporary rooms vanish with their last occupant, from both lists (their
        # node withdraws them right after the room handled the leave).
        for room in temporary:
            client.send(f"<presence to='{room}/owner' type='unavailable'/>")
            await client.expect(unavailable_from(room, "owner"))
        for asker in askers:

            async def temporary_listed(asker: XmlClient = asker) -> set[str]:
                return set(temporary) & await listed_rooms(asker)

            await until_equal(temporary_listed, set())
            assert set(persistent) <= await listed_rooms(asker)


async def test_a_removed_account_leaves_rooms_on_every_node(cluster: ClusterNodes) -> None:
    """An account removed through one node loses its affiliation in a room held in
    memory by the other node (the removal is told to every node)."""
    room = room_on("node1")
    owner, _, _ = await user_in_room(cluster.nodes[0], room, "owner", prefix="own")
    async with closing(owner):
        await submit_config(owner, room, PERSISTENT)
        leaver, leaver_jid = await login(cluster.nodes[1], "gone")
        async with closing(leaver):
            item = f"<item affiliation='member' jid='{leaver_jid}'/>"
            assert (await admin_set(owner, room, item)).get("type") == "result"
            assert leaver_jid in await members(owner, room)
            reply = await leaver.iq(
                "set", "<query xmlns='jabber:iq:register'><remove/></query>", to=None
            )
            assert reply.get("type") == "result", etree.tostring(reply)

        async def still_member() -> bool:
            return leaver_jid in await members(owner, room)

        await until_equal(still_member, False)


async def members(client: XmlClient, room: str) -> set[str]:
    reply = await client.iq(
        "get", f"<query xmlns='{MUC_ADMIN}'><item affiliation='member'/></query>", to=room
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    return {i.get("jid", "") for i in reply.iter(f"{{{MUC_ADMIN}}}item")}


async def test_a_room_comes_back_on_a_survivor_and_moves_back(
    fresh_cluster: ClusterNodes,
) -> None:
    """kill -9 of the node holding a persistent room: the room comes back on the
    survivor with its archive (MAM, history on join); occupants notice with a self-ping
    (not-acceptable: not an occupant, XEP-0410) and join again. When the node comes
    back the room moves back to it: its occupants are told (332) and join again."""
    cluster = fresh_cluster
    doomed, survivor = cluster.nodes
    room = room_on("node1")
    owner, _, _ = await user_in_room(survivor, room, "owner", prefix="own")
    bob: XmlClient | None = None
    lost: XmlClient | None = None
    try:
        assert (await submit_config(owner, room, PERSISTENT)).get("type") == "result"
        bob, _, _ = await user_in_room(survivor, room, "bob")
        lost, _, _ = await user_in_room(doomed, room, "lost")
        temporary = room_on("node1")
        await join(bob, temporary, "bob")
        assert (await instant_room(bob, temporary)).get("type") == "result"
        for text in ("one", "two"):
            await groupchat(owner, room, text)
            await next_groupchat(bob, room, text)
            await next_groupchat(lost, room, text)

        doomed.process.kill()
        doomed.process.wait()
        await lost.wait_closed()
        # The survivor calls node1 dead after node_timeout (3 s), reaps it, and
        # handles what its inbox held: the ping waits that long, then fails.
        reply = await self_ping(bob, room, "bob", timeout=20)
        assert reply.get("type") == "error"
        assert error_condition(reply) == "not-acceptable"
        # A temporary room is gone with its node: not an occupant either (XEP-0410
        # reads item-not-found as "still joined under another nick").
        reply = await self_ping(bob, temporary, "bob")
        assert error_condition(reply) == "not-acceptable"
        # Joining again: the room is loaded from storage with its archive.
        rejoined = await join(bob, room, "bob")
        assert [body(m) for m in rejoined.history] == ["one", "two"]
        await join(owner, room, "owner")
        await bob.expect(is_from(room, "owner"))
        await groupchat(owner, room, "three")
        await next_groupchat(bob, room, "three")
        reply, results = await mam_query(bob, room)
        assert reply.get("type") == "result", etree.tostring(reply)
        assert [forwarded_body(r) for r in results] == ["one", "two", "three"]

        # node1 comes back: the room is its own again; the survivor lets it go and
        # tells its occupants, who join again on node1.
        start_node(doomed)
        await bob.expect(unavailable_332(room, "bob"), timeout=20)
        await owner.expect(unavailable_332(room, "owner"))
        rejoined = await join(bob, room, "bob")
        assert [body(m) for m in rejoined.history] == ["one", "two", "three"]
        assert (await self_ping(bob, room, "bob")).get("type") == "result"
        reply = await self_ping(owner, room, "owner")
        assert error_condition(reply) == "not-acceptable"
    finally:
        for client in (owner, bob, lost):
            if client is not None:
                await client.close()
