"""A user logs in with each SASL mechanism and chats (RFC 6120/6121 with slixmpp)."""

from __future__ import annotations

import itertools

import pytest

from tests.support.clients import AuthFailed, Slix, register_account
from tests.support.server import XmppdServer

_counter = itertools.count()


async def new_user(server: XmppdServer, password: str = "s3cret-pw") -> str:
    name = f"user{next(_counter)}"
    await register_account(server, name, password)
    return f"{name}@{server.domain}"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_login_with_each_mechanism(server: XmppdServer, mechanism: str) -> None:
    jid = await new_user(server)
    async with Slix(server, jid, "s3cret-pw", mechanism=mechanism) as client:
        assert client.xmpp.boundjid.bare == jid
        assert client.xmpp.boundjid.resource


@pytest.mark.parametrize(
    "mechanism", ["SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-512-PLUS"]
)
async def test_login_with_channel_binding(server: XmppdServer, mechanism: str) -> None:
    jid = await new_user(server)
    async with Slix(server, jid, "s3cret-pw", mechanism=mechanism, max_tls12=True) as client:
        assert client.xmpp.boundjid.bare == jid


async def test_wrong_password_is_refused(server: XmppdServer) -> None:
    jid = await new_user(server)
    client = Slix(server, jid, "not-the-password", mechanism="SCRAM-SHA-256")
    with pytest.raises(AuthFailed):
        await client.start()
    await client.stop()


async def test_direct_tls_login(server: XmppdServer) -> None:
    jid = await new_user(server)
    async with Slix(server, jid, "s3cret-pw", direct_tls=True) as client:
        assert client.xmpp.boundjid.bare == jid


async def test_message_to_bare_and_full_jid(server: XmppdServer) -> None:
    alice, bob = await new_user(server), await new_user(server)
    async with Slix(server, alice, "s3cret-pw") as a, Slix(server, bob, "s3cret-pw") as b:
        a.xmpp.send_message(mto=bob, mbody="hello bare", mtype="chat")
        got = await b.next_message(lambda m: m["body"] == "hello bare")
        assert got["from"] == a.xmpp.boundjid
        a.xmpp.send_message(mto=b.jid, mbody="hello full", mtype="chat")
        got = await b.next_message(lambda m: m["body"] == "hello full")
        assert got["to"] == b.xmpp.boundjid
