"""The PubSub service in a cluster: the whole service (its cached node configurations,
its per-node locks) lives on the node that rendezvous hashing of its domain chooses,
so what one node's client creates, another node's client finds and subscribes to, and
a publication reaches subscribers on every node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lxml import etree

from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.e2e import new_account, until_equal
from tests.support.pep import DISCO_ITEMS, close, entry, login, publish
from tests.support.pubsub import create, entries, from_service, subscribe
from tests.support.server import DEFAULT_TEST_MODULES
from tests.support.xmlclient import error_condition
from xmppd.cluster.membership import rendezvous_owner

SERVICE = "pubsub.localhost"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    modules = {**DEFAULT_TEST_MODULES, "pubsub": {}}
    with running_cluster(
        tmp_path_factory.mktemp("pubsub-cluster"), nodes=2, modules=modules
    ) as nodes:
        yield nodes


async def test_subscribers_on_both_nodes_get_a_publication(cluster: ClusterNodes) -> None:
    owner = rendezvous_owner(SERVICE, ("node1", "node2"))
    alice_jid = await new_account(cluster.nodes[0], "ps")
    bob_jid = await new_account(cluster.nodes[1], "ps")
    alice = await login(cluster.nodes[0], alice_jid)
    bob = await login(cluster.nodes[1], bob_jid)
    try:
        # Both nodes look at the service first (a node that answered on its own would
        # now hold a cached, empty list of nodes).
        for client in (alice, bob):
            reply = await client.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=SERVICE)
            assert reply.get("type") == "result", etree.tostring(reply)
        reply = await create(alice, SERVICE, "news")
        assert reply.get("type") == "result", etree.tostring(reply)
        for client in (bob, alice):
            reply = await subscribe(client, SERVICE, "news")
            assert reply.get("type") == "result", (owner, etree.tostring(reply))
        reply = await publish(alice, "news", entry("hello"), item_id="i1", to=SERVICE)
        assert reply.get("type") == "result", etree.tostring(reply)
        for client in (alice, bob):
            event = await client.expect(from_service(SERVICE, "news"))
            assert entries(event) == [("i1", "hello")]
        reply = await bob.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=SERVICE)
        assert "news" in {i.get("node") for i in reply.iter(f"{{{DISCO_ITEMS}}}item")}
    finally:
        await close(alice, bob)


async def test_nodes_of_a_removed_account_are_gone_on_every_node(cluster: ClusterNodes) -> None:
    """An account removed through the node that does not hold the service takes its
    nodes with it; the node holding the service forgets them too (it caches nodes)."""
    owner = ("node1", "node2").index(rendezvous_owner(SERVICE, ("node1", "node2")))
    other = cluster.nodes[1 - owner]
    alice_jid = await new_account(other, "ps")
    bob_jid = await new_account(cluster.nodes[owner], "ps")
    alice = await login(other, alice_jid)
    try:
        bob = await login(cluster.nodes[owner], bob_jid)
        try:
            assert (await create(alice, SERVICE, "doomed")).get("type") == "result"
            assert (await subscribe(bob, SERVICE, "doomed")).get("type") == "result"
            reply = await alice.iq(
                "set", "<query xmlns='jabber:iq:register'><remove/></query>", to=None
            )
            assert reply.get("type") == "result", etree.tostring(reply)

            async def subscribing() -> object:
                return error_condition(await subscribe(bob, SERVICE, "doomed"))

            await until_equal(subscribing, "item-not-found")
        finally:
            await close(bob)
    finally:
        await close(alice)
