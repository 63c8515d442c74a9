"""The cluster on a Redis watched by Sentinel (``redis_mode = "sentinel"``): two xmppd
nodes chat across nodes, the master dies, Sentinel promotes the replica, and the nodes
follow it: chat across nodes works again without restarting anything."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import (
    ClusterNodes,
    SentinelSetup,
    chat_until_delivered,
    redis_sentinel,
    running_cluster,
)

PW = "s3cret-pw"
_names = itertools.count()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterNodes, SentinelSetup]]:
    tmp: Path = tmp_path_factory.mktemp("sentinel")
    with (
        redis_sentinel(tmp / "redis") as sentinel,
        running_cluster(
            tmp,
            nodes=2,
            redis_url=sentinel.url,
            cluster={"redis_mode": "sentinel", "sentinel_service": "xmppd"},
        ) as nodes,
    ):
        yield nodes, sentinel


@pytest.mark.timeout(120)
async def test_nodes_follow_the_master_after_a_failover(
    setup: tuple[ClusterNodes, SentinelSetup],
) -> None:
    cluster, sentinel = setup
    node1, node2 = cluster.nodes
    alice, bob = f"se{next(_names)}", f"se{next(_names)}"
    await register_account(node1, alice, PW)
    await register_account(node1, bob, PW)
    async with (
        Slix(node1, f"{alice}@localhost", PW) as a,
        Slix(node2, f"{bob}@localhost", PW) as b,
    ):
        await asyncio.sleep(0.5)
        a.xmpp.send_message(mto=b.jid, mbody="before the failover", mtype="chat")
        await b.next_message(lambda m: m["body"] == "before the failover")
        sentinel.master.kill()
        sentinel.master.wait()
        # Sentinel notices (1 s), fails over; the nodes reconnect to the new master.
        await chat_until_delivered(a, b, within=60, each=3, what="no chat after the failover")
        b.xmpp.send_message(mto=a.jid, mbody="and back", mtype="chat")
        await a.next_message(lambda m: m["body"] == "and back", timeout=15)
    for node in cluster.nodes:
        assert node.process.poll() is None
