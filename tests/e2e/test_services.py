"""The server's own services end to end, asked by slixmpp, aioxmpp and a raw stream:
XEP-0199 ping, XEP-0092 version, XEP-0202 time, XEP-0030 disco, XEP-0115 caps."""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib.metadata
import re
from collections.abc import Iterator

import aioxmpp
import aioxmpp.entitycaps.caps115
import aioxmpp.ping
import aioxmpp.version
import pytest

from tests.support.aio import Aio
from tests.support.e2e import PASSWORD, check_server_survived, new_account, online
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer
from tests.support.xmlclient import XmlClient, error_condition

DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
CAPS = "http://jabber.org/protocol/caps"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# What each module of the test configuration must advertise in the server's disco#info.
SERVER_FEATURES: dict[str, set[str]] = {
    "roster": set(),  # an account-level feature (and stream features)
    "presence": set(),
    "disco": {DISCO_INFO, DISCO_ITEMS},
    "ping": {"urn:xmpp:ping"},
    "version": {"jabber:iq:version"},
    "time": {"urn:xmpp:time"},
    "last": {"jabber:iq:last"},
    "register": {"jabber:iq:register"},
    "muc": set(),  # a service on its own domain (conference.<host>), in disco#items
}


@pytest.fixture(scope="module", autouse=True)
def _server_survives(sqlite_server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(sqlite_server)


def caps_ver(identities: list[tuple[str, str, str, str]], features: list[str]) -> str:
    """XEP-0115 §5.1 verification string, SHA-1, base64 (no extended forms)."""
    text = "".join(f"{c}/{t}/{lang}/{n}<" for c, t, lang, n in sorted(identities))
    text += "".join(f"{f}<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def test_caps_ver_helper_matches_the_xep_example() -> None:
    """XEP-0115 §5.2 simple example, so the helper below is itself checked."""
    features = [
        "http://jabber.org/protocol/caps",
        "http://jabber.org/protocol/disco#info",
        "http://jabber.org/protocol/disco#items",
        "http://jabber.org/protocol/muc",
    ]
    ver = caps_ver([("client", "pc", "", "Exodus 0.9.1")], features)
    assert ver == "QgayPKawpkPSDYmwT/WM94uAlu0="


async def test_ping(sqlite_server: XmppdServer) -> None:
    jid = await new_account(sqlite_server, "ping")
    other = await new_account(sqlite_server, "pong")
    slix = await online(sqlite_server, jid)
    try:
        rtt = await slix.xmpp.plugin["xep_0199"].ping(jid=sqlite_server.domain, timeout=10)
        assert rtt >= 0
        # The server answers for an account's bare JID (RFC 6120 §10.5.4), ours or not,
        assert await slix.xmpp.plugin["xep_0199"].ping(jid=jid, timeout=10) >= 0
        assert await slix.xmpp.plugin["xep_0199"].ping(jid=other, timeout=10) >= 0
    finally:
        await slix.stop()
    raw = await XmlClient.login(sqlite_server, jid, PASSWORD)
    try:
        pong = await raw.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=sqlite_server.domain)
        assert (pong.get("type"), pong.get("from"), len(pong)) == (
            "result",
            sqlite_server.domain,
            0,
        )
        # but not for an account that does not exist.
        ghost = await raw.iq(
            "get", "<ping xmlns='urn:xmpp:ping'/>", to=f"no-such-user@{sqlite_server.domain}"
        )
        assert error_condition(ghost) == "service-unavailable"
    finally:
        await raw.close()
    async with Aio(sqlite_server, jid, PASSWORD) as aio:
        await aioxmpp.ping.ping(aio.client, aioxmpp.JID.fromstr(sqlite_server.domain))


async def test_software_version(sqlite_server: XmppdServer) -> None:
    jid = await new_account(sqlite_server, "version")
    expected = importlib.metadata.version("xmppd")
    slix = await online(sqlite_server, jid)
    try:
        result = await slix.xmpp.plugin["xep_0092"].get_version(sqlite_server.domain)
        version = result["software_version"]
        assert (version["name"], version["version"]) == ("xmppd", expected)
        assert not version["os"], "the OS is not disclosed unless configured"
    finally:
        await slix.stop()
    async with Aio(sqlite_server, jid, PASSWORD) as aio:
        info = await aioxmpp.version.query_version(
            aio.client.stream, aioxmpp.JID.fromstr(sqlite_server.domain)
        )
        assert (info.name, info.version) == ("xmppd", expected)


async def test_entity_time(sqlite_server: XmppdServer) -> None:
    jid = await new_account(sqlite_server, "time")
    raw = await XmlClient.login(sqlite_server, jid, PASSWORD)
    try:
        before = datetime.datetime.now(datetime.UTC)
        reply = await raw.iq("get", "<time xmlns='urn:xmpp:time'/>", to=sqlite_server.domain)
        after = datetime.datetime.now(datetime.UTC)
    finally:
        await raw.close()
    tzo = reply.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo")
    utc = reply.findtext("{urn:xmpp:time}time/{urn:xmpp:time}utc")
    assert tzo is not None and re.fullmatch(r"[+-]\d\d:\d\d|Z", tzo)
    # XEP-0082 DateTime in UTC: 2006-12-19T17:58:35Z, optionally with fractions.
    assert utc is not None and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", utc)
    stamp = datetime.datetime.fromisoformat(utc.replace("Z", "+00:00"))
    slack = datetime.timedelta(seconds=1)
    assert before - slack <= stamp <= after + slack

    slix = await online(sqlite_server, jid)
    try:
        result = await slix.xmpp.plugin["xep_0202"].get_entity_time(sqlite_server.domain)
        # Read the XML: slixmpp 1.17's parser appends a second 'Z' to the UTC time.
        assert result.xml.findtext("{urn:xmpp:time}time/{urn:xmpp:time}tzo") == tzo
    finally:
        await slix.stop()


async def test_server_disco_info(sqlite_server: XmppdServer) -> None:
    assert set(SERVER_FEATURES) == set(DEFAULT_TEST_MODULES), "list every test module above"
    expected = set().union(*SERVER_FEATURES.values())
    jid = await new_account(sqlite_server, "disco")
    slix = await online(sqlite_server, jid)
    try:
        info = (await slix.xmpp.plugin["xep_0030"].get_info(jid=sqlite_server.domain))["disco_info"]
        assert ("server", "im") in {(c, t) for c, t, _, _ in info["identities"]}
        features = list(info["features"])
        assert expected <= set(features), expected - set(features)
        assert len(features) == len(set(features))
    finally:
        await slix.stop()
    async with Aio(sqlite_server, jid, PASSWORD) as aio:
        disco = aio.client.summon(aioxmpp.DiscoClient)
        query = await disco.query_info(aioxmpp.JID.fromstr(sqlite_server.domain))
        assert expected <= set(query.features)
        assert ("server", "im") in {(i.category, i.type_) for i in query.identities}


async def test_account_disco(sqlite_server: XmppdServer) -> None:
    jid = await new_account(sqlite_server, "acct")
    other = await new_account(sqlite_server, "other")
    raw = await XmlClient.login(sqlite_server, jid, PASSWORD)
    info_query = f"<query xmlns='{DISCO_INFO}'/>"
    try:
        own = await raw.iq("get", info_query, to=jid)
        theirs = await raw.iq("get", info_query, to=other)
        ghost = await raw.iq("get", info_query, to=f"ghost@{sqlite_server.domain}")
        items = await raw.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=jid)
        server_items = await raw.iq(
            "get", f"<query xmlns='{DISCO_ITEMS}'/>", to=sqlite_server.domain
        )
        bad_node = await raw.iq(
            "get",
            f"<query xmlns='{DISCO_INFO}' node='urn:example:nothing'/>",
            to=sqlite_server.domain,
        )
    finally:
        await raw.close()
    for reply in (own, theirs):
        assert reply.get("type") == "result"
        identities = {
            (i.get("category"), i.get("type"))
            for i in reply.iterfind(f"{{{DISCO_INFO}}}query/{{{DISCO_INFO}}}identity")
        }
        assert identities == {("account", "registered")}
        features = {
            f.get("var") for f in reply.iterfind(f"{{{DISCO_INFO}}}query/{{{DISCO_INFO}}}feature")
        }
        assert {DISCO_INFO, "jabber:iq:roster"} <= features
    assert error_condition(ghost) == "service-unavailable"
    for reply in (items, server_items):
        assert reply.get("type") == "result"
        assert reply.find(f"{{{DISCO_ITEMS}}}query") is not None
    assert error_condition(bad_node) == "item-not-found"


