"""Interop with a real ejabberd (Debian ``ejabberd`` 23.01): an xmppd server and an
ejabberd server on loopback. xmppd pins ejabberd's domains to its s2s port; ejabberd
finds xmppd's through SRV records of a test DNS server its ``inetrc`` points to. Each
side's certificate is untrusted by the other, so they authenticate with dialback
(XEP-0220) both ways; ejabberd 23.01 has no XEP-0288, so each direction has its own
connection.

Users on each side exchange messages and subscriptions both ways, see each other's
presence, ping and disco the other server, and join rooms across servers (ejabberd's
``mod_muc`` and xmppd's ``conference.`` service)."""

from __future__ import annotations

import asyncio
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.clients import Slix
from tests.support.e2e import PASSWORD, befriend, new_account, online, take
from tests.support.ejabberd import EjabberdServer, require_ejabberd, running_ejabberd
from tests.support.muc import MUC, create_room, groupchat, join, next_groupchat
from tests.support.s2s import s2s_extra, wait_port
from tests.support.server import XmppdServer, free_port, running_server
from tests.support.xmlclient import XmlClient

XMPPD_DOMAIN = "xmppd.example"
PING = "urn:xmpp:ping"

_names = itertools.count()


@dataclass
class Interop:
    xmppd: XmppdServer
    ejabberd: EjabberdServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interop]:
    require_ejabberd()
    tmp: Path = tmp_path_factory.mktemp("ejabberd-interop")
    xmppd_s2s = free_port()
    with running_ejabberd(
        keep_logs=tmp / "ejabberd",
        remote_s2s={XMPPD_DOMAIN: xmppd_s2s, f"conference.{XMPPD_DOMAIN}": xmppd_s2s},
    ) as ejabberd:
        there = f"{ejabberd.address}:{ejabberd.s2s_port}"
        extra = s2s_extra(xmppd_s2s, {ejabberd.domain: there, ejabberd.muc_domain: there})
        with running_server(tmp / "xmppd", domain=XMPPD_DOMAIN, extra=extra) as xmppd:
            wait_port(xmppd_s2s)
            yield Interop(xmppd, ejabberd)


async def ejabberd_user(ejabberd: EjabberdServer) -> Slix:
    jid = await asyncio.to_thread(ejabberd.register, f"dave{next(_names)}", PASSWORD)
    return await online(ejabberd, jid)


async def xmppd_user(xmppd: XmppdServer) -> Slix:
    return await online(xmppd, await new_account(xmppd, "alice"))


async def test_messages_cross_both_ways(servers: Interop) -> None:
    alice = await xmppd_user(servers.xmppd)
    dave = await ejabberd_user(servers.ejabberd)
    try:
        alice.xmpp.send_message(mto=dave.jid, mbody="hello ejabberd", mtype="chat")
        got = await take(dave.messages, lambda m: m["body"] == "hello ejabberd", timeout=30)
        assert str(got["from"]) == alice.jid
        dave.xmpp.send_message(mto=alice.jid, mbody="hello xmppd", mtype="chat")
        back = await take(alice.messages, lambda m: m["body"] == "hello xmppd", timeout=30)
        assert str(back["from"]) == dave.jid
        for n in range(5):
            alice.xmpp.send_message(mto=dave.jid, mbody=f"n{n}", mtype="chat")
        for n in range(5):
            await take(dave.messages, lambda m, n=n: m["body"] == f"n{n}")
    finally:
        await alice.stop()
        await dave.stop()
    # Neither side trusts the other's certificate: dialback, in both directions.
    log = servers.xmppd.log_text()
    assert f"{servers.ejabberd.domain} authenticated for {XMPPD_DOMAIN} (dialback)" in log
    assert (
        f"s2s-out {XMPPD_DOMAIN}→{servers.ejabberd.domain} ({servers.ejabberd.address}:"
        f"{servers.ejabberd.s2s_port}): authenticated (dialback; certificate: "
        "certificate chain does not validate"
    ) in log
    # ejabberd 23.01 neither offers XEP-0288 nor asks for it on its stream to us: each
    # direction has its own connection (the clean fallback).
    assert "bidirectional" not in log
    assert f"{servers.ejabberd.domain} authenticated for {XMPPD_DOMAIN} (dialback)" in log


