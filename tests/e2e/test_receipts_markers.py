"""Message status end to end: XEP-0184 delivery receipts and XEP-0333 chat markers between
slixmpp clients, live, through offline storage (XEP-0160) in both directions, and in both
parties' XEP-0313 archives, so that a client syncing its history can rebuild "sent,
delivered, read". Also XEP-0308 corrections and XEP-0424 retractions (with a fallback body
or without one): stored offline, delivered in order, archived. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from slixmpp import JID
from slixmpp.stanza import Message
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.support.clients import Slix
from tests.support.e2e import (
    ALL_PLUGINS,
    PASSWORD,
    befriend,
    check_server_survived,
    manual_subscriptions,
    new_account,
    presence,
    take,
)
from tests.support.mam import DELAY, Item, everything
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import CLIENT, Element, XmlClient, attrs, tag

RECEIPTS = "urn:xmpp:receipts"
MARKERS = "urn:xmpp:chat-markers:0"
CORRECT = "urn:xmpp:message-correct:0"
RETRACT = "urn:xmpp:message-retract:1"
FALLBACK = "urn:xmpp:fallback:0"
HINTS = "urn:xmpp:hints"
CHATSTATES = "http://jabber.org/protocol/chatstates"
SID = "urn:xmpp:sid:0"
PLUGINS = (*ALL_PLUGINS, "xep_0184", "xep_0333", "xep_0203", "xep_0359")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """xmppd with offline storage and the message archive, once per storage backend."""
    modules = {**DEFAULT_TEST_MODULES, "offline": {}, "mam": {}}
    tmp = tmp_path_factory.mktemp(f"xmppd-receipts-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv
        check_server_survived(srv)


# ----------------------------------------------------------------------------- clients


@dataclass
class Peer:
    """A slixmpp client and every message stanza it received, bodiless ones included
    (slixmpp's own 'message' event only reports messages with a body)."""

    client: Slix
    stanzas: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    @property
    def jid(self) -> str:
        return self.client.jid

    @property
    def xmpp(self) -> Any:
        return self.client.xmpp

    async def next(self, predicate: Callable[[Message], bool], timeout: float = 10) -> Message:
        got: Message = await take(self.stanzas, predicate, timeout)
        return got

    async def stop(self) -> None:
        await self.client.stop()


async def connect(server: XmppdServer, jid: str, *, auto_ack: bool = True) -> Peer:
    """An available slixmpp client that records every message from its first byte on:
    offline messages arrive right after the initial presence."""
    client = manual_subscriptions(
        Slix(server, jid, PASSWORD, plugins=PLUGINS, initial_presence=False)
    )
    peer = Peer(client)

    def record(stanza: StanzaBase) -> None:
        assert isinstance(stanza, Message)
        peer.stanzas.put_nowait(stanza)

    client.xmpp.register_handler(
        Callback("every message", MatchXPath(f"{{{CLIENT}}}message"), record)
    )
    client.xmpp.plugin["xep_0184"].auto_ack = auto_ack
    await client.start()
    client.xmpp.send_presence()
    await take(client.presences, lambda p: p["from"] == client.xmpp.boundjid)
    return peer


def send_chat(sender: Peer, to: str, body: str) -> str:
    """A markable chat message asking for a delivery receipt; its id."""
    msg = sender.xmpp.make_message(mto=to, mbody=body, mtype="chat")
    msg["request_receipt"] = True
    msg["markable"] = True
    msg.send()
    return str(msg["id"])


def send_state(
    sender: Peer, to: str, state: str, *, hint: bool = False, origin_id: str | None = None
) -> None:
    """A bodiless message with only an XEP-0085 chat state (with the <store/> hint, or a
    XEP-0359 origin id, as some clients put on every message)."""
    msg = sender.xmpp.make_message(mto=to, mtype="chat")
    msg.append(ET.Element(f"{{{CHATSTATES}}}{state}"))
    if hint:
        msg.append(ET.Element(f"{{{HINTS}}}store"))
    if origin_id is not None:
        msg.append(ET.Element(f"{{{SID}}}origin-id", {"id": origin_id}))
    msg.send()


def chat_state(msg: Message) -> str | None:
    for el in msg.xml:
        if el.tag.startswith(f"{{{CHATSTATES}}}"):
            return str(el.tag.split("}", 1)[1])
    return None


def receipt_for(msg_id: str) -> Callable[[Message], bool]:
    return lambda m: m["receipt"] == msg_id


def displayed(msg_id: str) -> Callable[[Message], bool]:
    return lambda m: m.xml.find(f"{{{MARKERS}}}displayed[@id='{msg_id}']") is not None


def with_body(body: str) -> Callable[[Message], bool]:
    return lambda m: m["body"] == body


def delayed(msg: Message) -> bool:
    """Whether the message came out of offline storage (XEP-0203 stamp by the server)."""
    return msg.xml.find(f"{{{DELAY}}}delay") is not None


async def went_offline(peer: Peer, watcher: Peer) -> None:
    """Stop ``peer`` and wait until the server told ``watcher`` (a contact) so."""
    full = peer.jid
    await peer.stop()
    await take(watcher.client.presences, presence("unavailable", full))


# ----------------------------------------------------------------------------- archives


async def archive_of(server: XmppdServer, jid: str) -> list[Item]:
    """Everything in the account's archive, from a session that never goes available
    (so it takes no offline message)."""
    client = await XmlClient.login(server, jid, PASSWORD, resource="history")
    try:
        return await everything(client)
    finally:
        await client.close()


def bare_from(item: Item) -> str:
    return (item.get("from") or "").split("/")[0]


def message_id(msg_id: str) -> Callable[[Element], bool]:
    return lambda el: el.tag == tag("message") and el.get("id") == msg_id


def status_line(item: Item) -> tuple[str, str | None]:
    """What an archived message says about a conversation: ("body", text),
    ("receipt", id), ("displayed", id)..."""
    message = item.message
    if (received := message.find(f"{{{RECEIPTS}}}received")) is not None:
        return "receipt", received.get("id")
    if (marker := message.find(f"{{{MARKERS}}}displayed")) is not None:
        return "displayed", marker.get("id")
    if item.body is None:
        states = [el.tag for el in message if el.tag.startswith(f"{{{CHATSTATES}}}")]
        return "state", states[0].split("}", 1)[1] if states else None
    return "body", item.body


# ----------------------------------------------------------------------------- tests


async def test_both_online_receipt_and_displayed_marker_reach_the_sender(
    server: XmppdServer,
) -> None:
    a = await connect(server, await new_account(server, "rma"))
    b = await connect(server, await new_account(server, "rmb"))
    try:
        msg_id = send_chat(a, b.jid.split("/")[0], "are you there?")
        got = await b.next(with_body("are you there?"))
        assert got["request_receipt"] and got["id"] == msg_id
        receipt = await a.next(receipt_for(msg_id))  # sent by b's client by itself
        assert receipt["from"] == b.xmpp.boundjid
        b.xmpp.plugin["xep_0333"].send_marker(mto=got["from"], id=msg_id, marker="displayed")
        marker = await a.next(displayed(msg_id))
        assert marker["from"] == b.xmpp.boundjid
        assert not delayed(receipt) and not delayed(marker)
    finally:
        await a.stop()
        await b.stop()


async def test_message_stored_offline_is_acknowledged_when_the_recipient_logs_in(
    server: XmppdServer,
) -> None:
    a_jid = await new_account(server, "rmoa")
    b_jid = await new_account(server, "rmob")
    a = await connect(server, a_jid)
    try:
        msg_id = send_chat(a, b_jid, "for later")
        # The server handled it (stored it) before answering this ping.
        await a.xmpp.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)
        b = await connect(server, b_jid)
        try:
            got = await b.next(with_body("for later"))
            assert delayed(got) and got["id"] == msg_id and got["request_receipt"]
            receipt = await a.next(receipt_for(msg_id))
            assert receipt["from"] == b.xmpp.boundjid
            b.xmpp.plugin["xep_0333"].send_marker(mto=a.jid, id=msg_id, marker="displayed")
            await a.next(displayed(msg_id))
        finally:
            await b.stop()
    finally:
        await a.stop()


