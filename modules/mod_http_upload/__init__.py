"""XEP-0363: HTTP File Upload — a service at ``upload.<host>`` and its HTTP handlers.

A client asks the service for a **slot** (file name, size, content type); the answer
holds a PUT URL with an ``Authorization`` header to send, and the GET URL to share
(XEP-0066 out-of-band data in a message, for example). URLs are
``<base>/upload/<slot>/<name>``: the slot is 24 random bytes, so unguessable, and the
header is an HMAC of the slot's terms (slot, name, size, type, expiry) under a key
derived from the server secret, so any node sharing the secret can check it.

- The **PUT** is accepted once, within ``slot_lifetime``, with the header, the exact
  size and the slot's content type; the body is streamed to the store and becomes
  visible only when complete, so a half upload is never served. It must arrive within
  ``put_grace + size / min_put_rate`` (at most ``put_timeout``): a slower client gets
  408, its connection is closed and the slot may be tried again.
  Other PUTs get 401/403 (bad or missing header), 409 (reused slot), 410 (expired
  slot), 413 or 400 (size).
- The **GET** (and HEAD) serves the file with its type, ``Content-Disposition:
  attachment`` for types a browser could run (HTML, SVG, XML, scripts), ``Range``
  (seeking in a video), ``ETag``/``If-None-Match``; ``nosniff``.
- **CORS**: PUT, GET, HEAD and the OPTIONS preflight answer any origin (the PUT is
  authorised by its header, not by cookies), so browser clients can upload.
- **Limits**: ``max_file_size`` (larger: ``not-acceptable`` with ``<file-too-large>``
  and the limit), a per-user ``quota`` of stored and reserved bytes
  (``resource-constraint``; one owner's slot requests take turns, on every node, so
  requests at once cannot overrun it), who may upload (``access``; others ``forbidden``).
  Files older than ``expire_after`` are deleted; so are an account's files when the
  account is removed.
- The service is listed in the host's disco#items; its disco#info has the
  ``max-file-size`` form (XEP-0363 §4).

Files live in a directory (``storage = "disk"``: the module's data directory, or
``directory``, which the nodes of a cluster must all mount) or in a bucket of
S3-compatible object storage (``storage = "s3"``), which several nodes and a CDN can
share: same URLs, limits and headers (:mod:`.storage`). Slots are rows of the shared
database and their header is checked with the shared server secret, so in a cluster
the slot requested on one node is PUT and fetched through any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import mimetypes
import secrets
import time
from collections.abc import AsyncIterator
from hashlib import sha256
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp
from aiohttp import web
from pydantic import Field, SecretStr, model_validator

from xmppd.api import (
    AccessRule,
    Duration,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    ServiceDomain,
    ServiceKey,
    Size,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.hooks import UserEvent, UserFile
from xmppd.api.stanza import Element, child, payload
from xmppd.api.storage import (
    BigInteger,
    Column,
    Float,
    String,
    delete,
    func,
    sa,
    select,
    update,
)
from xmppd_modules.mod_http_upload.storage import DiskStore, FileStore, S3Store, StoreError

Row = sa.Row[Any]

NS: Final = ns.HTTP_UPLOAD
PATH: Final = "/upload/"
CHUNK: Final = 64 * 1024
ACTIVE_TYPES: Final = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
        "application/ecmascript",
        "text/ecmascript",
        "application/wasm",
        "application/pdf",
    }
)
"""Types a browser could run or render with scripts: served as attachments."""
CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, PUT, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, ETag",
    "Access-Control-Max-Age": "86400",
}


class UploadOptions(Options):
    domain: str = Field(
        "", max_length=255, description="Domain of the service; empty: 'upload.' + the host."
    )
    name: str = Field("HTTP File Upload", max_length=200, description="Name in disco.")
    max_file_size: Size = Field(
        100 * 1024 * 1024, ge=1, description="Largest file; larger requests get file-too-large."
    )
    quota: Size = Field(
        1024 * 1024 * 1024,
        ge=1,
        description="Bytes one user may have stored (and reserved by open slots); then "
        "resource-constraint until old files expire.",
    )
    max_files: int = Field(
        10_000,
        ge=1,
        description="Files one user may have stored (and reserved by open slots), however "
        "small; then resource-constraint until old files expire.",
    )
    expire_after: Duration = Field(
        30 * 86400.0, gt=0, description="Uploaded files are deleted this long after upload."
    )
    slot_lifetime: Duration = Field(
        300.0, ge=10, le=86400, description="Time a client has to PUT the file of a slot."
    )
    access: AccessRule = Field(
        AccessRule("local"),
        description="Who may request slots: 'local' (accounts of this server), 'anyone', "
        "'admins', 'nobody', or a list of JIDs and domains. Others get forbidden.",
    )
    put_timeout: Duration = Field(
        3600.0,
        ge=1,
        description="Longest a PUT may take, whatever its size; then the connection is "
        "closed (408) and the partial file deleted (the slot may be tried again).",
    )
    min_put_rate: Size = Field(
        8 * 1024,
        ge=0,
        description="Slowest average rate of a PUT body, in bytes per second: a PUT of "
        "N bytes must end within put_grace + N / min_put_rate (slow-body attacks "
        "hold a connection and a file open); 0: only put_timeout.",
    )
    put_grace: Duration = Field(
        30.0, ge=1, description="Time a PUT gets on top of what min_put_rate allows."
    )
    storage: Literal["disk", "s3"] = Field(
        "disk",
        description="Where files live: 'disk' (a directory: see 'directory') or 's3' (a "
        "bucket of S3-compatible object storage, shared by every node).",
    )
    directory: str = Field(
        "",
        max_length=4096,
        description="storage = 'disk': the directory of the files. Empty: the module's "
        "data directory on this node. In a cluster every node must see the same files: "
        "a directory all nodes mount (NFS, a shared volume), or storage = 's3'.",
    )
    s3_endpoint: str = Field(
        "",
        max_length=500,
        pattern=r"^(https?://[^\s/]+/?)?$",
        description="S3: the endpoint URL, such as https://s3.eu-west-1.amazonaws.com or "
        "http://127.0.0.1:9000 (MinIO); requests use path-style URLs.",
    )
    s3_bucket: str = Field("", max_length=63, description="S3: the bucket (created beforehand).")
    s3_region: str = Field("us-east-1", max_length=50, description="S3: the signing region.")
    s3_access_key: str = Field("", max_length=200, description="S3: the access key id.")
    s3_secret_key: SecretStr = Field(
        SecretStr(""), description="S3: the secret access key (never logged)."
    )
    s3_prefix: str = Field(
        "", max_length=200, description="S3: prefix of the object keys, such as 'upload/'."
    )
    sweep_interval: Duration = Field(
        3600.0, ge=1, description="How often expired files and unused slots are removed."
    )

    @model_validator(mode="after")
    def _s3_complete(self) -> UploadOptions:
        if self.storage == "s3":
            missing = [
                name
                for name in ("s3_endpoint", "s3_bucket", "s3_access_key")
                if not getattr(self, name)
            ]
            if not self.s3_secret_key.get_secret_value():
                missing.append("s3_secret_key")
            if missing:
                raise ValueError(f"storage = 's3' needs {', '.join(missing)}")
        return self


module = Module(
    "http_upload",
    "XEP-0363: HTTP File Upload",
    options=UploadOptions,
    soft_depends=("disco",),
    protocols=("XEP-0363 v1.1",),
)
Ctx = ModuleContext[UploadOptions]

files_table: Final = module.table(
    "files",
    Column("slot", String(64), primary_key=True),
    Column("owner", String(3071), nullable=False),  # bare JID
    Column("name", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("state", String(16), nullable=False),  # reserved, uploading, stored
    schema_version=1,
)
"""One row per slot: reserved at the request, stored once the PUT completed."""
_F: Final = files_table.c


STORE: Final = ServiceKey[FileStore]("http_upload.store")
"""The host's file store."""


