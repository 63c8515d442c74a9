"""The session map in a Redis Cluster (three masters started by the test with
``redis-cli --cluster create``, ``[cluster] redis_mode = "cluster"``): two xmppd nodes
see each other's sessions, chat and exchange presence, and a resource bound on the
other node replaces the first."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, redis_cluster, running_cluster

PW = "s3cret-pw"
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    tmp: Path = tmp_path_factory.mktemp("on-redis-cluster")
    with (
        redis_cluster(tmp / "redis") as url,
        running_cluster(tmp, nodes=2, redis_url=url, cluster={"redis_mode": "cluster"}) as nodes,
    ):
        yield nodes


async def test_chat_and_presence_over_a_redis_cluster(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    alice, bob = f"rc{next(_names)}", f"rc{next(_names)}"
    await register_account(node1, alice, PW)
    await register_account(node1, bob, PW)
    async with (
        Slix(node1, f"{alice}@localhost", PW) as a,
        Slix(node2, f"{bob}@localhost", PW) as b,
    ):
        a.xmpp.auto_authorize = b.xmpp.auto_authorize = True
        a.xmpp.auto_subscribe = b.xmpp.auto_subscribe = True
        await asyncio.sleep(0.3)
        a.xmpp.send_message(mto=f"{bob}@localhost", mbody="over the cluster", mtype="chat")
        got = await b.next_message(lambda m: m["body"] == "over the cluster")
        assert got["from"] == a.xmpp.boundjid
        a.xmpp.send_presence(pto=f"{bob}@localhost", ptype="subscribe")
        seen = await a.next_presence(
            lambda p: p["type"] == "available" and p["from"].bare == f"{bob}@localhost",
            timeout=15,
        )
        assert seen["from"] == b.xmpp.boundjid
        await b.stop()
        await a.next_presence(
            lambda p: p["type"] == "unavailable" and p["from"].bare == f"{bob}@localhost"
        )
