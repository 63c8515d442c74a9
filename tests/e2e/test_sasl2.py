"""Modern mobile login: SASL2 (XEP-0388) with Bind 2 (XEP-0386), FAST tokens
(XEP-0484), the channel-binding list (XEP-0440) and SCRAM downgrade protection
(XEP-0474), on SQLite and PostgreSQL.

The acceptance story of issue #4: a client authenticates, binds and enables carbons and
stream management in one round trip, receives a FAST token, disconnects, and logs back
in with the token alone; a phone that lost its connection resumes its session inline.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from lxml import etree

from tests.support.clients import Slix, register_account
from tests.support.sasl2 import (
    BIND2,
    CARBONS,
    CSI,
    ENABLE_CARBONS,
    ENABLE_SM,
    FAST,
    MAM,
    SASL2,
    SM,
    Outcome,
    Sasl2Client,
    bind_request,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import STREAMS, XmlClient, tag

PASSWORD = "fast-pass"
MODULES = {**DEFAULT_TEST_MODULES, "carbons": {}, "csi": {}, "offline": {}, "mam": {}}
_names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    tmp = tmp_path_factory.mktemp(f"sasl2-{request.param}")
    with running_server(tmp, backend=request.param, modules=MODULES) as server:
        yield server


async def new_user(server: XmppdServer) -> str:
    name = f"fast{next(_names)}"
    await register_account(server, name, PASSWORD)
    return name


def is_message(el: etree._Element) -> bool:
    return el.tag == tag("message")


async def fast_login(
    server: XmppdServer, name: str, *, agent_id: str | None = None, inline: str = ""
) -> tuple[Sasl2Client, Outcome, str]:
    """Password login over SASL2 + Bind 2 asking for an HT-SHA-256-NONE token;
    returns the client, the server's answer and the token."""
    client = await Sasl2Client.connect(server, agent_id)
    outcome, _ = await client.scram(
        name,
        PASSWORD,
        inline=bind_request("Phone", *(() if not inline else (inline,)))
        + f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>",
    )
    assert outcome.ok, outcome.condition
    assert outcome.token is not None
    return client, outcome, outcome.token[0]


# ----------------------------------------------------------------------------- offers


async def test_sasl2_is_offered_only_over_tls_with_its_inline_features(
    srv: XmppdServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.starttls_port)
    try:
        writer.write(
            f"<?xml version='1.0'?><stream:stream to='{srv.domain}' version='1.0' "
            f"xmlns='jabber:client' xmlns:stream='{STREAMS}'>".encode()
        )
        before_tls = b""
        async with asyncio.timeout(10):
            while b"</stream:features>" not in before_tls:
                before_tls += await reader.read(4096)
    finally:
        writer.close()
    assert SASL2.encode() not in before_tls  # XEP-0388 §6: only after TLS

    client = await Sasl2Client.connect(srv)
    try:
        assert "SCRAM-SHA-256" in client.mechanisms
        assert "SCRAM-SHA-256-PLUS" in client.mechanisms
        assert {SM, CARBONS, CSI} <= set(client.bind_features)
        assert {"HT-SHA-256-NONE", "HT-SHA-256-ENDP"} <= set(client.fast_mechanisms)
        auth = client.authentication
        assert auth is not None
        assert auth.find(f"{{{SASL2}}}inline/{{{SM}}}sm") is not None  # inline resumption
        assert client.channel_bindings is not None  # XEP-0440
        assert "tls-server-end-point" in client.channel_bindings
    finally:
        await client.close()


# ----------------------------------------------------------------------------- acceptance


async def test_login_bind_carbons_sm_in_one_round_trip_then_token_alone(
    srv: XmppdServer,
) -> None:
    name = await new_user(srv)
    bare = f"{name}@{srv.domain}"
    agent = str(uuid.uuid4())
    client = await Sasl2Client.connect(srv, agent)
    outcome, server_first = await client.scram(
        name,
        PASSWORD,
        inline=bind_request("Phone", ENABLE_CARBONS, ENABLE_SM)
        + f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-NONE'/>",
    )
    assert outcome.ok, outcome.condition
    # XEP-0474: the server-first-message carries the hash of what was advertised.
    assert f",h={client.expected_downgrade_hash('SHA-256')}" in server_first
    # Bound in the same round trip, to a resource built from the tag.
    assert outcome.jid.startswith(f"{bare}/Phone/")
    bound = outcome.find(f"{{{BIND2}}}bound")
    assert bound is not None
    enabled = bound.find(f"{{{SM}}}enabled")
    assert enabled is not None and enabled.get("resume") == "true" and enabled.get("id")
    assert bound.find(f"{{{MAM}}}metadata") is not None
    token = outcome.token
    assert token is not None and len(token[0]) >= 32
    expiry = datetime.fromisoformat(token[1].replace("Z", "+00:00"))
    assert expiry > datetime.now(UTC)
    # No stream restart: the features come right after, without legacy bind.
    assert outcome.features is not None
    assert outcome.features.find("{urn:ietf:params:xml:ns:xmpp-bind}bind") is None

    # Carbons are on: a message sent from the user's other device is copied here.
    contact = await new_user(srv)
    async with Slix(srv, f"{bare}/laptop", PASSWORD) as laptop:
        laptop.xmpp.send_message(mto=f"{contact}@{srv.domain}", mbody="hi from laptop")
        carbon = await client.xml.expect(is_message)
        sent = carbon.find(f"{{{CARBONS}}}sent")
        assert sent is not None
        assert "hi from laptop" in etree.tostring(sent).decode()
    # Stream management is on: the server counts what it sent us and answers <r/>.
    client.xml.send(f"<r xmlns='{SM}'/>")
    ack = await client.xml.expect(lambda el: el.tag == f"{{{SM}}}a")
    assert ack.get("h") == "0"
    await client.close()

    # Log back in with the token alone; the same installation gets the same resource.
    again = await Sasl2Client.connect(srv, agent)
    try:
        second = await again.token(name, token[0], inline=bind_request("Phone"))
        assert second.ok, second.condition
        assert second.jid == outcome.jid
        iq = await again.xml.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=srv.domain)
        assert iq.get("type") == "result"
    finally:
        await again.close()


