"""Web client: Converse.js served at ``/chat``, set up for this server.

The page at ``path`` (default ``/chat``) loads Converse.js (the npm package
``converse.js``) from ``<path>/<version>/`` and starts it with settings for the host
the request names: the WebSocket URL (or BOSH, with ``connection = "bosh"``) as the
outside world sees it (``http.public_url`` when set, else the request's scheme and
``Host``), the host's domain as the default for user names, the ``view_mode``, and
any further Converse settings from ``settings``.

Converse.js is not shipped: ``./dev run`` and ``./dev test`` install it with npm
(``npm ci`` in ``modules/mod_webclient/web``, pinned by its ``package-lock.json``)
when npm exists, or an administrator points ``converse_dir`` at an installed copy.
Without it the server runs as usual and the page answers 503 saying how to install
it.

The assets are served with their content types, under a URL holding Converse's
version, so browsers may cache them for a year (``immutable``); the page itself is
``no-cache``. Every answer has ``nosniff``; the page has a Content-Security-Policy
allowing only what Converse needs: scripts from this server (no inline scripts: the
settings are a JSON data block read by ``init.js``), WebAssembly (OMEMO), inline
styles, images and media from HTTPS (shared files), connections to this server and
HTTPS (file upload), and no framing by other sites.
"""

from __future__ import annotations

import asyncio
import html
import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import Field, field_validator

from xmppd.api import Module, ModuleContext, Options, client_of

HERE: Final = Path(__file__).resolve().parent
WEB_DIR: Final = HERE / "web"
"""The npm project (``package.json``, ``package-lock.json``) that installs Converse."""
DEFAULT_CONVERSE_DIR: Final = WEB_DIR / "node_modules" / "converse.js"
INIT_JS: Final = HERE / "init.js"
WEBSOCKET_PATH: Final = "/xmpp-websocket"
BOSH_PATH: Final = "/http-bind"
MAX_ASSET_PATH: Final = 512

SettingValue = str | int | float | bool | list[str]

CONTENT_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".eot": "application/vnd.ms-fontobject",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".txt": "text/plain; charset=utf-8",
}
"""Content types of Converse's files (the system's mime table may lack some, e.g.
``.wasm``, which browsers only compile when served as ``application/wasm``)."""

ASSET_CACHE: Final = "public, max-age=31536000, immutable"
_SAFE_SEGMENT: Final = re.compile(r"^[A-Za-z0-9_@+\-][A-Za-z0-9_.@+\-]*$")
_ORIGIN: Final = re.compile(
    r"^(?:https?|wss?)://(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)
"""An origin safe to put in a CSP header (the request's Host could hold anything)."""
_PATH: Final = re.compile(r"^(?:/[A-Za-z0-9_\-~][A-Za-z0-9_.\-~]*)+$")


class WebClientOptions(Options):
    path: str = Field(
        "/chat",
        max_length=100,
        description="Where the page is served (the assets under '<path>/'); no trailing "
        "slash, not '/'.",
    )
    connection: Literal["websocket", "bosh"] = Field(
        "websocket",
        description="How Converse connects: 'websocket' (/xmpp-websocket) or 'bosh' "
        "(/http-bind); the URL is the public one (http.public_url, else the request's).",
    )
    view_mode: Literal["fullscreen", "overlayed", "embedded", "mobile"] = Field(
        "fullscreen", description="Converse's view_mode."
    )
    title: str = Field("Chat", max_length=200, description="The page's title.")
    lock_domain: bool = Field(
        False,
        description="Users type only their user name: only accounts of this host can log "
        "in (Converse's locked_domain). Otherwise the host is the default domain.",
    )
    settings: dict[str, SettingValue] = Field(
        default_factory=dict,
        max_length=100,
        description="Further Converse settings, passed as they are, e.g. "
        "{ allow_registration = false, i18n = 'de' }; they override the computed ones.",
    )
    converse_dir: str = Field(
        "",
        max_length=4096,
        description="The installed converse.js npm package (holding package.json and "
        "dist/); empty: modules/mod_webclient/web/node_modules/converse.js, where "
        "./dev run installs it.",
    )

    @field_validator("path")
    @classmethod
    def _is_path(cls, v: str) -> str:
        if not _PATH.match(v):
            raise ValueError(
                "expected a path such as '/chat' (segments of letters, digits and '_.-~', "
                "not starting with '.')"
            )
        return v

    @field_validator("settings")
    @classmethod
    def _are_names(cls, v: dict[str, SettingValue]) -> dict[str, SettingValue]:
        for name in v:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name):
                raise ValueError(f"{name!r} is not a Converse setting name")
        return v


