"""Interop with a real Prosody (Debian ``prosody`` 0.12): an xmppd server and a Prosody
server on loopback, each pinned to the other's s2s port, each with a self-signed (or
untrusted) certificate, so they authenticate each other with dialback (XEP-0220).

Users on each side exchange messages and subscriptions both ways, ping and disco the
other server, and join rooms across servers (Prosody's MUC component and xmppd's
``conference.`` service)."""

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
from tests.support.dnsserver import threaded_dns_server
from tests.support.e2e import PASSWORD, befriend, new_account, online, take
from tests.support.muc import MUC, create_room, groupchat, join, next_groupchat
from tests.support.prosody import ProsodyServer, require_prosody, running_prosody
from tests.support.s2s import s2s_extra, wait_port
from tests.support.server import XmppdServer, free_port, running_server
from tests.support.testca import TestCA, install_certificate
from tests.support.xmlclient import XmlClient

XMPPD_DOMAIN = "xmppd.example"
PING = "urn:xmpp:ping"

_names = itertools.count()


@dataclass
class Interop:
    xmppd: XmppdServer
    prosody: ProsodyServer


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Interop]:
    require_prosody()
    tmp: Path = tmp_path_factory.mktemp("prosody-interop")
    xmppd_s2s = free_port()
    here = ("127.0.0.1", xmppd_s2s)
    with running_prosody(
        tmp / "prosody", pins={XMPPD_DOMAIN: here, f"conference.{XMPPD_DOMAIN}": here}
    ) as prosody:
        there = f"127.0.0.1:{prosody.s2s_port}"
        extra = s2s_extra(xmppd_s2s, {prosody.domain: there, prosody.muc_domain: there})
        with running_server(tmp / "xmppd", domain=XMPPD_DOMAIN, extra=extra) as xmppd:
            wait_port(xmppd_s2s)
            yield Interop(xmppd, prosody)


async def prosody_user(prosody: ProsodyServer) -> Slix:
    jid = await asyncio.to_thread(prosody.register, f"carol{next(_names)}", PASSWORD)
    return await online(prosody, jid)


async def xmppd_user(xmppd: XmppdServer) -> Slix:
    return await online(xmppd, await new_account(xmppd, "alice"))


async def test_messages_cross_both_ways(servers: Interop) -> None:
    alice = await xmppd_user(servers.xmppd)
    carol = await prosody_user(servers.prosody)
    try:
        alice.xmpp.send_message(mto=carol.jid, mbody="hello prosody", mtype="chat")
        got = await take(carol.messages, lambda m: m["body"] == "hello prosody", timeout=20)
        assert str(got["from"]) == alice.jid
        carol.xmpp.send_message(mto=alice.jid, mbody="hello xmppd", mtype="chat")
        back = await take(alice.messages, lambda m: m["body"] == "hello xmppd", timeout=20)
        assert str(back["from"]) == carol.jid
        for n in range(5):
            alice.xmpp.send_message(mto=carol.jid, mbody=f"n{n}", mtype="chat")
        for n in range(5):
            await take(carol.messages, lambda m, n=n: m["body"] == f"n{n}")  # type: ignore[misc]
    finally:
        await alice.stop()
        await carol.stop()
    # Neither side trusts the other's certificate: dialback, in both directions.
    log = servers.xmppd.log_text()
    assert f"s2s-out {XMPPD_DOMAIN}→{servers.prosody.domain}" in log
    assert f"{servers.prosody.domain} authenticated for {XMPPD_DOMAIN} (dialback)" in log
    assert "authenticated (dialback; certificate: certificate chain does not validate" in log


async def test_presence_subscriptions_both_ways(servers: Interop) -> None:
    alice = await xmppd_user(servers.xmppd)
    carol = await prosody_user(servers.prosody)
    try:
        await befriend(alice, carol)  # each asks, the other approves, presence flows
        carol.xmpp.send_presence(pshow="away")
        await take(
            alice.presences,
            lambda p: str(p["from"]) == carol.jid and p["show"] == "away",
            timeout=20,
        )
        alice.xmpp.send_presence(pshow="dnd")
        await take(
            carol.presences,
            lambda p: str(p["from"]) == alice.jid and p["show"] == "dnd",
            timeout=20,
        )
    finally:
        await alice.stop()
        await carol.stop()


