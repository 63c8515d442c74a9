"""XEP-0060 Publish-Subscribe: the service at ``pubsub.<host>`` end to end, on SQLite and
PostgreSQL, with slixmpp's XEP-0060 plugin for the use cases and raw XML for the error
cases: discovery, node creation (named, instant, configured) and configuration, publish
with publish-options, items, retract, purge, delete, persistent and transient nodes,
``pubsub#max_items``, subscriptions with options and notifications with or without
payloads, the last item for a new subscriber, affiliations, access models, who may
create nodes, a restart, and account removal."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from lxml import etree
from slixmpp.exceptions import IqError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.clients import Slix, register_account
from tests.support.e2e import (
    ALL_PLUGINS,
    PASSWORD,
    check_server_survived,
    new_account,
    online,
    take,
    until_equal,
)
from tests.support.inprocess import inprocess_server
from tests.support.pep import (
    DELAY,
    DISCO_INFO,
    DISCO_ITEMS,
    ERRORS,
    NODE_CONFIG,
    OWNER,
    PUBLISH_OPTIONS,
    PUBSUB,
    TEST_NS,
    close,
    entry,
    error_of,
    form,
    get_items,
    login,
    publish,
    published_id,
    retracted,
    share_presence,
)
from tests.support.pubsub import (
    SUBSCRIBE_OPTIONS,
    create,
    entries,
    fields,
    from_service,
    listed,
    node_items,
    options_submit,
    owner_iq,
    pubsub_iq,
    slix_events,
    subscribe,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, restart, running_server
from tests.support.xmlclient import XmlClient
from xmppd.jid import JID

PLUGINS = (*ALL_PLUGINS, "xep_0004", "xep_0060")
LIMIT = 50
ITEM_SIZE = 8192
ADMIN = "boss"
PUBSUB_OPTIONS = {"max_items_limit": LIMIT, "max_item_size": ITEM_SIZE, "name": "Test PubSub"}

_nodes = itertools.count()


def fresh_node(prefix: str = "node") -> str:
    return f"{prefix}-{next(_nodes)}"


def service_of(server: XmppdServer) -> str:
    return f"pubsub.{server.domain}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def ps_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "pubsub": PUBSUB_OPTIONS}
    tmp = tmp_path_factory.mktemp(f"xmppd-pubsub-{request.param}")
    with running_server(
        tmp, backend=request.param, modules=modules, admins=[f"{ADMIN}@localhost"]
    ) as srv:
        yield srv
        check_server_survived(srv)


def payload(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def slix_form(client: Slix, form_type: str, values: dict[str, str]) -> Any:
    built = client.xmpp.plugin["xep_0004"].make_form(ftype="submit")
    built.add_field(var="FORM_TYPE", ftype="hidden", value=form_type)
    for var, value in values.items():
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


def slix_items(result: Any) -> list[tuple[str, str]]:
    items = result.xml.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item")
    return [(i.get("id", ""), i.findtext(f"{{{TEST_NS}}}entry") or "") for i in items]


def event_entries(message: Any) -> list[tuple[str, str | None]]:
    return entries(etree.fromstring(ET.tostring(message.xml)))


# ----------------------------------------------------------------------------- discovery


async def test_the_service_is_discoverable(ps_server: XmppdServer) -> None:
    """The host lists the service in its disco#items (with its name); the service says
    it is a pubsub service with the XEP-0060 features it has."""
    service = service_of(ps_server)
    jid = await new_account(ps_server, "finder")
    client = await online(ps_server, jid, plugins=PLUGINS)
    try:
        disco = client.xmpp.plugin["xep_0030"]
        found = await disco.get_items(jid=ps_server.domain, timeout=20)
        assert (service, None, "Test PubSub") in found["disco_items"]["items"]
        info = await disco.get_info(jid=service, timeout=20)
        assert ("pubsub", "service", None, "Test PubSub") in info["disco_info"]["identities"]
        features = set(info["disco_info"]["features"])
        for feature in (
            "create-nodes",
            "instant-nodes",
            "publish",
            "publish-options",
            "subscribe",
            "subscription-options",
            "retrieve-items",
            "modify-affiliations",
            "retrieve-subscriptions",
            "retrieve-affiliations",
            "persistent-items",
            "purge-nodes",
            "delete-nodes",
            "last-published",
        ):
            assert f"{PUBSUB}#{feature}" in features, feature
        assert {PUBSUB, OWNER, DISCO_INFO, DISCO_ITEMS} <= features
    finally:
        await client.stop()


# ----------------------------------------------------------------------------- nodes and items


async def test_create_publish_and_retrieve(ps_server: XmppdServer) -> None:
    """Named, configured and instant nodes; publish with and without ids; items (all,
    newest ``max_items``, by id); the configuration form; disco of nodes and items."""
    service = service_of(ps_server)
    jid = await new_account(ps_server, "author")
    client = await online(ps_server, jid, plugins=PLUGINS)
    try:
        pubsub = client.xmpp.plugin["xep_0060"]
        disco = client.xmpp.plugin["xep_0030"]
        plain = fresh_node()
        await pubsub.create_node(service, plain, timeout=20)
        assert await slix_error(pubsub.create_node(service, plain, timeout=20)) == (
            "conflict",
            None,
        )
        # Defaults: open, 10 items, persistent.
        config = await pubsub.get_node_config(service, plain, timeout=20)
        values = fields(etree.fromstring(ET.tostring(config.xml)))
        assert values["pubsub#access_model"] == ["open"]
        assert values["pubsub#max_items"] == ["10"]
        assert values["pubsub#persist_items"] == ["1"]

        configured = fresh_node()
        settings = {
            "pubsub#max_items": "3",
            "pubsub#title": "Three",
            "pubsub#access_model": "whitelist",
        }
        await pubsub.create_node(
            service, configured, config=slix_form(client, NODE_CONFIG, settings), timeout=20
        )
        config = await pubsub.get_node_config(service, configured, timeout=20)
        values = fields(etree.fromstring(ET.tostring(config.xml)))
        assert values["pubsub#max_items"] == ["3"]
        assert values["pubsub#title"] == ["Three"]
        assert values["pubsub#access_model"] == ["whitelist"]
        # A title is bounded (it is kept with the node and sent in every disco#info).
        too_long = slix_form(client, NODE_CONFIG, {"pubsub#title": "t" * 1025})
        refused = pubsub.set_node_config(service, configured, too_long, timeout=20)
        assert (await slix_error(refused))[0] == "not-acceptable"
        # Reconfigure: the form goes back with new values.
        reopened = slix_form(client, NODE_CONFIG, {"pubsub#access_model": "open"})
        await pubsub.set_node_config(service, configured, reopened, timeout=20)
        config = await pubsub.get_node_config(service, configured, timeout=20)
        values = fields(etree.fromstring(ET.tostring(config.xml)))
        assert values["pubsub#access_model"] == ["open"]
        assert values["pubsub#max_items"] == ["3"]

        instant = await pubsub.create_node(service, None, timeout=20)
        generated = instant["pubsub"]["create"]["node"]
        assert generated
        found = await disco.get_items(jid=service, timeout=20)
        names = {node for _, node, _ in found["disco_items"]["items"]}
        assert {plain, configured, generated} <= names
        assert (service, configured, "Three") in found["disco_items"]["items"]

        for i in range(5):
            await pubsub.publish(
                service, configured, id=f"i{i}", payload=payload(entry(f"n{i}")), timeout=20
            )
        result = await pubsub.publish(service, plain, payload=payload(entry("x")), timeout=20)
        assert result["pubsub"]["publish"]["item"]["id"]
        # The node keeps its 3 newest, oldest first.
        everything = await pubsub.get_items(service, configured, timeout=20)
        assert slix_items(everything) == [("i2", "n2"), ("i3", "n3"), ("i4", "n4")]
        newest = await pubsub.get_items(service, configured, max_items=2, timeout=20)
        assert slix_items(newest) == [("i3", "n3"), ("i4", "n4")]
        named = await pubsub.get_items(service, configured, item_ids=["i2", "i4"], timeout=20)
        assert slix_items(named) == [("i2", "n2"), ("i4", "n4")]
        # Publishing an existing id replaces that item, which becomes the newest.
        await pubsub.publish(service, configured, id="i2", payload=payload(entry("again")))
        again = await pubsub.get_items(service, configured, timeout=20)
        assert slix_items(again) == [("i3", "n3"), ("i4", "n4"), ("i2", "again")]

        ids = await disco.get_items(jid=service, node=configured, timeout=20)
        assert sorted(name for _, _, name in ids["disco_items"]["items"]) == ["i2", "i3", "i4"]
        info = await disco.get_info(jid=service, node=configured, timeout=20)
        assert ("pubsub", "leaf", None, None) in info["disco_info"]["identities"]
        meta = fields(etree.fromstring(ET.tostring(info.xml)))
        assert meta["pubsub#title"] == ["Three"]
        assert meta["pubsub#owner"] == [jid]
        missing = disco.get_info(jid=service, node="no-such-node", timeout=20)
        assert (await slix_error(missing))[0] == "item-not-found"
    finally:
        await client.stop()


async def test_max_items_and_publish_options(ps_server: XmppdServer) -> None:
    """``pubsub#max_items`` 'max' means the service's limit; publish-options create a node
    (auto-create) and are preconditions afterwards."""
    service = service_of(ps_server)
    jid = await new_account(ps_server, "opts")
    client = await online(ps_server, jid, plugins=PLUGINS)
    try:
        pubsub = client.xmpp.plugin["xep_0060"]
        node = fresh_node()
        keep_all = {"pubsub#max_items": "max", "pubsub#access_model": "open"}
        for i in range(LIMIT + 2):
            await pubsub.publish(
                service,
                node,
                id=f"m{i}",
                payload=payload(entry(str(i))),
                options=slix_form(client, PUBLISH_OPTIONS, keep_all),
                timeout=20,
            )
        kept = slix_items(await pubsub.get_items(service, node, timeout=20))
        assert len(kept) == LIMIT
        assert kept[0] == ("m2", "2")
        config = await pubsub.get_node_config(service, node, timeout=20)
        assert fields(etree.fromstring(ET.tostring(config.xml)))["pubsub#max_items"] == ["max"]

        other = slix_form(client, PUBLISH_OPTIONS, {"pubsub#access_model": "whitelist"})
        call = pubsub.publish(service, node, payload=payload(entry("x")), options=other)
        assert await slix_error(call) == ("conflict", "precondition-not-met")
        unknown = slix_form(client, PUBLISH_OPTIONS, {"pubsub#frobnicate": "1"})
        call = pubsub.publish(service, node, payload=payload(entry("x")), options=unknown)
        assert await slix_error(call) == ("conflict", "precondition-not-met")
        too_many = slix_form(client, NODE_CONFIG, {"pubsub#max_items": str(LIMIT + 1)})
        call = pubsub.create_node(service, fresh_node(), config=too_many, timeout=20)
        assert (await slix_error(call))[0] == "not-acceptable"
    finally:
        await client.stop()


# ----------------------------------------------------------------------------- subscriptions


async def test_subscriptions_and_notifications(ps_server: XmppdServer) -> None:
    """Subscribe (the last item comes at once, delayed), notifications with and without
    payloads, retract, purge and delete notifications, the user's subscriptions and
    affiliations, subscription options (``pubsub#deliver``), unsubscribe."""
    service = service_of(ps_server)
    o = await new_account(ps_server, "pub")
    s = await new_account(ps_server, "sub")
    owner = await online(ps_server, o, plugins=PLUGINS)
    subscriber = await online(ps_server, s, plugins=PLUGINS)
    raw = await login(ps_server, s, resource="raw")
    try:
        mine, theirs = owner.xmpp.plugin["xep_0060"], subscriber.xmpp.plugin["xep_0060"]
        published = slix_events(subscriber, "publish")
        node = fresh_node("news")
        await mine.create_node(service, node, timeout=20)
        await mine.publish(service, node, id="first", payload=payload(entry("one")), timeout=20)

        result = await theirs.subscribe(service, node, timeout=20)
        assert result["pubsub"]["subscription"]["subscription"] == "subscribed"
        assert result["pubsub"]["subscription"]["jid"] == s
        subid = result["pubsub"]["subscription"]["subid"]
        assert subid
        # on_sub (the service default): the last item, with the time it was published.
        last = await raw.expect(from_service(service, node), 20)
        assert entries(last) == [("first", "one")]
        assert last.find(f"{{{DELAY}}}delay") is not None

        await mine.publish(service, node, id="second", payload=payload(entry("two")), timeout=20)
        event = await take(published, lambda m: event_entries(m)[0][0] == "second", 20)
        assert event_entries(event) == [("second", "two")]
        assert event["from"] == service
        assert event["type"] == "headline"

        # Without payloads: the item id only.
        bare = slix_form(owner, NODE_CONFIG, {"pubsub#deliver_payloads": "0"})
        await mine.set_node_config(service, node, bare, timeout=20)
        await mine.publish(service, node, id="third", payload=payload(entry("three")))
        event = await raw.expect(
            lambda el: from_service(service, node)(el) and entries(el)[0][0] == "third", 20
        )
        assert entries(event) == [("third", None)]

        subs = await theirs.get_subscriptions(service, timeout=20)
        mine_listed = [
            (x["node"], x["jid"], x["subscription"]) for x in subs["pubsub"]["subscriptions"]
        ]
        assert mine_listed == [(node, s, "subscribed")]
        affs = await mine.get_affiliations(service, timeout=20)
        assert [(a["node"], a["affiliation"]) for a in affs["pubsub"]["affiliations"]] == [
            (node, "owner")
        ]
        owned = await mine.get_node_subscriptions(service, node, timeout=20)
        assert [x["jid"] for x in owned["pubsub_owner"]["subscriptions"]] == [s]

        # Retract with notify, purge.
        await mine.retract(service, node, "second", notify=True, timeout=20)
        event = await raw.expect(lambda el: bool(retracted_of(el, service, node)), 20)
        assert retracted_of(event, service, node) == ["second"]
        await mine.purge(service, node, timeout=20)
        await raw.expect(from_service(service, node, "purge"), 20)
        assert node_items(await get_items(raw, service, node)) == []

        # Subscription options: the form, then pubsub#deliver off stops notifications.
        opts = await theirs.get_subscription_options(service, node, s, timeout=20)
        assert fields(etree.fromstring(ET.tostring(opts.xml)))["pubsub#deliver"] == ["1"]
        reply = await pubsub_iq(
            raw, service, "set", options_submit(node, s, {"pubsub#deliver": "0"})
        )
        assert reply.get("type") == "result", etree.tostring(reply)
        quiet = await pubsub_iq(raw, service, "get", f"<options node='{node}' jid='{s}'/>")
        assert fields(quiet)["pubsub#deliver"] == ["0"]
        await mine.publish(service, node, id="unheard", payload=payload(entry("x")))
        marker = fresh_node("marker")
        await mine.create_node(service, marker, timeout=20)
        await theirs.subscribe(service, marker, timeout=20)
        await mine.publish(service, marker, id="m", payload=payload(entry("m")))
        await raw.expect(from_service(service, marker), 20)
        # Notifications of one service are sent in order: had 'unheard' been sent to
        # the subscriber, it would be here before the marker's.
        heard = [i for e in raw.pending(from_service(service, node)) for i, _ in entries(e)]
        assert "unheard" not in heard

        # Unsubscribe: nothing more; unsubscribing again: not-subscribed.
        await theirs.unsubscribe(service, marker, timeout=20)
        assert await slix_error(theirs.unsubscribe(service, marker, timeout=20)) == (
            "unexpected-request",
            "not-subscribed",
        )

        # Delete: the subscriber, delivery on again, is told.
        reply = await pubsub_iq(
            raw, service, "set", options_submit(node, s, {"pubsub#deliver": "1"})
        )
        assert reply.get("type") == "result", etree.tostring(reply)
        await mine.delete_node(service, node, timeout=20)
        await raw.expect(from_service(service, node, "delete"), 20)
        assert error_of(await get_items(raw, service, node))[0] == "item-not-found"
        assert (await theirs.get_subscriptions(service, timeout=20))["pubsub"][
            "subscriptions"
        ].xml.findall(f"{{{PUBSUB}}}subscription") == []
    finally:
        await owner.stop()
        await subscriber.stop()
        await raw.close()


def retracted_of(el: Any, service: str, node: str) -> list[str]:
    if not from_service(service, node)(el):
        return []
    return retracted(el)


async def test_subscribe_with_options_and_send_last_never(ps_server: XmppdServer) -> None:
    """Subscribe and configure in one request (the result carries the options form); a
    node with ``send_last_published_item`` = never sends nothing on subscription."""
    service = service_of(ps_server)
    o = await new_account(ps_server, "quiet")
    s = await new_account(ps_server, "listener")
    owner, listener = await login(ps_server, o), await login(ps_server, s)
    try:
        node = fresh_node()
        reply = await create(owner, service, node, {"pubsub#send_last_published_item": "never"})
        assert reply.get("type") == "result", etree.tostring(reply)
        assert published_id(await publish(owner, node, entry("old"), item_id="old", to=service))
        options = form(SUBSCRIBE_OPTIONS, {"pubsub#deliver": "1"})
        reply = await pubsub_iq(
            listener,
            service,
            "set",
            f"<subscribe node='{node}' jid='{s}'/><options>{options}</options>",
        )
        assert listed(reply, "subscription")[0]["subscription"] == "subscribed"
        assert fields(reply)["pubsub#deliver"] == ["1"]
        await publish(owner, node, entry("new"), item_id="new", to=service)
        event = await listener.expect(from_service(service, node), 20)
        assert entries(event) == [("new", "new")]  # 'old' never came
        default = await pubsub_iq(listener, service, "get", f"<default node='{node}'/>")
        assert fields(default)["FORM_TYPE"] == [SUBSCRIBE_OPTIONS]
    finally:
        await close(owner, listener)


async def test_transient_nodes_notify_and_keep_nothing(ps_server: XmppdServer) -> None:
    service = service_of(ps_server)
    o = await new_account(ps_server, "flash")
    s = await new_account(ps_server, "watcher")
    owner, watcher = await login(ps_server, o), await login(ps_server, s)
    try:
        node = fresh_node()
        reply = await create(owner, service, node, {"pubsub#persist_items": "0"})
        assert reply.get("type") == "result", etree.tostring(reply)
        assert (await subscribe(watcher, service, node)).get("type") == "result"
        await publish(owner, node, entry("now"), item_id="now", to=service)
        assert entries(await watcher.expect(from_service(service, node), 20)) == [("now", "now")]
        unsupported = ("feature-not-implemented", "unsupported")
        assert error_of(await get_items(watcher, service, node)) == unsupported
        assert error_of(await owner_iq(owner, service, "set", f"<purge node='{node}'/>")) == (
            unsupported
        )
        retract = f"<retract node='{node}'><item id='now'/></retract>"
        reply = await pubsub_iq(owner, service, "set", retract)
        assert error_of(reply) == unsupported
        err = reply.find(f".//{{{ERRORS}}}unsupported")
        assert err is not None and err.get("feature") == "persistent-items"
    finally:
        await close(owner, watcher)


# ----------------------------------------------------------------------------- affiliations


async def test_affiliations_and_access_models(ps_server: XmppdServer) -> None:
    """Owners manage affiliations (publisher, member, outcast, none); a whitelist node is
    for owners, publishers and members; outcasts are shut out; the presence model lets in
    the contacts of an owner; a node keeps an owner."""
    service = service_of(ps_server)
    o, p, m, x, c = [
        await new_account(ps_server, name)
        for name in ("chief", "scribe", "fellow", "banned", "pal")
    ]
    owner = await online(ps_server, o, plugins=PLUGINS)
    publisher, member, outcast, contact = [await login(ps_server, j) for j in (p, m, x, c)]
    raw_owner = await login(ps_server, o, resource="raw")
    try:
        pubsub = owner.xmpp.plugin["xep_0060"]
        node = fresh_node("club")
        config = slix_form(owner, NODE_CONFIG, {"pubsub#access_model": "whitelist"})
        await pubsub.create_node(service, node, config=config, timeout=20)
        await pubsub.publish(service, node, id="a", payload=payload(entry("a")), timeout=20)
        assert error_of(await get_items(member, service, node)) == ("not-allowed", "closed-node")
        assert error_of(await subscribe(member, service, node)) == ("not-allowed", "closed-node")
        assert error_of(await publish(publisher, node, entry("p"), to=service))[0] == "forbidden"

        await pubsub.modify_affiliations(
            service, node, [(p, "publisher"), (m, "member"), (x, "outcast")], timeout=20
        )
        got = await pubsub.get_node_affiliations(service, node, timeout=20)
        assert sorted(
            (a["jid"].bare, a["affiliation"]) for a in got["pubsub_owner"]["affiliations"]
        ) == sorted([(o, "owner"), (p, "publisher"), (m, "member"), (x, "outcast")])
        assert published_id(await publish(publisher, node, entry("p"), item_id="p", to=service))
        assert node_items(await get_items(member, service, node)) == [("a", "a"), ("p", "p")]
        assert (await subscribe(member, service, node)).get("type") == "result"
        assert error_of(await get_items(outcast, service, node))[0] == "forbidden"
        assert error_of(await subscribe(outcast, service, node))[0] == "forbidden"
        # A member does not publish, retract, configure or delete; a publisher retracts.
        assert error_of(await publish(member, node, entry("m"), to=service))[0] == "forbidden"
        retract = f"<retract node='{node}'><item id='a'/></retract>"
        assert error_of(await pubsub_iq(member, service, "set", retract))[0] == "forbidden"
        assert (await pubsub_iq(publisher, service, "set", retract)).get("type") == "result"
        for inner in (f"<configure node='{node}'/>", f"<affiliations node='{node}'/>"):
            assert error_of(await owner_iq(member, service, "get", inner)) == ("forbidden", None)
        delete = f"<delete node='{node}'/>"
        assert error_of(await owner_iq(publisher, service, "set", delete))[0] == "forbidden"
        mine = await pubsub_iq(member, service, "get", "<affiliations/>")
        assert listed(mine, "affiliation") == [{"node": node, "affiliation": "member"}]

        # The last owner stays an owner: that entry comes back, as it stands, in the
        # error; the valid one in the same request is applied (§8.9.2.4).
        demote = (
            f"<affiliations node='{node}'><affiliation jid='{o}' affiliation='none'/>"
            f"<affiliation jid='{p}' affiliation='member'/></affiliations>"
        )
        reply = await owner_iq(raw_owner, service, "set", demote)
        assert error_of(reply)[0] == "not-acceptable"
        assert listed(reply, "affiliation", OWNER) == [{"jid": o, "affiliation": "owner"}]
        got = await owner_iq(raw_owner, service, "get", f"<affiliations node='{node}'/>")
        now = {a["jid"]: a["affiliation"] for a in listed(got, "affiliation", OWNER)}
        assert (now[o], now[p]) == ("owner", "member")
        # publish-only is not supported.
        only = f"<affiliations node='{node}'><affiliation jid='{p}' affiliation='publish-only'/></affiliations>"
        reply = await owner_iq(raw_owner, service, "set", only)
        assert error_of(reply) == ("feature-not-implemented", "unsupported")
        # Back to none: the member is out of the whitelist (and its subscription ends).
        await pubsub.modify_affiliations(service, node, [(m, "none")], timeout=20)
        assert error_of(await get_items(member, service, node)) == ("not-allowed", "closed-node")
        subs = await pubsub_iq(member, service, "get", "<subscriptions/>")
        assert listed(subs, "subscription") != []  # still subscribed: the model did not change
        reopen = slix_form(owner, NODE_CONFIG, {"pubsub#access_model": "open"})
        await pubsub.set_node_config(service, node, reopen, timeout=20)
        assert node_items(await get_items(member, service, node)) == [("p", "p")]
        closed = slix_form(owner, NODE_CONFIG, {"pubsub#access_model": "whitelist"})
        await pubsub.set_node_config(service, node, closed, timeout=20)
        subs = await pubsub_iq(member, service, "get", "<subscriptions/>")
        assert listed(subs, "subscription") == []  # a whitelist leaves non-members out

        # Presence: a contact with a presence subscription to an owner may read.
        shared = fresh_node("shared")
        reply = await create(raw_owner, service, shared, {"pubsub#access_model": "presence"})
        assert reply.get("type") == "result"
        await share_presence(raw_owner, contact)
        await publish(raw_owner, shared, entry("hi"), item_id="hi", to=service)
        assert node_items(await get_items(contact, service, shared)) == [("hi", "hi")]
        assert error_of(await get_items(member, service, shared)) == (
            "not-authorized",
            "presence-subscription-required",
        )
        assert (await subscribe(contact, service, shared)).get("type") == "result"

        # Owner subscription management: add and remove a subscriber.
        manage = (
            f"<subscriptions node='{shared}'><subscription jid='{m}' subscription='subscribed'/>"
            f"<subscription jid='{c}' subscription='none'/></subscriptions>"
        )
        assert (await owner_iq(raw_owner, service, "set", manage)).get("type") == "result"
        got = await owner_iq(raw_owner, service, "get", f"<subscriptions node='{shared}'/>")
        assert [s["jid"] for s in listed(got, "subscription", OWNER)] == [m]
        pending = (
            f"<subscriptions node='{shared}'><subscription jid='{c}' subscription='pending'/>"
            "</subscriptions>"
        )
        reply = await owner_iq(raw_owner, service, "set", pending)
        assert error_of(reply)[0] == "not-acceptable"
        assert listed(reply, "subscription", OWNER) == [{"jid": c, "subscription": "none"}]
    finally:
        await owner.stop()
        await close(publisher, member, outcast, contact, raw_owner)


# ----------------------------------------------------------------------------- errors


async def test_error_cases(ps_server: XmppdServer) -> None:
    """The XEP-0060 error conditions, from raw XML."""
    service = service_of(ps_server)
    o = await new_account(ps_server, "strict")
    u = await new_account(ps_server, "user")
    owner, user = await login(ps_server, o), await login(ps_server, u)
    try:
        node = fresh_node()
        assert (await create(owner, service, node)).get("type") == "result"
        assert error_of(await create(owner, service, node)) == ("conflict", None)
        # Node ids.
        assert error_of(await pubsub_iq(user, service, "get", "<items/>")) == (
            "bad-request",
            "nodeid-required",
        )
        assert error_of(await pubsub_iq(user, service, "get", "<items node='nope'/>")) == (
            "item-not-found",
            None,
        )
        configure_bad = f"<create node='{fresh_node()}'/><configure node='x'/>"
        assert error_of(await pubsub_iq(owner, service, "set", configure_bad))[0] == "bad-request"
        # Publishing.
        assert error_of(await publish(owner, node, None, to=service)) == (
            "bad-request",
            "payload-required",
        )
        no_item = f"<publish node='{node}'/>"
        assert error_of(await pubsub_iq(owner, service, "set", no_item)) == (
            "bad-request",
            "item-required",
        )
        two = entry("a") + entry("b")
        assert error_of(await publish(owner, node, two, to=service)) == (
            "bad-request",
            "invalid-payload",
        )
        huge = entry("x" * ITEM_SIZE)
        assert error_of(await publish(owner, node, huge, to=service)) == (
            "not-acceptable",
            "payload-too-big",
        )
        reply = await publish(owner, node, entry("x"), to=service, options={"pubsub#title": "no"})
        assert error_of(reply) == ("conflict", "precondition-not-met")
        assert error_of(await publish(user, node, entry("x"), to=service)) == ("forbidden", None)
        # Items and retract.
        await publish(owner, node, entry("kept"), item_id="kept", to=service)
        assert error_of(await get_items(user, service, node, ids=["gone"])) == (
            "item-not-found",
            None,
        )
        retract = f"<retract node='{node}'><item id='gone'/></retract>"
        assert error_of(await pubsub_iq(owner, service, "set", retract)) == ("item-not-found", None)
        no_id = f"<retract node='{node}'><item/></retract>"
        assert error_of(await pubsub_iq(owner, service, "set", no_id)) == (
            "bad-request",
            "item-required",
        )
        # Subscriptions.
        assert error_of(await subscribe(user, service, node, jid=o)) == (
            "bad-request",
            "invalid-jid",
        )
        assert error_of(await subscribe(user, service, "nope")) == ("item-not-found", None)
        unsubscribe = f"<unsubscribe node='{node}' jid='{u}'/>"
        assert error_of(await pubsub_iq(user, service, "set", unsubscribe)) == (
            "unexpected-request",
            "not-subscribed",
        )
        someone_else = f"<unsubscribe node='{node}' jid='{o}'/>"
        assert error_of(await pubsub_iq(user, service, "set", someone_else)) == ("forbidden", None)
        options = f"<options node='{node}' jid='{u}'/>"
        assert error_of(await pubsub_iq(user, service, "get", options)) == (
            "unexpected-request",
            "not-subscribed",
        )
        assert error_of(await pubsub_iq(user, service, "get", f"<options node='{node}'/>")) == (
            "bad-request",
            "jid-required",
        )
        theirs = f"<options node='{node}' jid='{o}'/>"
        assert error_of(await pubsub_iq(user, service, "get", theirs)) == ("forbidden", None)
        assert (await subscribe(user, service, node)).get("type") == "result"
        wrong_subid = f"<unsubscribe node='{node}' jid='{u}' subid='bogus'/>"
        assert error_of(await pubsub_iq(user, service, "set", wrong_subid)) == (
            "not-acceptable",
            "invalid-subid",
        )
        bad_option = options_submit(node, u, {"pubsub#digest": "1"})
        assert error_of(await pubsub_iq(user, service, "set", bad_option)) == (
            "bad-request",
            "invalid-options",
        )
        # Owner actions by others, on missing nodes, or without a node.
        for inner in (f"<configure node='{node}'/>", f"<subscriptions node='{node}'/>"):
            assert error_of(await owner_iq(user, service, "get", inner)) == ("forbidden", None)
        for inner in (f"<delete node='{node}'/>", f"<purge node='{node}'/>"):
            assert error_of(await owner_iq(user, service, "set", inner)) == ("forbidden", None)
            reply = await owner_iq(owner, service, "set", inner.replace(node, "nope"))
            assert error_of(reply) == ("item-not-found", None)
        assert error_of(await owner_iq(owner, service, "get", "<configure/>")) == (
            "bad-request",
            "nodeid-required",
        )
        # What the service does not do.
        reply = await pubsub_iq(user, service, "set", f"<frobnicate node='{node}'/>")
        assert error_of(reply) == ("feature-not-implemented", "unsupported")
        reply = await user.iq("get", "<query xmlns='jabber:iq:version'/>", to=service)
        assert error_of(reply)[0] == "service-unavailable"
        info = await user.iq("get", f"<query xmlns='{DISCO_INFO}' node='nope'/>", to=service)
        assert error_of(info)[0] == "item-not-found"
        # A JID at the service's domain is nobody.
        items = f"<pubsub xmlns='{PUBSUB}'><items node='{node}'/></pubsub>"
        reply = await user.iq("get", items, to=f"someone@{service}")
        assert error_of(reply)[0] == "service-unavailable"
        reply = await user.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=f"{service}/res")
        assert error_of(reply)[0] == "service-unavailable"
    finally:
        await close(owner, user)


