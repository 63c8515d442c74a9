"""Redis comes back with its data after an outage longer than ``node_timeout`` (as after
a Sentinel failover, or a restart from its snapshot): every heartbeat in it has
expired. The node that reconnects first must not take the other for dead before that
one has had its chance to beat again: a message for a user of the other node, sent in
that moment, reaches the user live (it waits in the other node's inbox), instead of
going to offline storage while its recipient is online."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, RedisProcess, own_redis, running_cluster, until

PW = "comeback-pw"
TIMEOUT = 6.0
_names = itertools.count()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[RedisProcess]:
    (tmp_path / "redis").mkdir()
    with own_redis(tmp_path / "redis") as process:
        yield process


@pytest.fixture
def cluster(tmp_path: Path, own: RedisProcess) -> Iterator[ClusterNodes]:
    with running_cluster(tmp_path, nodes=2, redis_url=own.url, node_timeout=TIMEOUT) as nodes:
        yield nodes


def restart_keeping_data(own: RedisProcess, down_for: float) -> None:
    """Stop Redis after writing its snapshot, stay down ``down_for`` s, start it again
    from the snapshot (keys carry absolute expiry times: the heartbeats are gone)."""
    client = redis.Redis(host="127.0.0.1", port=own.port)
    try:
        client.shutdown(save=True)
    except redis.ConnectionError:
        pass  # it closes the connection as it goes
    finally:
        client.close()
    assert own.process is not None
    own.process.wait(10)
    own.process = None
    time.sleep(down_for)
    own.start()


@pytest.mark.timeout(120)
async def test_a_message_sent_while_the_other_node_reconnects_arrives_live(
    cluster: ClusterNodes, own: RedisProcess
) -> None:
    node1, node2 = cluster.nodes
    alice, bob = f"cb{next(_names)}", f"cb{next(_names)}"
    await register_account(node1, alice, PW)
    await register_account(node1, bob, PW)
    async with (
        Slix(node1, f"{alice}@localhost", PW) as a,
        Slix(node2, f"{bob}@localhost", PW) as b,
    ):
        await asyncio.sleep(0.5)
        b.xmpp.send_message(mto=a.jid, mbody="before the outage", mtype="chat")
        await a.next_message(lambda m: m["body"] == "before the outage")

        # Node 1 is held back (a slow reconnect: stopped here) so that node 2 is
        # surely back first and finds node 1's heartbeat expired.
        os.kill(node1.process.pid, signal.SIGSTOP)
        try:
            await asyncio.to_thread(restart_keeping_data, own, TIMEOUT + 1.0)
            client = redis.Redis(host="127.0.0.1", port=own.port)
            try:
                await until(
                    lambda: bool(client.exists(f"{cluster.prefix}:alive:node2")),
                    timeout=20,
                    what="node 2 did not beat again",
                )
                assert not client.exists(f"{cluster.prefix}:alive:node1")
            finally:
                client.close()
            # Node 2 reads the members right after its beat; node 1 must still be
            # stopped well before node 2's wait of a node_timeout ends.
            await asyncio.sleep(0.5)
            b.xmpp.send_message(mto=a.jid, mbody="while node 1 reconnects", mtype="chat")
            await asyncio.sleep(0.5)
        finally:
            os.kill(node1.process.pid, signal.SIGCONT)

        got = await a.next_message(lambda m: m["body"] == "while node 1 reconnects", timeout=15)
        assert got["from"].bare == b.xmpp.boundjid.bare
        a.xmpp.send_message(mto=b.jid, mbody="and back", mtype="chat")
        await b.next_message(lambda m: m["body"] == "and back", timeout=15)
    assert "is dead" not in node1.log_text() + node2.log_text()
    for node in cluster.nodes:
        assert node.process.poll() is None
