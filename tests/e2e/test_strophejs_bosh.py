"""BOSH with a third-party client: Strophe.js (``strophe.js`` from npm, pinned in
``tests/interop/strophejs/package.json``, with the ``xhr2`` XMLHttpRequest Node lacks)
logs in over /http-bind, chats with a TCP client and disconnects. Needs Node.js and
npm (the packages are installed on first use)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.server import XmppdServer, running_server
from tests.support.xmlclient import XmlClient, tag

STROPHE = Path(__file__).resolve().parent.parent / "interop" / "strophejs"


def _installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are needed for the Strophe.js interop test")
    if not (STROPHE / "node_modules" / "strophe.js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=STROPHE,
            check=True,
            capture_output=True,
            timeout=120,
        )
    return STROPHE


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(tmp_path_factory.mktemp("strophe"), http=True) as srv:
        yield srv


async def test_strophejs_logs_in_over_bosh_and_chats_with_a_tcp_client(
    web_server: XmppdServer,
) -> None:
    folder = _installed()
    await register_account(web_server, "strophe", "pw-strophe")
    await register_account(web_server, "tcppal", "pw-pal")
    async with await XmlClient.login(web_server, "tcppal@localhost", "pw-pal") as pal:
        proc = await asyncio.create_subprocess_exec(
            "node",
            "bosh_chat.mjs",
            f"{web_server.http_url}/http-bind",
            "strophe@localhost/browser",
            "pw-strophe",
            pal.jid,
            cwd=folder,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            got = await pal.expect(lambda el: el.tag == tag("message"), timeout=30)
            assert got.findtext(tag("body")) == "hello from strophe"
            assert got.get("from") == "strophe@localhost/browser"
            pal.send(
                f"<message to='{got.get('from')}' type='chat'><body>hello from tcp</body></message>"
            )
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    (result,) = [json.loads(line) for line in out.decode().splitlines()]
    assert result == {"jid": "strophe@localhost/browser", "answer": "hello from tcp"}
