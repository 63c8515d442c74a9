"""XEP-0313 Message Archive Management end to end, with XEP-0359 stanza ids and XEP-0059
paging, on SQLite and PostgreSQL: what is archived for whom, queries and their errors,
preferences, and that deleting an account deletes its archive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from slixmpp import JID

from tests.support.e2e import (
    ALL_PLUGINS,
    PASSWORD,
    check_server_survived,
    new_account,
    online,
    take,
    until_equal,
    user_rows,
)
from tests.support.mam import (
    FULLTEXT,
    MAM,
    Item,
    everything,
    query,
    query_error,
    query_xml,
    stanza_ids,
)
from tests.support.rawstream import RawClient
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, attrs, error_condition, tag, text

SLIX_PLUGINS = (*ALL_PLUGINS, "xep_0313", "xep_0059", "xep_0359")
SID = "urn:xmpp:sid:0"
DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def mam_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "mam": {}}
    tmp = tmp_path_factory.mktemp(f"xmppd-mam-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv
        check_server_survived(srv)


# ----------------------------------------------------------------------------- helpers


async def login(server: XmppdServer, jid: str, resource: str = "r") -> XmlClient:
    """A raw client that sent initial presence (so messages to its bare JID reach it)."""
    client = await XmlClient.login(server, jid, PASSWORD, resource=resource)
    client.send("<presence/>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client


def send(
    client: XmlClient,
    to: str,
    body: str | None,
    *,
    type: str | None = "chat",
    id: str | None = None,
    extra: str = "",
) -> None:
    inner = f"<body>{text(body)}</body>" if body is not None else ""
    client.send(f"<message{attrs(to=to, type=type, id=id)}>{inner}{extra}</message>")


def message_with(body: str) -> Callable[[Element], bool]:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def processed(client: XmlClient) -> None:
    """Everything ``client`` sent before has been handled (and archived) by the server."""
    await client.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=client.domain, timeout=20)


async def close(*clients: XmlClient) -> None:
    for client in clients:
        await client.close()


def bodies(items: list[Item]) -> list[str | None]:
    return [item.body for item in items]


async def mam_rows(server: XmppdServer, username: str) -> dict[str, int]:
    """Rows of this user in the module's tables."""
    return await user_rows(server, username, ["mod_mam__archive", "mod_mam__prefs"])


# ----------------------------------------------------------------------------- archiving


async def test_both_parties_find_the_chat_in_their_own_archive(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "alice"), await new_account(mam_server, "bob")
    alice = await online(mam_server, a, plugins=SLIX_PLUGINS)
    bob = await online(mam_server, b, plugins=SLIX_PLUGINS)
    try:
        alice.xmpp.send_message(mto=b, mbody="hello bob", mtype="chat")
        got = await take(bob.messages, lambda m: m["body"] == "hello bob", 20)
        assert got["stanza_id"]["by"] == b
        stanza_id = got["stanza_id"]["id"]
        assert stanza_id
        bob.xmpp.send_message(mto=a, mbody="hi alice", mtype="chat")
        back = await take(alice.messages, lambda m: m["body"] == "hi alice", 20)
        assert back["stanza_id"]["by"] == a
        assert back["stanza_id"]["id"] != stanza_id  # each archive has its own ids

        for client, other in ((alice, b), (bob, a)):
            iq = await client.xmpp.plugin["xep_0313"].retrieve(with_jid=JID(other), timeout=20)
            results = iq["mam"]["results"]
            found = [r["mam_result"]["forwarded"]["stanza"]["body"] for r in results]
            assert found == ["hello bob", "hi alice"]
            assert iq["mam_fin"]["complete"]
        # The stanza id Bob received names the entry of that message in Bob's archive.
        iq = await bob.xmpp.plugin["xep_0313"].retrieve(with_jid=JID(a), timeout=20)
        first = iq["mam"]["results"][0]["mam_result"]
        assert first["id"] == stanza_id
        assert first["forwarded"]["stanza"]["from"] == alice.xmpp.boundjid
    finally:
        await alice.stop()
        await bob.stop()