module = Module(
    "webclient",
    "Web client: Converse.js served at /chat, set up for this server",
    options=WebClientOptions,
)
Ctx = ModuleContext[WebClientOptions]


@dataclass(frozen=True, slots=True)
class Install:
    """An installed Converse.js: its ``dist`` directory and version."""

    dist: Path
    version: str


def find_install(package_dir: Path) -> Install | None:
    """The Converse.js package in ``package_dir``, ``None`` when it is not installed
    (blocking: call it in a thread)."""
    try:
        meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    version = meta.get("version") if isinstance(meta, dict) else None
    dist = package_dir / "dist"
    if not isinstance(version, str) or not _SAFE_SEGMENT.match(version):
        return None
    if not (dist / "converse.min.js").is_file():
        return None
    return Install(dist.resolve(), version)


def asset_file(install: Install, rest: str) -> Path | None:
    """The file under ``dist`` that the URL path ``rest`` names, ``None`` for anything
    else (no ``..``, hidden names, directories or links out of ``dist``; blocking)."""
    if len(rest) > MAX_ASSET_PATH:
        return None
    parts = rest.split("/")
    if not all(_SAFE_SEGMENT.match(part) for part in parts):
        return None
    path = install.dist.joinpath(*parts).resolve()
    if not path.is_relative_to(install.dist) or not path.is_file():
        return None
    return path


def content_type(path: Path) -> str:
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known is not None:
        return known
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def connection_url(base_url: str, connection: str) -> str:
    """The WebSocket (``ws(s)://``) or BOSH URL under the public base URL."""
    if connection == "bosh":
        return base_url + BOSH_PATH
    scheme, sep, rest = base_url.partition("://")
    return ("wss" if scheme == "https" else "ws") + sep + rest + WEBSOCKET_PATH


def converse_settings(ctx: Ctx, url: str, install: Install) -> dict[str, object]:
    """What ``converse.initialize`` gets for ``ctx``'s host."""
    opts = ctx.options
    settings: dict[str, object] = {
        "assets_path": f"{opts.path}/{install.version}/",
        "discover_connection_methods": False,
        "view_mode": opts.view_mode,
        "domain_placeholder": ctx.domain,
    }
    if opts.connection == "bosh":
        settings["bosh_service_url"] = url
    else:
        settings["websocket_url"] = url
    if opts.lock_domain:
        settings["locked_domain"] = ctx.domain
    else:
        settings["default_domain"] = ctx.domain
    settings.update(opts.settings)
    return settings


def content_security_policy(url: str) -> str:
    """The page's CSP: what Converse needs, with the connection URL's origin (the
    public URL may differ from the one the page was loaded from)."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    extra = f" {origin}" if _ORIGIN.match(origin) else ""
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob: https:",
            "media-src 'self' data: blob: https:",
            "font-src 'self' data:",
            f"connect-src 'self'{extra} https:",
            "worker-src 'self' blob:",
            "manifest-src 'self'",
            "frame-src 'none'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def _json_for_html(value: object) -> str:
    """JSON that cannot end the ``<script>`` element it is put in."""
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(ctx: Ctx, settings: dict[str, object], install: Install) -> str:
    base = ctx.options.path
    version = install.version
    mode = html.escape(ctx.options.view_mode)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(ctx.options.title)}</title>
<link rel="stylesheet" href="{base}/{version}/converse.min.css">
<script id="xmppd-converse-settings" type="application/json">{_json_for_html(settings)}</script>
<script type="module" src="{base}/{version}/converse.min.js"></script>
<script type="module" src="{base}/init.js"></script>
</head>
<body class="converse-{mode}">
<noscript>This chat needs JavaScript.</noscript>
</body>
</html>
"""


