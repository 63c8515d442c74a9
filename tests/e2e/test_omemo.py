"""OMEMO (XEP-0384) through xmppd: slixmpp clients with slixmpp-omemo publish their device
lists and bundles with PEP (XEP-0163, open access model), become contacts, and exchange
encrypted messages that only the other side can read: live, through offline storage
(XEP-0160), and between strangers who fetch each other's open nodes. The server routes,
stores and archives (XEP-0313) the encrypted payload untouched and never sees the
plaintext: not in what it delivers, not in the archive, not in its debug log.
On SQLite and PostgreSQL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree
from slixmpp import JID
from slixmpp.stanza import Message

from tests.support.clients import Slix
from tests.support.e2e import (
    PASSWORD,
    befriend,
    check_server_survived,
    new_account,
    take,
)
from tests.support.mam import DELAY, Item, everything
from tests.support.omemo import (
    DEVICE_LIST_NODES,
    FALLBACK,
    OLDMEMO,
    MemoryStorage,
    omemo,
    omemo_client,
)
from tests.support.pep import get_items
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import XmlClient

HINTS = "urn:xmpp:hints"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """PEP for the keys, offline storage and the archive for the messages."""
    modules = {**DEFAULT_TEST_MODULES, "pep": {}, "offline": {}, "mam": {}}
    tmp = tmp_path_factory.mktemp(f"xmppd-omemo-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv
        check_server_survived(srv)


# ----------------------------------------------------------------------------- helpers


async def send_encrypted(sender: Slix, to: str, body: str) -> ET.Element:
    """Encrypt ``body`` for ``to``'s devices and send it; the ``<encrypted/>`` sent."""
    msg = sender.xmpp.make_message(mto=JID(to), mtype="chat")
    msg["body"] = body
    encrypted, errors = await omemo(sender).encrypt_message(msg, JID(to))
    assert encrypted is not None, errors
    assert not errors, errors
    payload = encrypted.xml.find(f"{{{OLDMEMO}}}encrypted")
    assert payload is not None
    encrypted.send()
    return ET.fromstring(ET.tostring(payload))  # a copy: slixmpp may reuse the stanza


def is_encrypted(message: Message) -> bool:
    return message.xml.find(f"{{{OLDMEMO}}}encrypted") is not None


async def receive_encrypted(client: Slix, sender: str) -> Message:
    """The next OMEMO message from ``sender`` (a bare JID), as the server delivered it."""
    got: Message = await take(
        client.messages,
        lambda m: m["from"].bare == sender and is_encrypted(m),
        timeout=20,
    )
    return got


async def decrypt(client: Slix, message: Message) -> tuple[str, Any]:
    """(plaintext, sending device) of an OMEMO message."""
    decrypted, device = await omemo(client).decrypt_message(message)
    return str(decrypted["body"]), device


async def device_id(client: Slix) -> int:
    manager = await omemo(client).get_session_manager()
    own = (await manager.get_own_device_information())[0]
    return int(own.device_id)


def payload_of(message: Message) -> ET.Element:
    """The ``<encrypted/>`` element of an OMEMO message."""
    found = message.xml.find(f"{{{OLDMEMO}}}encrypted")
    assert found is not None
    return found


def canonical(el: ET.Element) -> str:
    return ET.canonicalize(ET.tostring(el, encoding="unicode"))


def assert_routed_without_plaintext(message: Message, plaintext: str) -> None:
    """What the server delivered: the OMEMO payload, the fallback body, the store hint,
    and nowhere the plaintext."""
    assert plaintext not in str(message)
    assert message["body"] == FALLBACK
    assert message.xml.find(f"{{{HINTS}}}store") is not None


async def archive_of(server: XmppdServer, jid: str) -> list[Item]:
    client = await XmlClient.login(server, jid, PASSWORD, resource="history")
    try:
        return await everything(client)
    finally:
        await client.close()


def assert_archived_encrypted(
    items: list[Item], sender: str, plaintext: str, sent: ET.Element
) -> None:
    """The archive has the message from ``sender`` with its payload exactly as sent
    (and the fallback body), and no plaintext anywhere."""
    for item in items:
        assert plaintext not in etree.tostring(item.message).decode()
    archived = [
        canonical(ET.fromstring(etree.tostring(el)))
        for item in items
        if (item.get("from") or "").split("/")[0] == sender and item.body == FALLBACK
        for el in item.message.iterfind(f"{{{OLDMEMO}}}encrypted")
    ]
    assert archived == [canonical(sent)]


# ----------------------------------------------------------------------------- tests


