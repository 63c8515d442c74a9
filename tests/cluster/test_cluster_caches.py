"""What one node of a cluster keeps in memory follows changes made through another:
block lists, rosters, credentials, account removal, vCard photo hashes, PEP node
configurations and MAM preferences. Each test makes a change through node 0 and
watches node 1 act on it, with clients connected straight to each node."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.clients import AuthFailed, Slix, register_account
from tests.support.cluster import ClusterNodes, running_cluster
from tests.support.e2e import PASSWORD, new_account
from tests.support.mam import MAM, everything
from tests.support.pep import (
    DATA,
    NODE_CONFIG,
    OWNER,
    announce,
    client_features,
    close,
    entry,
    error_of,
    event_items,
    event_of,
    fresh_node,
    get_items,
    login,
    publish,
    published_id,
    share_presence,
    texts,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer
from tests.support.xmlclient import Element, XmlClient, attrs, error_condition, tag, text

BLOCKING = "urn:xmpp:blocking"
ROSTER = "jabber:iq:roster"
REGISTER = "jabber:iq:register"
VCARD = "vcard-temp"
VCARD_UPDATE = "vcard-temp:x:update"
CHANGE_WAIT = 15.0
"""How long a change made through one node may take to reach another."""

MODULES = {**DEFAULT_TEST_MODULES, "blocklist": {}, "vcard": {}, "pep": {}, "mam": {}}

_seq = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNodes]:
    tmp: Path = tmp_path_factory.mktemp("cluster-caches")
    with running_cluster(tmp, nodes=2, modules=MODULES) as nodes:
        yield nodes
        for log in nodes.logs:
            content = log.read_text(errors="replace")
            assert "Traceback" not in content, content[content.index("Traceback") - 2000 :][:6000]


def n(cluster: ClusterNodes, index: int) -> XmppdServer:
    return cluster.nodes[index]


def bare(jid: str) -> str:
    return jid.split("/", 1)[0]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Retry ``check`` until it holds (a change crosses nodes asynchronously)."""
    deadline = asyncio.get_running_loop().time() + CHANGE_WAIT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.1)


def chat(to: str, body: str) -> str:
    return f"<message{attrs(to=to, type='chat')}><body>{text(body)}</body></message>"


def message_with(body: str) -> Callable[[Element], bool]:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def got(client: XmlClient, predicate: Callable[[Element], bool], timeout: float) -> bool:
    try:
        await client.expect(predicate, timeout)
    except TimeoutError:
        return False
    return True


def ok(reply: Element) -> Element:
    assert reply.get("type") == "result", reply.get("type")
    return reply


# ----------------------------------------------------------------------------- blocklist


def block(jid: str, kind: str = "block") -> str:
    return f"<{kind} xmlns='{BLOCKING}'><item jid='{jid}'/></{kind}>"


async def test_a_block_made_through_one_node_holds_on_the_other(cluster: ClusterNodes) -> None:
    bob = await new_account(cluster.front, "blk")
    alice = await new_account(cluster.front, "blka")
    b0 = await login(n(cluster, 0), bob, "n0")
    b1 = await login(n(cluster, 1), bob, "n1")
    a1 = await login(n(cluster, 1), alice, "n1")
    try:
        # Node 1 holds bob's list in memory: he blocked someone else through it, and
        # a message from alice to him was checked against it.
        ok(await b1.iq("set", block("spam@elsewhere.example"), to=None))
        a1.send(chat(b1.jid, "before"))
        await b1.expect(message_with("before"))

        ok(await b0.iq("set", block(alice), to=None))

        async def refused_on_node_1() -> bool:
            body = f"after-{next(_seq)}"
            a1.send(chat(b1.jid, body))
            return await got(
                a1,
                lambda el: (
                    el.tag == tag("message")
                    and el.get("type") == "error"
                    and error_condition(el) == "service-unavailable"
                    and el.findtext(tag("body")) in (None, body)
                ),
                1.0,
            )

        await eventually(refused_on_node_1, "alice's message to bob's node-1 resource refused")
        # bob's node-1 resource may not write to alice either
        b1.send(chat(alice, "to a blocked contact"))
        refused = await b1.expect(
            lambda el: el.tag == tag("message") and el.get("type") == "error", 10
        )
        assert error_condition(refused) == "not-acceptable"
        # From then on, nothing of hers gets through on node 1.
        a1.send(chat(b1.jid, "never delivered"))
        await a1.expect(
            lambda el: (
                el.get("type") == "error" and el.findtext(tag("body")) in (None, "never delivered")
            ),
            10,
        )
        assert not b1.pending(message_with("never delivered"))
        # Unblocking through node 0 lets her through on node 1 again.
        ok(await b0.iq("set", block(alice, "unblock"), to=None))

        async def delivered_on_node_1() -> bool:
            body = f"again-{next(_seq)}"
            a1.send(chat(b1.jid, body))
            return await got(b1, message_with(body), 1.0)

        await eventually(delivered_on_node_1, "alice's message delivered again on node 1")
    finally:
        await close(b0, b1, a1)


