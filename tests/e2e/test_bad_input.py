"""Bad input closes only the offending stream with the right error (RFC 6120 §4.9, §8.3, §11);
a well-behaved client on the same server keeps being served."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from tests.support.clients import Slix, register_account
from tests.support.rawstream import STREAM_HEADER, RawClient, stanza_error, stream_error
from tests.support.server import XmppdServer

PASSWORD = "bad-input-pw"
_names = itertools.count()


async def new_user(server: XmppdServer) -> str:
    name = f"bad{next(_names)}"
    await register_account(server, name, PASSWORD)
    return name


@pytest.fixture
async def bystanders(sqlite_server: XmppdServer) -> AsyncIterator[tuple[Slix, Slix]]:
    """Two logged-in users who must not notice anything."""
    a, b = await new_user(sqlite_server), await new_user(sqlite_server)
    async with (
        Slix(sqlite_server, f"{a}@localhost", PASSWORD) as ca,
        Slix(sqlite_server, f"{b}@localhost", PASSWORD) as cb,
    ):
        yield ca, cb
        # Still served after the misbehaviour:
        ca.xmpp.send_message(mto=cb.xmpp.boundjid.bare, mbody="still here", mtype="chat")
        got = await cb.next_message(lambda m: m["body"] == "still here")
        assert got["from"] == ca.xmpp.boundjid


async def raw_stream_error(server: XmppdServer, *payloads: str | bytes) -> tuple[str | None, bytes]:
    client = await RawClient(server).connect()
    try:
        for data in payloads:
            client.send(data)
        received = await client.read_to_close()
    finally:
        await client.close()
    return stream_error(received), received


HEADER = STREAM_HEADER.format(to="localhost")


@pytest.mark.parametrize(
    ("payload", "condition"),
    [
        (
            "<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]>" + HEADER[21:],
            "restricted-xml",
        ),
        (HEADER + "<!-- a comment -->", "restricted-xml"),
        (HEADER + "<?php echo 1; ?>", "restricted-xml"),
        (HEADER + "<message><body>&xxe;</body></message>", "not-well-formed"),
        (HEADER + "<message><body></message>", "not-well-formed"),
        ("<?xml version='1.0' encoding='UTF-16'?>" + HEADER[21:], "unsupported-encoding"),
        (HEADER.replace("http://etherx.jabber.org/streams", "urn:wrong"), "invalid-namespace"),
        (HEADER.replace("xmlns='jabber:client'", "xmlns='jabber:server'"), "invalid-namespace"),
        (HEADER.replace("to='localhost'", "to='elsewhere.example'"), "host-unknown"),
        (HEADER.replace("to='localhost' version='1.0'", "to='localhost'"), "unsupported-version"),
        (
            HEADER + "<message to='x@localhost'><body>before login</body></message>",
            "policy-violation",
        ),
    ],
    ids=[
        "doctype-entities",
        "comment",
        "processing-instruction",
        "undefined-entity",
        "malformed",
        "utf16",
        "stream-namespace",
        "content-namespace",
        "unknown-host",
        "no-version",
        "stanza-before-starttls",
    ],
)
async def test_bad_stream_is_closed_with_the_right_error(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix], payload: str, condition: str
) -> None:
    found, received = await raw_stream_error(sqlite_server, payload)
    assert found == condition, received
    assert received.rstrip().endswith(b"</stream:stream>")


async def logged_in(server: XmppdServer) -> tuple[RawClient, str]:
    name = await new_user(server)
    client = await RawClient(server).connect()
    jid = await client.login(name, PASSWORD)
    return client, jid


async def test_oversized_stanza_is_a_policy_violation(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix]
) -> None:
    client, _ = await logged_in(sqlite_server)
    try:
        body = "x" * (300 * 1024)
        client.send(f"<message to='nobody@localhost'><body>{body}</body></message>")
        received = await client.read_to_close()
    finally:
        await client.close()
    assert stream_error(received) == "policy-violation"


async def test_spoofed_from_is_refused(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix]
) -> None:
    client, _ = await logged_in(sqlite_server)
    victim = bystanders[1].xmpp.boundjid
    try:
        client.send(
            f"<message from='{bystanders[0].xmpp.boundjid}' to='{victim}'><body>spoof</body></message>"
        )
        received = await client.read_to_close()
    finally:
        await client.close()
    assert stream_error(received) == "invalid-from"
    assert bystanders[1].messages.empty()


async def test_own_bare_from_is_stamped_with_full_jid(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix]
) -> None:
    client, jid = await logged_in(sqlite_server)
    target = bystanders[1]
    try:
        client.send(
            f"<message from='{jid.split('/')[0]}' to='{target.xmpp.boundjid}' type='chat'>"
            "<body>stamped</body></message>"
        )
        got = await target.next_message(lambda m: m["body"] == "stamped")
    finally:
        await client.close()
    assert str(got["from"]) == jid


@pytest.mark.parametrize(
    ("iq", "condition"),
    [
        ("<iq type='get'><ping xmlns='urn:xmpp:ping'/></iq>", "bad-request"),
        (
            "<iq type='get' id='two'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>",
            "bad-request",
        ),
        ("<iq type='get' id='none'/>", "bad-request"),
        (
            "<iq type='get' id='bogus' to='localhost'><x xmlns='urn:unknown'/></iq>",
            "service-unavailable",
        ),
        ("<message to='a@@localhost'><body>x</body></message>", "jid-malformed"),
    ],
    ids=["no-id", "two-children", "no-child", "unknown-namespace", "bad-to"],
)
async def test_bad_stanza_gets_a_stanza_error(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix], iq: str, condition: str
) -> None:
    client, _ = await logged_in(sqlite_server)
    try:
        client.send(iq)
        received = await client.read_until(b"</(iq|message)>")
        assert stanza_error(received) == condition, received
        # The stream stays open: a ping still works.
        client.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        after = await client.read_until(b"id=['\"]after['\"]")
        assert b'type="result"' in after or b"type='result'" in after
    finally:
        await client.close()


async def test_unknown_top_level_element_after_login(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix]
) -> None:
    client, _ = await logged_in(sqlite_server)
    try:
        client.send("<foo xmlns='urn:example'/>")
        received = await client.read_to_close()
    finally:
        await client.close()
    assert stream_error(received) == "unsupported-stanza-type"


async def test_error_is_never_answered(
    sqlite_server: XmppdServer, bystanders: tuple[Slix, Slix]
) -> None:
    client, _ = await logged_in(sqlite_server)
    try:
        client.send(
            "<iq type='error' id='e1' to='localhost'><error type='cancel'>"
            "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            "<message type='error' to='nobody@localhost'/>"
            "<iq type='get' id='marker' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        received = await client.read_until(b"id=['\"]marker['\"]")
    finally:
        await client.close()
    assert b"e1" not in received
    assert b"<message" not in received