async def test_receipt_and_marker_wait_offline_for_the_sender(server: XmppdServer) -> None:
    """(c) and (d): the sender went offline before the recipient read the message; the
    receipt and the marker wait in offline storage, and both archives tell the story."""
    a_jid = await new_account(server, "rmsa")
    b_jid = await new_account(server, "rmsb")
    a = await connect(server, a_jid)
    b = await connect(server, b_jid, auto_ack=False)
    try:
        await befriend(a.client, b.client)
        msg_id = send_chat(a, b_jid, "read me when you can")
        got = await b.next(with_body("read me when you can"))
        await went_offline(a, b)
        b.xmpp.plugin["xep_0184"].ack(got)
        b.xmpp.plugin["xep_0333"].send_marker(mto=got["from"].bare, id=msg_id, marker="displayed")
        await b.xmpp.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)
    finally:
        await b.stop()
    a = await connect(server, a_jid)
    try:
        receipt = await a.next(receipt_for(msg_id))
        marker = await a.next(displayed(msg_id))
        assert delayed(receipt) and delayed(marker)
        assert receipt["from"].bare == b_jid and marker["from"].bare == b_jid
    finally:
        await a.stop()

    expected = [("body", "read me when you can"), ("receipt", msg_id), ("displayed", msg_id)]
    a_items = await archive_of(server, a_jid)
    b_items = await archive_of(server, b_jid)
    assert [status_line(i) for i in a_items] == expected
    assert [status_line(i) for i in b_items] == expected
    # Directions as each archive sees them: a sent the message and received the status.
    assert [bare_from(i) for i in a_items] == [a_jid, b_jid, b_jid]
    assert [bare_from(i) for i in b_items] == [a_jid, b_jid, b_jid]


