"""Federation between two xmppd servers on loopback (RFC 6120 s2s, XEP-0220 dialback):
each server's users reach the other's, both ways, over one link per remote domain."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.e2e import PASSWORD, new_account
from tests.support.s2s import Federated, federated_pair
from tests.support.server import free_port
from tests.support.xmlclient import Element, XmlClient, error_condition, tag

PING = "urn:xmpp:ping"
DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federated]:
    tmp: Path = tmp_path_factory.mktemp("federation")
    dead = free_port()  # nothing listens there: a remote that is down
    with federated_pair(tmp, a_pins={"down.example": f"127.0.0.1:{dead}"}) as federated:
        yield federated


def body_is(body: str) -> object:
    return lambda el: el.tag == tag("message") and el.findtext(tag("body")) == body


async def test_messages_cross_both_ways(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    async with (
        await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        alice.send(f"<message to='{bob_jid}/r' type='chat'><body>hi bob</body></message>")
        got: Element = await bob.expect(body_is("hi bob"))  # type: ignore[arg-type]
        assert got.get("from") == f"{alice_jid}/r"
        bob.send(f"<message to='{alice_jid}/r' type='chat'><body>hi alice</body></message>")
        back: Element = await alice.expect(body_is("hi alice"))  # type: ignore[arg-type]
        assert back.get("from") == f"{bob_jid}/r"
        # More traffic reuses the link: still delivered, in order.
        for n in range(5):
            alice.send(f"<message to='{bob_jid}/r' type='chat'><body>n{n}</body></message>")
        for n in range(5):
            await bob.expect(body_is(f"n{n}"))  # type: ignore[arg-type]


async def test_remote_ping_and_disco(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    async with await XmlClient.login(pair.a, alice_jid, PASSWORD) as alice:
        pong = await alice.iq("get", f"<ping xmlns='{PING}'/>", to=pair.b.domain)
        assert pong.get("type") == "result" and pong.get("from") == pair.b.domain
        info = await alice.iq("get", f"<query xmlns='{DISCO_INFO}'/>", to=pair.b.domain)
        assert info.get("type") == "result"
        features = {f.get("var") for f in info.iter(f"{{{DISCO_INFO}}}feature")}
        assert PING in features


async def test_iq_and_message_bounce_when_the_remote_is_down(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    async with await XmlClient.login(pair.a, alice_jid, PASSWORD) as alice:
        reply = await alice.iq("get", f"<ping xmlns='{PING}'/>", to="down.example")
        assert reply.get("type") == "error"
        assert error_condition(reply) == "remote-server-not-found"
        assert reply.get("from") == "down.example"
        err_text = reply.findtext(f"{tag('error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text")
        assert err_text is not None and err_text.startswith("connect:")
        alice.send("<presence to='someone@down.example' type='subscribe'/>")
        alice.send("<message to='someone@down.example' id='m1'><body>x</body></message>")
        bounce = await alice.expect(lambda el: el.get("id") == "m1")
        assert error_condition(bounce) == "remote-server-not-found"
    assert "cannot federate (connect)" in pair.a.log_text()
