"""mod_motd: the host greets each session once, after its initial presence."""

from __future__ import annotations

import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.stanza import Iq

from tests.support.clients import Slix, register_account
from tests.support.server import (
    DEFAULT_TEST_MODULES,
    XmppdServer,
    free_port,
    running_server,
    write_config,
)
from xmppd_modules.mod_motd import NS_MOTD

TEXT = "Welcome! The server restarts on Sunday at 06:00 UTC."
SUBJECT = "Notice"
PASSWORD = "s3cret-pw"
_counter = itertools.count()


@pytest.fixture(scope="module")
def motd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "motd": {"text": TEXT, "subject": SUBJECT}}
    with running_server(tmp_path_factory.mktemp("xmppd-motd"), modules=modules) as srv:
        yield srv


async def new_user(server: XmppdServer) -> str:
    name = f"motd{next(_counter)}"
    await register_account(server, name, PASSWORD)
    return f"{name}@{server.domain}"


async def ask_motd(client: Slix) -> Iq:
    """The module's IQ; its answer also shows the server handled all we sent before."""
    iq = client.xmpp.make_iq_get(ito=client.server.domain)
    iq.append(ET.Element(f"{{{NS_MOTD}}}motd"))
    result: Iq = await iq.send(timeout=10)  # type: ignore[no-untyped-call]
    return result


async def test_headline_arrives_after_initial_presence(motd_server: XmppdServer) -> None:
    jid = await new_user(motd_server)
    async with Slix(motd_server, jid, PASSWORD) as client:
        msg = await client.next_message(lambda m: m["type"] == "headline")
        assert msg["body"] == TEXT
        assert msg["subject"] == SUBJECT
        assert msg["from"] == motd_server.domain
        assert msg["to"] == client.xmpp.boundjid


async def test_sent_once_per_session_and_not_before_presence(motd_server: XmppdServer) -> None:
    jid = await new_user(motd_server)
    async with Slix(motd_server, jid, PASSWORD, initial_presence=False) as client:
        await ask_motd(client)
        assert client.messages.empty(), "no message before the initial presence"
        client.xmpp.send_presence()
        await client.next_message(lambda m: m["type"] == "headline")
        # Going unavailable and back is a new "initial" presence for the same session.
        client.xmpp.send_presence(ptype="unavailable")
        client.xmpp.send_presence()
        await ask_motd(client)
        assert client.messages.empty(), "the message is sent once per session"


async def test_iq_returns_the_message(motd_server: XmppdServer) -> None:
    jid = await new_user(motd_server)
    async with Slix(motd_server, jid, PASSWORD, initial_presence=False) as client:
        result = await ask_motd(client)
        motd = result.xml.find(f"{{{NS_MOTD}}}motd")
        assert motd is not None
        assert motd.findtext(f"{{{NS_MOTD}}}body") == TEXT
        assert motd.findtext(f"{{{NS_MOTD}}}subject") == SUBJECT


async def test_without_text_nothing_is_sent_and_iq_is_item_not_found(
    tmp_path: Path,
) -> None:
    modules = {**DEFAULT_TEST_MODULES, "motd": {}}
    with running_server(tmp_path, modules=modules) as server:
        await register_account(server, "quiet", PASSWORD)
        async with Slix(server, f"quiet@{server.domain}", PASSWORD) as client:
            with pytest.raises(IqError) as caught:
                await ask_motd(client)
            assert caught.value.iq["error"]["condition"] == "item-not-found"
            assert client.messages.empty()


def check_config(tmp_path: Path, motd_options: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "xmppd.toml"
    write_config(
        config,
        data_dir=tmp_path / "data",
        storage_url=f"sqlite+aiosqlite:///{tmp_path / 'xmppd.sqlite3'}",
        starttls_port=free_port(),
        direct_tls_port=free_port(),
        modules={"motd": motd_options},
    )
    return subprocess.run(
        [sys.executable, "-m", "xmppd", "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_valid_options_pass_check_config(tmp_path: Path) -> None:
    result = check_config(tmp_path, {"text": TEXT, "subject": SUBJECT})
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout


@pytest.mark.parametrize(
    ("options", "path", "expected"),
    [
        ({"text": 42}, "modules.motd.text", "expected a string"),
        ({"text": "x" * 4001}, "modules.motd.text", "at most 4000"),
        ({"txt": "hello"}, "modules.motd.txt", "unknown key"),
    ],
)
def test_bad_option_fails_check_config_with_its_path(
    tmp_path: Path, options: dict[str, Any], path: str, expected: str
) -> None:
    result = check_config(tmp_path, options)
    assert result.returncode == 2
    assert f"xmppd.toml: {path}: " in result.stderr
    assert expected in result.stderr