def missing_page(ctx: Ctx) -> str:
    where = ctx.options.converse_dir or "modules/mod_webclient/web/node_modules/converse.js"
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(ctx.options.title)}</title></head>
<body>
<h1>The web client is not installed</h1>
<p>This server serves the Converse.js web client here, but Converse.js was not found
in <code>{html.escape(where)}</code>.</p>
<p>To install it, run <code>./dev run</code> (or <code>./dev test</code>) on a machine
with Node.js and npm, or in the project's directory:</p>
<pre>cd modules/mod_webclient/web &amp;&amp; npm ci --ignore-scripts --no-audit --no-fund</pre>
<p>then reload this page (no restart needed). Or set
<code>[modules.webclient] converse_dir</code> to an installed <code>converse.js</code>
package. Other XMPP clients can connect as usual.</p>
</body>
</html>
"""


COMMON_HEADERS: Final = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class _Handlers:
    """The page, ``init.js`` and the assets, for every host that loads the module with
    the same ``path`` (the page is set up for the host the request's ``Host`` names,
    else the first such host)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self._install: Install | None = None

    def _host_ctx(self, request: web.Request) -> Ctx:
        try:
            name = (request.url.host or "").lower().rstrip(".")
        except ValueError:
            return self.ctx
        found = self.ctx.for_host(name) if name else None
        if found is None or found.options.path != self.ctx.options.path:
            return self.ctx
        return found

    async def install(self, *, refresh: bool = False) -> Install | None:
        """Converse.js, looked for again until found and at each page load (installing
        or upgrading it while the server runs needs no restart)."""
        if self._install is None or refresh:
            opts = self.ctx.options
            where = Path(opts.converse_dir) if opts.converse_dir else DEFAULT_CONVERSE_DIR
            self._install = await asyncio.to_thread(find_install, where)
        return self._install

    async def page(self, request: web.Request) -> web.StreamResponse:
        ctx = self._host_ctx(request)
        install = await self.install(refresh=True)
        headers = dict(COMMON_HEADERS)
        headers["Cache-Control"] = "no-cache"
        if install is None:
            headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
            return web.Response(
                status=503, text=missing_page(ctx), content_type="text/html", headers=headers
            )
        url = connection_url(client_of(request).base_url, ctx.options.connection)
        headers["Content-Security-Policy"] = content_security_policy(url)
        body = page(ctx, converse_settings(ctx, url, install), install)
        return web.Response(text=body, content_type="text/html", headers=headers)

    async def files(self, request: web.Request) -> web.StreamResponse:
        """``<path>/`` (the page again), ``<path>/init.js``, ``<path>/<version>/...``."""
        rest = request.path[len(self.ctx.options.path) + 1 :]
        if rest == "":
            return await self.page(request)
        headers = dict(COMMON_HEADERS)
        if rest == "init.js":
            headers["Cache-Control"] = "no-cache"
            headers["Content-Type"] = CONTENT_TYPES[".js"]
            return web.FileResponse(INIT_JS, headers=headers)
        install = await self.install()
        version, _, asset = rest.partition("/")
        if install is None or version != install.version or not asset:
            raise web.HTTPNotFound(headers=COMMON_HEADERS)
        path = await asyncio.to_thread(asset_file, install, asset)
        if path is None:
            raise web.HTTPNotFound(headers=COMMON_HEADERS)
        headers["Cache-Control"] = ASSET_CACHE
        headers["Content-Type"] = content_type(path)
        return web.FileResponse(path, headers=headers)


@module.on_load
async def serve(ctx: Ctx) -> None:
    handlers = _Handlers(ctx)
    path = ctx.options.path
    if ctx.http_route("GET", path, handlers.page):
        ctx.http_route("GET", path + "/", handlers.files)
        install = await handlers.install()
        if install is None:
            ctx.log.warning(
                "web client: Converse.js is not installed; %s explains how to install it", path
            )
        else:
            ctx.log.info("web client: Converse.js %s at %s", install.version, path)
