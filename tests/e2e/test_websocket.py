"""XMPP over WebSocket (RFC 7395) at /xmpp-websocket, and the HTTP listener under it:
the same client stream as TCP behind a different framing; handshake checks
(subprotocol, Origin), limits (message size, connections per address behind a
trusted proxy), stream errors, discovery (XEP-0156)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from lxml import etree

from tests.support.boshclient import BoshClient, body
from tests.support.clients import register_account
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.wsclient import CLIENT, FRAMING, SASL, SM, STREAMS, WsClient
from tests.support.xmlclient import XmlClient, tag

HTTP_CONFIG = """
[http]
trusted_proxies = ["127.0.0.1"]
max_connections_per_ip = 4
allowed_origins = ["https://web.example"]
"""


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "offline": {}}
    with running_server(
        tmp_path_factory.mktemp("web"), http=True, extra=HTTP_CONFIG, modules=modules
    ) as srv:
        yield srv


async def get(
    server: XmppdServer, path: str, **kwargs: object
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.http_url + path, **kwargs) as r,
    ):  # type: ignore[arg-type]
        return r.status, dict(r.headers), await r.read()


# ---------------------------------------------------------------------- HTTP front


async def test_host_meta_lists_the_websocket_endpoint(web_server: XmppdServer) -> None:
    status, headers, body = await get(web_server, "/.well-known/host-meta")
    assert status == 200
    assert headers["Content-Type"].startswith("application/xrd+xml")
    assert headers["Access-Control-Allow-Origin"] == "*"
    xrd = etree.fromstring(body)
    links = {el.get("rel"): el.get("href") for el in xrd}
    ws_url = f"ws://127.0.0.1:{web_server.http_port}/xmpp-websocket"
    assert links["urn:xmpp:alt-connections:websocket"] == ws_url

    status, headers, body = await get(web_server, "/.well-known/host-meta.json")
    assert status == 200
    assert {"rel": "urn:xmpp:alt-connections:websocket", "href": ws_url} in json.loads(body)[
        "links"
    ]


async def test_host_meta_from_a_trusted_proxy_uses_its_scheme(web_server: XmppdServer) -> None:
    status, _, body = await get(
        web_server,
        "/.well-known/host-meta.json",
        headers={"X-Forwarded-Proto": "https", "Host": "chat.example.org"},
    )
    assert status == 200
    hrefs = [link["href"] for link in json.loads(body)["links"]]
    assert hrefs == [
        "wss://chat.example.org/xmpp-websocket",
        "https://chat.example.org/http-bind",
    ]


async def test_unknown_paths_and_methods_are_refused(web_server: XmppdServer) -> None:
    assert (await get(web_server, "/nothing-here"))[0] == 404
    async with (
        aiohttp.ClientSession() as session,
        session.post(web_server.http_url + "/.well-known/host-meta") as r,
    ):
        assert r.status == 405
        assert "GET" in r.headers["Allow"]


# ---------------------------------------------------------------------- WebSocket


async def test_a_websocket_client_logs_in_and_chats_with_a_tcp_client(
    web_server: XmppdServer,
) -> None:
    await register_account(web_server, "wsann", "pw-ann")
    await register_account(web_server, "tcpben", "pw-ben")
    alice = await WsClient.connect(web_server)
    try:
        opened = await alice.open()
        assert opened.get("from") == "localhost" and opened.get("version") == "1.0"
        assert alice.features is not None
        mechanisms = [m.text for m in alice.features.iter(f"{{{SASL}}}mechanism")]
        assert "PLAIN" in mechanisms  # loopback counts as secure (http.loopback_is_secure)
        assert alice.features.find("{urn:xmpp:sasl:2}authentication") is not None
        jid = await alice.login("wsann", "pw-ann", resource="browser")
        assert jid == "wsann@localhost/browser"
        # COMPAT: the RFC 3921 session IQ after bind (Strophe.js sends it) is answered.
        session = await alice.iq("set", "<session xmlns='urn:ietf:params:xml:ns:xmpp-session'/>")
        assert session.get("type") == "result"
        async with await XmlClient.login(web_server, "tcpben@localhost", "pw-ben") as ben:
            ben.send(f"<message to='{jid}' type='chat'><body>hello over tcp</body></message>")
            got = await alice.expect(lambda el: el.tag == f"{{{CLIENT}}}message")
            assert got.findtext(f"{{{CLIENT}}}body") == "hello over tcp"
            # Every stanza names its namespace (RFC 7395 §3.3.3).
            assert any(raw.startswith('<message xmlns="jabber:client"') for raw in alice.raw)
            await alice.send_now(
                f"<message xmlns='{CLIENT}' to='{ben.jid}' type='chat'><body>hi from the web</body></message>"
            )
            reply = await ben.expect(lambda el: el.tag == tag("message"))
            assert reply.findtext(tag("body")) == "hi from the web"
            assert reply.get("from") == jid
        # The client ends its stream; the server answers <close/> and closes the socket.
        await alice.send_now(f"<close xmlns='{FRAMING}'/>")
        await alice.expect(lambda el: el.tag == f"{{{FRAMING}}}close")
        await alice.wait_closed()
    finally:
        await alice.close()


async def test_the_xmpp_subprotocol_is_required(web_server: XmppdServer) -> None:
    # RFC 7395 §3.1: no XMPP session without the 'xmpp' subprotocol.
    for protocols in (("chat",), (), ("mqtt", "stomp")):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await WsClient.connect(web_server, protocols=protocols)
        assert err.value.status == 400
    # Offered among others, 'xmpp' is the one chosen.
    client = await WsClient.connect(web_server, protocols=("chat", "xmpp"))
    try:
        assert client.ws.protocol == "xmpp"
        await client.open()
    finally:
        await client.close()


async def test_web_pages_of_other_origins_are_refused(web_server: XmppdServer) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await WsClient.connect(web_server, headers={"Origin": "https://evil.example"})
    assert err.value.status == 403
    for origin in ("https://web.example", web_server.http_url):
        client = await WsClient.connect(web_server, headers={"Origin": origin})
        await client.open()
        await client.close()


async def test_non_xml_gets_a_stream_error(web_server: XmppdServer) -> None:
    client = await WsClient.connect(web_server)
    try:
        await client.open()
        await client.send_now("this is not XML")
        await client.expect(lambda el: el.tag == f"{{{FRAMING}}}close")
        assert client.stream_error() == "not-well-formed"
        await client.wait_closed()
    finally:
        await client.close()


async def test_a_stream_header_instead_of_open_is_refused(web_server: XmppdServer) -> None:
    client = await WsClient.connect(web_server)
    try:
        await client.send_now(
            f"<stream:stream xmlns='{CLIENT}' xmlns:stream='{STREAMS}' to='localhost' version='1.0'>"
        )
        await client.expect(lambda el: el.tag == f"{{{FRAMING}}}close")
        assert client.stream_error() == "not-well-formed"
        assert any(raw.startswith("<open") for raw in client.raw)  # our header came first
    finally:
        await client.close()


@pytest.mark.parametrize("size", [300 * 1024, 3 * 1024 * 1024])
async def test_a_message_over_the_stanza_size_limit_is_a_policy_violation(
    web_server: XmppdServer, size: int
) -> None:
    await register_account(web_server, f"wsbig{size}", "pw-big")
    await register_account(web_server, f"wsstay{size}", "pw-stay")
    bystander = await WsClient.connect(web_server)
    client = await WsClient.connect(web_server)
    try:
        stay_jid = await bystander.login(f"wsstay{size}", "pw-stay")
        await client.login(f"wsbig{size}", "pw-big")
        big = "x" * size  # the default limit is 256 KiB
        try:
            await client.send_now(
                f"<message xmlns='{CLIENT}' to='{stay_jid}'><body>{big}</body></message>"
            )
        except ConnectionError:
            # Several MiB: the server may refuse the frame from its header and close
            # before the client has written it all; the client then sees a reset
            # instead of the stream error (nothing the server can do about bytes still
            # in flight). The 300 KiB case always gets the error.
            assert size > 1024 * 1024
        else:
            # RFC 7395 §3.6: the stream error and <close/>, then the WebSocket closes.
            await client.expect(lambda el: el.tag == f"{{{FRAMING}}}close")
            assert client.stream_error() == "policy-violation"
            assert await client.wait_closed() == 1009  # message too big
        # Another session on the same server keeps working.
        pong = await bystander.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
        assert pong.get("type") == "result"
    finally:
        await client.close()
        await bystander.close()


async def test_connections_per_address_are_limited_behind_a_trusted_proxy(
    web_server: XmppdServer,
) -> None:
    held: list[WsClient] = []
    try:
        for _ in range(4):
            held.append(
                await WsClient.connect(web_server, headers={"X-Forwarded-For": "203.0.113.7"})
            )
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await WsClient.connect(web_server, headers={"X-Forwarded-For": "203.0.113.7"})
        assert err.value.status == 429
        # Another client behind the same proxy is not affected.
        other = await WsClient.connect(web_server, headers={"X-Forwarded-For": "198.51.100.9"})
        await other.open()
        await other.close()
    finally:
        for client in held:
            await client.close()
    again = await WsClient.connect(web_server, headers={"X-Forwarded-For": "203.0.113.7"})
    await again.close()


async def test_a_websocket_session_resumes_over_tcp(web_server: XmppdServer) -> None:
    await register_account(web_server, "wsroam", "pw-roam")
    await register_account(web_server, "wsfriend", "pw-friend")
    client = await WsClient.connect(web_server)
    jid = await client.login("wsroam", "pw-roam", resource="roaming")
    await client.send_now(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await client.expect(lambda el: el.tag == f"{{{SM}}}enabled")
    previd = enabled.get("id")
    assert previd
    await client.drop()  # the WebSocket goes away; the session hibernates
    async with await XmlClient.login(web_server, "wsfriend@localhost", "pw-friend") as friend:
        friend.send(f"<message to='{jid}' type='chat'><body>while away</body></message>")
        tcp = await XmlClient.connect(web_server)
        try:
            await tcp.authenticate("wsroam", "pw-roam")
            tcp.send(f"<resume xmlns='{SM}' previd='{previd}' h='0'/>")
            await tcp.expect(lambda el: el.tag == f"{{{SM}}}resumed")
            got = await tcp.expect(lambda el: el.tag == tag("message"))
            assert got.findtext(tag("body")) == "while away"
            assert got.get("to") == jid
            # The operator's log: the WebSocket login, then the resumption over TCP.
            log = web_server.log_text()
            assert f"jid={jid} mechanism=PLAIN transport=websocket" in log
            assert f"jid={jid} mechanism=PLAIN+resume transport=tcp" in log
        finally:
            await tcp.close()


async def test_bosh_sessions_per_address_are_limited_behind_a_trusted_proxy(
    web_server: XmppdServer,
) -> None:
    """The BOSH session limit counts the client named by the trusted proxy."""

    async def create(http: aiohttp.ClientSession, address: str) -> BoshClient:
        bosh = BoshClient(http, web_server.http_url + "/http-bind")
        bosh.created = await bosh.post(
            body(bosh.rid, None, "", to="localhost", wait="5", hold="1", ver="1.6"),
            headers={"X-Forwarded-For": f"{address}, 127.0.0.1"},
        )
        bosh.sid = bosh.created.get("sid") or ""
        return bosh

    async with aiohttp.ClientSession() as http:
        held = [await create(http, "203.0.113.50") for _ in range(4)]
        assert all(bosh.sid for bosh in held)
        refused = (await create(http, "203.0.113.50")).created
        assert refused is not None
        assert (refused.get("type"), refused.get("condition")) == ("terminate", "policy-violation")
        other = await create(http, "198.51.100.50")  # another client behind the proxy
        assert other.sid
        for bosh in [*held, other]:
            ended = await bosh.send(type="terminate")
            assert ended.get("type") == "terminate"
        again = await create(http, "203.0.113.50")  # room again
        assert again.sid
        await again.send(type="terminate")


async def test_a_websocket_client_gets_its_offline_messages(web_server: XmppdServer) -> None:
    await register_account(web_server, "wsaway", "pw-away")
    await register_account(web_server, "wssender", "pw-send")
    async with await XmlClient.login(web_server, "wssender@localhost", "pw-send") as sender:
        sender.send(
            "<message to='wsaway@localhost' type='chat'><body>while you were out</body></message>"
        )
        # The sender's ping answered: the message was handled (stored) before it.
        await sender.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to="localhost")
    client = await WsClient.connect(web_server)
    try:
        await client.login("wsaway", "pw-away")
        await client.send_now(f"<presence xmlns='{CLIENT}'/>")
        got = await client.expect(lambda el: el.tag == f"{{{CLIENT}}}message")
        assert got.findtext(f"{{{CLIENT}}}body") == "while you were out"
        assert got.get("from", "").startswith("wssender@localhost")
        assert got.find("{urn:xmpp:delay}delay") is not None
    finally:
        await client.close()


# ---------------------------------------------------------------------- raw frames


class RawWebSocket:
    """A WebSocket client written out byte by byte, for what aiohttp's client would
    never send: fragments, unmasked frames, pings with a payload, old versions."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def handshake(
        cls, server: XmppdServer, *, version: str = "13"
    ) -> tuple[RawWebSocket, bytes]:
        """Open the connection; returns the client and the server's answer head."""
        host, port = server.http_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /xmpp-websocket HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Protocol: xmpp\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return cls(reader, writer), head

    def send(self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> None:
        n = len(payload)
        head = bytes(((0x80 if fin else 0) | opcode, (0x80 if mask else 0) | n))
        assert n < 126
        if mask:
            key = os.urandom(4)
            payload = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + payload)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (which never masks)."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), 10)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


