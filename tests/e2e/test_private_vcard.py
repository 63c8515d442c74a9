"""XEP-0049 Private XML Storage and XEP-0054 vcard-temp (with XEP-0153 avatar hashes in
presence) end to end, and that deleting an account deletes its blocklist, private data
and vCard."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree

from tests.e2e.test_accounts import rows_mentioning
from tests.support.blocking import (
    BLOCKING,
    assert_no_crash,
    client,
    raw_login,
    storage_server,
)
from tests.support.clients import register_account
from tests.support.e2e import (
    PASSWORD,
    befriend,
    iq_with,
    new_account,
    presence,
    settle,
    take,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, error_condition

PRIVATE = "jabber:iq:private"
VCARD = "vcard-temp"
UPDATE = "vcard-temp:x:update"

PREFS = (
    "<prefs xmlns='test:prefs' version='2'>"
    "<nick>Hamlet &amp; co</nick><opt name='sound' xml:lang='en'>on</opt></prefs>"
)
BOOKMARKS = (
    "<storage xmlns='storage:bookmarks'>"
    "<conference jid='room@muc.example' autojoin='true' name='Room'><nick>ham</nick>"
    "</conference></storage>"
)
PHOTO = bytes(range(256)) * 8
PHOTO_HASH = hashlib.sha1(PHOTO).hexdigest()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    yield from storage_server(request, tmp_path_factory)


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    assert_no_crash(server)


def canonical(el: Element, *, tail: bool = False) -> tuple[Any, ...]:
    """Names, attributes, text and children: the same however namespaces were declared."""
    return (
        el.tag,
        sorted(el.attrib.items()),
        el.text or "",
        [canonical(c, tail=True) for c in el],
        (el.tail or "") if tail else "",
    )


def parse(text: str) -> Element:
    return etree.fromstring(text)


def only_child(reply: Element, namespace: str, tag: str) -> Element:
    assert reply.get("type") == "result", etree.tostring(reply)
    found = reply.find(f"{{{namespace}}}{tag}")
    assert found is not None, etree.tostring(reply)
    return found


def private(*children: str) -> str:
    return f"<query xmlns='{PRIVATE}'>{''.join(children)}</query>"


def vcard(fn: str, photo: bytes | None = None, padding: int = 0) -> str:
    inner = f"<FN>{fn}</FN><NICKNAME>{fn.lower()}</NICKNAME>"
    if photo is not None:
        inner += f"<PHOTO><TYPE>image/png</TYPE><BINVAL>{base64.b64encode(photo).decode()}</BINVAL></PHOTO>"
    if padding:
        inner += f"<DESC>{'x' * padding}</DESC>"
    return f"<vCard xmlns='{VCARD}'>{inner}</vCard>"


def photo_in(p: Any) -> str | None:
    """The XEP-0153 photo hash a presence carries ("" for an empty <photo/>)."""
    photo = p.xml.find(f"{{{UPDATE}}}x/{{{UPDATE}}}photo")
    return None if photo is None else (photo.text or "")


# ----------------------------------------------------------------------------- XEP-0049


async def test_private_data_is_kept_per_namespace_across_sessions(server: XmppdServer) -> None:
    alice = await new_account(server, "priv")
    first = await raw_login(server, alice)
    try:
        stored = await first.iq("set", private(PREFS, BOOKMARKS), to=None)
        assert stored.get("type") == "result"
    finally:
        await first.close()

    second = await raw_login(server, alice)
    try:
        got = await second.iq("get", private("<prefs xmlns='test:prefs'/>"), to=None)
        query = only_child(got, PRIVATE, "query")
        assert [canonical(el) for el in query] == [canonical(parse(PREFS))]
        got = await second.iq("get", private("<storage xmlns='storage:bookmarks'/>"), to=None)
        query = only_child(got, PRIVATE, "query")
        assert [canonical(el) for el in query] == [canonical(parse(BOOKMARKS))]

        # Nothing stored: the empty element comes back.
        got = await second.iq("get", private("<other xmlns='test:none'/>"), to=None)
        query = only_child(got, PRIVATE, "query")
        assert [canonical(el) for el in query] == [canonical(parse("<other xmlns='test:none'/>"))]

        # A set replaces that namespace only.
        replaced = "<prefs xmlns='test:prefs'><nick>Ophelia</nick></prefs>"
        assert (await second.iq("set", private(replaced), to=None)).get("type") == "result"
        got = await second.iq("get", private("<prefs xmlns='test:prefs'/>"), to=None)
        assert [canonical(el) for el in only_child(got, PRIVATE, "query")] == [
            canonical(parse(replaced))
        ]
        got = await second.iq("get", private("<storage xmlns='storage:bookmarks'/>"), to=None)
        assert [canonical(el) for el in only_child(got, PRIVATE, "query")] == [
            canonical(parse(BOOKMARKS))
        ]
    finally:
        await second.close()


async def test_private_storage_refusals(server: XmppdServer) -> None:
    alice = await new_account(server, "privbad")
    mallory = await new_account(server, "privmal")
    owner = await raw_login(server, alice)
    other = await raw_login(server, mallory)
    try:
        assert (await owner.iq("set", private(PREFS), to=None)).get("type") == "result"
        cases = [
            ("set", private(), "not-acceptable"),
            ("get", private(), "not-acceptable"),
            ("set", private("<x xmlns='jabber:iq:roster'/>"), "not-acceptable"),
            ("get", private("<x xmlns='jabber:client'/>"), "not-acceptable"),
            ("set", private(f"<vCard xmlns='{VCARD}'><FN>A</FN></vCard>"), "not-acceptable"),
            ("set", private("<unqualified/>"), "not-acceptable"),
            ("set", private("<a xmlns='test:a'><b xmlns=''/></a>"), "not-acceptable"),
            (
                "set",
                private(f"<big xmlns='test:big'>{'y' * 70_000}</big>"),
                "policy-violation",
            ),
        ]
        for type, query, condition in cases:
            reply = await owner.iq(type, query, to=None)
            assert (query[:80], error_condition(reply)) == (query[:80], condition)

        # Someone else's storage: forbidden, and nothing changes.
        read = await other.iq("get", private("<prefs xmlns='test:prefs'/>"), to=alice)
        assert error_condition(read) == "forbidden"
        write = await other.iq(
            "set", private("<prefs xmlns='test:prefs'><nick>Mallory</nick></prefs>"), to=alice
        )
        assert error_condition(write) == "forbidden"
        got = await owner.iq("get", private("<prefs xmlns='test:prefs'/>"), to=None)
        assert [canonical(el) for el in only_child(got, PRIVATE, "query")] == [
            canonical(parse(PREFS))
        ]
        got = await owner.iq("get", private("<big xmlns='test:big'/>"), to=None)
        assert len(only_child(got, PRIVATE, "query")[0]) == 0
    finally:
        await owner.close()
        await other.close()


# ----------------------------------------------------------------------------- XEP-0054


async def test_vcards_are_set_by_their_owner_and_read_by_anyone(server: XmppdServer) -> None:
    alice = await new_account(server, "card")
    bob = await new_account(server, "cardb")
    owner = await raw_login(server, alice)
    reader = await raw_login(server, bob)
    try:
        # No vCard yet: an empty one for its owner, item-not-found for others.
        empty = only_child(
            await owner.iq("get", f"<vCard xmlns='{VCARD}'/>", to=None), VCARD, "vCard"
        )
        assert len(empty) == 0
        missing = await reader.iq("get", f"<vCard xmlns='{VCARD}'/>", to=alice)
        assert error_condition(missing) == "item-not-found"
        nobody = await reader.iq("get", f"<vCard xmlns='{VCARD}'/>", to=f"nobody@{server.domain}")
        assert error_condition(nobody) == "service-unavailable"

        card = vcard("Alice", PHOTO)
        assert (await owner.iq("set", card, to=None)).get("type") == "result"
        mine = only_child(
            await owner.iq("get", f"<vCard xmlns='{VCARD}'/>", to=None), VCARD, "vCard"
        )
        assert canonical(mine) == canonical(parse(card))
        theirs = only_child(
            await reader.iq("get", f"<vCard xmlns='{VCARD}'/>", to=alice), VCARD, "vCard"
        )
        assert canonical(theirs) == canonical(parse(card))

        # Bob cannot change Alice's vCard; a vCard over max_size (64 KiB) is refused.
        forged = await reader.iq("set", vcard("Mallory"), to=alice)
        assert error_condition(forged) == "forbidden"
        too_big = await owner.iq("set", vcard("Alice", padding=70_000), to=None)
        assert error_condition(too_big) == "policy-violation"
        odd = await owner.iq("set", f"<vCard xmlns='{VCARD}'><FN xmlns=''>A</FN></vCard>", to=None)
        assert error_condition(odd) == "not-acceptable"
        still = only_child(
            await reader.iq("get", f"<vCard xmlns='{VCARD}'/>", to=alice), VCARD, "vCard"
        )
        assert canonical(still) == canonical(parse(card))

        # The server advertises vcard-temp (XEP-0054 §4).
        info = await owner.iq(
            "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=server.domain
        )
        assert VCARD in {f.get("var") for f in info.iter("{*}feature")}
    finally:
        await owner.close()
        await reader.close()


async def test_avatar_hash_is_added_to_presence(server: XmppdServer) -> None:
    alice_jid = await new_account(server, "ava")
    bob_jid = await new_account(server, "avb")
    alice = await client(server, alice_jid)
    bob = await client(server, bob_jid)
    try:
        await befriend(alice, bob)
        await settle(alice, bob)
        from_alice = presence("available", alice.xmpp.boundjid)

        # Publishing a photo (slixmpp, XEP-0054): Bob sees the new hash at once.
        card = alice.xmpp.plugin["xep_0054"].make_vcard()
        card["FN"] = "Alice"
        card["PHOTO"]["TYPE"] = "image/png"
        card["PHOTO"]["BINVAL"] = PHOTO
        await alice.xmpp.plugin["xep_0054"].publish_vcard(card)
        assert photo_in(await take(bob.presences, from_alice)) == PHOTO_HASH
        fetched = await bob.xmpp.plugin["xep_0054"].get_vcard(alice_jid)
        assert hashlib.sha1(fetched["vcard_temp"]["PHOTO"]["BINVAL"]).hexdigest() == PHOTO_HASH

        # Every later presence carries it...
        alice.xmpp.send_presence(pshow="away")
        seen = await take(bob.presences, from_alice)
        assert (seen["show"], photo_in(seen)) == ("away", PHOTO_HASH)
        # ...unless the client says otherwise itself (here: not ready, empty <photo/>).
        own = alice.xmpp.make_presence(pshow="dnd")
        own.append(ET.fromstring(f"<x xmlns='{UPDATE}'><photo/></x>"))
        own.send()
        seen = await take(bob.presences, from_alice)
        assert (seen["show"], photo_in(seen)) == ("dnd", "")

        # A vCard without photo: an empty <photo/> says there is no avatar.
        await iq_with(alice, "set", vcard("Alice")).send(timeout=10)
        alice.xmpp.send_presence()
        assert photo_in(await take(bob.presences, from_alice)) == ""
        # Bob has no vCard: his presence carries nothing.
        bob.xmpp.send_presence(pstatus="here")
        seen = await take(alice.presences, presence("available", bob.xmpp.boundjid))
        assert photo_in(seen) is None
    finally:
        await alice.stop()
        await bob.stop()


# ----------------------------------------------------------------------------- all three


async def test_deleting_the_account_deletes_blocklist_private_data_and_vcard(
    server: XmppdServer,
) -> None:
    jid = await new_account(server, "gone")
    name = jid.split("@")[0]
    # No available presence: no last-seen time is written when the session ends.
    user = await raw_login(server, jid)
    try:
        for query in (
            f"<block xmlns='{BLOCKING}'><item jid='pest@{server.domain}'/></block>",
            private(PREFS),
            vcard("Gone", PHOTO),
        ):
            assert (await user.iq("set", query, to=None)).get("type") == "result"
    finally:
        await user.close()
    before = await rows_mentioning(server, name)
    assert before["mod_blocklist__items"] == 1
    assert before["xmppd_keyval"] == 3, before  # one namespace; the vCard and its hash
    deleted = await asyncio.to_thread(server.cli, "deluser", jid)
    assert deleted.returncode == 0, deleted.stderr
    after = await rows_mentioning(server, name)
    assert all(n == 0 for n in after.values()), after

    # The same name again: a fresh account with nothing from before (no stale cache).
    await register_account(server, name, PASSWORD)
    again = await raw_login(server, jid)
    try:
        listed = await again.iq("get", f"<blocklist xmlns='{BLOCKING}'/>", to=None)
        assert len(only_child(listed, BLOCKING, "blocklist")) == 0
        card = await again.iq("get", f"<vCard xmlns='{VCARD}'/>", to=None)
        assert len(only_child(card, VCARD, "vCard")) == 0
        prefs = await again.iq("get", private("<prefs xmlns='test:prefs'/>"), to=None)
        assert len(only_child(prefs, PRIVATE, "query")[0]) == 0
    finally:
        await again.close()
