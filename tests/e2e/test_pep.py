"""XEP-0163 Personal Eventing Protocol end to end, on SQLite and PostgreSQL: publishing and
reading items, access models (the OMEMO pattern of open nodes), publish-options
preconditions, retract/purge/delete notifications, node configuration, XEP-0115 caps
(interests, hash verification) deciding who gets notified, and account removal."""

from __future__ import annotations

import asyncio
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from lxml import etree
from slixmpp.exceptions import IqError

from tests.support.clients import Slix, register_account
from tests.support.e2e import (
    ALL_PLUGINS,
    PASSWORD,
    check_server_survived,
    manual_subscriptions,
    new_account,
    online,
    subscribe,
    take,
    until_equal,
    user_rows,
)
from tests.support.pep import (
    DATA,
    DELAY,
    ERRORS,
    IDENTITY,
    NODE_CONFIG,
    PUBLISH_OPTIONS,
    PUBSUB,
    TEST_NS,
    announce,
    caps_ver,
    client_features,
    close,
    disco_nodes,
    entry,
    error_of,
    event_items,
    event_of,
    form,
    fresh_node,
    get_items,
    login,
    owner_iq,
    pep_rows,
    publish,
    published_id,
    retracted,
    share_presence,
    texts,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from xmppd_modules.mod_pep.caps import Caps, compute_ver, verified_interests

PUBSUB_PLUGINS = (*ALL_PLUGINS, "xep_0004", "xep_0060")
TUNE_PLUGINS = (*PUBSUB_PLUGINS, "xep_0115", "xep_0163", "xep_0118")
AXOLOTL = "eu.siacs.conversations.axolotl"
DEVICELIST = f"{AXOLOTL}.devicelist"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
LIMIT = 50
ITEM_SIZE = 8192

_names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pep_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {
        **DEFAULT_TEST_MODULES,
        "pep": {"max_items_limit": LIMIT, "max_item_size": ITEM_SIZE},
    }
    tmp = tmp_path_factory.mktemp(f"xmppd-pep-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv
        check_server_survived(srv)


# ----------------------------------------------------------------------------- helpers


def slix_items(result: Any) -> list[tuple[str, str]]:
    """(item id, entry text) of an items result received by slixmpp."""
    items = result.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item")
    return [(i.get("id", ""), i.findtext(f"{{{TEST_NS}}}entry") or "") for i in items]


def slix_form(client: Slix, fields: Mapping[str, str]) -> Any:
    """A publish-options form, as slixmpp builds it."""
    built = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    built.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS)
    for var, value in fields.items():
        built.add_field(var=var, value=value)
    return built


async def slix_error(call: Any) -> tuple[str, str | None]:
    """(condition, pubsub#errors condition) of the IqError the awaitable raises."""
    with pytest.raises(IqError) as caught:
        await call
    iq = caught.value.iq
    app = None
    for el in iq.xml.iter():
        if isinstance(el.tag, str) and el.tag.startswith(f"{{{ERRORS}}}"):
            app = el.tag.split("}", 1)[1]
    return str(iq["error"]["condition"]), app


def payload(xml: str) -> ET.Element:
    return ET.fromstring(xml)


# ----------------------------------------------------------------------------- caps hashing


def test_caps_hash_matches_the_xep_0115_examples() -> None:
    """The verification string of XEP-0115 §5.2 and §5.3 (identities with languages and
    an extended form)."""
    simple = etree.fromstring(
        f"<query xmlns='{DISCO_INFO}'><identity category='client' name='Exodus 0.9.1' "
        "type='pc'/><feature var='http://jabber.org/protocol/caps'/>"
        f"<feature var='{DISCO_INFO}'/><feature var='http://jabber.org/protocol/disco#items'/>"
        "<feature var='http://jabber.org/protocol/muc'/></query>"
    )
    assert compute_ver(simple, "sha-1") == "QgayPKawpkPSDYmwT/WM94uAlu0="
    complex_ = etree.fromstring(
        f"<query xmlns='{DISCO_INFO}'>"
        "<identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>"
        "<identity xml:lang='el' category='client' name='Ψ 0.11' type='pc'/>"
        "<feature var='http://jabber.org/protocol/caps'/>"
        f"<feature var='{DISCO_INFO}'/><feature var='http://jabber.org/protocol/disco#items'/>"
        "<feature var='http://jabber.org/protocol/muc'/>"
        f"<x xmlns='{DATA}' type='result'>"
        "<field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value>"
        "</field><field var='ip_version'><value>ipv4</value><value>ipv6</value></field>"
        "<field var='os'><value>Mac</value></field>"
        "<field var='os_version'><value>10.5.1</value></field>"
        "<field var='software'><value>Psi</value></field>"
        "<field var='software_version'><value>0.11</value></field></x></query>".encode()
    )
    assert compute_ver(complex_, "sha-1") == "q07IKJEyjvHSyhy//CH0CxmKi8w="
    duplicated = etree.fromstring(
        f"<query xmlns='{DISCO_INFO}'><feature var='a'/><feature var='a'/></query>"
    )
    assert compute_ver(duplicated, "sha-1") is None  # §5.4: ill-formed, never trusted


def test_caps_with_an_oversized_notify_list_are_not_trusted() -> None:
    """Each verified set of ``+notify`` features is cached: one that says too much (over
    16 KiB) is not taken, however well its hash matches."""

    def answer(count: int) -> tuple[etree._Element, Caps]:
        features = "".join(
            f"<feature var='urn:x:{i:04d}:{'n' * 990}+notify'/>" for i in range(count)
        )
        query = etree.fromstring(f"<query xmlns='{DISCO_INFO}'>{features}</query>")
        ver = compute_ver(query, "sha-1")
        assert ver is not None
        return query, Caps("https://client.example", ver, "sha-1")

    assert len(verified_interests(*answer(10)) or ()) == 10
    assert verified_interests(*answer(20)) is None


# ----------------------------------------------------------------------------- owner


async def test_owner_publishes_and_reads_back(pep_server: XmppdServer) -> None:
    jid = await new_account(pep_server, "owner")
    owner = await online(pep_server, jid, plugins=PUBSUB_PLUGINS)
    other = await login(pep_server, jid, resource="other")  # no caps at all
    try:
        info = await owner.xmpp.plugin["xep_0030"].get_info(jid=jid, timeout=20)
        query = info.xml.find(f"{{{DISCO_INFO}}}query")
        assert query.find(f"{{{DISCO_INFO}}}identity[@category='pubsub'][@type='pep']") is not None
        features = {f.get("var") for f in query.iter(f"{{{DISCO_INFO}}}feature")}
        for feature in ("publish", "publish-options", "auto-create", "retrieve-items"):
            assert f"{PUBSUB}#{feature}" in features
        assert f"{PUBSUB}#owner" in features

        pubsub = owner.xmpp.plugin["xep_0060"]
        node = fresh_node("urn:xmppd:test:mood")
        first = await pubsub.publish(jid, node, id="first", payload=payload(entry("one")))
        assert first["pubsub"]["publish"]["item"]["id"] == "first"
        second = await pubsub.publish(jid, node, payload=payload(entry("two")), timeout=20)
        generated = second["pubsub"]["publish"]["item"]["id"]
        assert generated and generated != "first"
        # Every resource of the owner is notified, whatever its caps.
        for expected in (("first", "one"), (generated, "two")):
            event = await other.expect(event_of(jid, node), 20)
            assert event_items(event) == [expected]
        # A node keeps one item unless told otherwise (XEP-0163 defaults).
        assert slix_items(await pubsub.get_items(jid, node, timeout=20)) == [(generated, "two")]

        many = fresh_node()
        keep_all = slix_form(owner, {"pubsub#max_items": "max"})
        for i in range(3):
            await pubsub.publish(
                jid, many, id=f"i{i}", payload=payload(entry(f"n{i}")), options=keep_all
            )
        everything = await pubsub.get_items(jid, many, timeout=20)
        assert slix_items(everything) == [("i0", "n0"), ("i1", "n1"), ("i2", "n2")]
        newest = await pubsub.get_items(jid, many, max_items=2, timeout=20)
        assert slix_items(newest) == [("i1", "n1"), ("i2", "n2")]
        named = await pubsub.get_items(jid, many, item_ids=["i0"], timeout=20)
        assert slix_items(named) == [("i0", "n0")]
        # Publishing an existing id replaces the item, which becomes the newest.
        await pubsub.publish(jid, many, id="i0", payload=payload(entry("again")))
        assert [i for i, _ in slix_items(await pubsub.get_items(jid, many))] == ["i1", "i2", "i0"]

        found = await owner.xmpp.plugin["xep_0030"].get_items(jid=jid, timeout=20)
        assert sorted(n for _, n, _ in found["disco_items"]["items"]) == sorted([node, many])
        node_info = await owner.xmpp.plugin["xep_0030"].get_info(jid=jid, node=many, timeout=20)
        assert node_info.xml.find(f".//{{{DISCO_INFO}}}identity[@type='leaf']") is not None
    finally:
        await owner.stop()
        await other.close()


async def test_publishing_errors(pep_server: XmppdServer) -> None:
    jid = await new_account(pep_server, "errs")
    owner = await login(pep_server, jid)
    try:
        node = fresh_node()
        assert error_of(await publish(owner, node, None)) == ("bad-request", "payload-required")
        two = entry("a") + entry("b")
        assert error_of(await publish(owner, node, two)) == ("bad-request", "invalid-payload")
        assert error_of(await publish(owner, "", entry("a"))) == ("bad-request", "nodeid-required")
        huge = entry("x" * ITEM_SIZE)
        assert error_of(await publish(owner, node, huge)) == ("not-acceptable", "payload-too-big")
        too_many = {"pubsub#max_items": str(LIMIT + 1)}
        reply = await publish(owner, node, entry("a"), options=too_many)
        assert error_of(reply)[0] == "not-acceptable"
        assert error_of(await get_items(owner, None, node))[0] == "item-not-found"
        # A node that does not persist items notifies, and keeps nothing.
        transient = fresh_node()
        reply = await publish(owner, transient, entry("now"), options={"pubsub#persist_items": "0"})
        assert published_id(reply)
        assert texts(await get_items(owner, None, transient)) == []
        subscribe_iq = f"<pubsub xmlns='{PUBSUB}'><subscribe node='{node}' jid='{jid}'/></pubsub>"
        reply = await owner.iq("set", subscribe_iq, to=None, timeout=20)
        assert error_of(reply) == ("feature-not-implemented", "unsupported")
    finally:
        await owner.close()


# ----------------------------------------------------------------------------- contacts


async def test_contact_with_interest_gets_notifications(pep_server: XmppdServer) -> None:
    o = await new_account(pep_server, "juliet")
    c = await new_account(pep_server, "romeo")
    s = await new_account(pep_server, "paris")
    owner, contact, stranger = [await login(pep_server, j) for j in (o, c, s)]
    try:
        await share_presence(owner, contact)
        node = fresh_node("urn:xmppd:test:geoloc")
        assert published_id(await publish(owner, node, entry("v1"), item_id="v1")) == "v1"

        # The contact says it is interested (XEP-0115): once the server has checked the
        # caps, it sends the last item, with its time (XEP-0163 §4.3.2).
        await announce(contact, client_features(node))
        last = await contact.expect(event_of(o, node), 20)
        assert event_items(last) == [("v1", "v1")]
        assert last.get("to") == contact.jid
        assert last.find(f"{{{DELAY}}}delay") is not None

        await publish(owner, node, entry("v2"), item_id="v2")
        event = await contact.expect(event_of(o, node), 20)
        assert event_items(event) == [("v2", "v2")]
        assert event.find(f"{{{DELAY}}}delay") is None

        # The presence access model: the contact may read, a stranger may not.
        assert texts(await get_items(contact, o, node)) == [("v2", "v2")]
        assert error_of(await get_items(stranger, o, node)) == (
            "not-authorized",
            "presence-subscription-required",
        )
        assert await disco_nodes(contact, o) == [node]
        assert await disco_nodes(stranger, o) == []
        info = await stranger.iq("get", f"<query xmlns='{DISCO_INFO}' node='{node}'/>", to=o)
        assert error_of(info)[0] == "item-not-found"
        # Nobody but the owner publishes, retracts or deletes.
        assert error_of(await publish(contact, node, entry("x"), to=o))[0] == "forbidden"
        delete = f"<delete node='{node}'/>"
        assert error_of(await owner_iq(contact, "set", delete, to=o))[0] == "forbidden"
        assert error_of(await get_items(contact, o, "urn:nope"))[0] == "item-not-found"
        assert stranger.pending(event_of(o, node)) == []

        # The owner's own new resource, interested too, also gets the last item.
        laptop = await login(pep_server, o, resource="laptop")
        try:
            await announce(laptop, [*client_features(node), "urn:xmppd:test:laptop"])
            assert event_items(await laptop.expect(event_of(o, node), 20)) == [("v2", "v2")]
        finally:
            await laptop.close()
    finally:
        await close(owner, contact, stranger)


async def test_notifications_follow_verified_interests(pep_server: XmppdServer) -> None:
    o = await new_account(pep_server, "src")
    d = await new_account(pep_server, "picky")
    e = await new_account(pep_server, "liar")
    owner, picky, liar = [await login(pep_server, j) for j in (o, d, e)]
    try:
        await share_presence(owner, picky)
        await share_presence(owner, liar)
        wanted, other = fresh_node(), fresh_node()
        await publish(owner, other, entry("o1"), item_id="o1")
        await publish(owner, wanted, entry("w1"), item_id="w1")

        await announce(picky, client_features(wanted))
        assert event_items(await picky.expect(event_of(o, wanted), 20)) == [("w1", "w1")]

        # The liar claims a 'ver' that is not the hash of what it answers (which would
        # make it interested in both nodes): the server does not believe it.
        bogus = caps_ver(client_features("urn:something:else"), [IDENTITY])
        await announce(liar, client_features(wanted, other), ver=bogus)
        # Then honest caps (only `wanted`). A session's caps are handled in order, so when
        # the last item of `wanted` arrives, the bogus claim has been dealt with: had it
        # been believed, the last items of both nodes would have come first.
        await announce(liar, [*client_features(wanted), "urn:xmppd:test:honest"])
        assert event_items(await liar.expect(event_of(o, wanted), 20)) == [("w1", "w1")]
        assert liar.pending(event_of(o, other)) == []

        # New items: only interests are notified. `other` is published first, so once the
        # event about `wanted` is in, one about `other` would be too.
        await publish(owner, other, entry("o2"), item_id="o2")
        await publish(owner, wanted, entry("w2"), item_id="w2")
        for client in (picky, liar):
            event = await client.expect(event_of(o, wanted), 20)
            assert event_items(event) == [("w2", "w2")]
            assert client.pending(event_of(o, other)) == []
    finally:
        await close(owner, picky, liar)


async def test_a_new_contact_gets_the_last_items_when_approved(pep_server: XmppdServer) -> None:
    """XEP-0163 §4.3.2: "a PEP service MUST send the last published item to all new
    subscribers". A user whose presence subscription to the owner is approved gets, at
    once, the last item of each node it is interested in and may read (OMEMO clients learn
    a new contact's device list this way); never a whitelist node, and an unsolicited
    'subscribed' from someone else gives nothing."""
    o = await new_account(pep_server, "newpub")
    c = await new_account(pep_server, "newsub")
    t = await new_account(pep_server, "pushy")
    owner, contact, pushy = [await login(pep_server, j) for j in (o, c, t)]
    try:
        shared, secret = fresh_node(), fresh_node()
        await publish(owner, shared, entry("s1"), item_id="s1")
        closed = {"pubsub#access_model": "whitelist"}
        await publish(owner, secret, entry("x1"), item_id="x1", options=closed)
        await publish(pushy, shared, entry("p1"), item_id="p1")
        # Interested, but not subscribed yet: nothing comes.
        await announce(contact, client_features(shared, secret))
        await contact.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=pep_server.domain)
        assert contact.pending(event_of(o, shared)) == []

        await share_presence(owner, contact)
        last = await contact.expect(event_of(o, shared), 20)
        assert event_items(last) == [("s1", "s1")]
        assert last.get("to") == contact.jid
        assert last.find(f"{{{DELAY}}}delay") is not None
        assert contact.pending(event_of(o, secret)) == []

        # 'subscribed' that answers no request of the contact's: ignored, nothing leaks.
        pushy.send(f"<presence type='subscribed' to='{c}'/>")
        pushy.send(f"<message to='{c}' type='chat' id='after'><body>hi</body></message>")
        await contact.expect(lambda el: el.get("id") == "after", 20)
        assert contact.pending(event_of(t, shared)) == []
    finally:
        await close(owner, contact, pushy)