async def test_a_dropped_phone_resumes_inline_with_its_token(srv: XmppdServer) -> None:
    name = await new_user(srv)
    bare = f"{name}@{srv.domain}"
    agent = str(uuid.uuid4())
    phone, login, token = await fast_login(srv, name, agent_id=agent, inline=ENABLE_SM)
    full = login.jid
    enabled = login.find(f"{{{BIND2}}}bound/{{{SM}}}enabled")
    assert enabled is not None
    previd = enabled.get("id")
    phone.xml.send("<presence/>")
    await phone.xml.expect(lambda el: el.tag == tag("presence"))
    phone.xml.send(f"<a xmlns='{SM}' h='1'/>")  # acknowledge the reflected presence
    phone.xml.abort()  # signal lost: no </stream>

    sender_name = await new_user(srv)
    async with Slix(srv, f"{sender_name}@{srv.domain}/pc", PASSWORD) as sender:
        for i in range(3):
            sender.xmpp.send_message(mto=full, mbody=f"while away {i}", mtype="chat")
        await asyncio.sleep(0.5)

    back = await Sasl2Client.connect(srv, agent)
    try:
        outcome = await back.token(
            name, token, inline=f"<resume xmlns='{SM}' previd='{previd}' h='1'/>"
        )
        assert outcome.ok, outcome.condition
        resumed = outcome.find(f"{{{SM}}}resumed")
        assert resumed is not None and resumed.get("previd") == previd
        assert outcome.jid == full
        # The features that follow describe the resumed session: bound, with stream
        # management on, so neither bind nor sm is offered again.
        assert outcome.features is not None
        offered = {el.tag for el in outcome.features}
        assert f"{{{SM}}}sm" not in offered
        assert "{urn:ietf:params:xml:ns:xmpp-bind}bind" not in offered
        bodies = []
        while len(bodies) < 3:
            msg = await back.xml.expect(is_message)
            bodies.append(msg.findtext(tag("body")))
        assert bodies == [f"while away {i}" for i in range(3)]  # exactly once, in order
    finally:
        await back.close()
        await phone.close()
    assert full.startswith(f"{bare}/")


async def test_bind2_leaves_archived_offline_messages_to_the_archive(srv: XmppdServer) -> None:
    name = await new_user(srv)
    bare = f"{name}@{srv.domain}"
    sender_name = await new_user(srv)
    async with Slix(srv, f"{sender_name}@{srv.domain}/pc", PASSWORD) as sender:
        sender.xmpp.send_message(mto=bare, mbody="sent while offline", mtype="chat")
        await asyncio.sleep(0.5)
    client = await Sasl2Client.connect(srv)
    try:
        outcome, _ = await client.scram(name, PASSWORD, inline=bind_request("Phone"))
        assert outcome.ok
        metadata = outcome.find(f"{{{BIND2}}}bound/{{{MAM}}}metadata")
        assert metadata is not None
        end = metadata.find(f"{{{MAM}}}end")
        assert end is not None  # the message is in the archive ...
        client.xml.send("<presence/>")
        await client.xml.expect(lambda el: el.tag == tag("presence"))
        await asyncio.sleep(0.5)
        assert not client.xml.pending(is_message)  # ... and not pushed as offline
        reply = await client.xml.iq("set", f"<query xmlns='{MAM}'/>", to=None)
        assert reply.get("type") == "result"
        results = client.xml.pending(is_message)
        assert any("sent while offline" in etree.tostring(m).decode() for m in results)
    finally:
        await client.close()


# ----------------------------------------------------------------------------- failures