async def test_remote_ping_and_disco_both_ways(servers: Interop) -> None:
    alice = await xmppd_user(servers.xmppd)
    carol = await prosody_user(servers.prosody)
    try:
        await alice.xmpp.plugin["xep_0199"].send_ping(servers.prosody.domain, timeout=20)
        info = await alice.xmpp.plugin["xep_0030"].get_info(jid=servers.prosody.domain, timeout=20)
        assert PING in info["disco_info"]["features"]
        await carol.xmpp.plugin["xep_0199"].send_ping(XMPPD_DOMAIN, timeout=20)
        info = await carol.xmpp.plugin["xep_0030"].get_info(jid=XMPPD_DOMAIN, timeout=20)
        assert PING in info["disco_info"]["features"]
        # A user's full JID on the other server answers too (the client's own ping).
        await carol.xmpp.plugin["xep_0199"].send_ping(alice.jid, timeout=20)
    finally:
        await alice.stop()
        await carol.stop()


def join_from_slix(client: Slix, room: str, nick: str) -> None:
    presence = client.xmpp.make_presence(pto=f"{room}/{nick}")
    presence.append(ET.Element(f"{{{MUC}}}x"))
    presence.send()


async def test_an_xmppd_user_joins_a_room_on_prosody(servers: Interop) -> None:
    room = f"tea{next(_names)}@{servers.prosody.muc_domain}"
    carol = await prosody_user(servers.prosody)
    alice_jid = await new_account(servers.xmppd, "alice")
    try:
        join_from_slix(carol, room, "carol")
        await take(carol.presences, lambda p: str(p["from"]) == f"{room}/carol", timeout=20)
        async with await XmlClient.login(servers.xmppd, alice_jid, PASSWORD, resource="r") as alice:
            joined = await join(alice, room, "alice")
            assert "carol" in joined.nicks
            await take(carol.presences, lambda p: str(p["from"]) == f"{room}/alice", timeout=20)
            await groupchat(alice, room, "hi from xmppd")
            got = await take(carol.messages, lambda m: m["body"] == "hi from xmppd", timeout=20)
            assert str(got["from"]) == f"{room}/alice" and got["type"] == "groupchat"
            await next_groupchat(alice, room, "hi from xmppd")  # the room's echo
            carol.xmpp.send_message(mto=room, mbody="hi from prosody", mtype="groupchat")
            echo = await next_groupchat(alice, room, "hi from prosody")
            assert echo.get("from") == f"{room}/carol"
    finally:
        await carol.stop()


async def test_a_prosody_user_joins_a_room_on_xmppd(servers: Interop) -> None:
    owner, room, _ = await create_room(servers.xmppd)
    carol = await prosody_user(servers.prosody)
    try:
        join_from_slix(carol, room, "carol")
        await take(carol.presences, lambda p: str(p["from"]) == f"{room}/carol", timeout=20)
        await groupchat(owner, room, "welcome, remote")
        got = await take(carol.messages, lambda m: m["body"] == "welcome, remote", timeout=20)
        assert str(got["from"]) == f"{room}/owner"
        carol.xmpp.send_message(mto=room, mbody="thanks, local", mtype="groupchat")
        said = await next_groupchat(owner, room, "thanks, local")
        assert said.get("from") == f"{room}/carol"
        await take(carol.messages, lambda m: m["body"] == "thanks, local")  # the echo
        # The room owner's own domain writes to carol too.
        owner.send(f"<message to='{carol.jid}' type='chat'><body>direct</body></message>")
        await take(carol.messages, lambda m: m["body"] == "direct", timeout=20)
    finally:
        await carol.stop()
        await owner.close()
    # conference.xmppd.example and xmppd.example share the one link to Prosody (whichever
    # came first opened it; the other authenticated on it with a second dialback).
    opened = re.findall(
        rf"s2s-out (\S+)→{re.escape(servers.prosody.domain)} \S+: authenticated",
        servers.xmppd.log_text(),
    )
    assert len(opened) == 1, opened


