"""XEP-0402: PEP Native Bookmarks end to end, on SQLite and PostgreSQL: the
``urn:xmpp:bookmarks:1#compat`` feature, XEP-0048 bookmarks stored in private XML
mirrored into the PEP node, PEP publishes and retracts mirrored into the private copy,
and the whitelist access model keeping others out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import pytest
from lxml import etree

from tests.support.e2e import new_account
from tests.support.pep import (
    DISCO_INFO,
    PUBSUB,
    close,
    error_of,
    get_items,
    login,
    owner_iq,
    publish,
    published_id,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient

BOOKMARKS: Final = "urn:xmpp:bookmarks:1"
LEGACY: Final = "storage:bookmarks"
PRIVATE: Final = "jabber:iq:private"
COMPAT: Final = f"{BOOKMARKS}#compat"
OPTIONS: Final = {
    "pubsub#persist_items": "true",
    "pubsub#max_items": "max",
    "pubsub#access_model": "whitelist",
}
LEGACY_SET: Final = (
    f"<storage xmlns='{LEGACY}'>"
    "<conference jid='council@muc.example' name='The Council' autojoin='true'>"
    "<nick>hag66</nick><password>secret</password></conference>"
    "<conference jid='lobby@muc.example' autojoin='false'/>"
    "<url name='Home' url='https://example.org/'/>"
    "</storage>"
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    modules = {**DEFAULT_TEST_MODULES, "pep": {}, "private": {}, "bookmarks": {}}
    tmp = tmp_path_factory.mktemp(f"xmppd-bookmarks-{request.param}")
    with running_server(tmp, backend=request.param, modules=modules) as srv:
        yield srv


# ----------------------------------------------------------------------------- helpers


def conferences_pep(reply: Element) -> dict[str, dict[str, str | None]]:
    """Room -> (name, autojoin, nick, password) of a bookmarks items result."""
    assert reply.get("type") == "result", etree.tostring(reply)
    found: dict[str, dict[str, str | None]] = {}
    for item in reply.iterfind(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item"):
        conf = item.find(f"{{{BOOKMARKS}}}conference")
        assert conf is not None, etree.tostring(item)
        found[item.get("id", "")] = {
            "name": conf.get("name"),
            "autojoin": conf.get("autojoin"),
            "nick": conf.findtext(f"{{{BOOKMARKS}}}nick"),
            "password": conf.findtext(f"{{{BOOKMARKS}}}password"),
        }
    return found


async def legacy_get(client: XmlClient) -> Element:
    """The ``<storage xmlns='storage:bookmarks'/>`` of the client's private storage."""
    reply = await client.iq(
        "get", f"<query xmlns='{PRIVATE}'><storage xmlns='{LEGACY}'/></query>", to=None, timeout=20
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    storage = reply.find(f"{{{PRIVATE}}}query/{{{LEGACY}}}storage")
    assert storage is not None, etree.tostring(reply)
    return storage


async def legacy_set(client: XmlClient, storage: str) -> None:
    reply = await client.iq(
        "set", f"<query xmlns='{PRIVATE}'>{storage}</query>", to=None, timeout=20
    )
    assert reply.get("type") == "result", etree.tostring(reply)


def conferences_legacy(storage: Element) -> dict[str, dict[str, str | None]]:
    return {
        conf.get("jid", ""): {
            "name": conf.get("name"),
            "autojoin": conf.get("autojoin"),
            "nick": conf.findtext(f"{{{LEGACY}}}nick"),
            "password": conf.findtext(f"{{{LEGACY}}}password"),
        }
        for conf in storage.iterfind(f"{{{LEGACY}}}conference")
    }


def conference(name: str, nick: str, *, autojoin: bool = True) -> str:
    flag = "true" if autojoin else "false"
    return (
        f"<conference xmlns='{BOOKMARKS}' name='{name}' autojoin='{flag}'><nick>{nick}</nick>"
        "</conference>"
    )


# ----------------------------------------------------------------------------- tests


async def test_account_advertises_compat(server: XmppdServer) -> None:
    jid = await new_account(server, "bm")
    client = await login(server, jid)
    try:
        reply = await client.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=jid, timeout=20)
        assert reply.get("type") == "result", etree.tostring(reply)
        features = {f.get("var") for f in reply.iter(f"{{{DISCO_INFO}}}feature")}
        assert COMPAT in features
        assert f"{BOOKMARKS}#compat-pep" not in features
    finally:
        await close(client)


