"""XEP-0060 service tests: raw IQs to the PubSub service and what slixmpp's plugin gives."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Final
from xml.sax.saxutils import quoteattr

from lxml import etree

from tests.support.clients import Slix
from tests.support.pep import DATA, OWNER, PUBSUB, TEST_NS, form
from tests.support.xmlclient import Element, XmlClient, attrs, tag

SUBSCRIBE_OPTIONS: Final = "http://jabber.org/protocol/pubsub#subscribe_options"
EVENT: Final = "http://jabber.org/protocol/pubsub#event"


async def pubsub_iq(client: XmlClient, service: str, type: str, inner: str) -> Element:
    return await client.iq(
        type, f"<pubsub xmlns='{PUBSUB}'>{inner}</pubsub>", to=service, timeout=20
    )


async def owner_iq(client: XmlClient, service: str, type: str, inner: str) -> Element:
    return await client.iq(
        type, f"<pubsub xmlns='{OWNER}'>{inner}</pubsub>", to=service, timeout=20
    )


async def create(
    client: XmlClient, service: str, node: str | None, config: Mapping[str, str] | None = None
) -> Element:
    configure = ""
    if config is not None:
        configure = f"<configure>{form(NODE_CONFIG, config)}</configure>"
    return await pubsub_iq(client, service, "set", f"<create{attrs(node=node)}/>{configure}")


NODE_CONFIG: Final = "http://jabber.org/protocol/pubsub#node_config"


async def subscribe(client: XmlClient, service: str, node: str, jid: str | None = None) -> Element:
    who = jid or client.jid.split("/", 1)[0]
    return await pubsub_iq(client, service, "set", f"<subscribe{attrs(node=node, jid=who)}/>")


def fields(reply: Element) -> dict[str, list[str]]:
    """var -> values of the data form in a reply."""
    found = {}
    for field in reply.iter(f"{{{DATA}}}field"):
        found[field.get("var", "")] = [v.text or "" for v in field.findall(f"{{{DATA}}}value")]
    return found


def from_service(service: str, node: str, kind: str = "items") -> Callable[[Element], bool]:
    """A headline from the service with ``<event><kind node=node/>``."""

    def match(el: Element) -> bool:
        if el.tag != tag("message") or el.get("from") != service:
            return False
        found = el.find(f"{{{EVENT}}}event/{{{EVENT}}}{kind}")
        return found is not None and found.get("node") == node

    return match


def entries(message: Element) -> list[tuple[str, str | None]]:
    """(item id, entry text or None without payload) of an items event."""
    out = []
    for item in message.findall(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item"):
        entry = item.find(f"{{{TEST_NS}}}entry")
        out.append((item.get("id", ""), None if entry is None else entry.text or ""))
    return out


def listed(reply: Element, kind: str, namespace: str = PUBSUB) -> list[dict[str, str]]:
    """The attributes of each ``<kind/>`` (subscription, affiliation) in a reply."""
    return [dict(el.attrib) for el in reply.iter(f"{{{namespace}}}{kind}")]


def node_items(reply: Element) -> list[tuple[str, str]]:
    assert reply.get("type") == "result", etree.tostring(reply)
    items = reply.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item")
    return [(i.get("id", ""), i.findtext(f"{{{TEST_NS}}}entry") or "") for i in items]


def slix_events(client: Slix, kind: str) -> Any:
    """A queue of slixmpp's ``pubsub_<kind>`` events (publish, retract, purge, delete)."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    client.xmpp.add_event_handler(f"pubsub_{kind}", queue.put_nowait)
    return queue


def options_submit(node: str, jid: str, values: Mapping[str, str]) -> str:
    inner = f"<field var='FORM_TYPE' type='hidden'><value>{SUBSCRIBE_OPTIONS}</value></field>"
    for var, value in values.items():
        inner += f"<field var={quoteattr(var)}><value>{value}</value></field>"
    return (
        f"<options{attrs(node=node, jid=jid)}><x xmlns='{DATA}' type='submit'>{inner}</x></options>"
    )