async def test_omemo_nodes_are_open_to_anyone(pep_server: XmppdServer) -> None:
    """XEP-0384: the device list and bundles are published with access_model=open (and
    max_items=max); a stranger without a presence subscription fetches them."""
    o = await new_account(pep_server, "omemo")
    s = await new_account(pep_server, "peer")
    owner = await online(pep_server, o, plugins=PUBSUB_PLUGINS)
    stranger = await online(pep_server, s, plugins=PUBSUB_PLUGINS)
    try:
        pubsub, theirs = owner.xmpp.plugin["xep_0060"], stranger.xmpp.plugin["xep_0060"]
        open_max = {"pubsub#access_model": "open", "pubsub#max_items": "max"}
        devices = payload(f"<list xmlns='{AXOLOTL}'><device id='1234'/></list>")
        await pubsub.publish(
            o, DEVICELIST, id="current", payload=devices, options=slix_form(owner, open_max)
        )
        bundle = payload(
            f"<bundle xmlns='{AXOLOTL}'><signedPreKeyPublic signedPreKeyId='1'>AAAA"
            "</signedPreKeyPublic><signedPreKeySignature>BBBB</signedPreKeySignature>"
            "<identityKey>CCCC</identityKey><prekeys><preKeyPublic preKeyId='1'>DDDD"
            "</preKeyPublic></prekeys></bundle>"
        )
        bundles = f"{AXOLOTL}.bundles:1234"
        await pubsub.publish(
            o, bundles, id="current", payload=bundle, options=slix_form(owner, open_max)
        )
        private = fresh_node()
        await pubsub.publish(o, private, payload=payload(entry("mine")), timeout=20)

        got = await theirs.get_items(o, DEVICELIST, timeout=20)
        assert got.xml.find(f".//{{{AXOLOTL}}}device").get("id") == "1234"
        got = await theirs.get_items(o, bundles, max_items=1, timeout=20)
        assert got.xml.findtext(f".//{{{AXOLOTL}}}identityKey") == "CCCC"
        assert await slix_error(theirs.get_items(o, private, timeout=20)) == (
            "not-authorized",
            "presence-subscription-required",
        )
        found = await stranger.xmpp.plugin["xep_0030"].get_items(jid=o, timeout=20)
        assert sorted(n for _, n, _ in found["disco_items"]["items"]) == [bundles, DEVICELIST]

        # publish-options are preconditions once the node exists (XEP-0060 §7.1.5).
        again = slix_form(owner, open_max)
        await pubsub.publish(o, DEVICELIST, id="current", payload=devices, options=again)
        other = slix_form(owner, {"pubsub#access_model": "presence"})
        assert await slix_error(
            pubsub.publish(o, DEVICELIST, id="current", payload=devices, options=other)
        ) == ("conflict", "precondition-not-met")
        unknown = slix_form(owner, {"pubsub#frobnicate": "1"})
        assert await slix_error(
            pubsub.publish(o, DEVICELIST, id="current", payload=devices, options=unknown)
        ) == ("conflict", "precondition-not-met")
        got = await theirs.get_items(o, DEVICELIST, timeout=20)  # still open
        assert got.xml.find(f".//{{{AXOLOTL}}}device") is not None
        denied = theirs.publish(o, DEVICELIST, id="current", payload=devices, timeout=20)
        assert (await slix_error(denied))[0] == "forbidden"
    finally:
        await owner.stop()
        await stranger.stop()