async def test_results_are_forwarded_in_jabber_client(mam_server: XmppdServer) -> None:
    """On the wire: ``<message xmlns="jabber:client">`` inside ``<forwarded/>``, no
    ``ns0:`` prefixes, then the IQ result."""
    a, b = await new_account(mam_server, "wire"), await new_account(mam_server, "wire")
    alice = await login(mam_server, a)
    send(alice, b, "on the wire <&>", id="w1")
    await processed(alice)
    await alice.close()
    raw = RawClient(mam_server)
    await raw.connect()
    try:
        await raw.login(a.split("@")[0], PASSWORD)
        raw.send(f"<iq type='set' id='wq'>{query_xml(queryid='wire')}</iq>")
        data = await raw.read_until(rb"<iq[^>]*id=.wq..*</iq>", timeout=20)
    finally:
        await raw.close()
    assert b"ns0:" not in data and b"xmlns:ns" not in data, data
    assert b'<forwarded xmlns="urn:xmpp:forward:0"><delay xmlns="urn:xmpp:delay" stamp="' in data
    assert b'<message xmlns="jabber:client" ' in data, data
    assert b"<body>on the wire &lt;&amp;&gt;</body>" in data, data
    assert data.index(b"<result") < data.index(b"<iq"), data


async def test_the_recipients_copy_carries_the_stanza_id(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "sid"), await new_account(mam_server, "sid")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    try:
        send(alice, b, "with an id")
        got = await bob.expect(message_with("with an id"), 20)
        ((by, archive_id),) = stanza_ids(got)
        assert by == b and archive_id
        page = await query(bob, {"ids": [archive_id]})
        assert bodies(page.items) == ["with an id"]
        assert page.items[0].id == archive_id
        # The archived copy is the one Bob got, stanza id included.
        assert stanza_ids(page.items[0].message) == [(b, archive_id)]
        # Alice's entry is another one; her message reached Bob without her archive's id.
        (mine,) = await everything(alice)
        assert mine.id != archive_id and stanza_ids(mine.message) == []
    finally:
        await close(alice, bob)


async def test_forged_stanza_ids_are_removed(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "forge"), await new_account(mam_server, "forge")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    forged = (
        f"<stanza-id xmlns='{SID}' by='{b}' id='forged-1'/>"
        f"<stanza-id xmlns='{SID}' by='{b.upper()}' id='forged-2'/>"
        f"<stanza-id xmlns='{SID}' by='{mam_server.domain}' id='forged-3'/>"
        f"<stanza-id xmlns='{SID}' by='room@conference.example' id='kept'/>"
    )
    try:
        send(alice, b, "forged ids", extra=forged)
        got = await bob.expect(message_with("forged ids"), 20)
        found = stanza_ids(got)
        assert ("room@conference.example", "kept") in found
        ours = [(by, i) for by, i in found if by == b]
        assert len(ours) == 1 and not ours[0][1].startswith("forged")
        assert not any(i and i.startswith("forged") for _, i in found), found
        # Not archived (a headline), still cleaned.
        send(alice, b, "headline forged", type="headline", extra=forged)
        got = await bob.expect(message_with("headline forged"), 20)
        assert stanza_ids(got) == [("room@conference.example", "kept")]
        (entry,) = await everything(bob)
        assert entry.id == ours[0][1]
    finally:
        await close(alice, bob)