# ----------------------------------------------------------------------------- who may create


@pytest.mark.parametrize(
    ("rule", "allowed", "refused"),
    [
        ("admins", ["boss"], ["worker"]),
        (["maker@localhost", "example.net"], ["maker"], ["worker", "boss"]),
        ("nobody", [], ["boss", "worker"]),
    ],
    ids=["admins", "listed", "nobody"],
)
async def test_who_may_create_nodes(
    tmp_path: Path, rule: Any, allowed: list[str], refused: list[str]
) -> None:
    """``create_nodes``: those the rule lets in create nodes (also by auto-create);
    others get ``forbidden`` (type auth), and auto-create is ``item-not-found``."""
    modules = {**DEFAULT_TEST_MODULES, "pubsub": {"create_nodes": rule}}
    with running_server(tmp_path, modules=modules, admins=["boss@localhost"]) as server:
        service = service_of(server)
        for name in allowed:
            client = await login_new(server, name)
            try:
                assert (await create(client, service, fresh_node())).get("type") == "result"
                reply = await publish(client, fresh_node(), entry("x"), to=service)
                assert published_id(reply)
            finally:
                await client.close()
        for name in refused:
            client = await login_new(server, name)
            try:
                reply = await create(client, service, fresh_node())
                assert error_of(reply) == ("forbidden", None)
                error = reply.find("{jabber:client}error")
                assert error is not None and error.get("type") == "auth"
                reply = await publish(client, fresh_node(), entry("x"), to=service)
                assert error_of(reply) == ("item-not-found", None)
            finally:
                await client.close()


