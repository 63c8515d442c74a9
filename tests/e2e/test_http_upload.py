"""XEP-0363 HTTP File Upload on upload.localhost: slixmpp's xep_0363 uploads, another
client downloads byte-identical (with Range, ETag, CORS); slot errors (too large, over
quota), PUT errors (no or bad header, wrong size, reused slot), a file name that tries
to escape, active content served as an attachment, files removed with the account."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from lxml import etree

from tests.conftest import BACKENDS
from tests.support.clients import Slix, register_account
from tests.support.inprocess import inprocess_server
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient, error_condition

NS = "urn:xmpp:http:upload:0"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def upload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "http_upload": {"max_file_size": "6MiB", "quota": "12MiB"},
    }
    with running_server(tmp_path_factory.mktemp("upload"), http=True, modules=modules) as srv:
        yield srv


async def request_slot(
    client: XmlClient, name: str, size: int, ctype: str = "application/octet-stream"
) -> etree._Element:
    return await client.iq(
        "get",
        f"<request xmlns='{NS}' filename='{name}' size='{size}' content-type='{ctype}'/>",
        to="upload.localhost",
    )


def slot_urls(reply: etree._Element) -> tuple[str, dict[str, str], str]:
    put = reply.find(f"{{{NS}}}slot/{{{NS}}}put")
    get = reply.find(f"{{{NS}}}slot/{{{NS}}}get")
    assert put is not None and get is not None, etree.tostring(reply)
    headers = {h.get("name") or "": h.text or "" for h in put}
    return put.get("url") or "", headers, get.get("url") or ""


async def test_slixmpp_uploads_and_another_client_downloads_it(upload_server: XmppdServer) -> None:
    await register_account(upload_server, "uploader", "pw-up")
    data = os.urandom(5 * MiB)
    slix = Slix(
        upload_server,
        "uploader@localhost",
        "pw-up",
        plugins=("xep_0030", "xep_0363"),
    )
    async with slix:
        url = await slix.xmpp.plugin["xep_0363"].upload_file(
            "holiday.jpg", size=len(data), content_type="image/jpeg", input_file=io.BytesIO(data)
        )
        assert slix.xmpp.plugin["xep_0363"].max_file_size == 6 * MiB  # from disco#info
    assert url.startswith(f"{upload_server.http_url}/upload/") and url.endswith("/holiday.jpg")
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Origin": "https://web.example"}) as r:
            assert r.status == 200
            assert await r.read() == data
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.headers["Content-Disposition"].startswith("inline")
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            etag = r.headers["ETag"]
        async with http.get(url, headers={"Range": "bytes=1000-1999"}) as r:
            assert r.status == 206
            assert await r.read() == data[1000:2000]
            assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
        async with http.get(url, headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.options(
            url,
            headers={"Origin": "https://web.example", "Access-Control-Request-Method": "PUT"},
        ) as r:
            assert r.status == 204
            assert "PUT" in r.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]


async def test_slot_errors(upload_server: XmppdServer) -> None:
    await register_account(upload_server, "slotter", "pw-slot")
    async with await XmlClient.login(upload_server, "slotter@localhost", "pw-slot") as client:
        reply = await request_slot(client, "big.mkv", 7 * MiB)
        assert reply.get("type") == "error" and error_condition(reply) == "not-acceptable"
        limit = reply.findtext(f".//{{{NS}}}file-too-large/{{{NS}}}max-file-size")
        assert limit == str(6 * MiB)
        reply = await request_slot(client, "zero.bin", 0)
        assert error_condition(reply) == "bad-request"
        # The quota (12 MiB) counts reserved slots too.
        for _ in range(2):
            assert (await request_slot(client, "part.bin", 5 * MiB)).get("type") == "result"
        reply = await request_slot(client, "part.bin", 5 * MiB)
        assert error_condition(reply) == "resource-constraint"


async def test_put_needs_the_slot_header_and_size_and_works_once(
    upload_server: XmppdServer,
) -> None:
    await register_account(upload_server, "putter", "pw-put")
    async with await XmlClient.login(upload_server, "putter@localhost", "pw-put") as client:
        put_url, headers, get_url = slot_urls(
            await request_slot(client, "note.txt", 5, "text/plain")
        )
    async with aiohttp.ClientSession() as http:
        async with http.get(get_url) as r:
            assert r.status == 404  # nothing uploaded yet
        async with http.put(put_url, data=b"hello") as r:
            assert r.status == 401
        bad = {"Authorization": headers["Authorization"][:-4] + "0000"}
        async with http.put(put_url, data=b"hello", headers=bad) as r:
            assert r.status == 403
        async with http.put(put_url, data=b"hello world", headers=headers) as r:
            assert r.status == 413
        async with http.put(put_url, data=b"hell", headers=headers) as r:
            assert r.status == 400
        async with http.put(
            put_url, data=b"hello", headers={**headers, "Content-Type": "text/html"}
        ) as r:
            assert r.status == 400
        async with http.put(
            put_url, data=b"hello", headers={**headers, "Content-Type": "text/plain"}
        ) as r:
            assert r.status == 201
        async with http.put(put_url, data=b"hello", headers=headers) as r:
            assert r.status == 409  # a slot is used once
        async with http.get(get_url) as r:
            assert (r.status, await r.read()) == (200, b"hello")


async def test_file_names_cannot_escape_and_active_content_is_an_attachment(
    upload_server: XmppdServer,
) -> None:
    await register_account(upload_server, "sneaky", "pw-sneak")
    async with await XmlClient.login(upload_server, "sneaky@localhost", "pw-sneak") as client:
        put_url, headers, get_url = slot_urls(
            await request_slot(client, "../../../etc/passwd.html", 12, "text/html")
        )
        assert get_url.endswith("/passwd.html") and ".." not in get_url
        put_url2, headers2, get_url2 = slot_urls(
            await request_slot(client, "/abs/x.svg", 4, "image/svg+xml")
        )
        assert get_url2.endswith("/x.svg")
    async with aiohttp.ClientSession() as http:
        html = {**headers, "Content-Type": "text/html"}
        async with http.put(put_url, data=b"<script></script>"[:12], headers=html) as r:
            assert r.status == 201
        async with http.get(get_url) as r:
            assert r.status == 200
            assert r.headers["Content-Disposition"].startswith("attachment")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        svg = {**headers2, "Content-Type": "image/svg+xml"}
        async with http.put(put_url2, data=b"<sv>", headers=svg) as r:
            assert r.status == 201
        async with http.get(get_url2) as r:
            assert r.headers["Content-Disposition"].startswith("attachment")
    stored = sorted(p.name for p in (upload_server.data_dir / "mod_http_upload").iterdir())
    slots = {get_url.rsplit("/", 2)[1], get_url2.rsplit("/", 2)[1]}
    assert slots <= set(stored)  # stored under the slot id, not under the client's name
    assert all("." not in name for name in stored)
    assert not (upload_server.data_dir / "etc").exists()


async def test_an_accounts_files_go_with_it(upload_server: XmppdServer) -> None:
    await register_account(upload_server, "leaver", "pw-leave")
    async with await XmlClient.login(upload_server, "leaver@localhost", "pw-leave") as client:
        put_url, headers, get_url = slot_urls(
            await request_slot(client, "bye.txt", 3, "text/plain")
        )
        async with (
            aiohttp.ClientSession() as http,
            http.put(put_url, data=b"bye", headers={**headers, "Content-Type": "text/plain"}) as r,
        ):
            assert r.status == 201
        reply = await client.iq(
            "set", "<query xmlns='jabber:iq:register'><remove/></query>", to=None
        )
        assert reply.get("type") == "result"
    # The server answers before it deletes the account's data (the session goes with
    # it): the file is gone once that is done, within moments.
    deadline = asyncio.get_running_loop().time() + 15
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(get_url) as r:
                if r.status == 404:
                    break
                assert r.status == 200
            assert asyncio.get_running_loop().time() < deadline, "the file outlived its account"
            await asyncio.sleep(0.1)


def test_the_example_config_documents_the_module(tmp_path: Path) -> None:
    """config/xmppd.toml shows the module commented out; uncommented, it is valid."""
    example = Path(__file__).parents[2] / "config" / "xmppd.toml"
    lines = example.read_text().splitlines()
    start = lines.index("# [modules.http_upload]")
    end = lines.index("", start)
    for i in range(start, end):
        if lines[i].startswith("# [") or " = " in lines[i]:
            lines[i] = lines[i].removeprefix("# ")
    config = tmp_path / "xmppd.toml"
    config.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "xmppd", "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[modules.http_upload]" in lines[start]


async def test_old_files_and_unused_slots_expire(tmp_path: Path) -> None:
    from xmppd_modules.mod_http_upload import expire

    modules = {**DEFAULT_TEST_MODULES, "http_upload": {}}
    async with inprocess_server(tmp_path, http=True, modules=modules) as srv:
        await register_account(srv, "keeper", "pw-keep")  # type: ignore[arg-type]
        async with await XmlClient.login(srv, "keeper@localhost", "pw-keep") as client:  # type: ignore[arg-type]
            put_url, headers, get_url = slot_urls(
                await request_slot(client, "old.txt", 3, "text/plain")
            )
            unused = slot_urls(await request_slot(client, "never.txt", 3, "text/plain"))[2]
        async with aiohttp.ClientSession() as http:
            text = {**headers, "Content-Type": "text/plain"}
            async with http.put(put_url, data=b"old", headers=text) as r:
                assert r.status == 201
            ctx = srv.server.modules.context("http_upload", "localhost")
            assert ctx is not None
            assert await expire(ctx) == 0  # nothing is old yet
            assert await expire(ctx, now=time.time() + 31 * 86400) == 2  # file + unused slot
            for url in (get_url, unused):
                async with http.get(url) as r:
                    assert r.status == 404
        assert list((srv.data_dir / "mod_http_upload").iterdir()) == []


@pytest.fixture(scope="module")
def strict_upload_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "http_upload": {"min_put_rate": 1000, "put_grace": "1s", "put_timeout": "1h"},
    }
    with running_server(tmp_path_factory.mktemp("slowput"), http=True, modules=modules) as srv:
        yield srv


async def test_a_slow_upload_body_is_cut_off_and_never_served(
    strict_upload_server: XmppdServer,
) -> None:
    srv = strict_upload_server
    await register_account(srv, "trickler", "pw-trickle")
    async with await XmlClient.login(srv, "trickler@localhost", "pw-trickle") as client:
        # 2000 bytes at 1000 B/s at least, plus 1 s: 3 s in all.
        put_url, headers, get_url = slot_urls(await request_slot(client, "slow.bin", 2000))
        other_put, other_headers, other_get = slot_urls(await request_slot(client, "ok.bin", 10))
    url = urlsplit(put_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(
            f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: {headers['Authorization']}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 2000\r\n\r\n".encode()
            + b"x" * 100
        )
        await writer.drain()
        # Another upload on the same server goes through meanwhile.
        async with aiohttp.ClientSession() as http:
            async with http.put(other_put, data=b"0123456789", headers=other_headers) as r:
                assert r.status == 201
            async with http.get(other_get) as r:
                assert await r.read() == b"0123456789"
        started = time.monotonic()
        async with asyncio.timeout(15):
            answer = await reader.read()  # the answer, then the end of the connection
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert time.monotonic() - started < 10
    finally:
        writer.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(get_url) as r:
            assert r.status == 404  # the half upload is never served
        assert not [p for p in (srv.data_dir / "mod_http_upload").iterdir() if "." in p.name]
        # The slot may be tried again, at a decent rate.
        async with http.put(put_url, data=b"y" * 2000, headers=headers) as r:
            assert r.status == 201
        async with http.get(get_url) as r:
            assert await r.read() == b"y" * 2000


async def test_an_expired_slot_is_gone(tmp_path: Path) -> None:
    """A PUT whose signed expiry has passed gets 410 (the header is signed here with the
    server's own key, as the slot request would have signed it earlier)."""
    from xmppd_modules.mod_http_upload import _token

    modules = {**DEFAULT_TEST_MODULES, "http_upload": {}}
    async with inprocess_server(tmp_path, http=True, modules=modules) as srv:
        await register_account(srv, "latecomer", "pw-late")  # type: ignore[arg-type]
        async with await XmlClient.login(srv, "latecomer@localhost", "pw-late") as client:  # type: ignore[arg-type]
            put_url, headers, get_url = slot_urls(
                await request_slot(client, "late.txt", 4, "text/plain")
            )
        ctx = srv.server.modules.context("http_upload", "localhost")
        assert ctx is not None
        slot = urlsplit(put_url).path.split("/")[2]
        expired = int(time.time()) - 1
        token = _token(ctx.derived_key("slots"), slot, "late.txt", 4, "text/plain", expired)
        late = {"Authorization": f"Bearer {expired}.{token}", "Content-Type": "text/plain"}
        async with aiohttp.ClientSession() as http:
            async with http.put(put_url, data=b"late", headers=late) as r:
                assert r.status == 410
            async with http.get(get_url) as r:
                assert r.status == 404
            # The slot's own (unexpired) header still works.
            async with http.put(
                put_url,
                data=b"late",
                headers={**headers, **late, "Authorization": headers["Authorization"]},
            ) as r:
                assert r.status == 201


@pytest.fixture(scope="module", params=BACKENDS)
def quota_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    upload = {"max_file_size": "6MiB", "quota": "12MiB", "max_files": 5}
    modules = {**DEFAULT_TEST_MODULES, "http_upload": upload}
    tmp = tmp_path_factory.mktemp(f"quota-{request.param}")
    with running_server(tmp, http=True, modules=modules, backend=request.param) as srv:
        yield srv


async def test_slot_requests_at_once_do_not_overrun_the_quota(quota_server: XmppdServer) -> None:
    """Eight 5 MiB slots asked at the same moment from four devices of one account:
    the 12 MiB quota grants two, whatever the order the server handles them in (the
    quota was summed, checked and the slot stored in three steps, and requests in
    between all saw the quota free)."""
    await register_account(quota_server, "hoarder", "pw-hoard")
    clients = [
        await XmlClient.login(quota_server, "hoarder@localhost", "pw-hoard", resource=f"d{i}")
        for i in range(4)
    ]
    try:
        replies = await asyncio.gather(
            *(request_slot(c, f"part{i}.bin", 5 * MiB) for c in clients for i in range(2))
        )
    finally:
        for c in clients:
            await c.close()
    granted = [r for r in replies if r.get("type") == "result"]
    refused = [error_condition(r) for r in replies if r.get("type") == "error"]
    assert len(granted) == 2
    assert refused == ["resource-constraint"] * 6


async def test_tiny_files_are_counted_too(quota_server: XmppdServer) -> None:
    """The byte quota alone would allow a million one-byte files, a row each."""
    await register_account(quota_server, "tiny", "pw-tiny")
    async with await XmlClient.login(quota_server, "tiny@localhost", "pw-tiny") as client:
        for i in range(5):
            assert (await request_slot(client, f"b{i}.bin", 1)).get("type") == "result"
        reply = await request_slot(client, "b5.bin", 1)
        assert error_condition(reply) == "resource-constraint"
