"""A rolling restart of a three-node cluster under counted traffic: each node in turn
is drained (``SIGTERM``), exits, and is started again before the next one goes.

Senders and recipients with stream management sit on every node; the clients of a
draining node lose their connection, not their session, and resume on another node.
A client without stream management (one per drain) is sent ``see-other-host`` with
another node's address, follows it and logs in there. Every message the cluster
acknowledged to its sender is delivered exactly once; no login fails."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.cluster import ClusterNodes, running_cluster, start_node, wait_live
from tests.support.counting import CountingClient
from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer

PW = "rolling-pw"
DRAIN = 20.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(
        tmp_path,
        nodes=3,
        public_addresses=True,
        extra="[c2s]\nresume_timeout = '60s'\n",
        cluster={"drain_timeout": f"{DRAIN:g}s"},
    ) as nodes:
        yield nodes


async def traffic(senders: list[CountingClient], recipients: list[CountingClient]) -> None:
    """Each connected sender sends to every recipient, round after round, until
    cancelled (a sender whose node is draining waits until it has resumed)."""
    i = 0
    while True:
        for sender in senders:
            if not sender.connected:
                continue
            for recipient in recipients:
                sender.send(recipient.jid, f"{sender.name}-{recipient.name}-{i}")
        i += 1
        await asyncio.sleep(0.05)


async def plain_client(node: XmppdServer, name: str) -> RawClient:
    """A client without stream management, logged in on ``node``."""
    plain = await RawClient(node).connect()
    await plain.login(name, PW, resource="desk")
    return plain


async def move(plain: RawClient, name: str, cluster: ClusterNodes) -> XmppdServer:
    """The drain closes the stream with ``see-other-host``: connect to the address
    given and log in there (a SASL failure raises). Returns the node it moved to."""
    closing = await plain.read_to_close(timeout=15)
    await plain.close()
    found = re.search(rb"<see-other-host[^>]*>([^<]+)</see-other-host>", closing)
    assert found, closing
    host, _, port = found.group(1).decode().rpartition(":")
    assert host == "127.0.0.1", found.group(1)
    target = next(n for n in cluster.nodes if n.starttls_port == int(port))
    assert target.process.poll() is None, "sent to a node that is not running"
    moved = RawClient(target)
    await moved.connect()
    jid = await moved.login(name, PW, resource="desk")  # PermissionError on <failure/>
    assert jid == f"{name}@localhost/desk"
    await moved.close()
    return target


async def drain_node(
    cluster: ClusterNodes,
    index: int,
    clients: list[CountingClient],
    homes: dict[str, int],
) -> None:
    """SIGTERM node ``index``, move its clients to the next node (resumption, and
    see-other-host for one without stream management), wait for the exit, start it
    again and wait until all three nodes see each other."""
    node = cluster.nodes[index]
    target_index = (index + 1) % len(cluster.nodes)
    target = cluster.nodes[target_index]
    plain_name = f"plain{index}"
    await register_account(target, plain_name, PW)
    plain = await plain_client(node, plain_name)
    mine = [c for c in clients if homes[c.name] == index]
    started = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    moved_to = await move(plain, plain_name, cluster)
    assert moved_to is not node
    for client in mine:
        await asyncio.wait_for(client.lost_connection.wait(), 15)
        await client.stop()
        await client.resume(target)
        homes[client.name] = target_index
    assert node.process.wait(timeout=DRAIN + 10) == 0
    assert time.monotonic() - started < DRAIN, "the drain waited for the timeout"
    assert "Traceback" not in node.log_text()
    start_node(node)
    wait_live(cluster.nodes)


@pytest.mark.timeout(240)
async def test_rolling_restart_of_three_nodes_loses_nothing(cluster: ClusterNodes) -> None:
    nodes = cluster.nodes
    for index in range(3):
        for name in (f"s{index}", f"r{index}"):
            await register_account(nodes[0], name, PW)
    senders = [CountingClient(f"s{i}", "out", PW) for i in range(3)]
    recipients = [CountingClient(f"r{i}", "in", PW) for i in range(3)]
    clients = senders + recipients
    homes: dict[str, int] = {}
    for index in range(3):  # a sender and a recipient on every node
        for client in (senders[index], recipients[index]):
            await client.start(nodes[index])
            homes[client.name] = index
    await asyncio.sleep(0.5)
    sending = asyncio.create_task(traffic(senders, recipients))
    try:
        await asyncio.sleep(1)
        for index in range(3):
            await drain_node(cluster, index, clients, homes)
            await asyncio.sleep(1)
        await asyncio.sleep(1)
    finally:
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    try:
        # Everything sent is acknowledged now (all nodes are up) and delivered.
        for sender in senders:
            sender.request_ack()
        deadline = time.monotonic() + 20
        sent = sum(len(s.sent) for s in senders)
        while time.monotonic() < deadline:
            delivered: Counter[str] = sum((r.received for r in recipients), Counter())
            if all(s.all_acknowledged for s in senders) and len(delivered) >= sent:
                break
            await asyncio.sleep(0.2)
        acknowledged = [b for s in senders for b in s.acknowledged()]
        delivered = sum((r.received for r in recipients), Counter())
        lost = [b for b in acknowledged if delivered[b] == 0]
        duplicated = [b for b, n in delivered.items() if n > 1]
        print(
            f"sent {sent}, acknowledged {len(acknowledged)}, delivered {len(delivered)}, "
            f"lost {len(lost)}, duplicated {len(duplicated)}, "
            f"resumptions {sum(c.resumed for c in clients)}"
        )
        assert sum(c.resumed for c in clients) >= len(clients), "a client never moved"
        assert len(acknowledged) > sent * 0.9, "the senders' acks did not come"
        assert lost == [], f"acknowledged but never delivered: {lost[:10]}"
        assert duplicated == [], f"delivered twice: {duplicated[:10]}"
        # Messages from one sender to one recipient arrive in order.
        for recipient in recipients:
            for sender in senders:
                prefix = f"{sender.name}-{recipient.name}-"
                order = [int(b[len(prefix) :]) for b in recipient.received if b.startswith(prefix)]
                assert order == sorted(order), (sender.name, recipient.name)
    finally:
        for client in clients:
            await client.stop()