async def test_one_connection_carries_both_directions_with_prosody_bidi(tmp_path: Path) -> None:
    """Prosody with ``mod_s2s_bidi`` offers XEP-0288: xmppd asks for it on its
    outgoing stream, and Prosody's users' stanzas come back over that connection.
    The servers trust each other's certificates (SASL EXTERNAL), so no dialback
    verification opens a second connection."""
    require_prosody()
    ca = TestCA("xmppd's CA (trusted by Prosody)")
    ca_file = ca.write_ca(tmp_path / "xmppd-ca.crt")
    install_certificate(ca, tmp_path / "xmppd" / "data", XMPPD_DOMAIN, dns=[XMPPD_DOMAIN])
    xmppd_s2s = free_port()
    here = ("127.0.0.1", xmppd_s2s)
    with running_prosody(
        tmp_path / "prosody", pins={XMPPD_DOMAIN: here}, bidi=True, trust_ca=ca_file
    ) as prosody:
        there = f"127.0.0.1:{prosody.s2s_port}"
        extra = s2s_extra(xmppd_s2s, {prosody.domain: there}, f'ca_file = "{prosody.cafile}"\n')
        with running_server(tmp_path / "xmppd", domain=XMPPD_DOMAIN, extra=extra) as xmppd:
            wait_port(xmppd_s2s)
            alice = await xmppd_user(xmppd)
            carol = await prosody_user(prosody)
            try:
                alice.xmpp.send_message(mto=carol.jid, mbody="one wire", mtype="chat")
                await take(carol.messages, lambda m: m["body"] == "one wire", timeout=20)
                carol.xmpp.send_message(mto=alice.jid, mbody="both ways", mtype="chat")
                back = await take(alice.messages, lambda m: m["body"] == "both ways", timeout=20)
                assert str(back["from"]) == carol.jid
                await carol.xmpp.plugin["xep_0199"].send_ping(XMPPD_DOMAIN, timeout=20)
            finally:
                await alice.stop()
                await carol.stop()
            log = xmppd.log_text()
    assert re.search(
        rf"s2s-out {XMPPD_DOMAIN}→{re.escape(prosody.domain)} \S+: authenticated "
        r"\(EXTERNAL; certificate: valid\); bidirectional \(XEP-0288\)",
        log,
    ), log[-3000:]
    # Prosody never opened a connection of its own to xmppd: one TCP connection.
    assert "s2s-in" not in log, log[-3000:]


def test_check_federation_explains_four_different_failures(tmp_path: Path) -> None:
    """``xmppd check-federation`` through a test DNS server: Prosody that is reachable, an
    SRV record pointing at a closed port, a host whose certificate does not name it (the
    policy requires certificates for it) and a domain without any DNS record."""
    dead = free_port()
    with running_prosody(tmp_path / "prosody", pins={}, extra_hosts=("wrongname.example",)) as p:
        zone = {
            ("_xmpp-server._tcp.prosody.example", "SRV"): [f"0 5 {p.s2s_port} xmpp.example."],
            ("_xmpp-server._tcp.wrongname.example", "SRV"): [f"0 5 {p.s2s_port} xmpp.example."],
            ("_xmpp-server._tcp.down.example", "SRV"): [f"0 5 {dead} xmpp.example."],
            ("xmpp.example", "A"): ["127.0.0.1"],
        }
        with threaded_dns_server(zone) as (dns_port, answers):
            extra = (
                "[s2s]\n"
                f'resolver = "127.0.0.1:{dns_port}"\n'
                'dns_timeout = "3s"\n'
                f'ca_file = "{p.cafile}"\n'
                'policies = { "wrongname.example" = "certificates" }\n'
            )
            with running_server(tmp_path / "xmppd", domain=XMPPD_DOMAIN, extra=extra) as xmppd:
                runs = {
                    d: xmppd.cli("check-federation", d)
                    for d in ("prosody.example", "down.example", "wrongname.example", "nx.example")
                }
        out = {d: r.stdout + r.stderr for d, r in runs.items()}
        assert runs["prosody.example"].returncode == 0, out["prosody.example"]
        good = out["prosody.example"]
        assert f"SRV _xmpp-server._tcp.prosody.example: xmpp.example:{p.s2s_port}" in good
        assert f"trying 127.0.0.1:{p.s2s_port} (STARTTLS" in good
        assert "certificate: valid" in good
        assert "would authenticate with" in good
        assert "RESULT: federation can work" in good

        assert runs["down.example"].returncode == 1
        assert f"FAIL connect: 127.0.0.1:{dead} refused the connection" in out["down.example"]
        assert "certificate" not in out["down.example"]

        assert runs["wrongname.example"].returncode == 1, out["wrongname.example"]
        wrong = out["wrongname.example"]
        assert "certificate names: prosody.example" in wrong
        assert (
            "FAIL certificate: the policy for wrongname.example requires a valid certificate "
            "and certificate is not for wrongname.example (it names: prosody.example"
        ) in wrong

        assert runs["nx.example"].returncode == 1
        missing = out["nx.example"]
        assert "DNS: SRV _xmpp-server._tcp.nx.example: none" in missing
        assert "FAIL DNS: no address found for nx.example (SRV, AAAA and A)" in missing
        assert "trying" not in missing
        assert ("_xmpp-server._tcp.nx.example", "SRV") in answers.queries
        # four different explanations
        fails = [
            next(line for line in o.splitlines() if "FAIL" in line)
            for d, o in out.items()
            if d != "prosody.example"
        ]
        assert len({f.split("] ", 1)[1].split(":")[0] for f in fails}) == 3
