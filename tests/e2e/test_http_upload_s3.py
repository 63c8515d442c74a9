"""XEP-0363 uploads stored in S3-compatible object storage (moto in server mode): the
same URLs, limits and headers as on disk; the objects live in the bucket under the
configured prefix (nothing on the node's disk); a half upload never becomes an object;
an account's files go with it."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.e2e.test_http_upload import request_slot, slot_urls
from tests.support.clients import register_account
from tests.support.inprocess import inprocess_server
from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, S3Server, running_s3
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, free_port, running_server
from tests.support.xmlclient import XmlClient

BUCKET = "xmppd-uploads"
PREFIX = "files/"
MiB = 1024 * 1024


def s3_options(s3: S3Server) -> dict[str, str]:
    return {
        "storage": "s3",
        "s3_endpoint": s3.endpoint,
        "s3_bucket": BUCKET,
        "s3_region": REGION,
        "s3_access_key": ACCESS_KEY,
        "s3_secret_key": SECRET_KEY,
        "s3_prefix": PREFIX,
    }


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("moto")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="module")
def s3_upload_server(
    s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "http_upload": {**s3_options(s3), "max_file_size": "8MiB"}}
    with running_server(tmp_path_factory.mktemp("s3up"), http=True, modules=modules) as srv:
        yield srv


async def test_files_go_to_the_bucket_and_come_back_with_ranges_and_etags(
    s3: S3Server, s3_upload_server: XmppdServer
) -> None:
    srv = s3_upload_server
    await register_account(srv, "s3user", "pw-s3")
    data = os.urandom(5 * MiB + 123)
    async with await XmlClient.login(srv, "s3user@localhost", "pw-s3") as client:
        put_url, headers, get_url = slot_urls(
            await request_slot(client, "clip.mp4", len(data), "video/mp4")
        )
        too_big = await request_slot(client, "huge.bin", 9 * MiB)
        assert too_big.get("type") == "error"
    slot = urlsplit(get_url).path.split("/")[2]
    async with aiohttp.ClientSession() as http:
        async with http.get(get_url) as r:
            assert r.status == 404
        async with http.put(put_url, data=data[:10], headers=headers) as r:
            assert r.status == 400  # not the slot's size
        async with http.put(
            put_url, data=io.BytesIO(data), headers={**headers, "Content-Type": "video/mp4"}
        ) as r:
            assert r.status == 201
        async with http.put(put_url, data=io.BytesIO(data), headers=headers) as r:
            assert r.status == 409
        assert await asyncio.to_thread(s3.keys, BUCKET, PREFIX) == [PREFIX + slot]
        async with http.get(get_url) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "video/mp4"
            assert r.headers["Content-Disposition"].startswith("inline")
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert await r.read() == data
            etag = r.headers["ETag"]
        async with http.get(get_url, headers={"Range": "bytes=1000-1999"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
            assert await r.read() == data[1000:2000]
        async with http.get(get_url, headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.head(get_url) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(len(data))
    assert not (srv.data_dir / "mod_http_upload").exists() or not any(
        (srv.data_dir / "mod_http_upload").iterdir()
    )


async def test_active_content_is_an_attachment_and_a_half_upload_is_no_object(
    s3: S3Server, s3_upload_server: XmppdServer
) -> None:
    srv = s3_upload_server
    await register_account(srv, "s3page", "pw-page")
    async with await XmlClient.login(srv, "s3page@localhost", "pw-page") as client:
        put_url, headers, get_url = slot_urls(await request_slot(client, "p.html", 12, "text/html"))
        half_put, half_headers, half_get = slot_urls(await request_slot(client, "half.bin", MiB))
    async with aiohttp.ClientSession() as http:
        async with http.put(
            put_url, data=b"<b>hello</b>", headers={**headers, "Content-Type": "text/html"}
        ) as r:
            assert r.status == 201
        async with http.get(get_url) as r:
            assert r.headers["Content-Disposition"].startswith("attachment")
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert await r.read() == b"<b>hello</b>"
    # A client that goes away half way: nothing is stored, nothing served.
    url = urlsplit(half_put)
    _reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: {half_headers['Authorization']}\r\n"
        f"Content-Length: {MiB}\r\n\r\n".encode()
        + b"h" * (MiB // 2)
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    slot = urlsplit(half_get).path.split("/")[2]
    async with aiohttp.ClientSession() as http:
        # Once the server saw the client go, the slot is free again (a PUT of the wrong
        # size is refused as such, not as a used slot), and nothing was stored.
        for _ in range(100):
            async with http.put(half_put, data=b"x", headers=half_headers) as r:
                if r.status != 409:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 400
        assert PREFIX + slot not in await asyncio.to_thread(s3.keys, BUCKET, PREFIX)
        async with http.get(half_get) as r:
            assert r.status == 404
        async with http.put(half_put, data=io.BytesIO(b"k" * MiB), headers=half_headers) as r:
            assert r.status == 201
        async with http.get(half_get) as r:
            assert await r.read() == b"k" * MiB
    assert PREFIX + slot in await asyncio.to_thread(s3.keys, BUCKET, PREFIX)


async def test_an_accounts_objects_go_with_it(s3: S3Server, s3_upload_server: XmppdServer) -> None:
    srv = s3_upload_server
    await register_account(srv, "s3leaver", "pw-leave")
    async with await XmlClient.login(srv, "s3leaver@localhost", "pw-leave") as client:
        put_url, headers, get_url = slot_urls(
            await request_slot(client, "bye.txt", 3, "text/plain")
        )
        async with (
            aiohttp.ClientSession() as http,
            http.put(put_url, data=b"bye", headers={**headers, "Content-Type": "text/plain"}) as r,
        ):
            assert r.status == 201
        slot = urlsplit(get_url).path.split("/")[2]
        assert PREFIX + slot in await asyncio.to_thread(s3.keys, BUCKET, PREFIX)
        reply = await client.iq(
            "set", "<query xmlns='jabber:iq:register'><remove/></query>", to=None
        )
        assert reply.get("type") == "result"
    # The files go in the background of the removal: the row last, after the object.
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(get_url) as r:
                if r.status == 404:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 404
    assert PREFIX + slot not in await asyncio.to_thread(s3.keys, BUCKET, PREFIX)


async def test_old_objects_and_unused_slots_expire(s3: S3Server, tmp_path: Path) -> None:
    from xmppd_modules.mod_http_upload import expire

    prefix = "expiry/"
    modules = {**DEFAULT_TEST_MODULES, "http_upload": {**s3_options(s3), "s3_prefix": prefix}}
    async with inprocess_server(tmp_path, http=True, modules=modules) as srv:
        await register_account(srv, "s3keeper", "pw-keep")  # type: ignore[arg-type]
        async with await XmlClient.login(srv, "s3keeper@localhost", "pw-keep") as client:  # type: ignore[arg-type]
            put_url, headers, get_url = slot_urls(
                await request_slot(client, "old.txt", 3, "text/plain")
            )
            unused = slot_urls(await request_slot(client, "never.txt", 3, "text/plain"))[2]
        async with aiohttp.ClientSession() as http:
            text = {**headers, "Content-Type": "text/plain"}
            async with http.put(put_url, data=b"old", headers=text) as r:
                assert r.status == 201
            slot = urlsplit(get_url).path.split("/")[2]
            assert await asyncio.to_thread(s3.keys, BUCKET, prefix) == [prefix + slot]
            ctx = srv.server.modules.context("http_upload", "localhost")
            assert ctx is not None
            assert await expire(ctx) == 0  # nothing is old yet
            assert await expire(ctx, now=time.time() + 31 * 86400) == 2  # file + unused slot
            for url in (get_url, unused):
                async with http.get(url) as r:
                    assert r.status == 404
        assert await asyncio.to_thread(s3.keys, BUCKET, prefix) == []


async def test_unreachable_storage_is_a_bad_gateway(tmp_path: Path) -> None:
    nobody = S3Server(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    modules = {**DEFAULT_TEST_MODULES, "http_upload": s3_options(nobody)}
    async with inprocess_server(tmp_path, http=True, modules=modules) as srv:
        await register_account(srv, "s3lost", "pw-lost")  # type: ignore[arg-type]
        async with await XmlClient.login(srv, "s3lost@localhost", "pw-lost") as client:  # type: ignore[arg-type]
            put_url, headers, get_url = slot_urls(
                await request_slot(client, "lost.txt", 4, "text/plain")
            )
        async with aiohttp.ClientSession() as http:
            text = {**headers, "Content-Type": "text/plain"}
            async with http.put(put_url, data=b"lost", headers=text) as r:
                assert r.status == 502
            async with http.get(get_url) as r:
                assert r.status == 404  # never stored
            async with http.put(put_url, data=b"lost", headers=text) as r:
                assert r.status == 502  # the slot may be tried again


def test_s3_storage_needs_its_settings() -> None:
    from xmppd_modules.mod_http_upload import UploadOptions

    with pytest.raises(ValueError, match="s3_endpoint, s3_bucket, s3_access_key, s3_secret_key"):
        UploadOptions.model_validate({"storage": "s3"})
    opts = UploadOptions.model_validate(
        {
            "storage": "s3",
            "s3_endpoint": "https://s3.example.org",
            "s3_bucket": "b",
            "s3_access_key": "k",
            "s3_secret_key": "very-secret",
        }
    )
    assert "very-secret" not in repr(opts)