def _make_store(ctx: Ctx) -> FileStore:
    opts = ctx.options
    if opts.storage == "s3":
        return S3Store(
            endpoint=opts.s3_endpoint,
            bucket=opts.s3_bucket,
            region=opts.s3_region,
            access_key=opts.s3_access_key,
            secret_key=opts.s3_secret_key.get_secret_value(),
            prefix=opts.s3_prefix,
        )
    return DiskStore(disk_directory(ctx))


def disk_directory(ctx: Ctx) -> Path:
    """Where ``storage = 'disk'`` keeps the files."""
    return Path(ctx.options.directory) if ctx.options.directory else ctx.data_dir


def service_domain(ctx: Ctx) -> str:
    return ctx.options.domain or f"upload.{ctx.domain}"


def _safe_name(name: str) -> str:
    """The file name as the URL's last segment: no path, no control characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip().lstrip(".")
    return name[:200] or "file"


def _token(key: bytes, slot: str, name: str, size: int, ctype: str, expires: int) -> str:
    message = "\0".join((slot, name, str(size), ctype, str(expires))).encode()
    return hmac.new(key, message, sha256).hexdigest()


# ---------------------------------------------------------------------- the service


@module.on_load
async def serve(ctx: Ctx) -> None:
    domain = service_domain(ctx)
    ctx.metrics.counter("upload_bytes", "Bytes uploaded").labels()  # present from the start
    service = ServiceDomain(ctx, domain, name=ctx.options.name)
    service.identity("store", "file", ctx.options.name)
    service.feature(NS)

    @service.iq("get", NS, "request")
    async def slot(req: IqRequest) -> Element:
        return await _slot(ctx, req)

    async def disco_info(req: IqRequest) -> Element:
        if req.payload.get("node") is not None or req.to.local or req.to.resource:
            raise StanzaError("item-not-found")
        query = payload(ns.DISCO_INFO, "query")
        child(query, "identity", {"category": "store", "type": "file", "name": ctx.options.name})
        for feature in service.features:
            child(query, "feature", {"var": feature})
        form = child(query, "x", {"type": "result"}, namespace=ns.DATA_FORMS)
        hidden = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
        child(hidden, "value", text=NS)
        size = child(form, "field", {"var": "max-file-size"})
        child(size, "value", text=str(ctx.options.max_file_size))
        return req.result(query)

    service.iq("get", ns.DISCO_INFO, "query")(disco_info)
    ctx.serve(service)
    store = _make_store(ctx)
    await store.start()
    ctx.provide(STORE, store)
    handlers = _Handlers(ctx)
    ctx.http_route("PUT", PATH, handlers.put)
    ctx.http_route("GET", PATH, handlers.get)
    ctx.http_route("OPTIONS", PATH, handlers.options)
    ctx.spawn(_sweep(ctx), name="http-upload-sweep")
    ctx.log.info("HTTP File Upload at %s (files on %s)", domain, ctx.options.storage)


@module.on_unload
async def _close_store(ctx: Ctx) -> None:
    store = ctx.optional_service(STORE)
    if store is not None:
        await store.close()


async def _slot(ctx: Ctx, req: IqRequest) -> Element:
    opts = ctx.options
    if req.from_ is None or not req.from_.local:
        raise StanzaError("forbidden", "only accounts may upload files")
    owner = req.from_.bare
    if not ctx.may(opts.access, owner):
        raise StanzaError("forbidden", "you may not upload files here")
    base = ctx.http_base_url
    if not base:
        raise StanzaError("service-unavailable", "no HTTP listener")
    request = req.payload
    name = _safe_name(request.get("filename", ""))
    size_text = request.get("size", "")
    if not size_text.isdigit() or int(size_text) <= 0:
        raise StanzaError("bad-request", "size must be a positive number of bytes")
    size = int(size_text)
    if size > opts.max_file_size:
        too_large = payload(NS, "file-too-large")
        child(too_large, "max-file-size", text=str(opts.max_file_size))
        raise StanzaError("not-acceptable", "file too large", application=too_large)
    ctype = (request.get("content-type") or "").strip().lower()
    if not ctype:
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if len(ctype) > 255 or "/" not in ctype or any(c in ctype for c in "\r\n\0"):
        raise StanzaError("bad-request", "invalid content-type")
    slot = secrets.token_urlsafe(24)
    now = time.time()
    async with ctx.db.transaction() as tx:
        # The sum decides the insert: requests of one owner at once (several devices,
        # several nodes) take turns, or each would find the quota free.
        await tx.lock(f"upload-quota\0{ctx.domain}\0{owner}")
        held = (
            await tx.execute(
                select(
                    func.coalesce(func.sum(_F.size), 0).label("used"),
                    func.count().label("files"),
                ).where(_F.host == ctx.domain, _F.owner == str(owner))
            )
        ).one()
        used, files = int(held.used or 0), int(held.files)
        over_quota = used + size > opts.quota or files >= opts.max_files
        if not over_quota:
            await tx.execute(
                files_table.insert().values(
                    host=ctx.domain,
                    slot=slot,
                    owner=str(owner),
                    name=name,
                    size=size,
                    content_type=ctype,
                    created_at=now,
                    state="reserved",
                )
            )
    if over_quota:  # raised outside: an error inside discards a PostgreSQL connection
        raise StanzaError("resource-constraint", "upload quota reached")
    expires = int(now + opts.slot_lifetime)
    token = _token(ctx.derived_key("slots"), slot, name, size, ctype, expires)
    url = f"{base}{PATH}{slot}/{quote(name)}"
    result = payload(NS, "slot")
    put = child(result, "put", {"url": url})
    child(put, "header", {"name": "Authorization"}, text=f"Bearer {expires}.{token}")
    child(result, "get", {"url": url})
    return req.result(result)


# ---------------------------------------------------------------------- HTTP


class _Handlers:
    """PUT/GET/OPTIONS on ``/upload/<slot>/<name>`` (one set per server: the row says
    which host a slot belongs to)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx

    def _parse(self, request: web.Request) -> tuple[str, str]:
        rest = request.path[len(PATH) :]
        slot, sep, name = rest.partition("/")
        if not sep or not slot or "/" in name or not name:
            raise web.HTTPNotFound(headers=CORS)
        return slot, name  # request.path is decoded already

    async def _row(self, slot: str, name: str) -> tuple[Ctx, Row]:
        row = await self.ctx.db.fetch_one(select(files_table).where(_F.slot == slot))
        if row is None or row.name != name:
            raise web.HTTPNotFound(headers=CORS)
        ctx = self.ctx.for_host(row.host)
        if ctx is None:
            raise web.HTTPNotFound(headers=CORS)
        return ctx, row

    async def options(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers=CORS)

    async def put(self, request: web.Request) -> web.StreamResponse:
        slot, name = self._parse(request)
        ctx, row = await self._row(slot, name)
        size: int = row.size
        ctype: str = row.content_type
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        expires_text, _, token = value.partition(".")
        if scheme != "Bearer" or not expires_text.isdigit():
            raise web.HTTPUnauthorized(headers=CORS, text="the slot's Authorization header\n")
        expires = int(expires_text)
        wanted = _token(ctx.derived_key("slots"), slot, name, size, ctype, expires)
        if not hmac.compare_digest(wanted, token):
            raise web.HTTPForbidden(headers=CORS, text="bad slot signature\n")
        if row.state != "reserved":
            raise web.HTTPConflict(headers=CORS, text="this slot was used\n")
        if time.time() > expires:
            raise web.HTTPGone(headers=CORS, text="this slot expired\n")
        if request.content_length is None:
            raise web.HTTPLengthRequired(headers=CORS)
        if request.content_length > size:
            raise web.HTTPRequestEntityTooLarge(size, request.content_length, headers=CORS)
        if request.content_length != size:
            raise web.HTTPBadRequest(headers=CORS, text="size differs from the slot\n")
        sent_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if sent_type and sent_type != ctype:
            raise web.HTTPBadRequest(headers=CORS, text="content type differs from the slot\n")
        # Claim the slot (one PUT at a time, once): only a 'reserved' row moves on.
        claimed = await ctx.db.execute(
            update(files_table)
            .where(_F.host == row.host, _F.slot == slot, _F.state == "reserved")
            .values(state="uploading")
        )
        if not claimed:
            raise web.HTTPConflict(headers=CORS, text="this slot was used\n")
        host = row.host
        allowed = _put_deadline(ctx.options, size)
        try:
            async with asyncio.timeout(allowed):
                await ctx.service(STORE).save(slot, _body(request, size), size, ctype)
        except BaseException as exc:
            await ctx.db.execute(
                update(files_table).where(_F.host == host, _F.slot == slot).values(state="reserved")
            )
            if isinstance(exc, TimeoutError):
                ctx.log.warning("upload: PUT from %s too slow; closing", request.remote)
                return await _too_slow(request)
            if isinstance(exc, _Incomplete):
                raise web.HTTPBadRequest(headers=CORS, text="incomplete upload\n") from None
            if isinstance(exc, StoreError | aiohttp.ClientError):
                ctx.log.warning("upload: storing %s failed: %s", slot, exc)
                raise web.HTTPBadGateway(headers=CORS, text="storage failed\n") from None
            raise
        await ctx.db.execute(
            update(files_table)
            .where(_F.host == host, _F.slot == slot)
            .values(state="stored", created_at=time.time())
        )
        ctx.metrics.counter("upload_bytes", "Bytes uploaded").inc(size)
        return web.Response(status=201, headers=CORS)

    async def get(self, request: web.Request) -> web.StreamResponse:
        slot, name = self._parse(request)
        ctx, row = await self._row(slot, name)
        if row.state != "stored":
            raise web.HTTPNotFound(headers=CORS)
        ctype: str = row.content_type
        disposition = "attachment" if _is_active(ctype) else "inline"
        headers = {
            **CORS,
            "Content-Type": ctype,
            "Content-Disposition": f"{disposition}; filename*=UTF-8''{quote(name)}",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "public, max-age=86400, immutable",
        }
        return await ctx.service(STORE).serve(request, slot, headers)


