"""The HTTP listener beyond the WebSocket basics: HTTPS with the host's certificate
(wss://, channel binding), encryption decided by trusted proxies, routes added while
the server runs, metrics, and server stop with WebSockets open."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.support.boshclient import BoshClient
from tests.support.clients import register_account
from tests.support.inprocess import inprocess_server
from tests.support.server import XmppdServer, running_server
from tests.support.wsclient import SASL, WsClient


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(tmp_path_factory.mktemp("https"), http_tls=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    extra = '[http]\nloopback_is_secure = false\ntrusted_proxies = ["127.0.0.0/8"]\n'
    with running_server(tmp_path_factory.mktemp("strict"), http=True, extra=extra) as srv:
        yield srv


def tls_context(server: XmppdServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.cafile))


async def test_https_serves_discovery_and_wss_with_channel_binding(
    https_server: XmppdServer,
) -> None:
    ctx = tls_context(https_server)
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            https_server.http_url + "/.well-known/host-meta.json",
            ssl=ctx,
            server_hostname="localhost",
            headers={"Host": "localhost"},
        ) as r,
    ):
        assert r.status == 200
        links = json.loads(await r.read())["links"]
    assert links == [
        {"rel": "urn:xmpp:alt-connections:websocket", "href": "wss://localhost/xmpp-websocket"},
        {"rel": "urn:xmpp:alt-connections:xbosh", "href": "https://localhost/http-bind"},
    ]
    await register_account(https_server, "wssuser", "pw-wss")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(
            f"wss://127.0.0.1:{https_server.http_port}/xmpp-websocket",
            protocols=("xmpp",),
            ssl=ctx,
            server_hostname="localhost",
        )
        client = WsClient(session, ws)
        try:
            await client.open()
            assert client.features is not None
            mechanisms = [m.text for m in client.features.iter(f"{{{SASL}}}mechanism")]
            assert "SCRAM-SHA-256-PLUS" in mechanisms  # tls-server-end-point over wss
            assert await client.login("wssuser", "pw-wss") == "wssuser@localhost/ws"
        finally:
            await client.close()


async def test_plain_http_is_refused_unless_a_trusted_proxy_says_https(
    strict_server: XmppdServer,
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await WsClient.connect(strict_server)
    assert err.value.status == 403
    client = await WsClient.connect(strict_server, headers={"X-Forwarded-Proto": "https"})
    try:
        await client.open()
        assert client.features is not None
    finally:
        await client.close()


async def test_routes_metrics_and_stop_with_websockets_open(tmp_path: Path) -> None:
    async with inprocess_server(tmp_path, http=True) as srv:
        server = srv.server

        async def hello(request: web.Request) -> web.StreamResponse:
            return web.Response(text="hello")

        # A route added while the server runs is served at once.
        server.core.http.add("GET", "/hello/", hello, owner="test")
        async with aiohttp.ClientSession() as session:
            async with session.get(srv.http_url + "/hello/there") as r:
                assert (r.status, await r.text()) == (200, "hello")
            async with session.get(srv.http_url + "/nowhere") as r:
                assert r.status == 404
        requests = server.metrics.value(
            "xmppd_http_requests_total", {"method": "GET", "status": "200"}
        )
        assert requests is not None and requests >= 1
        assert (
            server.metrics.value("xmppd_http_requests_total", {"method": "GET", "status": "404"})
            == 1
        )

        await register_account(srv, "stopper", "pw-stop")  # type: ignore[arg-type]
        client = await WsClient.connect(srv)  # type: ignore[arg-type]
        await client.login("stopper", "pw-stop")
        idle = await WsClient.connect(srv)  # type: ignore[arg-type]
        await idle.open()  # not logged in
        assert server.metrics.value("xmppd_websocket_connections") == 2
        assert server.metrics.value("xmppd_websocket_sessions_opened_total") == 2
    # The server stopped with both open: the session's stream ended with an error, and
    # every socket was closed.
    assert client.stream_error() == "system-shutdown"
    await client.wait_closed()
    await idle.wait_closed()
    await client.close()
    await idle.close()


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    extra = (
        "[http]\nrequest_header_timeout = 3\nrequest_body_timeout = 2\nmax_connections_per_ip = 3\n"
    )
    with running_server(tmp_path_factory.mktemp("guarded"), http=True, extra=extra) as srv:
        yield srv


async def test_slow_request_headers_are_cut_off(guarded_server: XmppdServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded_server.http_port)
    try:
        writer.write(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\n")
        # Other clients are served meanwhile.
        async with (
            aiohttp.ClientSession() as session,
            session.get(guarded_server.http_url + "/.well-known/host-meta") as r,
        ):
            assert r.status == 200
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed without an answer
    finally:
        writer.close()


async def test_a_slow_bosh_body_is_cut_off(guarded_server: XmppdServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded_server.http_port)
    try:
        writer.write(
            b"POST /http-bind HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: text/xml\r\nContent-Length: 200\r\n\r\n<body xmlns="
        )
        await writer.drain()
        # Other clients are served meanwhile.
        async with (
            aiohttp.ClientSession() as session,
            session.get(guarded_server.http_url + "/.well-known/host-meta") as r,
        ):
            assert r.status == 200
        async with asyncio.timeout(10):
            answer = await reader.read()  # 408, then the end of the connection
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    finally:
        writer.close()


async def test_connections_per_address_are_limited(guarded_server: XmppdServer) -> None:
    held = [await asyncio.open_connection("127.0.0.1", guarded_server.http_port) for _ in range(3)]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", guarded_server.http_port)
        writer.write(b"GET /.well-known/host-meta HTTP/1.1\r\nHost: localhost\r\n\r\n")
        async with asyncio.timeout(10):
            try:
                answer = await reader.read()
            except ConnectionResetError:
                answer = b""
        assert answer == b""  # dropped without an answer: a fourth connection
        writer.close()
    finally:
        for _, w in held:
            w.close()
            await w.wait_closed()
    async with (
        aiohttp.ClientSession() as session,
        session.get(guarded_server.http_url + "/.well-known/host-meta") as r,
    ):
        assert r.status == 200


async def test_bosh_sessions_per_address_are_limited(guarded_server: XmppdServer) -> None:
    url = guarded_server.http_url + "/http-bind"
    async with aiohttp.ClientSession() as http:
        sessions = [BoshClient(http, url) for _ in range(4)]
        for bosh in sessions[:3]:
            assert (await bosh.create()).get("sid")
        refused = await sessions[3].create()
        assert (refused.get("type"), refused.get("condition")) == ("terminate", "policy-violation")
        ended = await sessions[0].send(type="terminate")
        assert ended.get("type") == "terminate"
        assert (await sessions[3].create()).get("sid")  # room again
