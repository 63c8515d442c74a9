"""Test helpers for push notifications (XEP-0357): test "app servers" that receive the
pushes and answer them (a real external component, XEP-0114, or a second local account
addressed by its full JID), devices with stream management that can lose their
connection, and what the push table holds."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Protocol
from xml.sax.saxutils import quoteattr

from lxml import etree

from tests.support.component import SlixComponent, ctag
from tests.support.e2e import PASSWORD, new_account, user_rows
from tests.support.server import XmppdServer
from tests.support.xmlclient import Element, XmlClient, attrs, tag, text

PUSH = "urn:xmpp:push:0"
PUBSUB = "http://jabber.org/protocol/pubsub"
DATA = "jabber:x:data"
SM = "urn:xmpp:sm:3"
PING = "<ping xmlns='urn:xmpp:ping'/>"
SUMMARY = "urn:xmpp:push:summary"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"

_ids = itertools.count()


def form_fields(form: Element | None) -> dict[str, str]:
    """``var -> value`` of a data form."""
    if form is None:
        return {}
    return {
        f.get("var", ""): f.findtext(f"{{{DATA}}}value") or ""
        for f in form.iterfind(f"{{{DATA}}}field")
    }


@dataclass
class Push:
    """A push as the app server received it."""

    stanza: Element
    node: str
    summary: dict[str, str]
    publish_options: dict[str, str] | None

    @property
    def count(self) -> int:
        return int(self.summary["message-count"])

    @property
    def raw(self) -> bytes:
        return etree.tostring(self.stanza)


def is_push(el: Element) -> bool:
    """A pubsub publish IQ set, as a client or a component stream delivers it."""
    return (
        el.tag in (tag("iq"), ctag("iq"))
        and el.get("type") == "set"
        and el.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish") is not None
    )


def parse_push(el: Element) -> Push:
    pubsub = el.find(f"{{{PUBSUB}}}pubsub")
    assert pubsub is not None and len(el) == 1, etree.tostring(el)
    publish = pubsub.find(f"{{{PUBSUB}}}publish")
    assert publish is not None
    items = publish.findall(f"{{{PUBSUB}}}item")
    assert len(items) == 1, etree.tostring(el)
    form = items[0].find(f"{{{PUSH}}}notification/{{{DATA}}}x")
    assert form is not None and form.get("type") == "submit", etree.tostring(el)
    options = pubsub.find(f"{{{PUBSUB}}}publish-options")
    return Push(
        stanza=el,
        node=publish.get("node", ""),
        summary=form_fields(form),
        publish_options=None if options is None else form_fields(options.find(f"{{{DATA}}}x")),
    )


class AppServer:
    """A local account standing in for a XEP-0357 app server, on resource ``app``."""

    def __init__(self, client: XmlClient) -> None:
        self.client = client

    @classmethod
    async def start(cls, server: XmppdServer) -> AppServer:
        jid = await new_account(server, "appserver")
        return cls(await XmlClient.login(server, jid, PASSWORD, resource="app"))

    @property
    def jid(self) -> str:
        """The full JID: an IQ to the bare JID would be answered by the server itself."""
        return self.client.jid

    async def next_push(self, timeout: float = 20) -> Push:
        """The earliest push received and not taken yet (waiting for one if needed)."""
        el = await self.client.expect(is_push, timeout)
        return parse_push(el)

    def answer(self, push: Push, error: str | None = None, type: str = "cancel") -> None:
        """Answer with a result, or with the error ``error`` of type ``type``."""
        el = push.stanza
        if error is None:
            self.client.send(f"<iq{attrs(type='result', id=el.get('id'), to=el.get('from'))}/>")
            return
        self.client.send(
            f"<iq{attrs(type='error', id=el.get('id'), to=el.get('from'))}>"
            f"<error type={quoteattr(type)}><{error} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
            "</error></iq>"
        )

    async def ping(self) -> None:
        """A round trip: everything this client sent before has been handled."""
        await self.client.iq("get", PING, to=self.client.domain)

    async def close(self) -> None:
        await self.client.close()


class ComponentAppServer:
    """A XEP-0357 app server that is a real external component (slixmpp
    ``ComponentXMPP`` on XEP-0114), as deployed push services are."""

    def __init__(self, component: SlixComponent) -> None:
        self.component = component

    @classmethod
    async def start(cls, server: XmppdServer, domain: str, secret: str) -> ComponentAppServer:
        return cls(await SlixComponent(server, domain, secret).connected())

    @property
    def jid(self) -> str:
        return self.component.domain

    async def next_push(self, timeout: float = 20) -> Push:
        return parse_push(await self.component.next(is_push, timeout))

    def answer(self, push: Push, error: str | None = None, type: str = "cancel") -> None:
        """Answer as slixmpp does: a result, or an error ``error`` of type ``type``."""
        if error is None:
            self.component.reply_result(push.stanza)
        else:
            self.component.reply_error(push.stanza, error, type)

    async def ping(self) -> None:
        """A round trip: everything this component sent before has been handled."""
        await self.component.ping()

    async def close(self) -> None:
        await self.component.stop()


class PushReceiver(Protocol):
    """What the push tests need from an app server, whatever kind it is."""

    @property
    def jid(self) -> str: ...

    async def next_push(self, timeout: float = 20) -> Push: ...

    def answer(self, push: Push, error: str | None = None, type: str = "cancel") -> None: ...


async def no_push_before_marker(server: XmppdServer, app: PushReceiver, sender: XmlClient) -> None:
    """Prove that ``sender``'s earlier messages caused no push to ``app``.

    A fresh, offline account with its own registration gets a message from ``sender``
    now. The server handles ``sender``'s messages in order, and routes each push before
    it handles the next message, so the first push ``app`` receives must be this one.
    """
    user = await new_account(server, "marker")
    marker_node = f"marker-{next(_ids)}"
    client = await login(server, user, resource="m")
    assert (await enable(client, app.jid, marker_node)).get("type") == "result"
    await client.close()
    chat(sender, user, "marker")
    push = await app.next_push()
    assert push.node == marker_node, f"an unexpected push: {push.raw!r}"
    app.answer(push)


async def logged(server: XmppdServer, line: str, timeout: float = 10) -> None:
    """Wait until the server's log holds ``line`` (for what only the log can tell)."""
    async with asyncio.timeout(timeout):
        # A file written by another process: there is no event to wait for.
        while line not in server.log_text():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def ping(client: XmlClient) -> None:
    """A round trip to the server on ``client``'s stream."""
    reply = await client.iq("get", PING, to=client.domain)
    assert reply.get("type") == "result"