async def test_presence_subscriptions_both_ways(servers: Interop) -> None:
    alice = await xmppd_user(servers.xmppd)
    dave = await ejabberd_user(servers.ejabberd)
    try:
        await befriend(alice, dave)  # each asks, the other approves, presence flows
        dave.xmpp.send_presence(pshow="away")
        await take(
            alice.presences,
            lambda p: str(p["from"]) == dave.jid and p["show"] == "away",
            timeout=30,
        )
        alice.xmpp.send_presence(pshow="dnd")
        await take(
            dave.presences,
            lambda p: str(p["from"]) == alice.jid and p["show"] == "dnd",
            timeout=30,
        )
        roster = await asyncio.to_thread(
            servers.ejabberd.ctl, "get_roster", dave.jid.split("@")[0], servers.ejabberd.domain
        )
        alice_bare = alice.jid.split("/")[0]
        assert re.search(rf"^{re.escape(alice_bare)}\t.*\tboth\t", roster, re.M), roster
    finally:
        await alice.stop()
        await dave.stop()


async def test_remote_ping_and_disco_both_ways(servers: Interop) -> None:
    alice = await xmppd_user(servers.xmppd)
    dave = await ejabberd_user(servers.ejabberd)
    try:
        await alice.xmpp.plugin["xep_0199"].send_ping(servers.ejabberd.domain, timeout=30)
        info = await alice.xmpp.plugin["xep_0030"].get_info(jid=servers.ejabberd.domain, timeout=30)
        assert PING in info["disco_info"]["features"]
        items = await alice.xmpp.plugin["xep_0030"].get_items(
            jid=servers.ejabberd.domain, timeout=30
        )
        assert servers.ejabberd.muc_domain in {i[0] for i in items["disco_items"]["items"]}
        await dave.xmpp.plugin["xep_0199"].send_ping(XMPPD_DOMAIN, timeout=30)
        info = await dave.xmpp.plugin["xep_0030"].get_info(jid=XMPPD_DOMAIN, timeout=30)
        assert PING in info["disco_info"]["features"]
        await dave.xmpp.plugin["xep_0199"].send_ping(alice.jid, timeout=30)
    finally:
        await alice.stop()
        await dave.stop()


def join_from_slix(client: Slix, room: str, nick: str) -> None:
    presence = client.xmpp.make_presence(pto=f"{room}/{nick}")
    presence.append(ET.Element(f"{{{MUC}}}x"))
    presence.send()


async def test_an_xmppd_user_joins_a_room_on_ejabberd(servers: Interop) -> None:
    room = f"tea{next(_names)}@{servers.ejabberd.muc_domain}"
    dave = await ejabberd_user(servers.ejabberd)
    alice_jid = await new_account(servers.xmppd, "alice")
    try:
        join_from_slix(dave, room, "dave")
        await take(dave.presences, lambda p: str(p["from"]) == f"{room}/dave", timeout=30)
        async with await XmlClient.login(servers.xmppd, alice_jid, PASSWORD, resource="r") as alice:
            joined = await join(alice, room, "alice")
            assert "dave" in joined.nicks
            await take(dave.presences, lambda p: str(p["from"]) == f"{room}/alice", timeout=30)
            await groupchat(alice, room, "hi from xmppd")
            got = await take(dave.messages, lambda m: m["body"] == "hi from xmppd", timeout=30)
            assert str(got["from"]) == f"{room}/alice" and got["type"] == "groupchat"
            await next_groupchat(alice, room, "hi from xmppd")  # the room's echo
            dave.xmpp.send_message(mto=room, mbody="hi from ejabberd", mtype="groupchat")
            echo = await next_groupchat(alice, room, "hi from ejabberd")
            assert echo.get("from") == f"{room}/dave"
    finally:
        await dave.stop()


async def test_an_ejabberd_user_joins_a_room_on_xmppd(servers: Interop) -> None:
    owner, room, _ = await create_room(servers.xmppd)
    dave = await ejabberd_user(servers.ejabberd)
    try:
        join_from_slix(dave, room, "dave")
        await take(dave.presences, lambda p: str(p["from"]) == f"{room}/dave", timeout=30)
        await groupchat(owner, room, "welcome, remote")
        got = await take(dave.messages, lambda m: m["body"] == "welcome, remote", timeout=30)
        assert str(got["from"]) == f"{room}/owner"
        dave.xmpp.send_message(mto=room, mbody="thanks, local", mtype="groupchat")
        said = await next_groupchat(owner, room, "thanks, local")
        assert said.get("from") == f"{room}/dave"
        await take(dave.messages, lambda m: m["body"] == "thanks, local")  # the echo
    finally:
        await dave.stop()
        await owner.close()
    # ejabberd reached conference.xmppd.example through its SRV record (the test DNS).
    assert re.search(
        rf"{re.escape(servers.ejabberd.domain)} authenticated for "
        rf"conference\.{re.escape(XMPPD_DOMAIN)} \(dialback\)",
        servers.xmppd.log_text(),
    )