async def test_the_handshake_answer_follows_rfc_6455(web_server: XmppdServer) -> None:
    ws, head = await RawWebSocket.handshake(web_server)
    try:
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Protocol: xmpp" in head
        assert b"Sec-WebSocket-Accept: " in head
    finally:
        ws.close()
    old, head = await RawWebSocket.handshake(web_server, version="8")
    try:
        assert head.startswith(b"HTTP/1.1 426 ")
        assert b"Sec-WebSocket-Version: 13" in head
    finally:
        old.close()


async def test_fragments_pings_and_the_close_handshake(web_server: XmppdServer) -> None:
    ws, _ = await RawWebSocket.handshake(web_server)
    try:
        opening = f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>".encode()
        # The <open/> in three fragments, with a ping between two of them.
        ws.send(0x1, opening[:10], fin=False)
        ws.send(0x9, b"are you there")
        ws.send(0x0, opening[10:30], fin=False)
        ws.send(0x0, opening[30:])
        assert await ws.frame() == (0xA, b"are you there")  # the pong echoes the payload
        opcode, answer = await ws.frame()
        assert opcode == 0x1 and answer.startswith(b"<open ")
        opcode, features = await ws.frame()
        assert opcode == 0x1 and b"features" in features
        # The client closes: the server answers with its own close frame and hangs up.
        ws.send(0x8, (1000).to_bytes(2, "big") + b"bye")
        while True:
            opcode, payload = await ws.frame()
            if opcode == 0x8:
                break
        assert payload[:2] == (1000).to_bytes(2, "big")
        assert await ws.closed_by_server()
    finally:
        ws.close()


