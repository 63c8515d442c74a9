"""mod_push with a real app server (XEP-0357 over XEP-0114): the app server is a slixmpp
``ComponentXMPP`` serving its own domain, as deployed push services are. A device with
stream management loses its connection; a message for it reaches the component as a
pubsub publish of the summary form, and the component's answer comes back to the
server. While the device is connected, nothing is pushed. A disconnected app server
does not cost the device its registration; an app server that refuses does. On SQLite
and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.support.e2e import new_account
from tests.support.push import (
    PUBLISH_OPTIONS,
    SUMMARY,
    ComponentAppServer,
    chat,
    device,
    drop,
    enable,
    logged,
    login,
    no_push_before_marker,
    registration_rows,
)
from tests.support.server import DEFAULT_TEST_MODULES, XmppdServer, running_server
from tests.support.xmlclient import error_condition, tag

APP = "push.localhost"
SECRET = "app-server-secret"
_nodes = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[XmppdServer]:
    """xmppd with mod_offline and mod_push, and the app server's component domain.

    Pushes are not spaced in time (``min_interval = 0``): a push that should not happen
    would go out at once, so a later marker push proves it did not.
    """
    modules = {**DEFAULT_TEST_MODULES, "offline": {}, "push": {"min_interval": "0s"}}
    with running_server(
        tmp_path_factory.mktemp(f"xmppd-push-component-{request.param}"),
        backend=request.param,
        modules=modules,
        extra="[c2s]\nresume_timeout = '60s'\n",
        components={APP: SECRET},
    ) as srv:
        yield srv
        assert srv.process.poll() is None, "xmppd exited"
        log = srv.log_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
        assert SECRET not in log


def node() -> str:
    return f"device-{next(_nodes)}"


async def test_hibernating_device_is_pushed_through_the_component(server: XmppdServer) -> None:
    app = await ComponentAppServer.start(server, APP, SECRET)
    user = await new_account(server, "dev")
    contact_jid = await new_account(server, "contact")
    contact = await login(server, contact_jid, resource="c")
    phone = await device(server, user)  # stream management with resume, available
    try:
        the_node = node()
        reply = await enable(phone, APP, the_node, {"secret": "device-token"})
        assert reply.get("type") == "result", error_condition(reply)

        # Connected and active: the message reaches the phone, and nothing is pushed.
        chat(contact, user, "you are right here")
        got = await phone.expect(lambda el: el.tag == tag("message"))
        assert got.findtext(tag("body")) == "you are right here"
        await no_push_before_marker(server, app, contact)

        # The phone loses its connection (no </stream:stream>): the session hibernates.
        await drop(phone, contact)
        chat(contact, user, "hello while you sleep")
        push = await app.next_push()
        assert push.stanza.get("from") == user
        assert push.stanza.get("to") == APP
        assert push.node == the_node
        assert push.summary == {
            "FORM_TYPE": SUMMARY,
            "message-count": "1",
            "last-message-sender": contact_jid,
        }
        assert b"hello while you sleep" not in push.raw  # no body by default
        assert push.publish_options == {"FORM_TYPE": PUBLISH_OPTIONS, "secret": "device-token"}
        app.answer(push)  # a result, written by slixmpp

        # The result was taken: the registration stands, and the count goes on.
        chat(contact, phone.jid, "and again")
        push = await app.next_push()
        assert (push.node, push.count) == (the_node, 2)
        app.answer(push)
        assert await registration_rows(server, user.split("@")[0]) == 1
    finally:
        await phone.close()
        await contact.close()
        await app.close()


async def test_app_server_absence_keeps_and_refusal_ends_the_registration(
    server: XmppdServer,
) -> None:
    user = await new_account(server, "dev")
    username = user.split("@")[0]
    contact = await login(server, await new_account(server, "contact"), resource="c")
    phone = await login(server, user)
    the_node = node()
    assert (await enable(phone, APP, the_node)).get("type") == "result"
    await phone.close()  # offline: messages are stored and pushed
    try:
        # Nobody serves push.localhost: the push bounces with a temporary error, and
        # the registration stays.
        chat(contact, user, "while the app server is down")
        await logged(
            server,
            f"app server {APP} answered a push for {user} with service-unavailable (wait)",
        )
        assert await registration_rows(server, username) == 1

        # Back: the next push reaches it, with the count of both messages.
        app = await ComponentAppServer.start(server, APP, SECRET)
        try:
            chat(contact, user, "the app server is back")
            push = await app.next_push()
            assert (push.node, push.count) == (the_node, 2)
            # A refusal (slixmpp's error stanza) disables the registration (§8).
            app.answer(push, "item-not-found")
            await app.ping()  # the error reached the server before the next message
            chat(contact, user, "no longer pushed")
            await no_push_before_marker(server, app, contact)
            assert await registration_rows(server, username) == 0
        finally:
            await app.close()
    finally:
        await contact.close()