async def test_caps_in_stream_features_match_disco_info(sqlite_server: XmppdServer) -> None:
    jid = await new_account(sqlite_server, "caps")
    raw = await XmlClient.login(sqlite_server, jid, PASSWORD)
    try:
        assert raw.features is not None
        caps = raw.features.find(f"{{{CAPS}}}c")
        assert caps is not None, "no XEP-0115 caps in the stream features after login"
        assert caps.get("hash") == "sha-1"
        node, ver = caps.get("node"), caps.get("ver")
        assert node and ver
        reply = await raw.iq(
            "get", f"<query xmlns='{DISCO_INFO}' node='{node}#{ver}'/>", to=sqlite_server.domain
        )
    finally:
        await raw.close()
    query = reply.find(f"{{{DISCO_INFO}}}query")
    assert query is not None
    assert query.get("node") == f"{node}#{ver}"
    identities = [
        (i.get("category", ""), i.get("type", ""), i.get(XML_LANG, ""), i.get("name", ""))
        for i in query.iterfind(f"{{{DISCO_INFO}}}identity")
    ]
    features = [f.get("var", "") for f in query.iterfind(f"{{{DISCO_INFO}}}feature")]
    assert query.find("{jabber:x:data}x") is None
    assert caps_ver(identities, features) == ver
    # aioxmpp's own XEP-0115 implementation agrees.
    async with Aio(sqlite_server, jid, PASSWORD) as aio:
        disco = aio.client.summon(aioxmpp.DiscoClient)
        info = await disco.query_info(
            aioxmpp.JID.fromstr(sqlite_server.domain), node=f"{node}#{ver}"
        )
        assert aioxmpp.entitycaps.caps115.hash_query(info, "sha1") == ver