async def test_what_is_archived(mam_server: XmppdServer) -> None:
    """Chat and normal messages with content (delivery receipts included); never errors,
    headlines, groupchat, hinted messages or bare chat states."""
    a, b = await new_account(mam_server, "kind"), await new_account(mam_server, "kind")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    try:
        send(alice, b, "a chat", id="k-chat")
        send(alice, b, "a normal message", type=None, id="k-normal")
        send(alice, b, "a headline", type="headline", id="k-headline")
        send(alice, b, "a groupchat", type="groupchat", id="k-groupchat")
        send(alice, b, "no store", id="k-nostore", extra="<no-store xmlns='urn:xmpp:hints'/>")
        hint = "<no-permanent-store xmlns='urn:xmpp:hints'/>"
        send(alice, b, "no permanent store", id="k-noperm", extra=hint)
        send(
            alice,
            b,
            None,
            id="k-state",
            extra="<composing xmlns='http://jabber.org/protocol/chatstates'/>",
        )
        send(
            alice,
            b,
            None,
            id="k-receipt",
            extra="<received xmlns='urn:xmpp:receipts' id='k-chat'/>",
        )
        send(
            alice,
            b,
            None,
            id="k-retract",
            extra="<retract xmlns='urn:xmpp:message-retract:1' id='k-chat'/>",
        )
        send(
            alice,
            b,
            None,
            id="k-store",
            extra="<active xmlns='http://jabber.org/protocol/chatstates'/><store xmlns='urn:xmpp:hints'/>",
        )
        await bob.expect(lambda el: el.get("id") == "k-store", 20)
        error = "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error>"
        send(bob, a, "an error", type="error", id="k-error", extra=error)
        await processed(alice)
        await processed(bob)
        expected = ["k-chat", "k-normal", "k-receipt", "k-retract", "k-store"]
        assert [item.get("id") for item in await everything(alice)] == expected
        assert [item.get("id") for item in await everything(bob)] == expected
        newest = await query(bob, {}, max=1, before="")
        assert [item.get("id") for item in newest.items] == ["k-store"]
    finally:
        await close(alice, bob)


async def test_a_message_to_oneself_is_archived_once(mam_server: XmppdServer) -> None:
    a = await new_account(mam_server, "self")
    phone, laptop = await login(mam_server, a, "phone"), await login(mam_server, a, "laptop")
    try:
        send(phone, laptop.jid, "note to self")
        got = await laptop.expect(message_with("note to self"), 20)
        ((by, archive_id),) = stanza_ids(got)
        assert by == a
        (entry,) = await everything(laptop, {"with": a})
        assert entry.id == archive_id
    finally:
        await close(phone, laptop)


async def test_a_message_to_an_offline_user_waits_in_the_archive(mam_server: XmppdServer) -> None:
    """Without offline storage the archive keeps the message: no bounce."""
    a, b = await new_account(mam_server, "out"), await new_account(mam_server, "out")
    nobody = f"nobody-here@{mam_server.domain}"
    alice = await login(mam_server, a)
    try:
        send(alice, b, "while you were out", id="off1")
        send(alice, nobody, "to nobody", id="off2")
        bounce = await alice.expect(lambda el: el.get("id") == "off2", 20)
        assert error_condition(bounce) == "service-unavailable"
        await processed(alice)
        assert alice.pending(lambda el: el.get("id") == "off1") == []
        bob = await login(mam_server, b)
        (entry,) = await everything(bob)
        assert entry.body == "while you were out"
        assert stanza_ids(entry.message) == [(b, entry.id)]
        await bob.close()
    finally:
        await alice.close()


# ----------------------------------------------------------------------------- queries


