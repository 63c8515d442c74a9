"""XEP-0077 In-Band Registration end to end: create an account from a client, refuse a
taken name, change the password, cancel the account — with slixmpp, aioxmpp and a raw
stream."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import aiosasl
import aioxmpp
import aioxmpp.ibr
import pytest
from slixmpp.exceptions import IqError

from tests.support.aio import Aio
from tests.support.clients import AuthFailed, Slix
from tests.support.e2e import (
    PASSWORD,
    check_server_survived,
    iq_error,
    iq_with,
    new_account,
    online,
    roster_of,
)
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient, error_condition

REGISTER = "jabber:iq:register"
REGISTER_FEATURE = "http://jabber.org/features/iq-register"

_fresh = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _server_survives(server: XmppdServer) -> Iterator[None]:
    yield
    check_server_survived(server)


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def fresh_name() -> str:
    return f"ibr{next(_fresh)}"


async def can_log_in(server: XmppdServer, jid: str, password: str) -> bool:
    client = Slix(server, jid, password, initial_presence=False, fetch_roster=False)
    try:
        await client.start()
    except AuthFailed:
        return False
    finally:
        await client.stop()
    return True


class SlixRegistration:
    """slixmpp's XEP-0077 client flow: on the stream feature it fetches the form, and
    our handler submits it; slixmpp then authenticates with the same credentials."""

    def __init__(self, server: XmppdServer, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.client = Slix(
            server,
            f"{username}@{server.domain}",
            password,
            plugins=("xep_0077",),
            initial_presence=False,
            fetch_roster=False,
        )
        self.fields: set[str] = set()
        self.instructions = ""
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.client.xmpp.add_event_handler("register", self._on_form)

    async def _on_form(self, form: Any) -> None:
        reg = form["register"]
        self.fields = set(reg["fields"])
        self.instructions = reg["instructions"]
        iq = self.client.xmpp.Iq()
        iq["type"] = "set"
        iq["register"]["username"] = self.username
        iq["register"]["password"] = self.password
        try:
            await iq.send(timeout=10)
        except IqError as err:
            self.outcome.set_result(str(err.iq["error"]["condition"]))
        else:
            self.outcome.set_result("registered")

    async def run(self) -> tuple[str, bool]:
        """(registration outcome, whether the login that follows succeeded)."""
        try:
            await self.client.start()
            logged_in = True
        except AuthFailed:
            logged_in = False
        finally:
            await self.client.stop()
        async with asyncio.timeout(10):
            return await self.outcome, logged_in


async def test_stream_features_offer_registration_before_login(server: XmppdServer) -> None:
    client = await XmlClient.connect(server)
    try:
        assert client.features is not None
        assert client.features.find(f"{{{REGISTER_FEATURE}}}register") is not None
        form = await client.iq("get", f"<query xmlns='{REGISTER}'/>", to=None)
    finally:
        await client.close()
    assert form.get("type") == "result"
    query = form.find(f"{{{REGISTER}}}query")
    assert query is not None
    assert query.find(f"{{{REGISTER}}}username") is not None
    assert query.find(f"{{{REGISTER}}}password") is not None
    assert query.findtext(f"{{{REGISTER}}}instructions")


async def test_register_with_slixmpp_then_log_in(server: XmppdServer) -> None:
    name = fresh_name()
    registration = SlixRegistration(server, name, "first-pw")
    outcome, logged_in = await registration.run()
    assert outcome == "registered"
    assert {"username", "password"} <= registration.fields
    assert logged_in, "slixmpp could not log in right after registering"
    # A separate, later login works too, and the account is empty.
    client = await online(server, f"{name}@{server.domain}", "first-pw")
    try:
        assert client.xmpp.boundjid.bare == f"{name}@{server.domain}"
        assert await roster_of(client) == {}
    finally:
        await client.stop()


async def test_registering_a_taken_name_is_a_conflict(server: XmppdServer) -> None:
    owner = await new_account(server, "taken")
    name = owner.split("@")[0]
    outcome, logged_in = await SlixRegistration(server, name, "usurper-pw").run()
    assert outcome == "conflict"
    assert not logged_in
    assert await can_log_in(server, owner, PASSWORD)
    assert not await can_log_in(server, owner, "usurper-pw")


@pytest.mark.parametrize(
    ("fields", "condition"),
    [
        ("<username>{name}</username>", "not-acceptable"),
        ("<password>long-enough</password>", "not-acceptable"),
        ("<username>{name}</username><password>abc</password>", "not-acceptable"),
        ("<username>bad@name</username><password>long-enough</password>", "jid-malformed"),
    ],
    ids=["no-password", "no-username", "short-password", "invalid-username"],
)
async def test_bad_registration_is_refused(
    server: XmppdServer, fields: str, condition: str
) -> None:
    name = fresh_name()
    client = await XmlClient.connect(server)
    try:
        reply = await client.iq(
            "set", f"<query xmlns='{REGISTER}'>{fields.format(name=name)}</query>", to=None
        )
    finally:
        await client.close()
    assert reply.get("type") == "error"
    assert error_condition(reply) == condition
    assert not await can_log_in(server, f"{name}@{server.domain}", "long-enough")


async def test_change_password_with_slixmpp(server: XmppdServer) -> None:
    jid = await new_account(server, "chpw")
    client = await online(server, jid, plugins=("xep_0077",))
    try:
        await client.xmpp.plugin["xep_0077"].change_password("brand-new-pw", timeout=10)
    finally:
        await client.stop()
    assert await can_log_in(server, jid, "brand-new-pw")
    assert not await can_log_in(server, jid, PASSWORD)


async def test_change_password_addressed_to_the_server_with_aioxmpp(server: XmppdServer) -> None:
    """aioxmpp sends the change to the server's JID, as in XEP-0077 §3.3."""
    jid = await new_account(server, "chpwaio")
    async with Aio(server, jid, PASSWORD) as client:
        service = client.client.summon(aioxmpp.ibr.RegistrationService)
        info = await service.get_client_info()
        assert info.registered
        assert info.username == jid.split("@")[0]
        await service.change_pass("aioxmpp-new-pw")
    async with Aio(server, jid, "aioxmpp-new-pw") as again:
        assert again.bare == jid
    with pytest.raises(aiosasl.AuthenticationFailure):
        await Aio(server, jid, PASSWORD).start()


