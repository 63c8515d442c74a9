"""External components (XEP-0114) end to end: a slixmpp ``ComponentXMPP`` connects with
its shared secret and serves its domain; clients and the component exchange stanzas
through the router; wrong secrets, unknown domains, spoofed senders and second
connections are refused with the XEP's stream errors; stanzas for a component that is
not connected bounce; a misbehaving component disturbs nobody. On SQLite and PostgreSQL
(the component's messages to an offline user are stored like any other)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.component import (
    ACCEPT,
    RawComponent,
    SlixComponent,
    ctag,
    stanza_error,
)
from tests.support.e2e import PASSWORD, new_account
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import Element, XmlClient, attrs, error_condition, tag, text
from xmppd.config import ConfigError, load_config, parse_config

COMPONENT = "comp.localhost"
SECRET = "comp-secret"
SPARE = "spare.localhost"
"""A second component, for tests that disconnect or misbehave."""
SPARE_SECRET = "spare-secret"
ABSENT = "absent.localhost"
"""Configured, never connected."""
PING = "<ping xmlns='urn:xmpp:ping'/>"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"

_ids = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """xmppd with three components configured and mod_offline."""
    with running_server(
        tmp_path_factory.mktemp(f"xmppd-components-{request.param}"),
        backend=request.param,
        modules={**DEFAULT_TEST_MODULES, "offline": {}},
        components={COMPONENT: SECRET, SPARE: SPARE_SECRET, ABSENT: "never-used"},
    ) as srv:
        yield srv
        assert srv.process.poll() is None, "xmppd exited"
        log = srv.log_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
        for secret in (SECRET, SPARE_SECRET, "never-used"):
            assert secret not in log, "a component secret was logged"


def message(to: str, body: str, **extra: str) -> str:
    msg_id = f"c{next(_ids)}"
    return f"<message{attrs(to=to, id=msg_id, **extra)}><body>{text(body)}</body></message>"


async def login(server: XmppdServer, prefix: str = "u", resource: str = "r") -> XmlClient:
    jid = await new_account(server, prefix)
    return await XmlClient.login(server, jid, PASSWORD, resource=resource)


async def ping(client: XmlClient) -> None:
    assert (await client.iq("get", PING, to=client.domain)).get("type") == "result"


def body_is(body: str) -> Callable[[Element], bool]:
    """Matches a message with this body, on a client or on a component stream."""
    return lambda el: el.findtext(ctag("body")) == body or el.findtext(tag("body")) == body


# ----------------------------------------------------------------------------- config


def test_component_config_is_validated(tmp_path: Path) -> None:
    config = parse_config(
        {
            "listeners": [{"kind": "component"}, {"port": 5222}],
            "components": [{"domain": "push.localhost", "secret": "s3cret"}],
        }
    )
    component, c2s = config.listeners
    assert (component.address, component.port, component.tls) == ("127.0.0.1", 5347, "none")
    assert (c2s.address, c2s.tls) == ("0.0.0.0", "starttls")
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.components)

    cases = [
        ({"listeners": [{"kind": "component", "tls": "direct"}]}, "XEP-0114 has no TLS"),
        ({"components": [{"domain": "localhost", "secret": "x"}]}, "is one of the hosts"),
        (
            {"components": [{"domain": "a.localhost", "secret": "x"}] * 2},
            "configured twice",
        ),
        ({"components": [{"domain": "a.localhost", "secret": ""}]}, "must not be empty"),
        (
            {"components": [{"domain": "a.localhost"}]},
            "components.0.secret: required key is missing",
        ),
        ({"components": [{"domain": "Push.Localhost", "secret": "x"}]}, "lowercase"),
        ({"components": [{"domain": "a b", "secret": "x"}]}, "not a valid domain"),
    ]
    for raw, expected in cases:
        with pytest.raises(ConfigError) as err:
            parse_config(raw)
        assert expected in str(err.value), raw
        assert "s3cret" not in str(err.value)

    # The example configuration passes as it is, and with its component example
    # uncommented.
    example = Path(__file__).parents[2] / "config" / "xmppd.toml"
    load_config(example)
    lines = example.read_text().splitlines()
    start = lines.index("# [[components]]")
    listener = lines.index('# kind = "component"') - 1
    for i in [*range(start, start + 3), *range(listener, listener + 4)]:
        lines[i] = lines[i].removeprefix("# ")
    uncommented = tmp_path / "xmppd.toml"
    uncommented.write_text("\n".join(lines))
    config = load_config(uncommented)
    assert [c.domain for c in config.components] == ["push.example.org"]
    assert [listener.kind for listener in config.listeners] == [
        "c2s",
        "c2s",
        "http",
        "component",
    ]


# ----------------------------------------------------------------------------- happy path


async def test_client_and_component_exchange_stanzas(server: XmppdServer) -> None:
    component = await SlixComponent(server, COMPONENT, SECRET).connected()
    alice = await login(server, "alice")
    try:
        # To any address at the component's domain, from the client's full JID.
        alice.send(message(f"anything@{COMPONENT}", "to the component", type="chat"))
        got = await component.next(body_is("to the component"))
        assert got.tag == ctag("message")
        assert (got.get("from"), got.get("to")) == (alice.jid, f"anything@{COMPONENT}")
        alice.send(message(f"user@{COMPONENT}/res", "to a full JID"))
        got = await component.next(body_is("to a full JID"))
        assert got.get("to") == f"user@{COMPONENT}/res"

        # An IQ to the component's domain; its answer comes back to the client.
        reply_task = asyncio.create_task(alice.iq("get", PING, to=COMPONENT))
        iq = await component.next(lambda el: el.tag == ctag("iq"))
        assert (iq.get("type"), iq.get("from"), iq.get("to")) == ("get", alice.jid, COMPONENT)
        component.reply_result(iq)
        reply = await reply_task
        assert (reply.get("type"), reply.get("from")) == ("result", COMPONENT)

        # From any address at the component's domain to the client (full and bare JID).
        component.send_message(alice.jid, "to your full JID", mfrom=f"bot@{COMPONENT}/x")
        got = await alice.expect(body_is("to your full JID"))
        assert got.get("from") == f"bot@{COMPONENT}/x"
        alice.send("<presence/>")  # a bare-JID message goes to available resources
        await alice.expect(lambda el: el.tag == tag("presence"))
        component.send_message(alice.jid.split("/")[0], "now available", mfrom=COMPONENT)
        got = await alice.expect(body_is("now available"))
        assert got.get("from") == COMPONENT

        # The component asks the server itself: the answer comes back to it.
        component.xmpp.send_raw(
            f"<iq type='get' id='d1' from='{COMPONENT}' to='localhost'>"
            f"<query xmlns='{DISCO_INFO}'/></iq>"
        )
        info = await component.next(lambda el: el.get("id") == "d1")
        assert info.get("type") == "result" and info.get("from") == "localhost"
    finally:
        await alice.close()
        await component.stop()


async def test_the_host_lists_its_components_in_disco_items(server: XmppdServer) -> None:
    alice = await login(server, "alice")
    try:
        disco_items = "http://jabber.org/protocol/disco#items"
        reply = await alice.iq("get", f"<query xmlns='{disco_items}'/>", to="localhost")
        listed = {el.get("jid") for el in reply.iter(f"{{{disco_items}}}item")}
        assert {COMPONENT, SPARE, ABSENT} <= listed
        account = alice.jid.split("/")[0]
        reply = await alice.iq("get", f"<query xmlns='{disco_items}'/>", to=account)
        listed = {el.get("jid") for el in reply.iter(f"{{{disco_items}}}item")}
        assert not listed & {COMPONENT, SPARE, ABSENT}
    finally:
        await alice.close()


async def test_component_message_to_an_offline_user_is_stored(server: XmppdServer) -> None:
    component = await SlixComponent(server, COMPONENT, SECRET).connected()
    user = await new_account(server, "offline")
    try:
        component.send_message(user, "while you were away", mfrom=f"bot@{COMPONENT}")
        client = await XmlClient.login(server, user, PASSWORD, resource="r")
        client.send("<presence/>")
        got = await client.expect(body_is("while you were away"))
        assert got.get("from") == f"bot@{COMPONENT}"
        await client.close()
    finally:
        await component.stop()


async def test_component_without_to_gets_a_stanza_error(server: XmppdServer) -> None:
    raw = await RawComponent.authenticated(server, SPARE, SPARE_SECRET)
    try:
        raw.send(f"<message from='x@{SPARE}' id='nt'><body>where to?</body></message>")
        error = await raw.expect(lambda el: el.get("id") == "nt")
        assert stanza_error(error) == ("modify", "bad-request")
        raw.send(f"<iq from='{SPARE}' to='localhost' type='get'>{PING}</iq>")  # no id
        error = await raw.expect(lambda el: el.tag == ctag("iq"))
        assert stanza_error(error)[1] == "bad-request"
        # The stream goes on.
        raw.send(f"<iq from='{SPARE}' to='localhost' type='get' id='p'>{PING}</iq>")
        pong = await raw.expect(lambda el: el.get("id") == "p")
        assert pong.get("type") == "result"
    finally:
        await raw.close()


# ----------------------------------------------------------------------------- refusals


async def test_wrong_secret_is_not_authorized(server: XmppdServer) -> None:
    component = SlixComponent(server, COMPONENT, "not-the-secret")
    assert await component.start() == "disconnected"
    assert component.stream_error == "not-authorized"
    # The right secret still works afterwards.
    good = await SlixComponent(server, COMPONENT, SECRET).connected()
    await good.stop()


async def test_unknown_domain_is_host_unknown(server: XmppdServer) -> None:
    raw = await RawComponent.connect(server)
    try:
        header = await raw.open("nobody.localhost")
        assert header is not None and header.get("id")
        assert await raw.wait_closed() == "host-unknown"
    finally:
        await raw.close()
    # A local host is not a component either.
    raw = await RawComponent.connect(server)
    try:
        await raw.open("localhost")
        assert await raw.wait_closed() == "host-unknown"
    finally:
        await raw.close()


async def test_stanzas_before_the_handshake_are_not_authorized(server: XmppdServer) -> None:
    raw = await RawComponent.connect(server)
    try:
        header = await raw.open(SPARE)
        assert header is not None
        assert header.get("from") == SPARE and header.nsmap.get(None) == ACCEPT
        assert header.get("version") is None  # XEP-0114: no stream features
        raw.send(f"<message from='{SPARE}' to='x@localhost'><body>early</body></message>")
        assert await raw.wait_closed() == "not-authorized"
    finally:
        await raw.close()


async def test_spoofed_from_is_invalid_from(server: XmppdServer) -> None:
    victim = await login(server, "victim")
    witness = await login(server, "witness")
    raw = await RawComponent.authenticated(server, SPARE, SPARE_SECRET)
    try:
        raw.send(message(victim.jid, "from your friend", **{"from": witness.jid}))
        assert await raw.wait_closed() == "invalid-from"
        # The forged message went nowhere: a later one from the witness is the first.
        witness.send(message(victim.jid, "the real one"))
        first = await victim.expect(lambda el: el.tag == tag("message"))
        assert first.findtext(tag("body")) == "the real one"
        # The domain is free again; a subdomain is not the component's domain.
        again = await RawComponent.authenticated(server, SPARE, SPARE_SECRET)
        again.send(message(victim.jid, "hello", **{"from": f"x@sub.{SPARE}"}))
        assert await again.wait_closed() == "invalid-from"
        await again.close()
    finally:
        await raw.close()
        await victim.close()
        await witness.close()


async def test_second_connection_gets_conflict(server: XmppdServer) -> None:
    first = await SlixComponent(server, COMPONENT, SECRET).connected()
    client = await login(server, "c")
    try:
        second = SlixComponent(server, COMPONENT, SECRET)
        assert await second.start() == "disconnected"
        assert second.stream_error == "conflict"
        # The first connection still serves the domain.
        client.send(message(COMPONENT, "still yours"))
        await first.next(body_is("still yours"))
    finally:
        await client.close()
        await first.stop()


async def test_stanzas_for_a_disconnected_component_bounce(server: XmppdServer) -> None:
    client = await login(server, "b")
    try:
        # Presence is dropped silently; message and IQ come back as service-unavailable
        # of type wait (the component may come back).
        client.send(f"<presence to='{ABSENT}'/>")
        client.send(message(f"someone@{ABSENT}", "hello?", type="chat"))
        bounce = await client.expect(lambda el: el.tag == tag("message"))
        assert error_condition(bounce) == "service-unavailable"
        error = bounce.find(tag("error"))
        assert error is not None and error.get("type") == "wait"
        assert bounce.get("from") == f"someone@{ABSENT}"
        reply = await client.iq("get", PING, to=ABSENT)
        assert reply.get("type") == "error" and error_condition(reply) == "service-unavailable"
        assert client.pending(lambda el: el.tag == tag("presence")) == []

        # A component that was connected and left: the same.
        spare = await SlixComponent(server, SPARE, SPARE_SECRET).connected()
        client.send(message(SPARE, "while connected"))
        await spare.next(body_is("while connected"))
        await spare.stop()
        client.send(message(SPARE, "after it left"))
        bounce = await client.expect(lambda el: el.tag == tag("message"))
        assert error_condition(bounce) == "service-unavailable"
        # Other domains still bounce as before (no federation).
        reply = await client.iq("get", PING, to="elsewhere.example")
        assert error_condition(reply) == "remote-server-not-found"
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        ("<message><body>unclosed</message>", "not-well-formed"),
        ("<!-- comment -->", "restricted-xml"),
        ("<message to='x@localhost'><body>" + "x" * 300_000 + "</body></message>", None),
        ("<handshake>again</handshake>", "unsupported-stanza-type"),
    ],
    ids=["malformed", "comment", "oversized", "second-handshake"],
)
async def test_misbehaving_component_does_not_disturb_bystanders(
    server: XmppdServer, payload: str, condition: str | None
) -> None:
    a, b = await login(server, "bya"), await login(server, "byb")
    raw = await RawComponent.authenticated(server, SPARE, SPARE_SECRET)
    try:
        a.send(message(b.jid, "before"))
        await b.expect(body_is("before"))
        raw.send(payload)
        closed_with = await raw.wait_closed()
        assert closed_with == (condition or "policy-violation")
        a.send(message(b.jid, "after"))
        got = await b.expect(body_is("after"))
        assert got.get("from") == a.jid
        await ping(a)
    finally:
        await raw.close()
        await a.close()
        await b.close()