async def login_new(server: XmppdServer, name: str) -> XmlClient:
    await register_account(server, name, PASSWORD)
    return await login(server, f"{name}@{server.domain}")


# ----------------------------------------------------------------------------- restart


@pytest.fixture(params=["sqlite", "postgresql"])
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[XmppdServer]:
    """A server for one test (which may restart it)."""
    modules = {**DEFAULT_TEST_MODULES, "pubsub": PUBSUB_OPTIONS}
    with running_server(tmp_path, backend=request.param, modules=modules) as srv:
        yield srv
        check_server_survived(srv)


async def test_a_restart_keeps_persistent_nodes_and_items(own_server: XmppdServer) -> None:
    """Stop the server, start it again on the same database: nodes, their configuration,
    items of persistent nodes, affiliations and subscriptions are there; a transient
    node has no items."""
    server = own_server
    if True:
        service = service_of(server)
        o = await new_account(server, "keeper")
        s = await new_account(server, "fan")
        owner, fan = await login(server, o), await login(server, s)
        kept, transient = fresh_node("kept"), fresh_node("transient")
        try:
            await create(owner, service, kept, {"pubsub#max_items": "5", "pubsub#title": "Kept"})
            await create(owner, service, transient, {"pubsub#persist_items": "0"})
            for i in range(3):
                await publish(owner, kept, entry(str(i)), item_id=str(i), to=service)
            await publish(owner, transient, entry("gone"), item_id="gone", to=service)
            assert (await subscribe(fan, service, kept)).get("type") == "result"
        finally:
            await close(owner, fan)
        await asyncio.to_thread(restart, server)
        owner, fan = await login(server, o), await login(server, s)
        try:
            assert node_items(await get_items(fan, service, kept)) == [
                ("0", "0"),
                ("1", "1"),
                ("2", "2"),
            ]
            config = await owner_iq(owner, service, "get", f"<configure node='{kept}'/>")
            assert fields(config)["pubsub#max_items"] == ["5"]
            assert fields(config)["pubsub#title"] == ["Kept"]
            assert error_of(await get_items(fan, service, transient)) == (
                "feature-not-implemented",
                "unsupported",
            )
            subs = await pubsub_iq(fan, service, "get", "<subscriptions/>")
            assert [x["node"] for x in listed(subs, "subscription")] == [kept]
            await publish(owner, kept, entry("3"), item_id="3", to=service)
            assert entries(await fan.expect(from_service(service, kept), 20)) == [("3", "3")]
        finally:
            await close(owner, fan)


