"""Draining nodes one after the other (a rolling restart) under counted traffic: a
stream-management client loses its connection but not its session, resumes on the
other node with every unacknowledged message once and in order (messages sent while
the node drains included); a client without it is sent ``see-other-host`` with the
other node's address; the drained node exits as soon as its clients have moved."""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster, start_node
from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer

SM = "urn:xmpp:sm:3"
PW = "drain-pw"
DRAIN = 15.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    with running_cluster(
        tmp_path,
        nodes=2,
        public_addresses=True,
        extra="[c2s]\nresume_timeout = '60s'\n",
        cluster={"drain_timeout": f"{DRAIN:g}s"},
    ) as nodes:
        yield nodes


async def sm_client(node: XmppdServer, name: str) -> tuple[RawClient, str]:
    client = await RawClient(node).connect()
    await client.login(name, PW, resource="phone")
    client.send(f"<enable xmlns='{SM}' resume='true'/>")
    reply = await client.read_until(b"<enabled[^>]*>")
    match = re.search(rb'id="([^"]+)"', reply)
    assert match, reply
    return client, match.group(1).decode()


async def resume(node: XmppdServer, name: str, sm_id: str, h: int) -> RawClient:
    client = await RawClient(node).connect()
    await client.starttls()
    await client.open_stream()
    token = base64.b64encode(f"\0{name}\0{PW}".encode()).decode()
    client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert b"<success" in await client.read_until(b"<success|<failure")
    await client.open_stream()
    client.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='{h}'/>")
    return client


def stanzas_in(data: bytes) -> int:
    return len(re.findall(rb"<(?:message|presence|iq)[ >]", data))


async def drain_and_move(
    cluster: ClusterNodes,
    draining: XmppdServer,
    target: XmppdServer,
    recipient: RawClient,
    name: str,
    sm_id: str,
    h: int,
    sender: Slix,
    jid: str,
    batch: str,
) -> tuple[RawClient, int]:
    """Send, drain ``draining``, send more meanwhile, resume on ``target``; check
    every message arrives once, in order. Returns the resumed client and its ``h``."""
    for i in range(5):
        sender.xmpp.send_message(mto=jid, mbody=f"{batch} {i}", mtype="chat")
    await recipient.read_until(f"{batch} 4".encode())
    plain_name = f"plain{batch}"
    await register_account(target, plain_name, PW)
    plain = await RawClient(draining).connect()
    await plain.login(plain_name, PW, resource="desk")

    started = time.monotonic()
    draining.process.send_signal(signal.SIGTERM)
    # The client without stream management is sent to the other node.
    closing = await plain.read_to_close(timeout=15)
    assert b"see-other-host" in closing, closing
    assert f"127.0.0.1:{target.starttls_port}".encode() in closing, closing
    await plain.close()
    # The resumable one loses its connection, not its session.
    await recipient.read_to_close(timeout=15)
    await recipient.close()
    for i in range(5, 10):
        sender.xmpp.send_message(mto=jid, mbody=f"{batch} {i}", mtype="chat")
    await sender.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)

    moved = await resume(target, name, sm_id, h)
    data = await moved.read_until(f"{batch} 9".encode(), timeout=20)
    assert re.search(rb"<resumed [^>]*previd=\"" + sm_id.encode(), data), data
    bodies = re.findall(rb"<body>([^<]+)</body>", data)
    assert bodies == [f"{batch} {i}".encode() for i in range(10)], bodies
    h += stanzas_in(data[data.index(b"<resumed") :])
    moved.send(f"<a xmlns='{SM}' h='{h}'/>")
    # The drained node is done as soon as its sessions have moved.
    assert draining.process.wait(timeout=DRAIN + 10) == 0
    assert time.monotonic() - started < DRAIN, "the drain waited for nothing"
    assert "Traceback" not in draining.log_text()
    return moved, h


@pytest.mark.timeout(150)
async def test_rolling_restart_moves_every_session(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    name, sender_name = "mover", "talker"
    await register_account(node1, name, PW)
    await register_account(node1, sender_name, PW)
    recipient, sm_id = await sm_client(node1, name)
    jid = f"{name}@localhost/phone"
    async with Slix(node2, f"{sender_name}@localhost", PW) as sender:
        await asyncio.sleep(0.3)
        # Nothing acknowledged yet: h is 0 when it resumes.
        moved, h = await drain_and_move(
            cluster, node1, node2, recipient, name, sm_id, 0, sender, jid, "first"
        )
        start_node(node1)
        await asyncio.sleep(1.5)  # node 1 is back in the cluster
    # Node 2 drains next: the session comes back to node 1. The sender moves first.
    async with Slix(node1, f"{sender_name}@localhost", PW) as sender:
        await asyncio.sleep(0.3)
        back, h = await drain_and_move(
            cluster, node2, node1, moved, name, sm_id, h, sender, jid, "second"
        )
        await back.close()
    start_node(node2)