# ----------------------------------------------------------------------------- roster


async def roster_items(client: XmlClient) -> dict[str, tuple[str, str]]:
    """The roster the server has now: jid -> (subscription, name)."""
    reply = ok(await client.iq("get", f"<query xmlns='{ROSTER}'/>", to=None))
    query = reply.find(f"{{{ROSTER}}}query")
    assert query is not None
    return {
        i.get("jid", ""): (i.get("subscription", "none"), i.get("name", ""))
        for i in query.findall(f"{{{ROSTER}}}item")
    }


def roster_push_about(jid: str, subscription: str) -> Callable[[Element], bool]:
    def match(el: Element) -> bool:
        item = el.find(f"{{{ROSTER}}}query/{{{ROSTER}}}item")
        return (
            el.tag == tag("iq")
            and el.get("type") == "set"
            and item is not None
            and item.get("jid") == jid
            and item.get("subscription") == subscription
        )

    return match


async def test_roster_changes_and_subscriptions_cross_nodes(cluster: ClusterNodes) -> None:
    alice = await new_account(cluster.front, "ros")
    bob = await new_account(cluster.front, "rosb")
    a0 = await login(n(cluster, 0), alice, "n0")
    a1 = await login(n(cluster, 1), alice, "n1")
    b1 = await login(n(cluster, 1), bob, "n1")
    try:
        for client in (a0, a1, b1):  # each node holds its users' rosters in memory
            assert await roster_items(client) == {}
        ok(
            await a0.iq(
                "set", f"<query xmlns='{ROSTER}'><item jid='{bob}' name='Bob'/></query>", to=None
            )
        )
        await a1.expect(roster_push_about(bob, "none"), 10)

        async def seen_on_node_1() -> bool:
            return (await roster_items(a1)).get(bob) == ("none", "Bob")

        await eventually(seen_on_node_1, "the new item in the roster read through node 1")

        # Subscription: asked on node 0, approved by bob on node 1.
        a0.send(f"<presence type='subscribe' to='{bob}'/>")
        await b1.expect(lambda el: el.tag == tag("presence") and el.get("type") == "subscribe", 10)
        b1.send(f"<presence type='subscribed' to='{alice}'/>")
        await a1.expect(roster_push_about(bob, "to"), 10)
        await a0.expect(roster_push_about(bob, "to"), 10)

        async def subscribed_everywhere() -> bool:
            return (
                (await roster_items(a1)).get(bob, ("",))[0] == "to"
                and (await roster_items(a0)).get(bob, ("",))[0] == "to"
                and (await roster_items(b1)).get(alice, ("",))[0] == "from"
            )

        await eventually(subscribed_everywhere, "the subscription in both rosters, on both nodes")
        # And back: a change through node 1 is seen through node 0.
        ok(
            await a1.iq(
                "set",
                f"<query xmlns='{ROSTER}'><item jid='{bob}' name='Robert'/></query>",
                to=None,
            )
        )

        async def renamed_on_node_0() -> bool:
            return (await roster_items(a0)).get(bob) == ("to", "Robert")

        await eventually(renamed_on_node_0, "the renamed item read through node 0")
    finally:
        await close(a0, a1, b1)


# ----------------------------------------------------------------------------- accounts


async def can_log_in(server: XmppdServer, jid: str, password: str) -> bool:
    client = Slix(server, jid, password, initial_presence=False, fetch_roster=False)
    try:
        await client.start()
    except AuthFailed:
        return False
    finally:
        await client.stop()
    return True


