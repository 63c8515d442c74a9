"""An error from Redis that is not an outage (here: the member list overwritten with a
value of the wrong type, as an operator's stray command or another program sharing
the key prefix would do) must not stop a node's heartbeat. A node that stops beating is
taken for dead by the others while it still serves its users; both nodes log the error
once, keep beating, and are members again as soon as the key is usable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster, until

PW = "fault-pw"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path, nodes=2) as nodes:
        yield nodes


def _status(cluster: ClusterNodes) -> dict[str, dict[str, object]]:
    done = cluster.nodes[1].cli("cluster", "status", "--json")
    assert done.returncode == 0, done.stderr
    return {n["node"]: n for n in json.loads(done.stdout)["nodes"]}


@pytest.mark.timeout(120)
async def test_a_member_list_of_the_wrong_type_does_not_stop_the_heartbeat(
    cluster: ClusterNodes,
) -> None:
    node1, node2 = cluster.nodes
    await register_account(node1, "fa1", PW)
    await register_account(node1, "fa2", PW)
    async with (
        Slix(node1, "fa1@localhost", PW) as a,
        Slix(node2, "fa2@localhost", PW) as b,
    ):
        client = redis.Redis.from_url(cluster.redis_url)
        members = f"{cluster.prefix}:nodes"
        try:
            client.delete(members)
            client.set(members, "not a hash")
            # Longer than node_timeout (3 s): a node whose heartbeat task ended at the
            # first error has no heartbeat key left by now.
            await asyncio.sleep(4.5)
        finally:
            client.delete(members)
            client.close()

        await until(
            lambda: (
                all(n["live"] for n in _status(cluster).values())
                and set(_status(cluster)) == {"node1", "node2"}
            ),
            timeout=10,
            what="the nodes did not come back as live members",
        )
        assert "heartbeat step failed" in node2.log_text()
        status = _status(cluster)
        for name, node in status.items():
            assert 0 <= float(str(node["heartbeat_age"])) < 3.0, name
        assert "the heartbeat works again" in node1.log_text()
        # Logged once, not at every beat of the broken period.
        assert node1.log_text().count("heartbeat step failed") == 1

        b.xmpp.send_message(mto=a.jid, mbody="still here", mtype="chat")
        await a.next_message(lambda m: m["body"] == "still here", timeout=10)
        a.xmpp.send_message(mto=b.jid, mbody="me too", mtype="chat")
        await b.next_message(lambda m: m["body"] == "me too", timeout=10)
    assert "is dead" not in node1.log_text() + node2.log_text()
    for node in cluster.nodes:
        assert node.process.poll() is None