# ----------------------------------------------------------------------------- accounts


async def test_removing_an_account(ps_server: XmppdServer) -> None:
    """Its subscriptions and affiliations go; a node it alone owned is deleted (its
    subscribers are told); a node with another owner stays."""
    service = service_of(ps_server)
    leaver = await new_account(ps_server, "leaver")
    other = await new_account(ps_server, "stayer")
    client, stayer = await login(ps_server, leaver), await login(ps_server, other)
    alone, shared, followed = fresh_node("alone"), fresh_node("shared"), fresh_node("followed")
    try:
        for node in (alone, shared):
            assert (await create(client, service, node)).get("type") == "result"
        co_owner = f"<affiliations node='{shared}'><affiliation jid='{other}' affiliation='owner'/></affiliations>"
        assert (await owner_iq(client, service, "set", co_owner)).get("type") == "result"
        assert (await create(stayer, service, followed)).get("type") == "result"
        assert (await subscribe(client, service, followed)).get("type") == "result"
        assert (await subscribe(stayer, service, alone)).get("type") == "result"
        assert await pubsub_rows(ps_server, leaver) == {"affiliations": 2, "subscriptions": 1}

        client.send(
            "<iq type='set' id='bye'><query xmlns='jabber:iq:register'><remove/></query></iq>"
        )
        assert (await client.expect(lambda el: el.get("id") == "bye", 20)).get("type") == "result"
        await stayer.expect(from_service(service, alone, "delete"), 20)
        await until_equal(
            lambda: pubsub_rows(ps_server, leaver), {"affiliations": 0, "subscriptions": 0}
        )
        assert error_of(await get_items(stayer, service, alone)) == ("item-not-found", None)
        got = await owner_iq(stayer, service, "get", f"<affiliations node='{shared}'/>")
        assert listed(got, "affiliation", OWNER) == [{"jid": other, "affiliation": "owner"}]
    finally:
        await close(client, stayer)


