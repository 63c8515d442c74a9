"""The web client in a real browser: headless Chromium (Debian's ``chromium``), driven
by Playwright (``playwright-core`` from npm, pinned in
``tests/interop/browser/package.json``), opens ``/chat`` on a running xmppd, logs in
through Converse.js's form, sends a message that a slixmpp client receives, and shows
the slixmpp client's reply. Once over WebSocket (the default) and once over BOSH
(``connection = "bosh"``). A screenshot of each page is kept (the path is printed).

Needs Node.js, npm (the packages are installed on first use, as for the other
interop tests) and Chromium (``.ci/run`` installs it); skipped without them, a
failure under ``CI=true``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import Slix, register_account
from tests.support.e2e import befriend, manual_subscriptions
from tests.support.server import DEFAULT_TEST_MODULES, running_server, service_unavailable

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "interop" / "browser"
WEB = ROOT / "modules" / "mod_webclient" / "web"
ARTIFACTS = Path(os.environ.get("XMPPD_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
CHROMIUM = os.environ.get("XMPPD_TEST_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.timeout(180)


def _npm_ci(folder: Path, package: str) -> None:
    if (folder / "node_modules" / package).is_dir():
        return
    try:
        subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        service_unavailable(f"npm ci in {folder} failed: {exc}")


def _prerequisites() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        service_unavailable("Node.js and npm are needed for the browser test")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        service_unavailable(f"Chromium is needed for the browser test ({CHROMIUM} not found)")
    _npm_ci(DRIVER, "playwright-core")
    _npm_ci(WEB, "converse.js")


def _fresh_artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    return path


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@pytest.mark.parametrize("connection", ["websocket", "bosh"])
async def test_converse_in_chromium_chats_with_a_slixmpp_client(
    tmp_path: Path, connection: str
) -> None:
    _prerequisites()
    modules = {
        **DEFAULT_TEST_MODULES,
        "webclient": {
            "connection": connection,
            # Converse settings pass through as they are (English: the assertions read
            # the page's text).
            "settings": {"i18n": "en"},
        },
    }
    screenshot = _fresh_artifact(f"converse-{connection}.png")
    with running_server(tmp_path, modules=modules, http=True) as server:
        await register_account(server, "webuser", "pw-webuser")
        await register_account(server, "slixpal", "pw-slixpal")
        async with manual_subscriptions(
            Slix(server, "slixpal@localhost/desk", "pw-slixpal")
        ) as pal:
            # The browser's user and the slixmpp client are contacts (mutual
            # subscription), as people who chat are; the page opens the chat from the roster.
            async with manual_subscriptions(
                Slix(server, "webuser@localhost/setup", "pw-webuser")
            ) as web_setup:
                await befriend(web_setup, pal)
            proc = await asyncio.create_subprocess_exec(
                "node",
                "converse_chat.mjs",
                f"{server.http_url}/chat",
                "webuser",  # Converse adds the host as the default domain
                "pw-webuser",
                "slixpal@localhost",
                "hello from slixmpp",
                str(screenshot),
                CHROMIUM,
                cwd=DRIVER,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            done = asyncio.ensure_future(proc.communicate())
            try:
                heard = asyncio.ensure_future(
                    pal.next_message(lambda m: m["body"] == "hello from converse", timeout=90)
                )
                await asyncio.wait([heard, done], return_when=asyncio.FIRST_COMPLETED)
                if not heard.done():
                    heard.cancel()
                    out, err = done.result()
                    pytest.fail(f"the browser gave up: {(out + err).decode()[-3000:]}")
                got = heard.result()
                assert got["from"].bare == "webuser@localhost"
                assert got["type"] == "chat"
                pal.xmpp.send_message(mto=got["from"], mbody="hello from slixmpp", mtype="chat")
                async with asyncio.timeout(60):
                    out, err = await done
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                done.cancel()
        # The page used the transport it was set up for.
        async with aiohttp.ClientSession() as http, http.get(server.http_url + "/metrics") as r:
            metrics = await r.text()
    opened = f"xmppd_{connection}_sessions_opened_total "
    assert any(
        line.startswith(opened) and float(line.split()[-1]) >= 1 for line in metrics.splitlines()
    ), [line for line in metrics.splitlines() if "sessions_opened" in line]
    print(f"screenshot of the page: {screenshot}")
    assert proc.returncode == 0, (out.decode() + err.decode())[-3000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines[0] == {"event": "sent"}
    result = lines[-1]
    assert result["reply_visible"] is True
    assert result["csp_violations"] == []
    assert result["failed_requests"] == []
    assert _size(screenshot) > 10_000