async def test_wrong_password_and_wrong_tokens_fail(srv: XmppdServer) -> None:
    name = await new_user(srv)
    agent = str(uuid.uuid4())
    client = await Sasl2Client.connect(srv, agent)
    try:
        outcome, _ = await client.scram(name, "not the password")
        assert not outcome.ok and outcome.condition == "not-authorized"
    finally:
        await client.close()

    first, _, token = await fast_login(srv, name, agent_id=agent)
    await first.close()
    attempts = [
        (agent, "HT-SHA-256-NONE", token[:-2] + "xx"),  # a different token
        (str(uuid.uuid4()), "HT-SHA-256-NONE", token),  # another installation
        (agent, "HT-SHA-256-ENDP", token),  # bound to the mechanism it was issued for
    ]
    for agent_id, mechanism, value in attempts:
        other = await Sasl2Client.connect(srv, agent_id)
        try:
            failed = await other.token(name, value, mechanism=mechanism)
            assert not failed.ok and failed.condition == "not-authorized", mechanism
        finally:
            await other.close()
    ok = await Sasl2Client.connect(srv, agent)
    try:
        assert (await ok.token(name, token)).ok
    finally:
        await ok.close()


async def test_channel_bound_token_and_invalidation(srv: XmppdServer) -> None:
    name = await new_user(srv)
    agent = str(uuid.uuid4())
    client = await Sasl2Client.connect(srv, agent)
    outcome, _ = await client.scram(
        name, PASSWORD, inline=f"<request-token xmlns='{FAST}' mechanism='HT-SHA-256-ENDP'/>"
    )
    assert outcome.ok and outcome.token is not None
    token = outcome.token[0]
    # Authenticated without Bind 2: legacy resource binding still works on this stream.
    assert await client.xml.bind("legacy")
    await client.close()

    bound = await Sasl2Client.connect(srv, agent)
    try:
        used = await bound.token(
            name, token, mechanism="HT-SHA-256-ENDP", fast_attrs=" invalidate='true'"
        )
        assert used.ok and used.token is None  # invalidated: no new token either
    finally:
        await bound.close()
    after = await Sasl2Client.connect(srv, agent)
    try:
        gone = await after.token(name, token, mechanism="HT-SHA-256-ENDP")
        assert not gone.ok and gone.condition == "not-authorized"
    finally:
        await after.close()


async def test_changing_the_password_revokes_tokens(srv: XmppdServer) -> None:
    name = await new_user(srv)
    agent = str(uuid.uuid4())
    client, _, token = await fast_login(srv, name, agent_id=agent)
    reply = await client.xml.iq(
        "set",
        "<query xmlns='jabber:iq:register'>"
        f"<username>{name}</username><password>new-{PASSWORD}</password></query>",
        to=None,
    )
    assert reply.get("type") == "result", etree.tostring(reply)
    await client.close()
    again = await Sasl2Client.connect(srv, agent)
    try:
        failed = await again.token(name, token)
        assert not failed.ok and failed.condition == "not-authorized"
    finally:
        await again.close()


async def test_a_second_login_of_the_same_installation_replaces_the_first(
    srv: XmppdServer,
) -> None:
    name = await new_user(srv)
    agent = str(uuid.uuid4())
    first, login, token = await fast_login(srv, name, agent_id=agent)
    full = login.jid
    second = await Sasl2Client.connect(srv, agent)
    try:
        outcome = await second.token(name, token, inline=bind_request("Phone"))
        assert outcome.ok and outcome.jid == full
        assert await first.xml.wait_closed() == "conflict"
    finally:
        await second.close()
        await first.close()


async def test_malformed_sasl2_input_gets_sasl2_failures_and_the_server_lives_on(
    srv: XmppdServer,
) -> None:
    name = await new_user(srv)
    client = await Sasl2Client.connect(srv)
    try:
        client.xml.send(f"<authenticate xmlns='{SASL2}' mechanism='NOPE'/>")
        failure = await client.xml.expect(lambda el: el.tag == f"{{{SASL2}}}failure")
        assert failure.find("{urn:ietf:params:xml:ns:xmpp-sasl}invalid-mechanism") is not None
        client.xml.send(
            f"<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-1'>"
            "<initial-response>%%%</initial-response></authenticate>"
        )
        failure = await client.xml.expect(lambda el: el.tag == f"{{{SASL2}}}failure")
        assert failure.find("{urn:ietf:params:xml:ns:xmpp-sasl}incorrect-encoding") is not None
        client.xml.send(f"<response xmlns='{SASL2}'>AAAA</response>")
        failure = await client.xml.expect(lambda el: el.tag == f"{{{SASL2}}}failure")
        assert failure.find("{urn:ietf:params:xml:ns:xmpp-sasl}malformed-request") is not None
        # Still usable: a proper login now succeeds.
        outcome, _ = await client.scram(name, PASSWORD, inline=bind_request("Phone"))
        assert outcome.ok
        # Authenticating twice is a stream error (XEP-0388 §7.7).
        client.xml.send(f"<authenticate xmlns='{SASL2}' mechanism='SCRAM-SHA-1'/>")
        assert await client.xml.wait_closed() == "policy-violation"
    finally:
        await client.close()
    bystander = await XmlClient.login(srv, f"{name}@{srv.domain}", PASSWORD)
    await bystander.close()
