"""`xmppd export-user` writes an account's data as XEP-0227 XML: credentials as SCRAM keys
(never a password), roster, vCard, private XML and blocklist."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from xml.etree import ElementTree

import pytest
from lxml import etree

from tests.support.clients import Slix, register_account
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "vcard": {},
        "private": {},
        "blocklist": {},
        "offline": {},
        "pep": {},
    }
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv


PIE = "urn:xmpp:pie:0"


async def test_export_contains_the_users_data(server: XmppdServer) -> None:
    await register_account(server, "exp_owner", "owner-secret-pw")
    await register_account(server, "exp_friend", "friend-pw1")
    async with Slix(
        server,
        "exp_owner@localhost",
        "owner-secret-pw",
        plugins=("xep_0030", "xep_0054", "xep_0049", "xep_0191"),
    ) as owner:
        await owner.xmpp.update_roster("exp_friend@localhost", name="Friend", groups=["Pals"])
        vcard = owner.xmpp.plugin["xep_0054"].stanza.VCardTemp()
        vcard["FN"] = "Owner Person"
        await owner.xmpp.plugin["xep_0054"].publish_vcard(vcard)
        await owner.xmpp.plugin["xep_0191"].block("spammer@example.net")
        iq = owner.xmpp.make_iq_set()
        iq.set_payload(
            ElementTree.fromstring(  # slixmpp builds on xml.etree
                "<query xmlns='jabber:iq:private'><prefs xmlns='urn:example:prefs'>"
                "<theme>dark</theme></prefs></query>"
            )
        )
        await iq.send()
        publish = owner.xmpp.make_iq_set()
        publish.set_payload(
            ElementTree.fromstring(
                "<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:example:mood'>"
                "<item id='current'><mood xmlns='urn:example:mood'>happy</mood></item>"
                "</publish></pubsub>"
            )
        )
        await publish.send()
    # The owner is offline now: this one waits in offline storage.
    async with Slix(server, "exp_friend@localhost", "friend-pw1") as friend:
        friend.xmpp.send_message(
            mto="exp_owner@localhost", mbody="while you were out", mtype="chat"
        )
        await friend.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)
    result = await asyncio.to_thread(server.cli, "export-user", "exp_owner@localhost")
    assert result.returncode == 0, result.stderr
    doc = etree.fromstring(result.stdout.encode())
    user = doc.find(f"{{{PIE}}}host[@jid='localhost']/{{{PIE}}}user[@name='exp_owner']")
    assert user is not None
    mechanisms = {c.get("mechanism") for c in user.iter("{urn:xmpp:pie:0#scram}scram-credentials")}
    assert mechanisms == {"SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert "owner-secret-pw" not in result.stdout
    item = user.find("{jabber:iq:roster}query/{jabber:iq:roster}item")
    assert item is not None and item.get("jid") == "exp_friend@localhost"
    assert item.findtext("{jabber:iq:roster}group") == "Pals"
    assert user.findtext("{vcard-temp}vCard/{vcard-temp}FN") == "Owner Person"
    assert (
        user.findtext("{jabber:iq:private}query/{urn:example:prefs}prefs/{urn:example:prefs}theme")
        == "dark"
    )
    blocked = [i.get("jid") for i in user.iter("{urn:xmpp:blocking}item")]
    assert blocked == ["spammer@example.net"]
    stored = user.find(f"{{{PIE}}}offline-messages/{{jabber:client}}message")
    assert stored is not None
    assert stored.findtext("{jabber:client}body") == "while you were out"
    mood = user.find(
        "{http://jabber.org/protocol/pubsub}pubsub/{http://jabber.org/protocol/pubsub}items"
        "[@node='urn:example:mood']/{http://jabber.org/protocol/pubsub}item/{urn:example:mood}mood"
    )
    assert mood is not None and mood.text == "happy"


async def test_export_of_a_missing_account_fails(server: XmppdServer) -> None:
    result = await asyncio.to_thread(server.cli, "export-user", "nobody-here@localhost")
    assert result.returncode == 1 and "does not exist" in result.stderr
