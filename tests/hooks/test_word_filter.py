"""hooks/word_filter.py: a deployer-enabled filter_packet hook."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import Slix, register_account
from tests.support.server import XmppdServer, free_port, running_server, write_config

CLIENT = "jabber:client"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
FILTER = {"patterns": ["(?i)casino", "buy cheap"], "action": "bounce"}


@pytest.fixture(scope="module")
def filtered_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(tmp_path_factory.mktemp("wf"), hooks={"word_filter": FILTER}) as srv:
        yield srv


async def test_matching_message_is_bounced_and_not_delivered(filtered_server: XmppdServer) -> None:
    await register_account(filtered_server, "wf_alice", "pw-alice")
    await register_account(filtered_server, "wf_bob", "pw-bob1")
    async with (
        Slix(filtered_server, "wf_alice@localhost", "pw-alice") as alice,
        Slix(filtered_server, "wf_bob@localhost", "pw-bob1") as bob,
    ):
        alice.xmpp.send_message(mto="wf_bob@localhost", mbody="Best CASINO in town", mtype="chat")
        error = await alice.next_message(lambda m: m["type"] == "error")
        # slixmpp predates RFC 6120's policy-violation, so look at the XML itself.
        assert error.xml.find(f"{{{CLIENT}}}error/{{{STANZAS}}}policy-violation") is not None
        alice.xmpp.send_message(mto="wf_bob@localhost", mbody="hello, friend", mtype="chat")
        got = await bob.next_message()
        assert got["body"] == "hello, friend"  # the filtered one never arrived before it


def test_invalid_pattern_stops_start_up_with_the_key_path(tmp_path: Path) -> None:
    config = tmp_path / "xmppd.toml"
    write_config(
        config,
        data_dir=tmp_path / "data",
        storage_url=f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}",
        starttls_port=free_port(),
        direct_tls_port=free_port(),
        modules={"disco": {}},
        hooks={"word_filter": {"patterns": ["(unclosed"]}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "xmppd", "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "hooks.word_filter.patterns: invalid pattern '(unclosed'" in result.stderr