async def test_a_real_client_gets_the_tunes_it_asked_for(pep_server: XmppdServer) -> None:
    """slixmpp with XEP-0118 advertises tune+notify in its caps and answers the server's
    disco#info itself: it gets the last tune when it comes online, then each new one."""
    o = await new_account(pep_server, "singer")
    c = await new_account(pep_server, "fan")
    owner = await online(pep_server, o, plugins=TUNE_PLUGINS)
    fan = await online(pep_server, c)
    await subscribe(fan, owner)
    await fan.stop()
    listener: Slix | None = None
    try:
        await owner.xmpp.plugin["xep_0118"].publish_tune(
            artist="Gerald Finzi", title="Introduction"
        )
        listener = manual_subscriptions(
            Slix(pep_server, c, PASSWORD, plugins=TUNE_PLUGINS, initial_presence=False)
        )
        tunes: asyncio.Queue[Any] = asyncio.Queue()
        listener.xmpp.add_event_handler("user_tune_publish", tunes.put_nowait)
        await listener.start()
        listener.xmpp.send_presence()
        first = await take(tunes, lambda m: True, 20)
        assert first["from"] == o
        assert first["pubsub_event"]["items"]["item"]["tune"]["artist"] == "Gerald Finzi"
        await owner.xmpp.plugin["xep_0118"].publish_tune(artist="Gerald Finzi", title="Sonnet")
        second = await take(tunes, lambda m: True, 20)
        assert second["pubsub_event"]["items"]["item"]["tune"]["title"] == "Sonnet"
    finally:
        await owner.stop()
        if listener is not None:
            await listener.stop()


