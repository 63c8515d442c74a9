"""XEP-0157: the host's disco#info carries the configured contact addresses; invalid
ones stop start-up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clients import register_account
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient
from xmppd.config import ConfigError, load_config
from xmppd.server import Server

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DATA = "jabber:x:data"


@pytest.fixture(scope="module")
def contact_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "server_contact_info": {
            "abuse": ["mailto:abuse@example.org"],
            "admin": ["xmpp:admin@localhost", "mailto:admin@example.org"],
        },
    }
    with running_server(tmp_path_factory.mktemp("contact"), modules=modules) as srv:
        yield srv


async def test_disco_info_lists_the_contact_addresses(contact_server: XmppdServer) -> None:
    await register_account(contact_server, "curious", "pw-cur")
    async with await XmlClient.login(contact_server, "curious@localhost", "pw-cur") as client:
        reply = await client.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to="localhost")
        assert reply.get("type") == "result"
        forms = reply.findall(f"{{{DISCO_INFO}}}query/{{{DATA}}}x")
        fields = {
            f.get("var"): [v.text for v in f.findall(f"{{{DATA}}}value")]
            for form in forms
            for f in form.findall(f"{{{DATA}}}field")
        }
        assert fields["FORM_TYPE"] == ["http://jabber.org/network/serverinfo"]
        assert fields["abuse-addresses"] == ["mailto:abuse@example.org"]
        assert fields["admin-addresses"] == ["xmpp:admin@localhost", "mailto:admin@example.org"]
        assert "support-addresses" not in fields  # not configured
        # An account's disco#info does not carry it.
        mine = await client.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to="curious@localhost")
        assert mine.find(f"{{{DISCO_INFO}}}query/{{{DATA}}}x") is None


def test_an_address_that_is_not_a_uri_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "xmppd.toml"
    path.write_text("[modules.server_contact_info]\nabuse = ['abuse at example.org']\n")
    with pytest.raises(ConfigError) as err:
        Server(load_config(path)).check()
    assert "modules.server_contact_info.abuse" in str(err.value)
    assert "is not a URI" in str(err.value)


def test_the_example_config_documents_the_module(tmp_path: Path) -> None:
    """config/xmppd.toml shows the module commented out; uncommented, it is valid."""
    example = Path(__file__).parents[2] / "config" / "xmppd.toml"
    lines = example.read_text().splitlines()
    start = lines.index("# [modules.server_contact_info]")
    end = lines.index("", start)
    for i in range(start, end):
        if lines[i].startswith("# [") or " = " in lines[i]:
            lines[i] = lines[i].removeprefix("# ")
    path = tmp_path / "xmppd.toml"
    path.write_text("\n".join(lines) + "\n")
    config = load_config(path)
    Server(config).check()
    assert config.modules["server_contact_info"]["abuse"] == ["mailto:abuse@example.org"]