async def test_paging_through_500_messages(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "pager"), await new_account(mam_server, "pager")
    sender, receiver = await login(mam_server, a), await login(mam_server, b)
    expected = [f"page {i:03d}" for i in range(500)]
    archive_ids: dict[str, list[str]] = {}
    try:
        sender.send(
            "".join(f"<message to='{b}' type='chat'><body>{t}</body></message>" for t in expected)
        )
        await receiver.expect(message_with("page 499"), 30)
        for client, other in ((sender, b), (receiver, a)):
            fields = {"with": other}
            forward: list[Item] = []
            after = None
            for n in range(5):
                page = await query(client, fields, max=100, after=after)
                assert len(page.items) == 100
                assert page.complete is (n == 4)
                assert (page.count, page.index) == (500, n * 100)
                assert (page.first, page.last) == (page.items[0].id, page.items[-1].id)
                forward += page.items
                after = page.last
            assert bodies(forward) == expected
            ids = [item.id for item in forward]
            assert len(set(ids)) == 500
            end = await query(client, fields, max=100, after=ids[-1])
            assert (end.items, end.complete, end.count) == ([], True, 500)

            backward: list[Item] = []
            before = ""  # the last page first
            for n in range(5):
                page = await query(client, fields, max=100, before=before)
                assert len(page.items) == 100
                assert page.complete is (n == 4)
                assert page.index == 400 - n * 100
                backward = page.items + backward
                before = page.first
            assert [item.id for item in backward] == ids
            archive_ids[client.jid] = ids

        ids = archive_ids[sender.jid]
        capped = await query(sender, {"with": b}, max=1000)
        assert [item.id for item in capped.items] == ids[:250] and not capped.complete
        default = await query(sender, {"with": b})
        assert len(default.items) == 50 and not default.complete
        offset = await query(sender, {"with": b}, max=10, index=250)
        assert [item.id for item in offset.items] == ids[250:260] and offset.index == 250
        flipped = await query(sender, {"with": b}, max=5, before="", flip=True)
        assert [item.id for item in flipped.items] == ids[-1:-6:-1]
        assert (flipped.first, flipped.last) == (ids[495], ids[499])
        count_only = await query(sender, {"with": b}, max=0)
        assert (count_only.items, count_only.count, count_only.first) == ([], 500, None)
    finally:
        await close(sender, receiver)


async def test_start_and_end(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "time"), await new_account(mam_server, "time")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    try:
        alice.send(
            "".join(f"<message to='{b}' type='chat'><body>t{i}</body></message>" for i in range(6))
        )
        await bob.expect(message_with("t5"), 20)
        items = await everything(bob, {"with": a})
        stamps = [item.stamp for item in items]
        assert bodies(items) == [f"t{i}" for i in range(6)]
        assert stamps == sorted(stamps) and len(set(stamps)) == 6

        def between(start: str | None, end: str | None) -> dict[str, str]:
            fields = {"with": a}
            if start:
                fields["start"] = start
            if end:
                fields["end"] = end
            return fields

        page = await query(bob, between(stamps[1], stamps[4]))
        assert bodies(page.items) == ["t1", "t2", "t3", "t4"] and page.complete
        assert bodies((await query(bob, between(stamps[3], None))).items) == ["t3", "t4", "t5"]
        assert bodies((await query(bob, between(None, stamps[2]))).items) == ["t0", "t1", "t2"]
        # The same instant written with another offset.
        plus2 = datetime.fromisoformat(stamps[2]).astimezone(timezone(timedelta(hours=2)))
        assert bodies((await query(bob, between(plus2.isoformat(), None))).items)[0] == "t2"
        later = (datetime.fromisoformat(stamps[5]) + timedelta(days=1)).isoformat()
        empty = await query(bob, between(later, None))
        assert (empty.items, empty.complete, empty.count) == ([], True, 0)
    finally:
        await close(alice, bob)


async def test_ids_and_id_ranges(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "ids"), await new_account(mam_server, "ids")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    try:
        alice.send(
            "".join(f"<message to='{b}' type='chat'><body>i{i}</body></message>" for i in range(5))
        )
        await bob.expect(message_with("i4"), 20)
        items = await everything(bob)
        ids = [item.id for item in items]
        page = await query(bob, {"ids": [ids[3], ids[1]]})
        assert bodies(page.items) == ["i1", "i3"]
        page = await query(bob, {"after-id": ids[0], "before-id": ids[4]})
        assert bodies(page.items) == ["i1", "i2", "i3"]
        page = await query(bob, {"after-id": ids[0], "before-id": ids[4]}, max=2, before="")
        assert bodies(page.items) == ["i2", "i3"] and not page.complete

        alice_ids = [item.id for item in await everything(alice)]
        for fields in (
            {"ids": [ids[0], "12345"]},
            {"ids": ["not-an-id"]},
            {"ids": [alice_ids[0]]},  # another account's archive
            {"after-id": "99999999999999999999999"},
            {"before-id": alice_ids[1]},
        ):
            assert await query_error(bob, fields) == "item-not-found", fields
        assert await query_error(bob, {}, after="12345") == "item-not-found"
        assert await query_error(bob, {}, before=alice_ids[0]) == "item-not-found"
    finally:
        await close(alice, bob)


