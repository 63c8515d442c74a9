"""Federation from a cluster: one outgoing link per remote domain for the whole
cluster, on the node that rendezvous hashing of the remote domain chooses (users on
every node send through it); stanzas from the remote reach users on any node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ClusterNodes, running_cluster, start_node, wait_live
from tests.support.e2e import PASSWORD, new_account, until_equal
from tests.support.s2s import metric, s2s_extra, wait_port
from tests.support.server import XmppdServer, free_port, running_server
from tests.support.server import _stop as stop
from tests.support.xmlclient import XmlClient, tag
from xmppd.cluster.membership import rendezvous_owner

A, B = "a.example", "b.example"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[ClusterNodes, XmppdServer]]:
    """A two-node cluster serving a.example, each node with an s2s listener, and a
    single server b.example that reaches a.example through the first node."""
    a_ports = [free_port(), free_port()]
    pb = free_port()
    with (
        running_server(
            tmp_path / "b",
            domain=B,
            http=True,
            extra=s2s_extra(pb, {A: f"127.0.0.1:{a_ports[0]}"}),
        ) as b,
        running_cluster(
            tmp_path / "a",
            nodes=2,
            domain=A,
            http=True,
            node_extra=lambda i: s2s_extra(a_ports[i], {B: f"127.0.0.1:{pb}"}),
        ) as cluster,
    ):
        for port in (*a_ports, pb):
            wait_port(port)
        yield cluster, b


def is_message(body: str) -> object:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def test_one_outgoing_link_per_remote_domain(
    federation: tuple[ClusterNodes, XmppdServer],
) -> None:
    cluster, b = federation
    owner = ("node1", "node2").index(rendezvous_owner(B, ("node1", "node2")))
    users = [await new_account(node, "fed") for node in cluster.nodes]
    remote = await new_account(b, "far")
    far = await XmlClient.login(b, remote, PASSWORD, resource="r")
    clients: list[XmlClient] = []
    try:
        for node, jid in zip(cluster.nodes, users, strict=True):
            clients.append(await XmlClient.login(node, jid, PASSWORD, resource="r"))
        for i, client in enumerate(clients):
            client.send(f"<message to='{remote}/r' type='chat'><body>hi {i}</body></message>")
            await far.expect(is_message(f"hi {i}"), timeout=30)
        # Back to users on both nodes, through whichever node the remote reached.
        for i, jid in enumerate(users):
            far.send(f"<message to='{jid}/r' type='chat'><body>back {i}</body></message>")
            await clients[i].expect(is_message(f"back {i}"), timeout=30)
        sent = [await metric(node, "s2s_stanzas_out_total", domain=B) for node in cluster.nodes]
        assert sent[owner] >= 2
        assert sent[1 - owner] == 0
        # b saw one incoming stream from a.example: one link for the whole cluster.
        assert await metric(b, "s2s_streams_authenticated_total", direction="in", domain=A) == 1
    finally:
        for client in (*clients, far):
            await client.close()


async def gauge(server: XmppdServer, name: str) -> float:
    """An unlabelled gauge of ``/metrics``."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f"xmppd_{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_the_link_moves_with_its_owner(
    federation: tuple[ClusterNodes, XmppdServer],
) -> None:
    """The owner of the remote domain stops: the other node opens its own link; the
    owner comes back: the other node closes its link and sends through the owner."""
    cluster, b = federation
    owner = ("node1", "node2").index(rendezvous_owner(B, ("node1", "node2")))
    owner_node, other = cluster.nodes[owner], cluster.nodes[1 - owner]
    user = await new_account(other, "fed")
    remote = await new_account(b, "far")
    far = await XmlClient.login(b, remote, PASSWORD, resource="r")
    client = await XmlClient.login(other, user, PASSWORD, resource="r")
    try:
        client.send(f"<message to='{remote}/r' type='chat'><body>first</body></message>")
        await far.expect(is_message("first"), timeout=30)
        assert await gauge(owner_node, "s2s_outgoing_links") == 1
        assert await gauge(other, "s2s_outgoing_links") == 0

        stop(owner_node.process)
        wait_live([other])
        client.send(f"<message to='{remote}/r' type='chat'><body>alone</body></message>")
        await far.expect(is_message("alone"), timeout=30)
        assert await gauge(other, "s2s_outgoing_links") == 1

        start_node(owner_node)
        wait_live(cluster.nodes)

        async def other_links() -> float:
            return await gauge(other, "s2s_outgoing_links")

        await until_equal(other_links, 0)
        client.send(f"<message to='{remote}/r' type='chat'><body>again</body></message>")
        await far.expect(is_message("again"), timeout=30)
        assert await gauge(owner_node, "s2s_outgoing_links") == 1
        assert await gauge(other, "s2s_outgoing_links") == 0
    finally:
        await client.close()
        await far.close()
