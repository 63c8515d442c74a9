"""An external component (XEP-0114) connected to one node of a cluster serves users
on every node; a second connection for its domain on another node is refused; when
it disconnects, stanzas for it bounce everywhere."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.component import SlixComponent

COMPONENT = "comp.localhost"
SECRET = "comp-secret"
PW = "s3cret-pw"
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    tmp: Path = tmp_path_factory.mktemp("cluster-components")
    with running_cluster(tmp, nodes=2, components={COMPONENT: SECRET}) as nodes:
        yield nodes


async def test_component_on_one_node_serves_users_on_the_other(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    user = f"cc{next(_names)}"
    await register_account(node2, user, PW)
    component = await SlixComponent(node1, COMPONENT, SECRET).connected()
    try:
        # A second connection for the same domain, on the other node: refused.
        second = SlixComponent(node2, COMPONENT, SECRET)
        assert await second.start() == "disconnected"
        assert second.stream_error == "conflict"
        async with Slix(node2, f"{user}@localhost", PW) as client:
            await asyncio.sleep(0.3)
            client.xmpp.send_message(mto=f"bot@{COMPONENT}", mbody="hello component", mtype="chat")
            async with asyncio.timeout(10):
                while True:
                    got = await component.received.get()
                    if got.findtext("{jabber:component:accept}body") == "hello component":
                        break
            assert got.get("from") == client.jid
            component.xmpp.send_message(
                mto=client.jid, mfrom=f"bot@{COMPONENT}", mbody="hello user", mtype="chat"
            )
            reply = await client.next_message(lambda m: m["body"] == "hello user")
            assert reply["from"] == f"bot@{COMPONENT}"
            await component.stop()
            await asyncio.sleep(0.5)
            client.xmpp.send_message(mto=f"bot@{COMPONENT}", mbody="anyone?", mtype="chat")
            bounced = await client.next_message(lambda m: m["type"] == "error")
            assert bounced["error"]["condition"] == "service-unavailable"
    finally:
        await component.stop()
