"""Redis goes away (killed: it comes back empty) while a cluster serves chats: no node
crashes, chats within a node go on, the nodes report not-ready, and messages between
nodes sent meanwhile are delivered once Redis is back — exactly once and in order —
when the outage is shorter than ``[cluster] outage_hold``, and bounce to their sender
with an error when it is longer."""

from __future__ import annotations

import asyncio
import itertools
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, RedisProcess, own_redis, running_cluster, until
from tests.support.server import XmppdServer

PW = "s3cret-pw"
HOLD = 14.0
_names = itertools.count()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with own_redis(tmp_path_factory.mktemp("redis")) as process:
        yield process


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisProcess
) -> Iterator[ClusterNodes]:
    with running_cluster(
        tmp_path_factory.mktemp("cluster-outage"),
        nodes=2,
        redis_url=redis.url,
        http=True,
        cluster={"outage_hold": f"{HOLD:g}s"},
    ) as nodes:
        yield nodes


def ready(node: XmppdServer) -> bool:
    try:
        with urllib.request.urlopen(node.http_url + "/health/ready", timeout=5) as reply:
            return bool(reply.status == 200)
    except urllib.error.HTTPError:
        return False


async def user(node: XmppdServer) -> str:
    name = f"ro{next(_names)}"
    await register_account(node, name, PW)
    return f"{name}@localhost"


@pytest.mark.timeout(180)
async def test_outage_shorter_then_longer_than_the_hold(
    cluster: ClusterNodes, redis: RedisProcess
) -> None:
    node1, node2 = cluster.nodes
    alice, bob, carol = await user(node1), await user(node1), await user(node2)
    async with (
        Slix(node1, alice, PW) as a,
        Slix(node1, bob, PW) as b,
        Slix(node2, carol, PW) as c,
    ):
        await asyncio.sleep(0.5)
        a.xmpp.send_message(mto=c.jid, mbody="before", mtype="chat")
        await c.next_message(lambda m: m["body"] == "before")
        assert ready(node1) and ready(node2)

        # Outage 1: 10 s, shorter than the hold.
        redis.stop()
        await until(lambda: not ready(node1) and not ready(node2))
        for i in range(20):
            a.xmpp.send_message(mto=c.jid, mbody=f"held {i}", mtype="chat")
        a.xmpp.send_message(mto=bob, mbody="local while down", mtype="chat")
        got = await b.next_message(lambda m: m["body"] == "local while down")
        assert got["from"] == a.xmpp.boundjid
        await asyncio.sleep(9)
        assert c.messages.qsize() == 0 or all(
            not m["body"].startswith("held")
            for m in list(c.messages._queue)  # type: ignore[attr-defined]
        )
        redis.start()
        bodies = [
            (await c.next_message(lambda m: m["body"].startswith("held"), timeout=30))["body"]
            for _ in range(20)
        ]
        assert bodies == [f"held {i}" for i in range(20)]
        await until(lambda: ready(node1) and ready(node2))
        # Nothing twice.
        await asyncio.sleep(1)
        assert not any(m["body"].startswith("held") for m in list(c.messages._queue))  # type: ignore[attr-defined]
        # The cluster works as before: both ways, after Redis came back empty.
        c.xmpp.send_message(mto=a.jid, mbody="after", mtype="chat")
        await a.next_message(lambda m: m["body"] == "after")

        # Outage 2: longer than the hold: the sender gets an error back.
        redis.stop()
        await until(lambda: not ready(node1))
        a.xmpp.send_message(mto=c.jid, mbody="too long", mtype="chat")
        await asyncio.sleep(HOLD + 3)
        redis.start()
        bounced = await a.next_message(lambda m: m["type"] == "error", timeout=30)
        assert bounced["error"]["condition"] == "recipient-unavailable"
        await until(lambda: ready(node1) and ready(node2))
        await asyncio.sleep(1)
        assert not any(m["body"] == "too long" for m in list(c.messages._queue))  # type: ignore[attr-defined]
        for node in cluster.nodes:
            assert node.process.poll() is None
            assert "Traceback" not in node.log_text()