# ----------------------------------------------------------------------------- owner use cases


async def test_retract_purge_and_delete_are_notified(pep_server: XmppdServer) -> None:
    o = await new_account(pep_server, "editor")
    c = await new_account(pep_server, "reader")
    owner, contact = await login(pep_server, o), await login(pep_server, c)
    try:
        await share_presence(owner, contact)
        node = fresh_node()
        for item in "abc":
            await publish(
                owner, node, entry(item), item_id=item, options={"pubsub#max_items": "max"}
            )
        await announce(contact, client_features(node))
        assert event_items(await contact.expect(event_of(o, node), 20)) == [("c", "c")]

        retract = f"<pubsub xmlns='{PUBSUB}'><retract node='{node}' notify='true'>"
        reply = await owner.iq("set", f"{retract}<item id='a'/></retract></pubsub>", to=None)
        assert reply.get("type") == "result"
        assert retracted(await contact.expect(event_of(o, node), 20)) == ["a"]
        assert texts(await get_items(owner, None, node)) == [("b", "b"), ("c", "c")]
        reply = await owner.iq("set", f"{retract}<item id='a'/></retract></pubsub>", to=None)
        assert error_of(reply)[0] == "item-not-found"

        assert (await owner_iq(owner, "set", f"<purge node='{node}'/>")).get("type") == "result"
        await contact.expect(event_of(o, node, "purge"), 20)
        assert texts(await get_items(owner, None, node)) == []

        assert (await owner_iq(owner, "set", f"<delete node='{node}'/>")).get("type") == "result"
        await contact.expect(event_of(o, node, "delete"), 20)
        assert error_of(await get_items(owner, None, node))[0] == "item-not-found"
        assert await disco_nodes(owner, o) == []
    finally:
        await close(owner, contact)


