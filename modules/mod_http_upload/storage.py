"""Where uploaded files live: a directory on this node's disk, or a bucket of
S3-compatible object storage (AWS S3, MinIO, Ceph, Garage...) that several nodes and a
CDN can share.

Both stores take a file as a stream of chunks of known total size and make it visible
only once it is complete (disk: a temporary name renamed at the end; S3: one PUT of
the object, which the storage commits only when the whole body arrived), so a half
upload is never served; neither holds a file whole in memory. Both serve ``GET`` and
``HEAD`` with ``Range``, ``ETag`` and ``If-None-Match``.

S3 requests are plain HTTP (aiohttp) signed with AWS Signature Version 4 by botocore
(the ``s3`` extra: ``pip install 'xmppd[s3]'``); the body of a PUT is streamed as it
arrives from the client and sent ``UNSIGNED-PAYLOAD`` (hashing it first would mean
holding it whole).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web

CHUNK: Final = 64 * 1024
_FORWARDED_REQUEST: Final = ("Range", "If-None-Match", "If-Range", "If-Modified-Since")
_FORWARDED_RESPONSE: Final = (
    "Content-Length",
    "Content-Range",
    "ETag",
    "Last-Modified",
    "Accept-Ranges",
)
S3_TIMEOUT: Final = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)
"""No total limit (a PUT lasts as long as the client's upload, which has its own
deadline), but a stalled storage is given up."""


_UNSIGNED_PAYLOAD: Final = SimpleNamespace(s3={"payload_signing_enabled": False})
"""What botocore's S3 signer reads to leave the body out of the signature."""


class StoreError(Exception):
    """The storage refused or failed a request."""


class FileStore(Protocol):
    """The storage of uploaded files, keyed by slot."""

    async def start(self) -> None:
        """Get ready (create the directory, open connections)."""

    async def save(self, key: str, body: AsyncIterator[bytes], size: int, ctype: str) -> None:
        """Store ``body`` (exactly ``size`` bytes) under ``key``; nothing is visible
        unless it completes. An exception from ``body`` is raised again."""

    async def serve(
        self, request: web.Request, key: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Answer a GET or HEAD of ``key``, with ``headers`` (type, disposition...)."""

    async def remove(self, key: str) -> None:
        """Delete ``key`` (nothing when it is not there)."""

    async def close(self) -> None:
        """Release connections."""


class DiskStore:
    """Files under one directory, named by slot (the client's name never touches it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def start(self) -> None:
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)

    async def save(self, key: str, body: AsyncIterator[bytes], size: int, ctype: str) -> None:
        part = self.directory / f"{key}.part"
        handle = await asyncio.to_thread(part.open, "wb")
        try:
            try:
                async for chunk in body:
                    await asyncio.to_thread(handle.write, chunk)
            finally:
                await asyncio.to_thread(handle.close)
            await asyncio.to_thread(part.replace, self.directory / key)
        except BaseException:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise

    async def serve(
        self, request: web.Request, key: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        return web.FileResponse(self.directory / key, chunk_size=CHUNK, headers=headers)

    async def remove(self, key: str) -> None:
        await asyncio.to_thread((self.directory / key).unlink, missing_ok=True)

    async def close(self) -> None:
        return None


class S3Store:
    """Objects ``<prefix><slot>`` in one bucket, path-style URLs
    (``<endpoint>/<bucket>/<key>``, which every S3-compatible store accepts)."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        prefix: str,
    ) -> None:
        try:
            from botocore.auth import S3SigV4Auth
            from botocore.credentials import Credentials
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError("S3 storage needs botocore: pip install 'xmppd[s3]'") from exc
        self._base = f"{endpoint.rstrip('/')}/{quote(bucket)}/"
        self._prefix = prefix
        self._signer: Any = S3SigV4Auth(Credentials(access_key, secret_key), "s3", region)
        self._session: aiohttp.ClientSession | None = None

    def _url(self, key: str) -> str:
        return self._base + quote(self._prefix + key)

    def _sign(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        """SigV4 headers for a request whose body is not hashed."""
        from botocore.awsrequest import AWSRequest

        request: Any = AWSRequest(method=method, url=url, headers=headers)
        # Sign the headers only: the body streams through, unhashed (allowed by S3
        # for any request; TLS to the endpoint protects it on the way).
        request.context["client_config"] = _UNSIGNED_PAYLOAD
        self._signer.add_auth(request)
        assert request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
        return {k: str(v) for k, v in request.headers.items()}

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=S3_TIMEOUT, auto_decompress=False)
        return self._session

    async def start(self) -> None:
        return None

    async def save(self, key: str, body: AsyncIterator[bytes], size: int, ctype: str) -> None:
        url = self._url(key)
        headers = self._sign("PUT", url, {"Content-Length": str(size), "Content-Type": ctype})
        failure: list[BaseException] = []

        async def relay() -> AsyncIterator[bytes]:
            # The client's error (too slow, too long, gone) must abort the S3 request,
            # so that the storage never commits a partial object.
            try:
                async for chunk in body:
                    yield chunk
            except BaseException as exc:
                failure.append(exc)
                raise

        try:
            async with self.session.put(url, data=relay(), headers=headers) as r:
                if r.status != 200:
                    raise StoreError(f"S3 PUT answered {r.status}: {(await r.text())[:200]}")
        except BaseException:
            if failure:
                raise failure[0] from None
            raise

    async def serve(
        self, request: web.Request, key: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        url = self._url(key)
        method = "HEAD" if request.method == "HEAD" else "GET"
        wanted = {h: request.headers[h] for h in _FORWARDED_REQUEST if h in request.headers}
        signed = self._sign(method, url, wanted)
        try:
            return await self._relay(request, method, url, signed, headers)
        except aiohttp.ClientError as exc:  # the storage is unreachable
            raise web.HTTPBadGateway(headers=_cors(headers), text=f"storage: {exc}\n") from None

    async def _relay(
        self,
        request: web.Request,
        method: str,
        url: str,
        signed: dict[str, str],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        async with self.session.request(method, url, headers=signed) as r:
            if r.status == 404:
                raise web.HTTPNotFound(headers=_cors(headers))
            if r.status not in (200, 206, 304, 416):
                raise web.HTTPBadGateway(headers=_cors(headers))
            out = dict(headers)
            for name in _FORWARDED_RESPONSE:
                if name in r.headers:
                    out[name] = r.headers[name]
            out.setdefault("Accept-Ranges", "bytes")
            response = web.StreamResponse(status=r.status, headers=out)
            if r.status in (304, 416) or method == "HEAD":
                if r.status in (304, 416):
                    response.headers.pop("Content-Length", None)
                await response.prepare(request)
                await response.write_eof()
                return response
            await response.prepare(request)
            async for chunk in r.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def remove(self, key: str) -> None:
        url = self._url(key)
        async with self.session.delete(url, headers=self._sign("DELETE", url, {})) as r:
            if r.status not in (200, 204, 404):
                raise StoreError(f"S3 DELETE answered {r.status}")

    async def close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None


def _cors(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.startswith("Access-Control-")}