def _put_deadline(opts: UploadOptions, size: int) -> float:
    """Seconds a PUT of ``size`` bytes may take."""
    if opts.min_put_rate <= 0:
        return opts.put_timeout
    return min(opts.put_timeout, opts.put_grace + size / opts.min_put_rate)


async def _too_slow(request: web.Request) -> web.StreamResponse:
    """408, then the connection is closed (not kept alive, nor drained for the rest of
    a body that comes too slowly)."""
    response = web.Response(
        status=408, headers={**CORS, "Connection": "close"}, text="upload too slow\n"
    )
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _is_active(ctype: str) -> bool:
    return ctype in ACTIVE_TYPES or ctype.endswith("+xml") or "script" in ctype


class _Incomplete(Exception):
    """The client ended its body before the slot's size."""


async def _body(request: web.Request, size: int) -> AsyncIterator[bytes]:
    """The PUT body in chunks, never more than ``size`` bytes, and all of them."""
    received = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        received += len(chunk)
        if received > size:
            raise web.HTTPRequestEntityTooLarge(size, received, headers=CORS)
        yield chunk
    if received != size:
        raise _Incomplete()


# ---------------------------------------------------------------------- expiry, removal


async def _sweep(ctx: Ctx) -> None:
    while True:
        await asyncio.sleep(ctx.options.sweep_interval)
        with contextlib.suppress(Exception):
            await expire(ctx)