async def test_archive_of_a_live_conversation_holds_receipt_and_marker(
    server: XmppdServer,
) -> None:
    """(d) for the online case: both archives hold message, receipt and marker in order."""
    a_jid = await new_account(server, "rmla")
    b_jid = await new_account(server, "rmlb")
    a = await connect(server, a_jid)
    b = await connect(server, b_jid)
    try:
        msg_id = send_chat(a, b_jid, "live one")
        got = await b.next(with_body("live one"))
        await a.next(receipt_for(msg_id))
        b.xmpp.plugin["xep_0333"].send_marker(mto=got["from"], id=msg_id, marker="displayed")
        await a.next(displayed(msg_id))
    finally:
        await a.stop()
        await b.stop()
    expected = [("body", "live one"), ("receipt", msg_id), ("displayed", msg_id)]
    assert [status_line(i) for i in await archive_of(server, a_jid)] == expected
    assert [status_line(i) for i in await archive_of(server, b_jid)] == expected


async def test_chat_states_are_kept_only_with_the_store_hint(server: XmppdServer) -> None:
    """The storage rules stay narrow: a bodiless message with only a chat state is a state
    change (XEP-0160 §3, XEP-0313 §3), not history, unless the sender marks it with the
    XEP-0334 <store/> hint: then offline storage and the archive both keep it. Ids
    (XEP-0359) on a message are not content either."""
    a_jid = await new_account(server, "rmca")
    b_jid = await new_account(server, "rmcb")
    a = await connect(server, a_jid)
    try:
        send_state(a, b_jid, "composing")
        send_state(a, b_jid, "active", origin_id="state-with-an-id")
        send_state(a, b_jid, "paused", hint=True)  # the archive adds a stanza-id to it
        msg_id = send_chat(a, b_jid, "after the states")
        await a.xmpp.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)
    finally:
        await a.stop()
    b = await connect(server, b_jid)
    try:
        await b.next(with_body("after the states"))
        await b.xmpp.plugin["xep_0199"].ping(jid=JID(server.domain), timeout=10)
        states = [chat_state(m) for m in _drain(b.stanzas) if chat_state(m) is not None]
        assert states == ["paused"]
    finally:
        await b.stop()
    assert [status_line(i) for i in await archive_of(server, a_jid)] == [
        ("state", "paused"),
        ("body", "after the states"),
        ("receipt", msg_id),  # b's client acknowledged the message at login
    ]


