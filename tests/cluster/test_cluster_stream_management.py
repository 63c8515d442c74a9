"""XEP-0198 resumption across cluster nodes: a client whose connection dropped on one
node resumes on another, with every unacknowledged message once and in order, and can
move back."""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer

SM = "urn:xmpp:sm:3"
PASSWORD = "sm-password"
_names = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    tmp: Path = tmp_path_factory.mktemp("cluster-sm")
    with running_cluster(tmp, nodes=2, extra="[c2s]\nresume_timeout = '20s'\n") as nodes:
        yield nodes


async def new_user(server: XmppdServer) -> str:
    name = f"csm{next(_names)}"
    await register_account(server, name, PASSWORD)
    return name


async def enabled(server: XmppdServer, name: str) -> tuple[RawClient, str, str]:
    client = await RawClient(server).connect()
    jid = await client.login(name, PASSWORD, resource="phone")
    client.send(f"<enable xmlns='{SM}' resume='true'/>")
    reply = await client.read_until(b"<enabled[^>]*>")
    match = re.search(rb'id="([^"]+)"', reply)
    assert match and b'resume="true"' in reply, reply
    client.send("<presence/>")
    return client, jid, match.group(1).decode()


async def authenticated(server: XmppdServer, name: str) -> RawClient:
    client = await RawClient(server).connect()
    await client.starttls()
    await client.open_stream()
    token = base64.b64encode(f"\0{name}\0{PASSWORD}".encode()).decode()
    client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
    assert b"<success" in await client.read_until(b"<success|<failure")
    await client.open_stream()
    return client


def drop(client: RawClient) -> None:
    assert client.writer is not None
    client.writer.transport.abort()


async def test_resume_on_the_other_node_and_back(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    name, sender_name = await new_user(node1), await new_user(node1)
    client, jid, sm_id = await enabled(node1, name)
    async with Slix(node2, f"{sender_name}@localhost", PASSWORD) as sender:
        sender.xmpp.send_message(mto=jid, mbody="before the drop", mtype="chat")
        await client.read_until(b"before the drop")
        drop(client)
        for i in range(3):
            sender.xmpp.send_message(mto=jid, mbody=f"while away {i}", mtype="chat")
        await sender.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)

        moved = await authenticated(node2, name)
        moved.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='0'/>")
        data = await moved.read_until(b"while away 2")
        assert re.search(rb"<resumed [^>]*previd=\"" + sm_id.encode(), data), data
        bodies = re.findall(rb"<body>([^<]+)</body>", data)
        assert bodies == [b"before the drop", b"while away 0", b"while away 1", b"while away 2"]
        # Everything re-sent is acknowledged (the reflected presence too).
        handled = len(re.findall(rb"<(?:message|presence|iq)[ >]", data))
        moved.send(f"<a xmlns='{SM}' h='{handled}'/>")

        # The session lives on node 2 now: new messages reach it, and it resumes on
        # node 1 again after another drop.
        sender.xmpp.send_message(mto=jid, mbody="on node two", mtype="chat")
        await moved.read_until(b"on node two")
        drop(moved)
        sender.xmpp.send_message(mto=jid, mbody="away again", mtype="chat")
        await sender.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)
        back = await authenticated(node1, name)
        try:
            back.send(f"<resume xmlns='{SM}' previd='{sm_id}' h='{handled}'/>")
            data = await back.read_until(b"away again")
            bodies = re.findall(rb"<body>([^<]+)</body>", data)
            assert bodies == [b"on node two", b"away again"]
            # Nobody saw the session go away: the sender never got unavailable presence.
        finally:
            await back.close()


async def test_resume_of_an_unknown_session_fails_everywhere(cluster: ClusterNodes) -> None:
    name = await new_user(cluster.nodes[0])
    client = await authenticated(cluster.nodes[1], name)
    try:
        client.send(f"<resume xmlns='{SM}' previd='no-such-session' h='0'/>")
        reply = await client.read_until(b"</failed>|<failed[^>]*/>")
        assert b"item-not-found" in reply
    finally:
        await client.close()
