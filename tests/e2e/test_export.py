"""`xmppd export-user` writes an account's data as XEP-0227 XML: credentials as SCRAM keys
(never a password), roster, vCard, private XML, blocklist, offline messages, PEP and the
XEP-0313 message archive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import pytest
from lxml import etree

from tests.support.clients import Slix, register_account
from tests.support.e2e import PASSWORD, new_account
from tests.support.mam import DELAY, FORWARD, MAM, everything, stanza_ids
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import CLIENT, XmlClient, attrs, tag
from xmppd_modules.mod_mam.export import EXPORT_PAGE


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
        "mam": {},
    }
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv


PIE = "urn:xmpp:pie:0"
PIE_MAM = "urn:xmpp:pie:0#mam"


async def export_user(server: XmppdServer, jid: str) -> etree._Element:
    """The ``<user/>`` element of ``xmppd export-user jid``."""
    result = await asyncio.to_thread(server.cli, "export-user", jid)
    assert result.returncode == 0, result.stderr
    doc = etree.fromstring(result.stdout.encode())
    local, domain = jid.split("@")
    user = doc.find(f"{{{PIE}}}host[@jid='{domain}']/{{{PIE}}}user[@name='{local}']")
    assert user is not None
    return user


def message_with(body: str) -> Callable[[etree._Element], bool]:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def available(server: XmppdServer, jid: str) -> XmlClient:
    client = await XmlClient.login(server, jid, PASSWORD, resource="r")
    client.send("<presence/>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client


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


async def test_export_contains_the_message_archive_in_order(server: XmppdServer) -> None:
    """XEP-0227 §6.7: the archive as XEP-0313 results, oldest first, each forwarding the
    message with its time; the ids are the archive ids the user saw as stanza ids."""
    owner_jid = await new_account(server, "exparch")
    friend_jid = await new_account(server, "expfriend")
    owner = await available(server, owner_jid)
    friend = await available(server, friend_jid)
    try:
        lines = [
            (owner, friend_jid, "first <&> line"),
            (friend, owner_jid, "second"),
            (owner, friend_jid, "third"),
            (friend, owner_jid, "fourth, unicode: \u00e9\u00e8"),
        ]
        for sender, to, body in lines:
            sender.send(
                f"<message{attrs(to=to, type='chat')}><body>{escape(body)}</body></message>"
            )
            receiver = friend if sender is owner else owner
            await receiver.expect(message_with(body))
        archived = await everything(owner)  # also waits for the archive writer
    finally:
        await owner.close()
        await friend.close()
    assert [item.body for item in archived] == [body for _, _, body in lines]

    user = await export_user(server, owner_jid)
    archive = user.find(f"{{{PIE_MAM}}}archive")
    assert archive is not None
    results = archive.findall(f"{{{MAM}}}result")
    assert len(results) == len(archive), "only <result/> elements in <archive/>"
    assert [r.get("id") for r in results] == [item.id for item in archived]
    messages = []
    for result, item in zip(results, archived, strict=True):
        forwarded = result.find(f"{{{FORWARD}}}forwarded")
        assert forwarded is not None
        delay = forwarded.find(f"{{{DELAY}}}delay")
        assert delay is not None and delay.get("stamp") == item.stamp
        message = forwarded.find(f"{{{CLIENT}}}message")
        assert message is not None
        messages.append(message)
    assert [m.findtext(f"{{{CLIENT}}}body") for m in messages] == [b for _, _, b in lines]
    # The messages the owner received carry the stanza id the owner's client was given:
    # the archive id, by the owner's bare JID (XEP-0359).
    for message, result in zip(messages, results, strict=True):
        if message.get("to", "").startswith(owner_jid):
            assert stanza_ids(message) == [(owner_jid, result.get("id"))]
        else:
            assert message.get("from", "").startswith(owner_jid)
    # Each party's export holds its own archive only.
    other = await export_user(server, friend_jid)
    other_ids = {r.get("id") for r in other.iter(f"{{{MAM}}}result")}
    assert len(other_ids) == len(lines) and not other_ids & {r.get("id") for r in results}


async def test_export_reads_a_long_archive_page_after_page(server: XmppdServer) -> None:
    """An archive longer than one read of the exporter comes out whole and in order."""
    owner_jid = await new_account(server, "explong")
    friend_jid = await new_account(server, "explongpeer")
    owner = await available(server, owner_jid)
    try:
        total = EXPORT_PAGE + 7
        for n in range(total):
            owner.send(f"<message{attrs(to=friend_jid, type='chat')}><body>n{n}</body></message>")
        await owner.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=server.domain, timeout=30)
        archived = await everything(owner)
    finally:
        await owner.close()
    assert [item.body for item in archived] == [f"n{n}" for n in range(total)]
    user = await export_user(server, owner_jid)
    results = user.findall(f"{{{PIE_MAM}}}archive/{{{MAM}}}result")
    assert [r.get("id") for r in results] == [item.id for item in archived]
    bodies = [
        r.findtext(f"{{{FORWARD}}}forwarded/{{{CLIENT}}}message/{{{CLIENT}}}body") for r in results
    ]
    assert bodies == [f"n{n}" for n in range(total)]