async def test_a_password_changed_through_one_node_is_the_one_every_node_takes(
    cluster: ClusterNodes,
) -> None:
    jid = await new_account(cluster.front, "pw")
    assert await can_log_in(n(cluster, 1), jid, PASSWORD)
    c0 = await XmlClient.login(n(cluster, 0), jid, PASSWORD)
    try:
        username = jid.split("@", 1)[0]
        ok(
            await c0.iq(
                "set",
                f"<query xmlns='{REGISTER}'><username>{username}</username>"
                "<password>a-new-password</password></query>",
                to=None,
            )
        )
    finally:
        await c0.close()
    assert not await can_log_in(n(cluster, 1), jid, PASSWORD)
    assert await can_log_in(n(cluster, 1), jid, "a-new-password")


async def test_an_account_removed_through_one_node_is_gone_from_the_other(
    cluster: ClusterNodes,
) -> None:
    jid = await new_account(cluster.front, "gone")
    username = jid.split("@", 1)[0]
    b1 = await login(n(cluster, 1), jid, "n1")
    b0 = await login(n(cluster, 0), jid, "n0")
    try:
        # Node 1 holds the account's block list and roster in memory.
        ok(await b1.iq("set", block("old@elsewhere.example"), to=None))
        ok(
            await b1.iq(
                "set",
                f"<query xmlns='{ROSTER}'><item jid='old@elsewhere.example'/></query>",
                to=None,
            )
        )
        ok(await b0.iq("set", f"<query xmlns='{REGISTER}'><remove/></query>", to=None))
        # Its session on node 1 ends too.
        assert await b1.wait_closed(10) == "not-authorized"
    finally:
        await close(b0, b1)
    assert not await can_log_in(n(cluster, 1), jid, PASSWORD)
    # The name registered again (through node 0) starts empty, on node 1 too.
    await register_account(n(cluster, 0), username, PASSWORD)
    again = await login(n(cluster, 1), jid, "n1")
    try:
        reply = ok(await again.iq("get", f"<blocklist xmlns='{BLOCKING}'/>", to=None))
        blocklist = reply.find(f"{{{BLOCKING}}}blocklist")
        assert blocklist is not None and len(blocklist) == 0
        assert await roster_items(again) == {}
    finally:
        await again.close()


# ----------------------------------------------------------------------------- vCard


def photo_of(presence: Element) -> str | None:
    return presence.findtext(f"{{{VCARD_UPDATE}}}x/{{{VCARD_UPDATE}}}photo")


async def test_a_vcard_photo_set_through_one_node_is_in_presence_sent_through_the_other(
    cluster: ClusterNodes,
) -> None:
    bob = await new_account(cluster.front, "av")
    alice = await new_account(cluster.front, "ava")
    b1 = await login(n(cluster, 1), bob, "n1")  # node 1 notes bob has no vCard
    a1 = await login(n(cluster, 1), alice, "n1")
    b0 = await login(n(cluster, 0), bob, "n0")
    try:
        await share_presence(b1, a1)  # alice sees bob's presence
        image = b"not really a png " + bytes(range(64))
        binval = base64.b64encode(image).decode()
        vcard = f"<vCard xmlns='{VCARD}'><PHOTO><TYPE>image/png</TYPE><BINVAL>{binval}</BINVAL></PHOTO></vCard>"
        ok(await b0.iq("set", vcard, to=None))
        expected = hashlib.sha1(image).hexdigest()

        async def node_1_adds_the_new_hash() -> bool:
            status = f"status-{next(_seq)}"
            b1.send(f"<presence><status>{status}</status></presence>")
            presence = await a1.expect(
                lambda el: el.tag == tag("presence") and el.findtext(tag("status")) == status, 10
            )
            return photo_of(presence) == expected

        await eventually(node_1_adds_the_new_hash, "node 1 puts the new photo hash in presence")
    finally:
        await close(b0, b1, a1)


# ----------------------------------------------------------------------------- PEP


def configure(node: str, fields: dict[str, str]) -> str:
    inner = f"<field var='FORM_TYPE' type='hidden'><value>{NODE_CONFIG}</value></field>"
    inner += "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return (
        f"<pubsub xmlns='{OWNER}'><configure node='{node}'>"
        f"<x xmlns='{DATA}' type='submit'>{inner}</x></configure></pubsub>"
    )