async def pubsub_rows(server: XmppdServer, jid: str) -> dict[str, int]:
    """Affiliation and subscription rows of ``jid`` (bare) on the service."""
    engine = create_async_engine(server.storage_url)
    try:
        async with engine.connect() as conn:
            affs = await conn.scalar(
                sa.text("SELECT count(*) FROM mod_pubsub__affiliations WHERE jid = :j"), {"j": jid}
            )
            subs = await conn.scalar(
                sa.text("SELECT count(*) FROM mod_pubsub__subscriptions WHERE bare = :j"),
                {"j": jid},
            )
    finally:
        await engine.dispose()
    return {"affiliations": int(affs or 0), "subscriptions": int(subs or 0)}


def test_the_example_configuration_of_the_service_is_valid(tmp_path: Path) -> None:
    """config/xmppd.toml shows the service commented out (not loaded by default); with
    its lines uncommented, the configuration and the module's options are valid."""
    example = Path(__file__).parents[2] / "config" / "xmppd.toml"
    lines = example.read_text().splitlines()
    start = lines.index("# [modules.pubsub]")
    end = lines.index("", start)
    for i in range(start, end):
        if lines[i].startswith("# [") or " = " in lines[i]:
            lines[i] = lines[i].removeprefix("# ")
    config = tmp_path / "xmppd.toml"
    config.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "xmppd", "--config", str(config), "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "[modules.pubsub]" in "\n".join(lines[start:end])