async def test_full_text_search(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "search"), await new_account(mam_server, "search")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    texts = [
        "the quick zebra jumps",
        "slow tortoise walks",
        "ZEBRA crossing ahead",
        "nothing to see",
        "tortoise meets zebra",
    ]
    try:
        alice.send(
            "".join(f"<message to='{b}' type='chat'><body>{t}</body></message>" for t in texts)
        )
        await bob.expect(message_with(texts[-1]), 20)
        for client in (alice, bob):
            found = await query(client, {FULLTEXT: "zebra"})
            assert bodies(found.items) == [texts[0], texts[2], texts[4]] and found.count == 3
            found = await query(client, {FULLTEXT: "tortoise zebra"})
            assert bodies(found.items) == [texts[4]]
            found = await query(client, {FULLTEXT: "crossing Zebra"})
            assert bodies(found.items) == [texts[2]]
            found = await query(client, {FULLTEXT: "giraffe"})
            assert (found.items, found.complete) == ([], True)
            # Whole words, as the databases' text search sees them (FTS5 on SQLite,
            # tsvector on PostgreSQL): no substrings, and no query operators.
            for words in ("zeb", "zebra OR giraffe", 'zebra" NOT "tortoise', "NEAR(zebra)"):
                found = await query(client, {FULLTEXT: words})
                assert found.items == [], words
        first = await query(bob, {FULLTEXT: "zebra", "with": a}, max=1)
        assert bodies(first.items) == [texts[0]] and not first.complete
        rest = await query(bob, {FULLTEXT: "zebra", "with": a}, max=5, after=first.last)
        assert bodies(rest.items) == [texts[2], texts[4]] and rest.complete
        assert await query_error(bob, {FULLTEXT: " ".join(["w"] * 17)}) == "bad-request"
    finally:
        await close(alice, bob)


async def test_query_errors(mam_server: XmppdServer) -> None:
    a = await new_account(mam_server, "err")
    alice = await login(mam_server, a)
    try:
        for fields, condition in (
            ({"start": "yesterday"}, "bad-request"),
            ({"start": "2024-01-01"}, "bad-request"),
            ({"end": "2024-01-01T10:00:00"}, "bad-request"),  # no time zone
            ({"with": "a@b@c"}, "bad-request"),
            ({"{urn:example:x}unknown": "1"}, "feature-not-implemented"),
            ({"include-groupchat": "true"}, "feature-not-implemented"),
        ):
            assert await query_error(alice, fields) == condition, fields
        wrong_type = "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>urn:xmpp:mam:1</value></field></x>"
        assert await query_error(alice, raw_form=wrong_type) == "bad-request"
        reply = await alice.iq(
            "set",
            f"<query xmlns='{MAM}'><set xmlns='http://jabber.org/protocol/rsm'><max>many</max></set></query>",
            to=None,
        )
        assert error_condition(reply) == "bad-request"
        # An empty archive: a complete, empty page.
        page = await query(alice)
        assert (page.items, page.complete, page.count) == ([], True, 0)
    finally:
        await alice.close()


