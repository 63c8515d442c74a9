"""Two xmppd nodes as one cluster (shared PostgreSQL and Redis): users on different
nodes chat, see each other's presence, and survive the loss of a node."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.server import XmppdServer

_counter = itertools.count()
PW = "s3cret-pw"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    tmp: Path = tmp_path_factory.mktemp("cluster")
    with running_cluster(tmp, nodes=2) as nodes:
        yield nodes


async def new_user(server: XmppdServer) -> str:
    name = f"c{next(_counter)}"
    await register_account(server, name, PW)
    return f"{name}@{server.domain}"


def on_node(cluster: ClusterNodes, index: int) -> XmppdServer:
    """Connect straight to one node (bypassing the front)."""
    return cluster.nodes[index]


async def befriend(a: Slix, b: Slix) -> None:
    """Mutual presence subscription (both auto-accept in slixmpp)."""
    a.xmpp.send_presence(pto=b.xmpp.boundjid.bare, ptype="subscribe")
    await b.next_presence(
        lambda p: p["type"] == "available" and p["from"].bare == a.xmpp.boundjid.bare, timeout=15
    )


async def test_chat_between_nodes(cluster: ClusterNodes) -> None:
    alice, bob = await new_user(cluster.front), await new_user(cluster.front)
    async with (
        Slix(on_node(cluster, 0), alice, PW) as a,
        Slix(on_node(cluster, 1), bob, PW) as b,
    ):
        await asyncio.sleep(0.3)  # the nodes learn of each other's sessions
        a.xmpp.send_message(mto=bob, mbody="hello bare", mtype="chat")
        got = await b.next_message(lambda m: m["body"] == "hello bare")
        assert got["from"] == a.xmpp.boundjid
        b.xmpp.send_message(mto=a.jid, mbody="hello full", mtype="chat")
        got = await a.next_message(lambda m: m["body"] == "hello full")
        assert got["from"] == b.xmpp.boundjid
        for i in range(50):
            a.xmpp.send_message(mto=b.jid, mbody=f"n{i}", mtype="chat")
        order = [
            (await b.next_message(lambda m: m["body"].startswith("n")))["body"] for _ in range(50)
        ]
        assert order == [f"n{i}" for i in range(50)]