async def login(server: XmppdServer, jid: str, resource: str = "phone") -> XmlClient:
    """A client that is logged in, without presence (it sends messages)."""
    return await XmlClient.login(server, jid, PASSWORD, resource=resource)


async def device(server: XmppdServer, jid: str, resource: str = "phone") -> XmlClient:
    """A phone: logged in, stream management with resumption enabled, and available."""
    client = await XmlClient.login(server, jid, PASSWORD, resource=resource)
    client.send(f"<enable xmlns='{SM}' resume='true'/>")
    enabled = await client.expect(lambda el: el.tag == f"{{{SM}}}enabled")
    assert enabled.get("resume") == "true"
    client.send("<presence/>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client


def enable_payload(app: str | None, node: str | None, options: dict[str, str] | None = None) -> str:
    """``<enable/>`` with publish-options ``options`` (none when ``None``)."""
    form = ""
    if options is not None:
        fields = "".join(
            f"<field var={quoteattr(k)}><value>{text(v)}</value></field>"
            for k, v in {"FORM_TYPE": PUBLISH_OPTIONS, **options}.items()
        )
        form = f"<x xmlns='{DATA}' type='submit'>{fields}</x>"
    return f"<enable xmlns='{PUSH}'{attrs(jid=app, node=node)}>{form}</enable>"


async def enable(
    client: XmlClient,
    app: str | None,
    node: str | None,
    options: dict[str, str] | None = None,
) -> Element:
    """Send an enable to the client's own account; the IQ reply."""
    return await client.iq("set", enable_payload(app, node, options), to=None)


async def disable(client: XmlClient, app: str, node: str | None = None) -> Element:
    return await client.iq("set", f"<disable xmlns='{PUSH}'{attrs(jid=app, node=node)}/>", to=None)


def chat(sender: XmlClient, to: str, body: str) -> str:
    """Send a chat message; its id."""
    msg_id = f"m{next(_ids)}"
    sender.send(
        f"<message{attrs(to=to, type='chat', id=msg_id)}><body>{text(body)}</body></message>"
    )
    return msg_id


async def drop(phone: XmlClient, witness: XmlClient) -> None:
    """Cut the phone's TCP connection without closing its stream (it loses signal).

    The server learns of it asynchronously and nothing tells a client that a session
    now hibernates. The connection is closed on our side first; then round trips on
    another stream make the server go through several turns of its event loop, in
    which it handles the end of the connection that came before them.
    """
    phone.abort()
    await phone.wait_closed()
    for _ in range(3):
        await ping(witness)


async def registration_rows(server: XmppdServer, username: str) -> int:
    """Rows the push table holds for ``username``."""
    table = "mod_push__registrations"
    return (await user_rows(server, username, [table]))[table]
