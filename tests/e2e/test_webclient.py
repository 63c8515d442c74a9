"""mod_webclient over HTTP: the page at /chat and its settings (the public WebSocket or
BOSH URL, the host's domain, the configured Converse options), the security headers,
Converse's files with their types and caching, paths that must not escape the
package, and the page that says how to install Converse when it is missing.

A browser using all this is tests/e2e/test_webclient_browser.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.support.server import (
    DEFAULT_TEST_MODULES,
    XmppdServer,
    running_server,
    service_unavailable,
)

WEB = Path(__file__).resolve().parents[2] / "modules" / "mod_webclient" / "web"
SETTINGS = re.compile(
    r'<script id="xmppd-converse-settings" type="application/json">(.*?)</script>', re.S
)


def _converse_version() -> str:
    """Converse.js installed as ./dev would (npm ci), its version."""
    package = WEB / "node_modules" / "converse.js"
    if not package.is_dir():
        if shutil.which("npm") is None:
            service_unavailable("npm is needed to install Converse.js for the web client")
        try:
            subprocess.run(
                ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                cwd=WEB,
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            service_unavailable(f"npm ci in {WEB} failed: {exc}")
    version: str = json.loads((package / "package.json").read_text())["version"]
    return version


def _with(webclient: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {**DEFAULT_TEST_MODULES, "webclient": webclient}


@pytest.fixture(scope="module")
def version() -> str:
    return _converse_version()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory, version: str) -> Iterator[XmppdServer]:
    with running_server(tmp_path_factory.mktemp("webclient"), modules=_with({}), http=True) as srv:
        yield srv


async def _get(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def _settings(body: bytes) -> dict[str, Any]:
    found = SETTINGS.search(body.decode())
    assert found is not None, body.decode()[:1000]
    settings: dict[str, Any] = json.loads(found.group(1))
    return settings


async def test_the_page_starts_converse_for_this_server(
    web_server: XmppdServer, version: str
) -> None:
    status, headers, body = await _get(web_server.http_url + "/chat")
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    port = web_server.http_port
    assert _settings(body) == {
        "assets_path": f"/chat/{version}/",
        "discover_connection_methods": False,
        "view_mode": "fullscreen",
        "domain_placeholder": "localhost",
        "websocket_url": f"ws://127.0.0.1:{port}/xmpp-websocket",
        "default_domain": "localhost",
    }
    page = body.decode()
    assert f'src="/chat/{version}/converse.min.js"' in page
    assert f'href="/chat/{version}/converse.min.css"' in page
    assert 'src="/chat/init.js"' in page
    csp = dict(d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self' 'wasm-unsafe-eval'"  # no inline scripts, no eval
    assert csp["frame-ancestors"] == "'none'"
    assert f"ws://127.0.0.1:{port}" in csp["connect-src"].split()
    # The same page with a trailing slash (its asset URLs are absolute).
    status, _, again = await _get(web_server.http_url + "/chat/")
    assert status == 200 and _settings(again) == _settings(body)


async def test_converse_files_are_served_with_their_types_and_cached(
    web_server: XmppdServer, version: str
) -> None:
    base = f"{web_server.http_url}/chat/{version}"
    expected = {
        "converse.min.js": "text/javascript",
        "converse.min.css": "text/css",
        "curve25519_compiled.wasm": "application/wasm",
        "emoji.json": "application/json",
    }
    for name, ctype in expected.items():
        status, headers, body = await _get(f"{base}/{name}")
        assert status == 200, name
        assert headers["Content-Type"].split(";")[0] == ctype, name
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert body == (WEB / "node_modules" / "converse.js" / "dist" / name).read_bytes()
    status, headers, _ = await _get(f"{base}/converse.min.js")
    status, _, body = await _get(f"{base}/converse.min.js", **{"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    status, headers, body = await _get(web_server.http_url + "/chat/init.js")
    assert status == 200 and b"converse.initialize" in body
    assert headers["Content-Type"].startswith("text/javascript")
    assert headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    [
        "/chat/{v}/../package.json",
        "/chat/{v}/%2e%2e/package.json",
        "/chat/{v}/..%2fpackage.json",
        "/chat/{v}/%2fetc%2fpasswd",
        "/chat/{v}/.hidden",
        "/chat/{v}/",
        "/chat/{v}/chunkjs",
        "/chat/0.0.1/converse.min.js",
        "/chat/nothing",
    ],
)
async def test_nothing_outside_converse_files_is_served(
    web_server: XmppdServer, version: str, path: str
) -> None:
    url = web_server.http_url + path.replace("{v}", version)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False) as r,
    ):
        assert r.status == 404, (path, await r.text())


async def test_options_and_the_public_url_shape_the_page(tmp_path: Path, version: str) -> None:
    webclient = {
        "path": "/webchat",
        "connection": "bosh",
        "view_mode": "overlayed",
        "title": "Our <chat>",
        "lock_domain": True,
        "settings": {"allow_registration": False, "i18n": "de", "theme": "</script><b>"},
    }
    extra = '[http]\npublic_url = "https://chat.example.org"\n'
    with running_server(tmp_path, modules=_with(webclient), http=True, extra=extra) as srv:
        status, headers, body = await _get(srv.http_url + "/webchat")
        assert status == 200
        assert _settings(body) == {
            "assets_path": f"/webchat/{version}/",
            "discover_connection_methods": False,
            "view_mode": "overlayed",
            "domain_placeholder": "localhost",
            "bosh_service_url": "https://chat.example.org/http-bind",
            "locked_domain": "localhost",
            "allow_registration": False,
            "i18n": "de",
            "theme": "</script><b>",
        }
        page = body.decode()
        assert "<title>Our &lt;chat&gt;</title>" in page
        assert "</script><b>" not in page  # a setting cannot end the JSON block
        assert 'class="converse-overlayed"' in page
        assert "https://chat.example.org" in headers["Content-Security-Policy"]
        assert (await _get(f"{srv.http_url}/webchat/{version}/converse.min.js"))[0] == 200
        assert (await _get(srv.http_url + "/chat"))[0] == 404


async def test_without_converse_the_server_runs_and_the_page_says_how_to_install(
    tmp_path: Path,
) -> None:
    webclient = {"converse_dir": str(tmp_path / "not-installed")}
    with running_server(tmp_path, modules=_with(webclient), http=True) as srv:
        status, headers, body = await _get(srv.http_url + "/chat")
        assert status == 503
        assert headers["Content-Type"].startswith("text/html")
        assert b"npm ci" in body and b"not installed" in body
        assert (await _get(srv.http_url + "/chat/14.0.0/converse.min.js"))[0] == 404
        assert (await _get(srv.http_url + "/.well-known/host-meta"))[0] == 200
        assert "Converse.js is not installed" in srv.log_text()


async def test_converse_installed_while_the_server_runs_is_served_at_once(
    tmp_path: Path, version: str
) -> None:
    place = tmp_path / "later"
    with running_server(tmp_path, modules=_with({"converse_dir": str(place)}), http=True) as srv:
        assert (await _get(srv.http_url + "/chat"))[0] == 503
        place.symlink_to(WEB / "node_modules" / "converse.js")
        status, _, body = await _get(srv.http_url + "/chat")
        assert status == 200 and _settings(body)["assets_path"] == f"/chat/{version}/"
        assert (await _get(f"{srv.http_url}/chat/{version}/converse.min.js"))[0] == 200