async def test_change_password_refuses_too_short_passwords(server: XmppdServer) -> None:
    jid = await new_account(server, "short")
    client = await online(server, jid)
    try:
        username = jid.split("@")[0]
        iq = iq_with(
            client,
            "set",
            f"<query xmlns='{REGISTER}'><username>{username}</username>"
            "<password>abc</password></query>",
        )
        assert await iq_error(client, iq) == "not-acceptable"
    finally:
        await client.stop()
    assert await can_log_in(server, jid, PASSWORD)


async def test_nobody_else_can_change_a_password(server: XmppdServer) -> None:
    victim = await new_account(server, "victim")
    attacker = await online(server, await new_account(server, "attacker"))
    victim_name = victim.split("@")[0]
    change = (
        f"<query xmlns='{REGISTER}'><username>{victim_name}</username>"
        "<password>hijacked-pw</password></query>"
    )
    try:
        to_account = await iq_error(attacker, iq_with(attacker, "set", change, to=victim))
        to_server = await iq_error(attacker, iq_with(attacker, "set", change, to=server.domain))
    finally:
        await attacker.stop()
    assert to_account == "forbidden"
    assert to_server in ("forbidden", "bad-request", "not-allowed")
    assert await can_log_in(server, victim, PASSWORD)
    assert not await can_log_in(server, victim, "hijacked-pw")


async def test_cancel_registration_with_slixmpp(server: XmppdServer) -> None:
    jid = await new_account(server, "cancel")
    client = await online(server, jid, plugins=("xep_0077",))
    try:
        disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        client.xmpp.add_event_handler("disconnected", lambda _: resolve(disconnected))
        await client.xmpp.plugin["xep_0077"].cancel_registration(timeout=10)
        async with asyncio.timeout(10):
            await disconnected  # the server ends the removed account's session
    finally:
        await client.stop()
    assert not await can_log_in(server, jid, PASSWORD)


async def test_cancel_registration_addressed_to_the_server_with_aioxmpp(
    server: XmppdServer,
) -> None:
    jid = await new_account(server, "cancelaio")
    client = Aio(server, jid, PASSWORD)
    await client.start()
    destroyed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    client.client.on_stream_destroyed.connect(lambda *_: resolve(destroyed))
    service = client.client.summon(aioxmpp.ibr.RegistrationService)
    # The result comes just before the stream error that ends the session; aioxmpp may
    # see the stream die first and raise (its documentation says so).
    with contextlib.suppress(aioxmpp.errors.StreamError, ConnectionError):
        await service.cancel_registration()
    try:
        async with asyncio.timeout(10):
            await destroyed  # the server ends the removed account's session
    finally:
        await client.stop()
    with pytest.raises(aiosasl.AuthenticationFailure):
        await Aio(server, jid, PASSWORD).start()