async def test_metrics_count_publications_and_notifications(tmp_path: Path) -> None:
    """``xmppd_mod_pubsub_published_items_total`` and ``..._notifications_total`` (per
    host), as an operator reads them (the server runs in this process)."""
    modules = {**DEFAULT_TEST_MODULES, "pubsub": {}}
    async with inprocess_server(tmp_path, modules=modules) as srv:
        service = f"pubsub.{srv.domain}"
        jids = [f"{name}@{srv.domain}" for name in ("writer", "reader")]
        for jid in jids:
            await srv.server.register_user(JID.parse(jid), PASSWORD)
        writer, reader = [
            Slix(srv, jid, PASSWORD, plugins=PLUGINS)  # type: ignore[arg-type]
            for jid in jids
        ]
        await writer.start()
        await reader.start()
        try:
            mine, theirs = writer.xmpp.plugin["xep_0060"], reader.xmpp.plugin["xep_0060"]
            events = slix_events(reader, "publish")
            node = fresh_node()
            await mine.create_node(service, node, timeout=20)
            await mine.publish(service, node, id="a", payload=payload(entry("a")), timeout=20)
            await theirs.subscribe(service, node, timeout=20)  # the last item: 1 notification
            await mine.publish(service, node, id="b", payload=payload(entry("b")), timeout=20)
            for expected in ("a", "b"):
                await take(events, lambda m, e=expected: event_entries(m)[0][0] == e, 20)
            labels = {"host": srv.domain}
            metrics = srv.server.metrics
            assert metrics.value("xmppd_mod_pubsub_published_items_total", labels) == 2
            assert metrics.value("xmppd_mod_pubsub_notifications_total", labels) == 2
        finally:
            await writer.stop()
            await reader.stop()