async def test_create_configure_and_whitelist(pep_server: XmppdServer) -> None:
    o = await new_account(pep_server, "keeper")
    c = await new_account(pep_server, "friend")
    s = await new_account(pep_server, "passer")
    owner, contact, stranger = [await login(pep_server, j) for j in (o, c, s)]
    try:
        await share_presence(owner, contact)
        node = fresh_node("urn:xmpp:bookmarks:1")
        config = form(NODE_CONFIG, {"pubsub#access_model": "whitelist", "pubsub#max_items": "3"})
        create = f"<pubsub xmlns='{PUBSUB}'><create node='{node}'/><configure>{config}</configure></pubsub>"
        assert (await owner.iq("set", create, to=None)).get("type") == "result"
        assert error_of(await owner.iq("set", create, to=None))[0] == "conflict"
        got = await owner_iq(owner, "get", f"<configure node='{node}'/>")
        fields = {
            f.get("var"): f.findtext(f"{{{DATA}}}value") for f in got.iter(f"{{{DATA}}}field")
        }
        assert fields["pubsub#access_model"] == "whitelist"
        assert fields["pubsub#max_items"] == "3"

        for i in range(4):
            await publish(owner, node, entry(str(i)), item_id=str(i))
        assert [i for i, _ in texts(await get_items(owner, None, node))] == ["1", "2", "3"]
        # Whitelist: not even a contact with a presence subscription reads it.
        assert error_of(await get_items(contact, o, node)) == ("not-allowed", "closed-node")
        assert await disco_nodes(contact, o) == []
        configure = f"<configure node='{node}'/>"
        assert error_of(await owner_iq(contact, "get", configure, to=o))[0] == "forbidden"

        opened = form(NODE_CONFIG, {"pubsub#access_model": "open", "pubsub#max_items": "1"})
        reply = await owner_iq(owner, "set", f"<configure node='{node}'>{opened}</configure>")
        assert reply.get("type") == "result"
        assert texts(await get_items(stranger, o, node)) == [("3", "3")]
        bad = form(NODE_CONFIG, {"pubsub#access_model": "roster"})
        reply = await owner_iq(owner, "set", f"<configure node='{node}'>{bad}</configure>")
        assert error_of(reply)[0] == "not-acceptable"

        default = await owner_iq(owner, "get", "<default/>")
        values = {
            f.get("var"): f.findtext(f"{{{DATA}}}value") for f in default.iter(f"{{{DATA}}}field")
        }
        assert values["pubsub#access_model"] == "presence"
        assert values["pubsub#max_items"] == "1"
    finally:
        await close(owner, contact, stranger)