async def test_legacy_set_is_mirrored_into_pep(server: XmppdServer) -> None:
    jid = await new_account(server, "bm")
    client = await login(server, jid)
    try:
        await legacy_set(client, LEGACY_SET)
        marks = conferences_pep(await get_items(client, None, BOOKMARKS))
        assert marks == {
            "council@muc.example": {
                "name": "The Council",
                "autojoin": "true",
                "nick": "hag66",
                "password": "secret",
            },
            "lobby@muc.example": {
                "name": None,
                "autojoin": "false",
                "nick": None,
                "password": None,
            },
        }
        config = await owner_iq(client, "get", f"<configure node='{BOOKMARKS}'/>")
        values = {
            f.get("var"): f.findtext("{jabber:x:data}value")
            for f in config.iter("{jabber:x:data}field")
        }
        assert values["pubsub#access_model"] == "whitelist"
        assert values["pubsub#max_items"] == "max"
        assert values["pubsub#persist_items"] in ("1", "true")

        # A later legacy set without the lobby retracts it; the council changes.
        await legacy_set(
            client,
            f"<storage xmlns='{LEGACY}'><conference jid='council@muc.example' "
            "name='Council' autojoin='false'><nick>hag66</nick></conference></storage>",
        )
        marks = conferences_pep(await get_items(client, None, BOOKMARKS))
        assert marks == {
            "council@muc.example": {
                "name": "Council",
                "autojoin": "false",
                "nick": "hag66",
                "password": None,
            }
        }
    finally:
        await close(client)


async def test_pep_publish_and_retract_update_the_legacy_copy(server: XmppdServer) -> None:
    jid = await new_account(server, "bm")
    client = await login(server, jid)
    try:
        # A url bookmark in the legacy copy survives PEP changes.
        await legacy_set(
            client,
            f"<storage xmlns='{LEGACY}'><url name='Home' url='https://x.example/'/></storage>",
        )
        reply = await publish(
            client,
            BOOKMARKS,
            conference("Orchard", "juliet"),
            item_id="orchard@muc.example",
            options=OPTIONS,
        )
        assert published_id(reply) == "orchard@muc.example"
        reply = await publish(
            client,
            BOOKMARKS,
            conference("Balcony", "romeo", autojoin=False),
            item_id="balcony@muc.example",
            options=OPTIONS,
        )
        assert published_id(reply) == "balcony@muc.example"

        storage = await legacy_get(client)
        assert conferences_legacy(storage) == {
            "orchard@muc.example": {
                "name": "Orchard",
                "autojoin": "true",
                "nick": "juliet",
                "password": None,
            },
            "balcony@muc.example": {
                "name": "Balcony",
                "autojoin": "false",
                "nick": "romeo",
                "password": None,
            },
        }
        assert [u.get("url") for u in storage.iterfind(f"{{{LEGACY}}}url")] == [
            "https://x.example/"
        ]

        reply = await client.iq(
            "set",
            f"<pubsub xmlns='{PUBSUB}'><retract node='{BOOKMARKS}' notify='true'>"
            "<item id='orchard@muc.example'/></retract></pubsub>",
            to=None,
            timeout=20,
        )
        assert reply.get("type") == "result", etree.tostring(reply)
        storage = await legacy_get(client)
        assert set(conferences_legacy(storage)) == {"balcony@muc.example"}
        assert len(list(storage.iterfind(f"{{{LEGACY}}}url"))) == 1
    finally:
        await close(client)


async def test_failed_publish_leaves_the_legacy_copy(server: XmppdServer) -> None:
    jid = await new_account(server, "bm")
    client = await login(server, jid)
    try:
        await legacy_set(client, LEGACY_SET)
        # The node is whitelist: a publish that requires 'open' fails its precondition.
        reply = await publish(
            client,
            BOOKMARKS,
            conference("Other", "x"),
            item_id="other@muc.example",
            options={**OPTIONS, "pubsub#access_model": "open"},
        )
        assert error_of(reply) == ("conflict", "precondition-not-met")
        storage = await legacy_get(client)
        assert set(conferences_legacy(storage)) == {"council@muc.example", "lobby@muc.example"}
    finally:
        await close(client)


async def test_others_cannot_read_the_bookmarks(server: XmppdServer) -> None:
    owner_jid = await new_account(server, "bm")
    other_jid = await new_account(server, "bm")
    owner = await login(server, owner_jid)
    other = await login(server, other_jid)
    try:
        await legacy_set(owner, LEGACY_SET)
        assert len(conferences_pep(await get_items(owner, None, BOOKMARKS))) == 2
        reply = await get_items(other, owner_jid, BOOKMARKS)
        assert error_of(reply) == ("not-allowed", "closed-node")
        reply = await other.iq(
            "get",
            f"<query xmlns='{PRIVATE}'><storage xmlns='{LEGACY}'/></query>",
            to=owner_jid,
            timeout=20,
        )
        assert reply.get("type") == "error"
        # Nor may another account write the owner's bookmarks through either copy.
        reply = await publish(
            other, BOOKMARKS, conference("Evil", "x"), item_id="evil@muc.example", to=owner_jid
        )
        assert error_of(reply)[0] == "forbidden"
        marks = conferences_pep(await get_items(owner, None, BOOKMARKS))
        assert set(marks) == {"council@muc.example", "lobby@muc.example"}
    finally:
        await close(owner, other)