async def test_another_accounts_archive_is_forbidden(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "nosy"), await new_account(mam_server, "nosy")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    try:
        send(bob, a, "private")
        await alice.expect(message_with("private"), 20)
        assert await query_error(alice, {}, to=b) == "forbidden"
        for payload in (
            f"<prefs xmlns='{MAM}'/>",
            f"<metadata xmlns='{MAM}'/>",
            f"<query xmlns='{MAM}'/>",
        ):
            reply = await alice.iq("get", payload, to=b)
            assert error_condition(reply) == "forbidden", payload
        reply = await alice.iq("set", f"<prefs xmlns='{MAM}' default='never'/>", to=b)
        assert error_condition(reply) == "forbidden"
        assert alice.pending(lambda el: el.find(f"{{{MAM}}}result") is not None) == []
        assert len(await everything(bob)) == 1  # Bob's preferences were not changed
    finally:
        await close(alice, bob)


async def test_metadata_form_and_disco(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "meta"), await new_account(mam_server, "meta")
    alice = await login(mam_server, a)
    try:
        empty = await alice.iq("get", f"<metadata xmlns='{MAM}'/>", to=None)
        metadata = empty.find(f"{{{MAM}}}metadata")
        assert metadata is not None and len(metadata) == 0
        for i in range(3):
            send(alice, b, f"m{i}")
        await processed(alice)
        items = await everything(alice)
        reply = await alice.iq("get", f"<metadata xmlns='{MAM}'/>", to=None)
        start = reply.find(f"{{{MAM}}}metadata/{{{MAM}}}start")
        end = reply.find(f"{{{MAM}}}metadata/{{{MAM}}}end")
        assert start is not None and end is not None
        assert (start.get("id"), start.get("timestamp")) == (items[0].id, items[0].stamp)
        assert (end.get("id"), end.get("timestamp")) == (items[-1].id, items[-1].stamp)

        reply = await alice.iq("get", f"<query xmlns='{MAM}'/>", to=None)
        fields = {f.get("var") for f in reply.iter("{jabber:x:data}field")}
        assert {
            "FORM_TYPE",
            "with",
            "start",
            "end",
            "before-id",
            "after-id",
            "ids",
            FULLTEXT,
        } <= fields

        reply = await alice.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=a)
        features = {f.get("var") for f in reply.iter(f"{{{DISCO_INFO}}}feature")}
        assert {MAM, f"{MAM}#extended", SID, "urn:xmpp:fulltext:0"} <= features
    finally:
        await alice.close()


# ----------------------------------------------------------------------------- preferences


async def set_prefs(
    client: XmlClient, default: str, always: tuple[str, ...] = (), never: tuple[str, ...] = ()
) -> Element:
    lists = "".join(
        f"<{name}>" + "".join(f"<jid>{jid}</jid>" for jid in jids) + f"</{name}>"
        for name, jids in (("always", always), ("never", never))
    )
    reply = await client.iq(
        "set", f"<prefs xmlns='{MAM}' default='{default}'>{lists}</prefs>", to=None
    )
    assert reply.get("type") == "result", error_condition(reply)
    prefs = reply.find(f"{{{MAM}}}prefs")
    assert prefs is not None
    return prefs


def pref_lists(prefs: Element) -> tuple[str | None, set[str], set[str]]:
    def jids(name: str) -> set[str]:
        return {j.text or "" for j in prefs.iterfind(f"{{{MAM}}}{name}/{{{MAM}}}jid")}

    return prefs.get("default"), jids("always"), jids("never")