async def test_pep_across_nodes(cluster: ClusterNodes) -> None:
    owner_jid = await new_account(cluster.front, "pep")
    contact_jid = await new_account(cluster.front, "pepc")
    owner = await login(n(cluster, 0), owner_jid, "n0")
    contact = await login(n(cluster, 1), contact_jid, "n1")
    laptop: XmlClient | None = None
    try:
        await share_presence(owner, contact)
        first = fresh_node("urn:xmppd:test:first")
        assert published_id(await publish(owner, first, entry("v1"), item_id="v1")) == "v1"
        # The contact, on node 1, says it is interested: node 1 sends the last item
        # (and now holds the owner's node configurations).
        await announce(contact, client_features(first))
        last = await contact.expect(event_of(owner_jid, first), 20)
        assert event_items(last) == [("v1", "v1")]
        # A publish through node 0 reaches it.
        await publish(owner, first, entry("v2"), item_id="v2")
        assert event_items(await contact.expect(event_of(owner_jid, first), 20)) == [("v2", "v2")]

        # A node created through node 0 after node 1 read the owner's nodes: a new
        # resource on node 1 interested in it gets its last item.
        second = fresh_node("urn:xmppd:test:second")
        assert published_id(await publish(owner, second, entry("s1"), item_id="s1")) == "s1"
        laptop = await login(n(cluster, 1), contact_jid, "laptop")
        await announce(laptop, [*client_features(second), "urn:xmppd:test:laptop"])
        got_last = await laptop.expect(event_of(owner_jid, second), 20)
        assert event_items(got_last) == [("s1", "s1")]

        # A node closed through node 0 is closed when read through node 1.
        assert texts(await get_items(contact, owner_jid, first)) == [("v2", "v2")]
        reply = await owner.iq(
            "set", configure(first, {"pubsub#access_model": "whitelist"}), to=None
        )
        assert reply.get("type") == "result", error_of(reply)

        async def closed_on_node_1() -> bool:
            reply = await get_items(contact, owner_jid, first)
            return reply.get("type") == "error" and error_of(reply) == (
                "not-allowed",
                "closed-node",
            )

        await eventually(closed_on_node_1, "the whitelist node refused through node 1")
    finally:
        await close(owner, contact, *([laptop] if laptop is not None else []))


# ----------------------------------------------------------------------------- MAM


async def prefs_default(client: XmlClient) -> str:
    reply = ok(await client.iq("get", f"<prefs xmlns='{MAM}'/>", to=None))
    prefs = reply.find(f"{{{MAM}}}prefs")
    assert prefs is not None
    return prefs.get("default", "")


async def test_mam_preferences_set_through_one_node_apply_on_the_other(
    cluster: ClusterNodes,
) -> None:
    alice = await new_account(cluster.front, "mam")
    bob = await new_account(cluster.front, "mamb")
    a0 = await login(n(cluster, 0), alice, "n0")
    a1 = await login(n(cluster, 1), alice, "n1")
    b1 = await login(n(cluster, 1), bob, "n1")
    try:
        initial = await prefs_default(a1)  # node 1 holds alice's preferences now
        assert initial != "never"
        ok(await a0.iq("set", f"<prefs xmlns='{MAM}' default='never'/>", to=None))

        async def never_on_node_1() -> bool:
            return await prefs_default(a1) == "never"

        await eventually(never_on_node_1, "the new preferences read through node 1")
        b1.send(chat(alice, "not for the archive"))
        await a1.expect(message_with("not for the archive"), 10)

        ok(await a0.iq("set", f"<prefs xmlns='{MAM}' default='always'/>", to=None))

        async def always_on_node_1() -> bool:
            return await prefs_default(a1) == "always"

        await eventually(always_on_node_1, "the preferences changed back, through node 1")
        b1.send(chat(alice, "for the archive"))
        await a1.expect(message_with("for the archive"), 10)

        async def archived() -> bool:
            bodies = [i.message.findtext(tag("body")) for i in await everything(a0)]
            assert "not for the archive" not in bodies
            return "for the archive" in bodies

        await eventually(archived, "the second message archived")
    finally:
        await close(a0, a1, b1)