async def test_removing_the_account_removes_its_nodes(pep_server: XmppdServer) -> None:
    name = f"leaver{next(_names)}"
    jid = f"{name}@{pep_server.domain}"
    await register_account(pep_server, name, PASSWORD)
    owner = await login(pep_server, jid)
    node = fresh_node()
    try:
        await publish(owner, node, entry("bye"), options={"pubsub#access_model": "open"})
        assert await pep_rows(pep_server, name) == {"mod_pep__nodes": 1, "mod_pep__items": 1}
        owner.send(
            "<iq type='set' id='bye'><query xmlns='jabber:iq:register'><remove/></query></iq>"
        )
        assert (await owner.expect(lambda el: el.get("id") == "bye", 20)).get("type") == "result"
        await owner.wait_closed(20)
        # The stream closes first (XEP-0077 §3.2), then the account's data is deleted,
        # and the account row last: only then is the name free again.
        tables = ["mod_pep__nodes", "mod_pep__items", "xmppd_accounts"]
        empty = dict.fromkeys(tables, 0)
        await until_equal(lambda: user_rows(pep_server, name, tables), empty)
    finally:
        await owner.close()
    await register_account(pep_server, name, PASSWORD)
    again = await login(pep_server, jid)
    try:
        assert error_of(await get_items(again, None, node))[0] == "item-not-found"
    finally:
        await again.close()