async def test_preferences_are_honoured(mam_server: XmppdServer) -> None:
    carol_jid = await new_account(mam_server, "carol")
    dave_jid, erin_jid, frank_jid = [
        await new_account(mam_server, n) for n in ("dave", "erin", "frank")
    ]
    carol = await login(mam_server, carol_jid)
    dave, erin, frank = [await login(mam_server, j) for j in (dave_jid, erin_jid, frank_jid)]
    others = {"dave": dave, "erin": erin, "frank": frank}

    async def exchange(phase: str) -> None:
        """Each of the others sends Carol a message, and Carol answers Dave."""
        for name, other in others.items():
            send(other, carol_jid, f"{phase} from {name}")
            await carol.expect(message_with(f"{phase} from {name}"), 20)
        send(carol, dave_jid, f"{phase} to dave")
        await dave.expect(message_with(f"{phase} to dave"), 20)

    try:
        reply = await carol.iq("get", f"<prefs xmlns='{MAM}'/>", to=None)
        prefs = reply.find(f"{{{MAM}}}prefs")
        assert prefs is not None and pref_lists(prefs) == ("always", set(), set())

        prefs = await set_prefs(carol, "never", always=(erin_jid,))
        assert pref_lists(prefs) == ("never", {erin_jid}, set())
        await exchange("one")
        reply = await carol.iq("get", f"<prefs xmlns='{MAM}'/>", to=None)
        stored = reply.find(f"{{{MAM}}}prefs")
        assert stored is not None and pref_lists(stored) == ("never", {erin_jid}, set())

        await set_prefs(carol, "roster", never=(erin_jid,))
        reply = await carol.iq(
            "set", f"<query xmlns='jabber:iq:roster'><item jid='{dave_jid}'/></query>", to=None
        )
        assert reply.get("type") == "result"
        await exchange("two")

        await set_prefs(carol, "always", never=(dave_jid,))
        await exchange("three")

        assert bodies(await everything(carol)) == [
            "one from erin",
            "two from dave",
            "two to dave",
            "three from erin",
            "three from frank",
        ]
        # Dave's own archive follows his preferences (the default: always).
        assert bodies(await everything(dave)) == [
            "one from dave",
            "one to dave",
            "two from dave",
            "two to dave",
            "three from dave",
            "three to dave",
        ]
        bad = await carol.iq("set", f"<prefs xmlns='{MAM}' default='sometimes'/>", to=None)
        assert error_condition(bad) == "bad-request"
        bad = await carol.iq(
            "set",
            f"<prefs xmlns='{MAM}' default='always'><never><jid>a@b@c</jid></never></prefs>",
            to=None,
        )
        assert error_condition(bad) == "jid-malformed"
    finally:
        await close(carol, *others.values())


# ----------------------------------------------------------------------------- accounts


async def test_deleting_an_account_deletes_its_archive(mam_server: XmppdServer) -> None:
    a, b = await new_account(mam_server, "gone"), await new_account(mam_server, "stays")
    alice, bob = await login(mam_server, a), await login(mam_server, b)
    try:
        send(alice, b, "remember me")
        await bob.expect(message_with("remember me"), 20)
        await set_prefs(alice, "always", never=("spam@example.org",))
        assert len(await everything(alice)) == 1  # a query also writes what is queued
        alice_name, bob_name = a.split("@")[0], b.split("@")[0]
        assert await mam_rows(mam_server, alice_name) == {
            "mod_mam__archive": 1,
            "mod_mam__prefs": 1,
        }
        alice.send(
            "<iq type='set' id='bye'><query xmlns='jabber:iq:register'><remove/></query></iq>"
        )
        reply = await alice.expect(lambda el: el.get("id") == "bye", 20)
        assert reply.get("type") == "result"
        await alice.wait_closed(20)
        # The stream closes first (XEP-0077 §3.2), then the account's data is deleted.
        empty = {"mod_mam__archive": 0, "mod_mam__prefs": 0}
        await until_equal(lambda: mam_rows(mam_server, alice_name), empty)
        assert (await mam_rows(mam_server, bob_name))["mod_mam__archive"] == 1
        assert bodies(await everything(bob)) == ["remember me"]
    finally:
        await close(alice, bob)


async def test_many_queries_in_flight(mam_server: XmppdServer) -> None:
    """Queries sent together are answered in order, each with its own results."""
    a, b = await new_account(mam_server, "flight"), await new_account(mam_server, "flight")
    alice = await login(mam_server, a)
    try:
        for i in range(3):
            send(alice, b, f"f{i}")
        pages = await asyncio.gather(*(query(alice, {"with": b}, max=1, index=i) for i in range(3)))
        assert [bodies(p.items) for p in pages] == [["f0"], ["f1"], ["f2"]]
    finally:
        await alice.close()
