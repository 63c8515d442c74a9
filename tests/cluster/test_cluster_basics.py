"""Two xmppd nodes as one cluster (shared PostgreSQL and Redis): users on different
nodes chat, see each other's presence, and survive the loss of a node."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster, start_node
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient, tag

PRESENCE, MESSAGE, BODY = tag("presence"), tag("message"), tag("body")

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


async def test_presence_between_nodes(cluster: ClusterNodes) -> None:
    alice, bob = await new_user(cluster.front), await new_user(cluster.front)
    async with (
        Slix(on_node(cluster, 0), alice, PW) as a,
        Slix(on_node(cluster, 1), bob, PW) as b,
    ):
        a.xmpp.auto_authorize = b.xmpp.auto_authorize = True
        a.xmpp.auto_subscribe = b.xmpp.auto_subscribe = True
        a.xmpp.send_presence(pto=bob, ptype="subscribe")
        await a.next_presence(
            lambda p: p["type"] == "available" and p["from"].bare == bob, timeout=15
        )
        await b.next_presence(
            lambda p: p["type"] == "available" and p["from"].bare == alice, timeout=15
        )
        b.xmpp.send_presence(pstatus="busy", pshow="dnd")
        got = await a.next_presence(lambda p: p["from"].bare == bob and p["show"] == "dnd")
        assert got["status"] == "busy"
        await b.stop()
        gone = await a.next_presence(lambda p: p["from"].bare == bob and p["type"] == "unavailable")
        assert gone["from"].resource


async def test_same_account_on_both_nodes(cluster: ClusterNodes) -> None:
    """A message to the bare JID reaches both resources (equal priority), wherever
    they are; a resource bound again on the other node replaces the first session."""
    alice, bob = await new_user(cluster.front), await new_user(cluster.front)
    async with (
        Slix(on_node(cluster, 0), bob, PW) as b1,
        Slix(on_node(cluster, 1), bob, PW) as b2,
        Slix(on_node(cluster, 0), alice, PW) as a,
    ):
        await asyncio.sleep(0.3)
        a.xmpp.send_message(mto=bob, mbody="to both", mtype="chat")
        await b1.next_message(lambda m: m["body"] == "to both")
        await b2.next_message(lambda m: m["body"] == "to both")


async def test_resource_conflict_across_nodes(cluster: ClusterNodes) -> None:
    bob = await new_user(cluster.front)
    first = Slix(on_node(cluster, 0), bob + "/phone", PW)
    await first.start()
    try:
        await asyncio.sleep(0.3)
        async with Slix(on_node(cluster, 1), bob + "/phone", PW) as second:
            assert second.jid == bob + "/phone"
            deadline = asyncio.get_running_loop().time() + 10
            while first.xmpp.transport is not None and not first.xmpp.transport.is_closing():
                assert asyncio.get_running_loop().time() < deadline, "old session not closed"
                await asyncio.sleep(0.1)
    finally:
        await first.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    """A cluster for one test that stops or kills nodes."""
    from tests.support.server import DEFAULT_TEST_MODULES

    modules = {**DEFAULT_TEST_MODULES, "offline": {}}
    with running_cluster(tmp_path, nodes=2, modules=modules) as nodes:
        yield nodes


async def test_node_killed_its_sessions_end_for_everyone(own_cluster: ClusterNodes) -> None:
    """kill -9 of a node: the survivor removes its sessions (contacts see them go
    unavailable) and messages to them go to offline storage."""
    cluster = own_cluster
    alice, bob = await new_user(cluster.front), await new_user(cluster.front)
    async with Slix(on_node(cluster, 0), alice, PW) as a:
        a.xmpp.auto_authorize = a.xmpp.auto_subscribe = True
        b = Slix(on_node(cluster, 1), bob, PW)
        b.xmpp.auto_authorize = b.xmpp.auto_subscribe = True
        await b.start()
        a.xmpp.send_presence(pto=bob, ptype="subscribe")
        await a.next_presence(
            lambda p: p["type"] == "available" and p["from"].bare == bob, timeout=15
        )
        cluster.nodes[1].process.kill()
        cluster.nodes[1].process.wait()
        gone = await a.next_presence(
            lambda p: p["from"].bare == bob and p["type"] == "unavailable", timeout=20
        )
        assert gone["from"].resource
        if b.xmpp.transport is not None:
            b.xmpp.transport.abort()
        a.xmpp.send_message(mto=bob, mbody="while you were away", mtype="chat")
        await asyncio.sleep(0.5)
        start_node(cluster.nodes[1])
        async with Slix(on_node(cluster, 1), bob, PW) as b_again:
            got = await b_again.next_message(lambda m: m["body"] == "while you were away")
            assert got["from"].bare == alice


def local_ports(pid: int) -> set[int]:
    """The local ports of process ``pid``'s TCP sockets (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def cut_log_tail(node: XmppdServer, redis_url: str, stop: asyncio.Event) -> int:
    """Until ``stop``: close, every few milliseconds, the Redis connection on which
    ``node`` waits for the session log (its view of the other nodes then lags by up
    to the half second it waits before reading again). How many were closed."""
    redis = Redis.from_url(redis_url)
    closed = 0
    try:
        while not stop.is_set():
            ports = local_ports(node.process.pid)
            for client in await redis.client_list():
                port = int(client["addr"].rsplit(":", 1)[1])
                if client["cmd"] == "xread" and "b" in client["flags"] and port in ports:
                    await redis.client_kill_filter(_id=client["id"])
                    closed += 1
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()
    return closed


async def message_at_once(cluster: ClusterNodes, body: str) -> None:
    """Bob comes online on node 2; Alice, on node 1, sends him ``body`` as soon as he
    has seen his own presence: he gets it."""
    alice, bob = await new_user(cluster.front), await new_user(cluster.front)
    async with await XmlClient.login(on_node(cluster, 0), alice, PW, resource="a") as a:
        await asyncio.sleep(0.6)  # a cut tail is current again before Bob comes
        async with await XmlClient.login(on_node(cluster, 1), bob, PW, resource="b") as b:
            b.send("<presence/>")
            await b.expect(lambda el: el.tag == PRESENCE and el.get("from") == b.jid)
            a.send(f"<message to='{bob}' type='chat'><body>{body}</body></message>")
            got = await b.expect(lambda el: el.findtext(BODY) == body)
            assert got.get("from") == a.jid
            assert a.pending(lambda el: el.tag == MESSAGE) == []


async def test_a_contact_online_a_moment_ago_on_another_node_is_not_offline(
    cluster: ClusterNodes,
) -> None:
    """Node 1 follows node 2's sessions late (its tail of the session log is cut
    again and again): a message sent the moment the contact saw their own presence on
    node 2 reaches them anyway, each of three times; nothing goes to offline storage
    or bounces."""
    stop = asyncio.Event()
    cutter = asyncio.create_task(cut_log_tail(cluster.nodes[0], cluster.redis_url, stop))
    try:
        for round_ in range(3):
            await message_at_once(cluster, f"now {round_}")
    finally:
        stop.set()
        closed = await cutter
    assert closed > 0, "the log tail was never cut: the test did not test anything"
