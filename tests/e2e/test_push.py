"""mod_push end to end (XEP-0357): a device enables push; while its session hibernates
(XEP-0198) or it is offline, messages for it make the server publish a summary to the app
server (here a second local account, addressed by its full JID); never while the device
is connected; disable, and app-server errors, stop the pushes. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from tests.support.e2e import new_account
from tests.support.muc import create_room, groupchat, join, next_groupchat
from tests.support.offline_carbons import stored_rows
from tests.support.push import (
    PUBLISH_OPTIONS,
    PUSH,
    SUMMARY,
    AppServer,
    chat,
    device,
    disable,
    drop,
    enable,
    enable_payload,
    login,
    no_push_before_marker,
    ping,
    registration_rows,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import error_condition, tag

_nodes = itertools.count()
CSI = "urn:xmpp:csi:0"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """xmppd with mod_offline and mod_push, once per storage backend.

    Pushes are not spaced in time here (``min_interval = 0``): a push that should not
    happen would go out at once, so a later marker push proves it did not.
    """
    modules = {**DEFAULT_TEST_MODULES, "offline": {}, "push": {"min_interval": "0s"}}
    tmp = tmp_path_factory.mktemp(f"xmppd-push-{request.param}")
    with running_server(
        tmp,
        backend=request.param,
        modules=modules,
        extra="[c2s]\nresume_timeout = '60s'\n",
    ) as srv:
        yield srv
        assert srv.process.poll() is None, "xmppd exited"
        log = srv.log_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


def node() -> str:
    return f"node-{next(_nodes)}"


async def test_hibernating_device_is_pushed(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact_jid = await new_account(server, "contact")
    contact = await login(server, contact_jid, resource="c")
    phone = await device(server, user)
    try:
        # The account advertises push, and the device registers with publish-options.
        info = await phone.iq(
            "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=user
        )
        assert PUSH in {f.get("var") for f in info.iter("{*}feature")}
        the_node = node()
        reply = await enable(phone, app.jid, the_node, {"secret": "s3cret"})
        assert reply.get("type") == "result", error_condition(reply)

        await drop(phone, contact)
        chat(contact, user, "hello while you sleep")
        push = await app.next_push()
        assert push.stanza.get("from") == user
        assert push.stanza.get("to") == app.jid
        assert push.node == the_node
        assert push.summary == {
            "FORM_TYPE": SUMMARY,
            "message-count": "1",
            "last-message-sender": contact_jid,
        }
        assert b"hello while you sleep" not in push.raw  # no body by default
        assert push.publish_options == {"FORM_TYPE": PUBLISH_OPTIONS, "secret": "s3cret"}
        app.answer(push)

        # To the full JID too; the count goes on until the device checks in.
        chat(contact, phone.jid, "and again")
        push = await app.next_push()
        assert push.node == the_node
        assert push.count == 2
        app.answer(push)
    finally:
        await phone.close()
        await contact.close()
        await app.close()


async def test_no_push_while_the_device_is_connected(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await device(server, user)
    try:
        assert (await enable(phone, app.jid, node())).get("type") == "result"
        chat(contact, user, "you are right here")
        got = await phone.expect(lambda el: el.tag == tag("message"))
        assert got.findtext(tag("body")) == "you are right here"
        await no_push_before_marker(server, app, contact)
    finally:
        await phone.close()
        await contact.close()
        await app.close()


async def test_disable_stops_pushes(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await login(server, user)
    try:
        first, second = node(), node()
        for n in (first, second):
            assert (await enable(phone, app.jid, n)).get("type") == "result"
        assert (await disable(phone, app.jid, first)).get("type") == "result"
        await phone.close()  # logged out: the registrations stay

        chat(contact, user, "one")
        push = await app.next_push()
        assert push.node == second
        app.answer(push)

        phone = await login(server, user)
        assert (await disable(phone, app.jid)).get("type") == "result"  # every node
        await phone.close()
        assert await registration_rows(server, user.split("@")[0]) == 0
        chat(contact, user, "two")
        await no_push_before_marker(server, app, contact)
    finally:
        await phone.close()
        await contact.close()
        await app.close()


async def test_offline_user_is_pushed_and_the_message_stored(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact_jid = await new_account(server, "contact")
    contact = await login(server, contact_jid, resource="c")
    phone = await device(server, user)
    try:
        the_node = node()
        assert (await enable(phone, app.jid, the_node)).get("type") == "result"
        await phone.close()  # </stream:stream>: gone, not hibernating

        chat(contact, user, "while you were out")
        push = await app.next_push()
        assert push.node == the_node
        assert push.summary["message-count"] == "1"
        assert push.summary["last-message-sender"] == contact_jid
        assert push.publish_options is None
        app.answer(push)
        await ping(contact)  # the message was handled: stored, not bounced
        assert await stored_rows(server, user.split("@")[0]) == 1
        assert contact.pending(lambda el: el.get("type") == "error") == []
    finally:
        await contact.close()
        await app.close()


async def test_app_server_error_disables_the_registration(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await login(server, user)
    try:
        assert (await enable(phone, app.jid, node())).get("type") == "result"
        await phone.close()
        chat(contact, user, "one")
        push = await app.next_push()
        app.answer(push, "item-not-found")
        await app.ping()  # the error reached the server before the next message
        chat(contact, user, "two")
        await no_push_before_marker(server, app, contact)
        assert await registration_rows(server, user.split("@")[0]) == 0
    finally:
        await contact.close()
        await app.close()


async def test_enable_errors_and_account_removal(server: XmppdServer) -> None:
    user = await new_account(server, "dev")
    other = await new_account(server, "other")
    app = f"pushserver@{server.domain}/app"
    phone = await login(server, user)
    try:
        cases = [
            (enable_payload(app, node()), other, "forbidden"),  # someone else's account
            (enable_payload(None, node()), None, "bad-request"),  # no jid
            (enable_payload(app, None), None, "bad-request"),  # no node
            (enable_payload("@bad@", node()), None, "jid-malformed"),
            (enable_payload(user, node()), None, "not-acceptable"),  # the account itself
            (f"<disable xmlns='{PUSH}'/>", None, "bad-request"),
        ]
        for payload, to, condition in cases:
            reply = await phone.iq("set", payload, to=to)
            assert reply.get("type") == "error", payload
            assert error_condition(reply) == condition, payload
        assert await registration_rows(server, other.split("@")[0]) == 0

        assert (await enable(phone, app, node())).get("type") == "result"
        await phone.close()
        username = user.split("@")[0]
        assert await registration_rows(server, username) == 1
        result = await asyncio.to_thread(server.cli, "deluser", user)
        assert result.returncode == 0, result.stderr
        assert await registration_rows(server, username) == 0
    finally:
        await phone.close()


async def test_messages_during_a_push_are_counted_in_the_next(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await login(server, user)
    try:
        assert (await enable(phone, app.jid, node())).get("type") == "result"
        await phone.close()
        for i in range(3):
            chat(contact, user, f"burst {i}")
        first = await app.next_push()
        await ping(contact)  # all three counted while the first push waits for its answer
        app.answer(first)
        if first.count < 3:
            second = await app.next_push()
            assert second.count == 3
            app.answer(second)
        await no_push_before_marker(server, app, contact)
    finally:
        await contact.close()
        await app.close()


# ----------------------------------------------------------------------------- options


@pytest.fixture(scope="module")
def options_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    """Pushes spaced by a second, with bodies, and for CSI-inactive devices; sessions
    hibernate for two seconds; no offline storage (SQLite)."""
    push = {"min_interval": "1s", "include_body": True, "push_when_inactive": True}
    modules = {**DEFAULT_TEST_MODULES, "csi": {}, "push": push}
    with running_server(
        tmp_path_factory.mktemp("xmppd-push-options"),
        modules=modules,
        extra="[c2s]\nresume_timeout = '2s'\n",
    ) as srv:
        yield srv
        assert "Traceback" not in srv.log_text()


async def test_pushes_are_spaced_and_carry_the_body(options_server: XmppdServer) -> None:
    server = options_server
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact_jid = await new_account(server, "contact")
    contact = await login(server, contact_jid, resource="c")
    phone = await login(server, user)
    try:
        assert (await enable(phone, app.jid, node())).get("type") == "result"
        await phone.close()
        chat(contact, user, "first")
        push = await app.next_push()
        assert (push.count, push.summary["last-message-body"]) == (1, "first")
        app.answer(push)
        chat(contact, user, "second")
        chat(contact, user, "third " + "x" * 300)
        # Within min_interval of the first push: one push reports both.
        push = await app.next_push()
        assert push.count == 3
        assert push.summary["last-message-sender"] == contact_jid
        assert push.summary["last-message-body"] == ("third " + "x" * 300)[:256]
        app.answer(push)
    finally:
        await contact.close()
        await app.close()


async def test_inactive_device_is_pushed_when_configured(options_server: XmppdServer) -> None:
    server = options_server
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await device(server, user)
    try:
        the_node = node()
        assert (await enable(phone, app.jid, the_node)).get("type") == "result"
        chat(contact, user, "while active")
        await phone.expect(lambda el: el.findtext(tag("body")) == "while active")
        # This registration never pushed: a wrong push would have gone out at once.
        await no_push_before_marker(server, app, contact)

        phone.send(f"<inactive xmlns='{CSI}'/>")
        await ping(phone)  # the server has handled <inactive/>
        chat(contact, user, "while inactive")
        push = await app.next_push()
        assert push.node == the_node
        assert push.summary["last-message-body"] == "while inactive"
        app.answer(push)
        # CSI holds nothing that has a body: the device got the message as well.
        await phone.expect(lambda el: el.findtext(tag("body")) == "while inactive")
    finally:
        await phone.close()
        await contact.close()
        await app.close()


async def test_a_message_is_pushed_once_when_hibernation_ends(
    options_server: XmppdServer,
) -> None:
    server = options_server
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await device(server, user)
    try:
        assert (await enable(phone, app.jid, node())).get("type") == "result"
        await drop(phone, contact)
        msg_id = chat(contact, user, "never read")
        push = await app.next_push()
        assert push.count == 1
        app.answer(push)
        # No resume: after resume_timeout the unacknowledged message is routed again,
        # finds no session and no offline storage, and comes back to the sender. It was
        # counted and pushed already: no second push.
        bounce = await contact.expect(
            lambda el: el.tag == tag("message") and el.get("id") == msg_id, timeout=20
        )
        assert error_condition(bounce) == "service-unavailable"
        await no_push_before_marker(server, app, contact)
    finally:
        await phone.close()
        await contact.close()
        await app.close()


async def test_groupchat_to_a_hibernating_occupant_is_pushed(server: XmppdServer) -> None:
    app = await AppServer.start(server)
    user = await new_account(server, "dev")
    phone = await device(server, user)
    owner, room, _ = await create_room(server)
    try:
        reply = await enable(phone, app.jid, node())
        assert reply.get("type") == "result", error_condition(reply)
        await join(phone, room, "phone")
        await drop(phone, owner)
        # The occupant's session hibernates: it stays in the room and gets a push.
        await groupchat(owner, room, "meeting now")
        await next_groupchat(owner, room, "meeting now")
        push = await app.next_push()
        assert push.count == 1
        assert push.summary["last-message-sender"] == room
        app.answer(push)
        # A subject change (no body) wakes nobody; the next message does.
        owner.send(f"<message to='{room}' type='groupchat'><subject>later</subject></message>")
        await groupchat(owner, room, "marker")
        push = await app.next_push()
        assert push.count == 2
        app.answer(push)
    finally:
        await phone.close()
        await owner.close()
        await app.close()
