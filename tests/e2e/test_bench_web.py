"""The web benchmarks (``python -m bench ws-sessions|ws-chat|upload``) against a real
xmppd started by the bench's own launcher with ``Features(web=True)``: the generated
configuration serves WebSocket and HTTP File Upload on a loopback port, the generator's
WebSocket logins work and its chat fast path times a message sent over one WebSocket and
received on another, and slots asked over XMPP take parallel PUTs whose GETs return the
same bytes (a wrong byte or a refused request is reported)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from bench.common import PASSWORD
from bench.servers.base import Features
from bench.servers.xmppd import XmppdServer
from bench.web import Slot, _get_all, _put_all, request_slots
from bench.worker import MESSAGE_SUFFIX
from bench.wsclient import WsClients
from bench.xmpp import Recorder
from tests.support.server import free_port

USERS = ["u00000", "u00001"]


def _server(tmp_path: Path) -> XmppdServer:
    server = XmppdServer(tmp_path, free_port())
    server.http_port = free_port()
    server.features = Features(web=True)
    server.configure()
    config = server.config_path.read_text()
    assert f"port = {server.http_port}" in config
    assert "http_upload = {" in config
    server.create_accounts(USERS, PASSWORD)
    return server


def test_websocket_logins_and_chat(tmp_path: Path) -> None:
    server = _server(tmp_path)
    server.start()
    try:
        asyncio.run(asyncio.wait_for(_chat(server), 30))
    finally:
        server.stop()


async def _chat(server: XmppdServer) -> None:
    clients = WsClients()
    url = server.ws_url()
    try:
        a, b = [await clients.login(url, server.domain, u, PASSWORD, "b0", "PLAIN") for u in USERS]
        assert a.jid.startswith(b"u00000@bench.local/")
        rec = Recorder()
        a.recorder = b.recorder = rec
        stamp = time.monotonic_ns() // 1000
        a.transport.write(  # type: ignore[union-attr]
            b"<message type='chat' id='c' to='u00001@bench.local'><body>u00001:3:%d" % stamp
            + MESSAGE_SUFFIX
        )
        for _ in range(200):
            if rec.count(3):
                break
            await asyncio.sleep(0.05)
        assert rec.count(3) == 1
        assert rec.misrouted == rec.errors == 0
        a.close()
        b.close()
    finally:
        await clients.close()


def test_upload_round_trip(tmp_path: Path) -> None:
    server = _server(tmp_path)
    server.start()
    try:
        asyncio.run(asyncio.wait_for(_upload(server), 60))
    finally:
        server.stop()


async def _upload(server: XmppdServer) -> None:
    size = 300_000
    slots = await request_slots(server, 3, size, "t", 20)
    assert len({s.put_url for s in slots}) == 3
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    async with aiohttp.ClientSession() as http:
        seconds, errors = await _put_all(http, slots, body, server.http_port)
        assert errors == []
        assert seconds > 0
        _, errors = await _get_all(http, slots, body, server.http_port)
        assert errors == []
        # the check can fail: other bytes than those uploaded are reported
        _, errors = await _get_all(http, slots[:1], body[:-1] + b"\1", server.http_port)
        assert errors and "differs" in errors[0]
        # a PUT a second time is refused (409) and reported
        _, errors = await _put_all(http, slots[:1], body, server.http_port)
        assert errors and errors[0].startswith("PUT 409")
        bad = Slot(slots[0].put_url, slots[0].get_url + "x", {})
        _, errors = await _get_all(http, [bad], body, server.http_port)
        assert errors == ["GET 404"]
