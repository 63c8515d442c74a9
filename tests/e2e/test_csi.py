"""XEP-0352 Client State Indication: while inactive, presence and chat states are held and
coalesced; a message with a body (or going active) delivers them first, in order."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest

from tests.support.clients import Slix, register_account
from tests.support.rawstream import RawClient
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server

CSI = "urn:xmpp:csi:0"


@pytest.fixture(scope="module")
def csi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "csi": {}}
    with running_server(tmp_path_factory.mktemp("csi"), modules=modules) as srv:
        yield srv


async def test_presence_is_coalesced_until_a_real_message_arrives(csi_server: XmppdServer) -> None:
    await register_account(csi_server, "csi_alice", "alice-pw")
    await register_account(csi_server, "csi_bob", "bob-pw12")
    phone = await RawClient(csi_server).connect()
    try:
        jid = await phone.login("csi_alice", "alice-pw", resource="phone")
        phone.send("<presence/>")
        await phone.read_until(b"<presence")
        phone.send(f"<inactive xmlns='{CSI}'/>")
        async with Slix(csi_server, "csi_bob@localhost", "bob-pw12") as bob:
            # One raw write keeps the order exact (slixmpp queues stanzas differently).
            bob.xmpp.send_raw(
                f"<presence to='{jid}'><status>one</status></presence>"
                f"<presence to='{jid}'><status>two</status></presence>"
                f"<message to='{jid}' type='chat'>"
                "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
                f"<message to='{jid}' type='chat'><body>wake up</body></message>"
            )
            data = await phone.read_until(b"wake up")
        statuses = re.findall(rb"<status>([^<]+)</status>", data)
        assert statuses == [b"two"], data  # "one" was replaced while held
        assert data.index(b"<status>two") < data.index(b"composing") < data.index(b"wake up")
    finally:
        await phone.close()


async def test_going_active_flushes_what_was_held(csi_server: XmppdServer) -> None:
    await register_account(csi_server, "csi_carol", "carol-pw")
    await register_account(csi_server, "csi_dave", "dave-pw1")
    phone = await RawClient(csi_server).connect()
    try:
        jid = await phone.login("csi_carol", "carol-pw", resource="phone")
        phone.send("<presence/>")
        await phone.read_until(b"<presence")
        phone.send(f"<inactive xmlns='{CSI}'/>")
        async with Slix(csi_server, "csi_dave@localhost", "dave-pw1") as dave:
            dave.xmpp.send_presence(pto=jid, pstatus="held for later")
            # Prove the server handled it (and held it) before going active:
            await dave.xmpp.plugin["xep_0199"].ping(jid="localhost", timeout=10)
            phone.send(f"<active xmlns='{CSI}'/>")
            data = await phone.read_until(b"held for later")
        assert b"held for later" in data
    finally:
        await phone.close()


async def test_csi_is_advertised_after_login(csi_server: XmppdServer) -> None:
    await register_account(csi_server, "csi_erin", "erin-pw1")
    client = await RawClient(csi_server).connect()
    try:
        await client.starttls()
        await client.open_stream()
        token = base64.b64encode(b"\0csi_erin\0erin-pw1").decode()
        client.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        await client.read_until(b"<success")
        features = await client.open_stream()
        assert f'<csi xmlns="{CSI}"/>'.encode() in features
    finally:
        await client.close()