async def test_an_unmasked_frame_fails_the_connection_with_1002(web_server: XmppdServer) -> None:
    ws, _ = await RawWebSocket.handshake(web_server)
    try:
        ws.send(0x1, f"<open xmlns='{FRAMING}' to='localhost' version='1.0'/>".encode(), mask=False)
        opcode, payload = await ws.frame()
        assert opcode == 0x8
        assert int.from_bytes(payload[:2], "big") == 1002
        assert await ws.closed_by_server()
    finally:
        ws.close()
    # Everyone else is served.
    status, _, _ = await get(web_server, "/.well-known/host-meta")
    assert status == 200


async def test_a_client_that_does_not_answer_pings_is_cut_off(tmp_path: Path) -> None:
    config = "[http]\nwebsocket_ping = '1s'\n"
    with running_server(tmp_path, http=True, extra=config) as server:
        silent, _ = await RawWebSocket.handshake(server)
        polite, _ = await RawWebSocket.handshake(server)
        try:

            async def answer_pings() -> None:
                while True:
                    opcode, payload = await polite.frame()
                    if opcode == 0x9:
                        polite.send(0xA, payload)

            answering = asyncio.create_task(answer_pings())
            opcode, _ = await silent.frame()
            assert opcode == 0x9  # the first ping goes unanswered...
            assert await silent.closed_by_server()  # ...and the next sweep cuts it
            assert not answering.done()  # the polite one is still there
            answering.cancel()
        finally:
            silent.close()
            polite.close()