# ----------------------------------------------------------------------------- corrections


def _drain(queue: asyncio.Queue[Message]) -> list[Message]:
    return [queue.get_nowait() for _ in range(queue.qsize())]


RETRACT_FALLBACK = (
    "This person attempted to retract a previous message, but it's unsupported by your client."
)


async def test_corrections_and_retractions_are_stored_offline_and_archived(
    server: XmppdServer,
) -> None:
    """XEP-0308 and XEP-0424: both kinds of retraction (with a fallback body and the
    store hint, or a bare <retract/>) and a correction wait offline in order, reach the
    recipient intact, and are in both archives."""
    a_jid = await new_account(server, "rmra")
    b_jid = await new_account(server, "rmrb")
    a = await XmlClient.login(server, a_jid, PASSWORD, resource="r")
    sent = [
        f"<message{attrs(to=b_jid, type='chat', id='m1')}><body>helo</body></message>",
        f"<message{attrs(to=b_jid, type='chat', id='m2')}><body>hello</body>"
        f"<replace xmlns='{CORRECT}' id='m1'/></message>",
        f"<message{attrs(to=b_jid, type='chat', id='m3')}><body>oops</body></message>",
        f"<message{attrs(to=b_jid, type='chat', id='m4')}><retract xmlns='{RETRACT}' id='m3'/>"
        f"<fallback xmlns='{FALLBACK}' for='{RETRACT}'/><body>{RETRACT_FALLBACK}</body>"
        f"<store xmlns='{HINTS}'/></message>",
        f"<message{attrs(to=b_jid, type='chat', id='m5')}><body>again</body></message>",
        f"<message{attrs(to=b_jid, type='chat', id='m6')}><retract xmlns='{RETRACT}' id='m5'/></message>",
    ]
    try:
        for stanza in sent:
            a.send(stanza)
        await a.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=server.domain)
        assert not a.pending(lambda el: el.get("type") == "error"), "a message was refused"
    finally:
        await a.close()

    b = await XmlClient.login(server, b_jid, PASSWORD, resource="r")
    try:
        b.send("<presence/>")
        got: list[Element] = []
        for n in range(1, 7):
            got.append(await b.expect(message_id(f"m{n}")))
    finally:
        await b.close()
    assert all(el.find(f"{{{DELAY}}}delay") is not None for el in got)
    correction = got[1].find(f"{{{CORRECT}}}replace")
    assert correction is not None and correction.get("id") == "m1"
    assert got[1].findtext(tag("body")) == "hello"
    for el, target in ((got[3], "m3"), (got[5], "m5")):
        retract = el.find(f"{{{RETRACT}}}retract")
        assert retract is not None and retract.get("id") == target
    assert got[3].findtext(tag("body")) == RETRACT_FALLBACK
    assert got[3].find(f"{{{FALLBACK}}}fallback") is not None
    assert got[5].find(tag("body")) is None

    for jid in (a_jid, b_jid):
        items = await archive_of(server, jid)
        assert [i.get("id") for i in items] == [f"m{n}" for n in range(1, 7)], jid
        assert items[1].message.find(f"{{{CORRECT}}}replace") is not None
        assert items[3].message.find(f"{{{RETRACT}}}retract") is not None
        assert items[5].message.find(f"{{{RETRACT}}}retract") is not None
        assert items[5].body is None
