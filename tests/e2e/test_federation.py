"""Federation between two xmppd servers on loopback (RFC 6120 s2s, XEP-0220 dialback):
each server's users reach the other's, both ways, over one link per remote domain."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.e2e import PASSWORD, new_account
from tests.support.push import logged
from tests.support.rawstream import stream_error
from tests.support.s2s import Federated, RawServer, federated_pair, key_of, s2s_extra, wait_port
from tests.support.server import free_port, running_server
from tests.support.xmlclient import Element, XmlClient, error_condition, tag

PING = "urn:xmpp:ping"
DISCO_INFO = "http://jabber.org/protocol/disco#info"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federated]:
    tmp: Path = tmp_path_factory.mktemp("federation")
    dead = free_port()  # nothing listens there: a remote that is down
    pins = {"down.example": f"127.0.0.1:{dead}", "down2.example": f"127.0.0.1:{dead}"}
    with federated_pair(tmp, a_pins=pins) as federated:
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


def error_text(reply: Element) -> str:
    return reply.findtext(f"{tag('error')}/{{urn:ietf:params:xml:ns:xmpp-stanzas}}text") or ""


async def test_a_failed_domain_is_not_redialled_for_every_stanza(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    async with await XmlClient.login(pair.a, alice_jid, PASSWORD) as alice:
        first = await alice.iq("get", f"<ping xmlns='{PING}'/>", to="down2.example")
        assert error_condition(first) == "remote-server-not-found"
        assert error_text(first).startswith("connect:")
        # Within the back-off (15 s by default) the next stanzas bounce at once with
        # the same reason, and no new connection is attempted.
        for _ in range(3):
            again = await alice.iq("get", f"<ping xmlns='{PING}'/>", to="down2.example")
            assert error_condition(again) == "remote-server-not-found"
            assert error_text(again).startswith("connect:")
            assert "next attempt in" in error_text(again)
    assert pair.a.log_text().count("s2s down2.example: cannot federate") == 1


async def test_the_queue_of_a_link_that_is_coming_up_is_bounded(tmp_path: Path) -> None:
    # A "remote" that accepts the connection and never says a word: the link stays
    # connecting while stanzas queue.
    accepted: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(writer)

    listener = await asyncio.start_server(silent, "127.0.0.1", free_port())
    silent_port = listener.sockets[0].getsockname()[1]
    extra = s2s_extra(
        free_port(), {"silent.example": f"127.0.0.1:{silent_port}"}, "max_queue = 2\n"
    )
    try:
        with running_server(tmp_path / "x", domain="x.example", extra=extra) as server:
            jid = await new_account(server, "alice")
            async with await XmlClient.login(server, jid, PASSWORD) as alice:
                for n in (1, 2, 3):
                    alice.send(
                        f"<message to='u@silent.example' id='m{n}'><body>{n}</body></message>"
                    )
                third = await alice.expect(lambda el: el.get("id") == "m3")
                assert error_condition(third) == "remote-server-timeout"
                assert error_text(third) == "too many stanzas waiting for the server"
                assert alice.pending(lambda el: el.get("id") in ("m1", "m2")) == []
                # The remote hangs up: the two queued messages bounce, with the reason.
                writer = await accepted.get()
                writer.close()
                for n in (1, 2):
                    bounce = await alice.expect(lambda el, n=n: el.get("id") == f"m{n}")  # type: ignore[misc]
                    assert error_condition(bounce) == "remote-server-not-found"
                    assert error_text(bounce).startswith("closed:")
    finally:
        listener.close()


async def test_stanzas_waiting_for_a_link_bounce_when_the_server_stops(tmp_path: Path) -> None:
    """RFC 6120 §8.3: a message accepted for a remote server that is still being
    reached is answered with an error, not dropped, when the server stops meanwhile
    (it was acknowledged to its sender; the queue lived in memory only)."""

    accepted: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never answers; closed at the end

    listener = await asyncio.start_server(silent, "127.0.0.1", free_port())
    silent_port = listener.sockets[0].getsockname()[1]
    extra = s2s_extra(free_port(), {"silent.example": f"127.0.0.1:{silent_port}"})
    try:
        with running_server(tmp_path / "x", domain="x.example", extra=extra) as server:
            jid = await new_account(server, "alice")
            alice = await XmlClient.login(server, jid, PASSWORD)
            try:
                alice.send("<message to='u@silent.example' id='w1'><body>1</body></message>")
                pong = await alice.iq("get", f"<ping xmlns='{PING}'/>", to=server.domain)
                assert pong.get("type") == "result"  # the message was taken before this
                server.process.send_signal(signal.SIGTERM)
                bounce = await alice.expect(lambda el: el.get("id") == "w1", timeout=15)
                assert error_condition(bounce) == "remote-server-timeout"
                assert error_text(bounce) == "the server is stopping"
            finally:
                await alice.close()
    finally:
        listener.close()
        for writer in accepted:
            writer.close()
        await listener.wait_closed()


async def test_a_claimed_from_that_was_not_authenticated_closes_with_invalid_from(
    pair: Federated,
) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    async with (
        await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        # A peer that proves a.example (it has a.example's key) ...
        peer = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
        await peer.connect()
        peer.dialback(key_of(pair.a, pair.b.domain, peer.stream_id))
        assert re.search(rb"type=['\"]valid", await peer.raw.read_until(b"<db:result[^>]*type="))
        # ... may send from a.example ...
        peer.raw.send(
            f"<message from='{alice_jid}/x' to='{bob_jid}/r'><body>legit</body></message>"
        )
        await bob.expect(body_is("legit"))  # type: ignore[arg-type]
        # ... but not from another domain: the stream closes, nothing is delivered.
        peer.raw.send(
            f"<message from='mallory@evil.example' to='{bob_jid}/r'><body>forged</body></message>"
        )
        assert stream_error(await peer.raw.read_to_close()) == "invalid-from"
        alice.send(f"<message to='{bob_jid}/r'><body>marker</body></message>")
        await bob.expect(body_is("marker"))  # type: ignore[arg-type]
        assert bob.pending(body_is("forged")) == []  # type: ignore[arg-type]


async def test_a_wrong_dialback_key_is_refused(pair: Federated) -> None:
    peer = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
    await peer.connect()
    peer.dialback("0" * 64)
    answer = await peer.raw.read_to_close()
    assert re.search(rb"<db:result[^>]*type=['\"]invalid['\"]", answer), answer
    assert stream_error(answer) == "not-authorized"
    # Stanzas before a valid dialback are not routed either.
    peer = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
    await peer.connect()
    peer.raw.send(f"<message from='x@{pair.a.domain}' to='y@{pair.b.domain}'/>")
    assert stream_error(await peer.raw.read_to_close()) == "not-authorized"


async def test_presence_subscription_both_ways(pair: Federated) -> None:
    alice_jid = await new_account(pair.a, "alice")
    bob_jid = await new_account(pair.b, "bob")
    async with (
        await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
        await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
    ):
        for client in (alice, bob):
            client.send("<presence/>")
            await client.expect(lambda el: el.tag == tag("presence"))

        def presence(kind: str | None, frm: str) -> Callable[[Element], bool]:
            return lambda el: (
                el.tag == tag("presence")
                and el.get("type") == kind
                and (el.get("from") or "").split("/")[0] == frm
            )

        # alice subscribes to bob, bob approves: alice sees bob's presence.
        alice.send(f"<presence to='{bob_jid}' type='subscribe'/>")
        await bob.expect(presence("subscribe", alice_jid))
        bob.send(f"<presence to='{alice_jid}' type='subscribed'/>")
        await alice.expect(presence("subscribed", bob_jid))
        await alice.expect(presence(None, bob_jid))
        # bob subscribes to alice, alice approves: bob sees alice's presence.
        bob.send(f"<presence to='{alice_jid}' type='subscribe'/>")
        await alice.expect(presence("subscribe", bob_jid))
        alice.send(f"<presence to='{bob_jid}' type='subscribed'/>")
        await bob.expect(presence("subscribed", alice_jid))
        await bob.expect(presence(None, alice_jid))
        # A presence change crosses to the other server.
        bob.send("<presence><show>away</show></presence>")
        away = await alice.expect(presence(None, bob_jid))
        while away.findtext(tag("show")) != "away":
            away = await alice.expect(presence(None, bob_jid))


def test_check_federation_explains_reachable_and_unreachable(pair: Federated) -> None:
    ok = pair.a.cli("check-federation", pair.b.domain)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out = ok.stdout
    assert f"pinned in config to 127.0.0.1:{pair.b_s2s_port}" in out
    assert "TLS: TLSv1.3" in out or "TLS: TLSv1.2" in out
    assert "certificate: NOT valid: certificate is self-signed" in out
    assert "would authenticate with dialback" in out

    down = pair.a.cli("check-federation", "down.example")
    assert down.returncode == 1
    assert re.search(r"FAIL connect: 127.0.0.1:\d+ refused the connection", down.stdout)

    missing = pair.a.cli("check-federation", "no-such-domain.invalid")
    assert missing.returncode == 1
    assert "FAIL DNS: no address found for no-such-domain.invalid" in missing.stdout


async def test_an_idle_link_closes_and_the_next_stanza_opens_a_new_one(tmp_path: Path) -> None:
    with federated_pair(tmp_path, a_more='idle_timeout = "1s"\n') as pair:
        alice_jid = await new_account(pair.a, "alice")
        bob_jid = await new_account(pair.b, "bob")
        async with (
            await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
            await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
        ):
            alice.send(f"<message to='{bob_jid}/r'><body>before</body></message>")
            await bob.expect(body_is("before"))  # type: ignore[arg-type]
            await logged(pair.a, f"s2s {pair.b.domain}: idle, closing the link", timeout=20)
            alice.send(f"<message to='{bob_jid}/r'><body>after</body></message>")
            await bob.expect(body_is("after"))  # type: ignore[arg-type]
        opened = re.findall(r"s2s-out a\.example→b\.example \S+: authenticated", pair.a.log_text())
        assert len(opened) == 2, opened


async def test_one_connection_carries_both_directions_with_bidi(tmp_path: Path) -> None:
    # XEP-0288: a asks b for a bidirectional stream; b's replies come back over it.
    with federated_pair(tmp_path) as pair:
        alice_jid = await new_account(pair.a, "alice")
        bob_jid = await new_account(pair.b, "bob")
        async with (
            await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
            await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
        ):
            alice.send(f"<message to='{bob_jid}/r'><body>there</body></message>")
            await bob.expect(body_is("there"))  # type: ignore[arg-type]
            for n in range(3):
                bob.send(f"<message to='{alice_jid}/r'><body>back{n}</body></message>")
                await alice.expect(body_is(f"back{n}"))  # type: ignore[arg-type]
            pong = await bob.iq("get", f"<ping xmlns='{PING}'/>", to=pair.a.domain)
            assert pong.get("type") == "result"
        a_log, b_log = pair.a.log_text(), pair.b.log_text()
        assert "; bidirectional (XEP-0288)" in a_log
        assert "a.example authenticated for b.example (dialback; bidirectional)" in b_log
        # b never connected to a, and a never accepted a stream from b.
        assert "s2s-out b.example→a.example" not in b_log
        assert "b.example authenticated for a.example" not in a_log


async def test_without_bidi_each_direction_has_its_own_connection(tmp_path: Path) -> None:
    with federated_pair(tmp_path, b_more="bidi = false\n") as pair:
        alice_jid = await new_account(pair.a, "alice")
        bob_jid = await new_account(pair.b, "bob")
        async with (
            await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
            await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
        ):
            alice.send(f"<message to='{bob_jid}/r'><body>there</body></message>")
            await bob.expect(body_is("there"))  # type: ignore[arg-type]
            bob.send(f"<message to='{alice_jid}/r'><body>back</body></message>")
            await alice.expect(body_is("back"))  # type: ignore[arg-type]
        assert "bidirectional" not in pair.a.log_text() + pair.b.log_text()
        assert "b.example authenticated for a.example (dialback)" in pair.a.log_text()


async def test_policies_deny_and_certificates_refuse_streams_both_ways(tmp_path: Path) -> None:
    # b denies a; a requires a valid certificate from b (whose certificate is self-signed).
    with federated_pair(
        tmp_path,
        a_more='policies = { "b.example" = "certificates" }\n',
        b_more='deny = ["a.example"]\n',
    ) as pair:
        alice_jid = await new_account(pair.a, "alice")
        bob_jid = await new_account(pair.b, "bob")
        async with (
            await XmlClient.login(pair.a, alice_jid, PASSWORD, resource="r") as alice,
            await XmlClient.login(pair.b, bob_jid, PASSWORD, resource="r") as bob,
        ):
            alice.send(f"<message to='{bob_jid}' id='to-b'><body>x</body></message>")
            refused = await alice.expect(lambda el: el.get("id") == "to-b")
            assert error_condition(refused) == "remote-server-not-found"
            assert error_text(refused).startswith("certificate: the policy requires a valid")
            bob.send(f"<message to='{alice_jid}' id='to-a'><body>y</body></message>")
            denied = await bob.expect(lambda el: el.get("id") == "to-a")
            assert error_condition(denied) == "remote-server-not-found"
            assert error_text(denied) == "policy: denied"
        # A raw peer that proves a.example to b (it has a's key) is refused by b's deny.
        peer = RawServer(pair.b_s2s_port, pair.a.domain, pair.b.domain)
        await peer.connect()
        peer.dialback(key_of(pair.a, pair.b.domain, peer.stream_id))
        answer = await peer.raw.read_until(b"</db:result>")
        assert re.search(rb"type=['\"]error['\"]", answer) and b"<forbidden" in answer, answer
        # ... and a refuses b's dialback: b's policy there is "certificates".
        peer = RawServer(pair.a_s2s_port, pair.b.domain, pair.a.domain)
        await peer.connect()
        peer.dialback(key_of(pair.b, pair.a.domain, peer.stream_id))
        answer = await peer.raw.read_until(b"</db:result>")
        assert b"<not-authorized" in answer, answer


async def test_direct_tls_s2s_listener(tmp_path: Path) -> None:
    # XEP-0368: b's s2s listener speaks TLS from the first byte; a is pinned to it with
    # tls://, b reaches a over STARTTLS.
    pa, pb = free_port(), free_port()
    b_extra = s2s_extra(pb, {"a.example": f"127.0.0.1:{pa}"}).replace(
        f"port = {pb}\n", f'port = {pb}\ntls = "direct"\n', 1
    )
    a_extra = s2s_extra(pa, {"b.example": f"tls://127.0.0.1:{pb}"})
    with (
        running_server(tmp_path / "a", domain="a.example", extra=a_extra) as a,
        running_server(tmp_path / "b", domain="b.example", extra=b_extra) as b,
    ):
        wait_port(pa)
        wait_port(pb)
        alice_jid = await new_account(a, "alice")
        bob_jid = await new_account(b, "bob")
        async with (
            await XmlClient.login(a, alice_jid, PASSWORD, resource="r") as alice,
            await XmlClient.login(b, bob_jid, PASSWORD, resource="r") as bob,
        ):
            alice.send(f"<message to='{bob_jid}/r'><body>direct</body></message>")
            await bob.expect(body_is("direct"))  # type: ignore[arg-type]
            bob.send(f"<message to='{alice_jid}/r'><body>back</body></message>")
            await alice.expect(body_is("back"))  # type: ignore[arg-type]
        assert f"s2s-out a.example→b.example (127.0.0.1:{pb}): authenticated" in a.log_text()
        assert "a.example authenticated for b.example (dialback" in b.log_text()
