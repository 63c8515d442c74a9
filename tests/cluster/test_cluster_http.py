"""HTTP in a cluster: a BOSH session keeps working whichever node each of its requests
lands on (the other node passes them on to the one holding it), and ends with
item-not-found when that node dies; an upload slot requested on one node is PUT and
fetched through any node (shared secret, shared directory); a WebSocket client on one
node chats with a TCP client on another."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis
from lxml import etree

from tests.support.boshclient import CLIENT, BoshClient, body
from tests.support.clients import Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer
from tests.support.wsclient import WsClient
from tests.support.xmlclient import XmlClient

_counter = itertools.count()
PW = "s3cret-pw"
UPLOAD = "urn:xmpp:http:upload:0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    tmp: Path = tmp_path_factory.mktemp("httpcluster")
    # running_cluster points both nodes' upload directory at one (an NFS mount or a
    # shared volume in production)
    modules = {**DEFAULT_TEST_MODULES, "http_upload": {}}
    with running_cluster(tmp, nodes=2, http=True, modules=modules) as nodes:
        yield nodes


async def new_user(server: XmppdServer) -> tuple[str, str]:
    name = f"h{next(_counter)}"
    await register_account(server, name, PW)
    return name, f"{name}@{server.domain}"


def bosh_url(node: XmppdServer) -> str:
    return f"{node.http_url}/http-bind"


def is_message(text: str) -> Callable[[etree._Element], bool]:
    return lambda el: el.tag == f"{{{CLIENT}}}message" and el.findtext(f"{{{CLIENT}}}body") == text


async def relay_url(cluster: ClusterNodes, node: str) -> str:
    """The relay address ``node`` published in the nodes hash."""
    client = aioredis.Redis.from_url(cluster.redis_url)
    try:
        info = json.loads(await client.hget(f"{cluster.prefix}:nodes", node) or b"{}")
    finally:
        await client.aclose()
    url = info.get("http", "")
    assert isinstance(url, str) and url.startswith("http://127.0.0.1:"), info
    return url


async def test_bosh_requests_alternate_between_nodes(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    alice_name, alice = await new_user(node1)
    _, bob = await new_user(node1)
    async with (
        aiohttp.ClientSession() as http,
        Slix(node2, bob, PW) as b,
    ):
        # Request 1 (creation) on node1, then node2, node1, node2...
        client = BoshClient(http, bosh_url(node1), also=(bosh_url(node2),))
        jid = await client.login(alice_name, PW)
        assert jid.startswith(f"{alice}/")
        assert client.sid.endswith(".node1")  # the sid names the node holding it
        assert client.posts >= 4  # auth and bind went through node2
        await client.send(f"<presence xmlns='{CLIENT}'/>")
        await asyncio.sleep(0.3)  # node2 learns of the session
        await client.send(
            f"<message xmlns='{CLIENT}' to='{bob}' type='chat'><body>from bosh</body></message>"
        )
        got = await b.next_message(lambda m: m["body"] == "from bosh")
        assert got["from"] == jid
        for i in range(6):
            b.xmpp.send_message(mto=jid, mbody=f"to bosh {i}", mtype="chat")
            # held requests, through either node, carry the messages
            await client.until(is_message(f"to bosh {i}"))
        assert len({client.urls[n % 2] for n in range(client.posts)}) == 2
        # A request held on node1 through node2 is answered as soon as a message comes.
        client.urls = (bosh_url(node2),)
        loop = asyncio.get_running_loop()
        started = loop.time()
        held = asyncio.create_task(client.send())
        await asyncio.sleep(0.5)
        b.xmpp.send_message(mto=jid, mbody="while held", mtype="chat")
        out = await held
        assert [el for el in out if is_message("while held")(el)], etree.tostring(out)
        assert loop.time() - started < 3  # not after the 5 s wait
        out = await client.send(type="terminate")
        assert out.get("type") == "terminate"


async def test_bosh_through_the_round_robin_front(cluster: ClusterNodes) -> None:
    """A new TCP connection per request: the front hands them to the nodes in turn."""
    node1 = cluster.nodes[0]
    name, _ = await new_user(node1)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        client = BoshClient(http, bosh_url(cluster.front))
        before = len(cluster.relay.connections)
        jid = await client.login(name, PW)
        went = cluster.relay.connections[before:]
        assert {0, 1} <= set(went), went
        reply = await client.send(
            f"<iq xmlns='{CLIENT}' type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>"
        )
        found = [el for el in reply if el.get("id") == "r1"]
        if not found:
            await client.until(lambda el: el.get("id") == "r1")
        assert jid
        await client.send(type="terminate")


async def test_unknown_sid_and_unsigned_relay(cluster: ClusterNodes) -> None:
    node2 = cluster.nodes[1]
    async with aiohttp.ClientSession() as http:
        client = BoshClient(http, bosh_url(node2))
        for sid in ("nothere.node1", "nothere.node9", "nothere", "nothere.node2"):
            client.sid = sid
            out = await client.send()
            assert out.get("type") == "terminate", (sid, etree.tostring(out))
            assert out.get("condition") == "item-not-found"
        # The relay listener believes only requests signed by a node of the cluster.
        url = await relay_url(cluster, "node1")
        forged = body(1, "x.node1").encode()
        headers = {
            "X-Xmppd-From-Node": "node2",
            "X-Xmppd-Client": "203.0.113.9",
            "X-Xmppd-Time": "1",
            "X-Xmppd-Signature": "00" * 32,
        }
        async with http.post(f"{url}/_cluster/bosh", data=forged, headers=headers) as r:
            assert r.status == 403


async def test_upload_slot_on_one_node_put_and_get_on_others(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    _, user = await new_user(node1)
    data = os.urandom(300_000)
    async with await XmlClient.login(node1, user, PW) as client:
        reply = await client.iq(
            "get",
            f"<request xmlns='{UPLOAD}' filename='pic.jpg' size='{len(data)}' "
            "content-type='image/jpeg'/>",
            to="upload.localhost",
        )
    put = reply.find(f"{{{UPLOAD}}}slot/{{{UPLOAD}}}put")
    assert put is not None, etree.tostring(reply)
    path = urlsplit(put.get("url") or "").path
    headers = {h.get("name") or "": h.text or "" for h in put}
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{node2.http_url}{path}",
            data=data,
            headers={**headers, "Content-Type": "image/jpeg"},
        ) as r:
            assert r.status == 201, await r.text()
        for node in (node1, node2):
            async with http.get(f"{node.http_url}{path}") as r:
                assert r.status == 200
                assert await r.read() == data
        # The slot was used (the shared database says so on every node).
        async with http.put(f"{node1.http_url}{path}", data=data, headers=headers) as r:
            assert r.status == 409


async def test_websocket_on_one_node_chats_with_tcp_on_another(cluster: ClusterNodes) -> None:
    node1, node2 = cluster.nodes
    ws_name, ws_jid = await new_user(node1)
    _, tcp_jid = await new_user(node1)
    async with Slix(node1, tcp_jid, PW) as tcp:
        ws = await WsClient.connect(node2)
        async with ws:
            full = await ws.login(ws_name, PW)
            await asyncio.sleep(0.3)  # node1 learns of the session
            await ws.send_now(
                f"<message xmlns='{CLIENT}' to='{tcp_jid}' type='chat'><body>from ws</body>"
                "</message>"
            )
            got = await tcp.next_message(lambda m: m["body"] == "from ws")
            assert got["from"] == full
            tcp.xmpp.send_message(mto=full, mbody="to ws", mtype="chat")
            await ws.expect(is_message("to ws"))
    assert ws_jid


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[ClusterNodes]:
    """Two nodes behind a trusted proxy, at most 2 open requests per client address."""
    extra = '[http]\nmax_connections_per_ip = 2\ntrusted_proxies = ["127.0.0.1"]\n'
    with running_cluster(tmp_path, nodes=2, http=True, extra=extra) as nodes:
        yield nodes


async def test_relayed_requests_count_against_the_real_client_address(
    limited: ClusterNodes,
) -> None:
    """Three clients each hold a request through node2 on their sessions on node1:
    node1 counts each under its own address (not node2's), and one address's requests
    sent directly and relayed count together there."""
    node1, node2 = limited.nodes
    async with aiohttp.ClientSession() as http:
        clients: list[BoshClient] = []
        for i in range(4):
            name, _ = await new_user(node1)
            client = BoshClient(http, bosh_url(node1), also=(bosh_url(node2),))
            client.headers = {"X-Forwarded-For": f"198.51.100.{min(i, 2) + 1}"}
            await client.login(name, PW, resource=f"r{i}")
            assert client.sid.endswith(".node1")
            clients.append(client)
        # Clients 0, 1, 2 (three addresses) hold a request each through node2.
        for client in clients[:3]:
            client.urls = (bosh_url(node2),)
        held = [asyncio.create_task(c.send()) for c in clients[:3]]
        # Address .3 (clients 2 and 3): one more relayed, one direct to node1 ...
        await asyncio.sleep(0.5)
        clients[3].urls = (bosh_url(node1),)
        third = asyncio.create_task(clients[3].send())
        await asyncio.sleep(0.5)
        # ... and node1 refuses a third from .3 relayed by node2 (node2 counts 2).
        again = body(clients[2].next_rid(), clients[2].sid)
        async with http.post(bosh_url(node2), data=again, headers=clients[2].headers) as r:
            assert r.status == 429, await r.text()
        for out in await asyncio.gather(*held, third):
            assert out.get("type") is None, etree.tostring(out)  # empty after wait


async def test_bosh_owner_killed_ends_the_session(cluster: ClusterNodes) -> None:
    """Last in this module: node1 is killed (-9)."""
    node1, node2 = cluster.nodes
    name, _ = await new_user(node1)
    async with aiohttp.ClientSession() as http:
        client = BoshClient(http, bosh_url(node1), also=(bosh_url(node2),))
        await client.login(name, PW)
        client.urls = (bosh_url(node2),)
        await client.send()  # through node2, still alive
        # A request held on node1 (through node2) when node1 dies...
        held = asyncio.create_task(client.send())
        await asyncio.sleep(0.5)
        node1.process.kill()
        node1.process.wait()
        out = await asyncio.wait_for(held, 15)
        assert out.get("type") == "terminate" and out.get("condition") == "item-not-found"
        # ...and any later request for the session.
        out = await client.send()
        assert out.get("type") == "terminate" and out.get("condition") == "item-not-found"
