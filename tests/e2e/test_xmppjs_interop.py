"""SASL2 + Bind 2 + FAST with a third-party client: xmpp.js (``@xmpp/client``, pinned in
``tests/interop/xmppjs/package.json``) logs in with its password, binds and enables
stream management in the same exchange, receives a FAST token, then logs in again with
the token alone; and a client whose connection drops resumes its session inline in
SASL2 with every message sent meanwhile. Needs Node.js and npm (the packages are
installed on first use)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.server import XmppdServer, running_server

XMPPJS = Path(__file__).resolve().parent.parent / "interop" / "xmppjs"


def _installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the xmpp.js interop test")
    if not (XMPPJS / "node_modules" / "@xmpp" / "client").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=XMPPJS,
            check=True,
            capture_output=True,
            timeout=120,
        )
    return XMPPJS


async def node(server: XmppdServer, *args: str) -> list[dict[str, object]]:
    """Run an xmpp.js script against ``server``; its JSON output lines."""
    folder = _installed()
    # xmpp.js uses the WebSocket of the platform: Node 20 has it behind a flag.
    flags = ["--experimental-websocket"] if _node_major() == 20 else []
    run = await asyncio.to_thread(
        subprocess.run,
        ["node", *flags, *args],
        cwd=folder,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(server.cafile)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def _node_major() -> int:
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return int(version.stdout.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    """A server with an HTTP listener (XMPP over WebSocket)."""
    with running_server(tmp_path_factory.mktemp("xmppjs-web"), http=True) as srv:
        yield srv


async def test_xmppjs_logs_in_with_sasl2_and_again_with_its_fast_token(
    sqlite_server: XmppdServer,
) -> None:
    await register_account(sqlite_server, "jsuser", "js-password")
    port = str(sqlite_server.starttls_port)
    first, second = await node(sqlite_server, "sasl2_fast.mjs", port, "jsuser", "js-password")
    assert first["label"] == "password" and second["label"] == "token"
    for login in (first, second):
        assert login["errors"] == []
        assert login["streamManagement"] is True  # enabled inline, in Bind 2
        assert login["ping"] == "result"
    assert first["jid"].startswith("jsuser@localhost/interop/")  # Bind 2: <tag>/<id>
    assert second["jid"] == first["jid"]  # the same installation gets the same resource
    assert first["tokenMechanism"] == "HT-SHA-256-NONE"


async def test_xmppjs_resumes_inline_and_gets_what_was_sent_meanwhile(
    sqlite_server: XmppdServer,
) -> None:
    for name in ("jsphone", "jsfriend"):
        await register_account(sqlite_server, name, "js-password")
    port = str(sqlite_server.starttls_port)
    (result,) = await node(
        sqlite_server, "sm_resume.mjs", port, "jsphone", "jsfriend", "js-password"
    )
    assert result["after"] == result["before"]  # the same session, resumed
    assert result["bodies"] == ["away 0", "away 1", "away 2"]  # exactly once, in order


# ---------------------------------------------------------------------- over WebSocket


def ws_url(server: XmppdServer) -> str:
    return f"ws://127.0.0.1:{server.http_port}/xmpp-websocket"


async def test_xmppjs_over_websocket_logs_in_with_sasl2_and_fast(web_server: XmppdServer) -> None:
    """RFC 7395: the same SASL2 + Bind 2 + FAST login as over TCP."""
    await register_account(web_server, "wsjs", "js-password")
    first, second = await node(
        web_server, "sasl2_fast.mjs", ws_url(web_server), "wsjs", "js-password"
    )
    assert first["label"] == "password" and second["label"] == "token"
    for login in (first, second):
        assert login["errors"] == []
        assert login["streamManagement"] is True
        assert login["ping"] == "result"
    assert str(first["jid"]).startswith("wsjs@localhost/interop/")
    assert second["jid"] == first["jid"]
    assert first["tokenMechanism"] == "HT-SHA-256-NONE"


async def test_xmppjs_over_websocket_resumes_and_gets_what_was_sent_meanwhile(
    web_server: XmppdServer,
) -> None:
    for name in ("wsphone", "wsfriend"):
        await register_account(web_server, name, "js-password")
    (result,) = await node(
        web_server, "sm_resume.mjs", ws_url(web_server), "wsphone", "wsfriend", "js-password"
    )
    assert result["after"] == result["before"]
    assert result["bodies"] == ["away 0", "away 1", "away 2"]  # exactly once, in order