async def test_contacts_exchange_encrypted_messages(server: XmppdServer) -> None:
    a_jid = await new_account(server, "oma")
    b_jid = await new_account(server, "omb")
    a = await omemo_client(server, a_jid, MemoryStorage())
    b = await omemo_client(server, b_jid, MemoryStorage())
    secret, answer = "the vault code is 7-3-1-9", "noted; burn this message"
    try:
        # Each client published its device list and bundle with PEP, open to anyone.
        stranger = await XmlClient.login(server, await new_account(server, "omx"), PASSWORD)
        try:
            b_device = await device_id(b)
            for node in DEVICE_LIST_NODES:
                reply = await get_items(stranger, b_jid, node)
                assert reply.get("type") == "result", etree.tostring(reply)
                ids = [d.get("id") for d in reply.iter() if etree.QName(d).localname == "device"]
                assert ids == [str(b_device)]
            reply = await get_items(stranger, b_jid, f"{OLDMEMO}.bundles:{b_device}")
            assert reply.find(f".//{{{OLDMEMO}}}identityKey") is not None
        finally:
            await stranger.close()

        await befriend(a, b)
        # Contacts now: each got the other's device list from the server (PEP).
        manager = await omemo(a).get_session_manager()
        known = await manager.get_device_information(b_jid)
        assert {d.device_id for d in known} == {b_device}

        sent = await send_encrypted(a, b_jid, secret)
        got = await receive_encrypted(b, a_jid)
        assert_routed_without_plaintext(got, secret)
        assert canonical(payload_of(got)) == canonical(sent)
        plaintext, device = await decrypt(b, got)
        assert plaintext == secret
        assert device.bare_jid == a_jid and device.device_id == await device_id(a)

        await send_encrypted(b, a_jid, answer)
        reply_msg = await receive_encrypted(a, b_jid)
        assert_routed_without_plaintext(reply_msg, answer)
        assert (await decrypt(a, reply_msg))[0] == answer
    finally:
        await a.stop()
        await b.stop()

    for jid in (a_jid, b_jid):
        items = await archive_of(server, jid)
        assert [i.body for i in items if i.body is not None] == [FALLBACK, FALLBACK]
        assert all(secret not in etree.tostring(i.message).decode() for i in items)
        assert all(answer not in etree.tostring(i.message).decode() for i in items)
    assert_archived_encrypted(await archive_of(server, b_jid), a_jid, secret, sent)
    log = server.log_text()
    assert secret not in log and answer not in log


async def test_encrypted_message_waits_offline_intact(server: XmppdServer) -> None:
    """The recipient is offline when the message is sent; offline storage keeps the
    <encrypted/> payload byte for byte, and the recipient decrypts it after logging in."""
    a_jid = await new_account(server, "omoa")
    b_jid = await new_account(server, "omob")
    b_keys = MemoryStorage()  # b's OMEMO device, kept across its two sessions
    a = await omemo_client(server, a_jid, MemoryStorage())
    b = await omemo_client(server, b_jid, b_keys)
    secret = "meet at the north gate at dawn"
    try:
        await befriend(a, b)
        b_device = await device_id(b)
        await b.stop()
        await a.xmpp.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)

        sent = await send_encrypted(a, b_jid, secret)
        await a.xmpp.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)
        b = await omemo_client(server, b_jid, b_keys)
        assert await device_id(b) == b_device
        got = await receive_encrypted(b, a_jid)
        assert got.xml.find(f"{{{DELAY}}}delay") is not None, "not from offline storage"
        assert_routed_without_plaintext(got, secret)
        assert canonical(payload_of(got)) == canonical(sent)
        plaintext, device = await decrypt(b, got)
        assert plaintext == secret and device.bare_jid == a_jid
    finally:
        await a.stop()
        await b.stop()
    assert_archived_encrypted(await archive_of(server, b_jid), a_jid, secret, sent)
    assert secret not in server.log_text()


async def test_strangers_encrypt_with_open_nodes(server: XmppdServer) -> None:
    """Without a presence subscription the plugin tries an explicit pubsub subscription
    (not offered: it goes on without) and downloads the device list and bundle itself;
    the open access model lets it."""
    a_jid = await new_account(server, "omsa")
    b_jid = await new_account(server, "omsb")
    a = await omemo_client(server, a_jid, MemoryStorage())
    b = await omemo_client(server, b_jid, MemoryStorage())
    secret = "no roster needed"
    try:
        await send_encrypted(a, b_jid, secret)
        got = await receive_encrypted(b, a_jid)
        assert_routed_without_plaintext(got, secret)
        assert (await decrypt(b, got))[0] == secret
    finally:
        await a.stop()
        await b.stop()