async def expire(ctx: Ctx, now: float | None = None) -> int:
    """Delete files older than ``expire_after`` and slots never used in time; how many."""
    now = time.time() if now is None else now
    opts = ctx.options
    stale = await ctx.db.fetch_all(
        select(_F.slot).where(
            _F.host == ctx.domain,
            ((_F.state == "stored") & (_F.created_at < now - opts.expire_after))
            | ((_F.state == "reserved") & (_F.created_at < now - opts.slot_lifetime - 60)),
        )
    )
    return await _delete(ctx, [r.slot for r in stale])


async def _delete(ctx: Ctx, slots: list[str]) -> int:
    store = ctx.service(STORE)
    for slot in slots:
        await store.remove(slot)
        await ctx.db.execute(delete(files_table).where(_F.host == ctx.domain, _F.slot == slot))
    return len(slots)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    """An account's files go with it."""
    rows = await ctx.db.fetch_all(
        select(_F.slot).where(_F.host == ctx.domain, _F.owner == str(event.jid.bare))
    )
    await _delete(ctx, [r.slot for r in rows])


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """The account's stored uploads, listed (the files themselves come through
    ``user_export_files``)."""
    rows = await ctx.db.fetch_all(
        select(_F.name, _F.size, _F.content_type, _F.created_at)
        .where(_F.host == ctx.domain, _F.owner == str(event.jid.bare), _F.state == "stored")
        .order_by(_F.created_at)
    )
    if not rows:
        return parts
    uploads = payload(ns.XMPPD_EXPORT, "uploads", {"service": service_domain(ctx)})
    for r in rows:
        attrs = {"name": r.name, "size": str(r.size), "content-type": r.content_type}
        child(uploads, "file", {**attrs, "created": f"{r.created_at:.0f}"})
    return (*parts, uploads)


@module.fold(hooks.USER_EXPORT_FILES)
async def export_files(
    ctx: Ctx, files: tuple[UserFile, ...], event: UserEvent
) -> tuple[UserFile, ...]:
    """A data export includes the account's stored uploads."""
    rows = await ctx.db.fetch_all(
        select(_F.slot, _F.name, _F.content_type)
        .where(_F.host == ctx.domain, _F.owner == str(event.jid.bare), _F.state == "stored")
        .order_by(_F.created_at)
    )
    directory = disk_directory(ctx)
    mine = (UserFile(r.name, directory / r.slot, r.content_type) for r in rows)
    return (*files, *mine)


__all__ = ["expire", "module"]
