"""XEP-0163 (PEP) from raw clients: publish and read items, announce XEP-0115 caps and
answer the server's disco#info query about them, wait for event notifications."""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from tests.support.e2e import PASSWORD, user_rows
from tests.support.server import XmppdServer
from tests.support.xmlclient import CLIENT, Element, XmlClient, attrs, error_condition, tag

PUBSUB: Final = "http://jabber.org/protocol/pubsub"
OWNER: Final = "http://jabber.org/protocol/pubsub#owner"
EVENT: Final = "http://jabber.org/protocol/pubsub#event"
ERRORS: Final = "http://jabber.org/protocol/pubsub#errors"
PUBLISH_OPTIONS: Final = "http://jabber.org/protocol/pubsub#publish-options"
NODE_CONFIG: Final = "http://jabber.org/protocol/pubsub#node_config"
CAPS: Final = "http://jabber.org/protocol/caps"
DISCO_INFO: Final = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS: Final = "http://jabber.org/protocol/disco#items"
DATA: Final = "jabber:x:data"
DELAY: Final = "urn:xmpp:delay"
TEST_NS: Final = "urn:xmppd:test:pep"
CLIENT_NODE: Final = "https://xmppd.test/pep-client"
IDENTITY: Final = ("client", "pc", "", "pep test client")

_ids = itertools.count()
_nodes = itertools.count()


def fresh_node(prefix: str = "urn:xmppd:test:node") -> str:
    """A node name no other test uses (so caps hashes differ from test to test)."""
    return f"{prefix}:{next(_nodes)}"


def bare(jid: str) -> str:
    return jid.split("/", 1)[0]


# ----------------------------------------------------------------------------- caps


def caps_ver(features: Iterable[str], identities: Iterable[tuple[str, str, str, str]]) -> str:
    """XEP-0115 §5.1 (no forms): SHA-1 of 'cat/type/lang/name<' + 'feature<', base64."""
    text = "".join(f"{c}/{t}/{lang}/{n}<" for c, t, lang, n in sorted(identities))
    text += "".join(f"{f}<" for f in sorted(features))
    return base64.b64encode(hashlib.sha1(text.encode()).digest()).decode()


def client_features(*interests: str) -> list[str]:
    """A client's features: disco, caps and ``<node>+notify`` for each node."""
    return [DISCO_INFO, CAPS, *(f"{node}+notify" for node in interests)]


def _disco_answer(features: Iterable[str]) -> str:
    category, kind, _, name = IDENTITY
    inner = f"<identity{attrs(category=category, type=kind, name=name)}/>"
    inner += "".join(f"<feature var={quoteattr(f)}/>" for f in features)
    return inner


def is_caps_query(client: XmlClient) -> Callable[[Element], bool]:
    def match(el: Element) -> bool:
        return (
            el.tag == tag("iq")
            and el.get("type") == "get"
            and el.get("from") == client.domain
            and el.find(f"{{{DISCO_INFO}}}query") is not None
        )

    return match


async def answer_caps_query(client: XmlClient, features: Iterable[str]) -> str:
    """Wait for the server's disco#info query and answer it; returns the node asked."""
    query = await client.expect(is_caps_query(client), 20)
    node = query[0].get("node", "")
    client.send(
        f"<iq{attrs(type='result', id=query.get('id'), to=query.get('from'))}>"
        f"<query xmlns='{DISCO_INFO}'{attrs(node=node or None)}>{_disco_answer(features)}</query>"
        "</iq>"
    )
    return node


async def announce(
    client: XmlClient, features: list[str], *, ver: str | None = None, priority: int | None = None
) -> None:
    """Send available presence with caps for ``features`` (or the claimed ``ver``) and
    answer the server's disco#info query with ``features``."""
    claimed = ver or caps_ver(features, [IDENTITY])
    prio = f"<priority>{priority}</priority>" if priority is not None else ""
    client.send(
        f"<presence>{prio}<c xmlns='{CAPS}' hash='sha-1'"
        f"{attrs(node=CLIENT_NODE, ver=claimed)}/></presence>"
    )
    asked = await answer_caps_query(client, features)
    assert asked == f"{CLIENT_NODE}#{claimed}"


# ----------------------------------------------------------------------------- sessions


async def login(server: XmppdServer, jid: str, resource: str = "r") -> XmlClient:
    """A raw client that sent initial presence without caps."""
    client = await XmlClient.login(server, jid, PASSWORD, resource=resource)
    client.send("<presence/>")
    await client.expect(lambda el: el.tag == tag("presence") and el.get("from") == client.jid)
    return client


def _presence_of(kind: str, sender: str) -> Callable[[Element], bool]:
    return lambda el: (
        el.tag == tag("presence") and el.get("type") == kind and bare(el.get("from", "")) == sender
    )


async def share_presence(owner: XmlClient, contact: XmlClient) -> None:
    """``contact`` subscribes to ``owner``'s presence and ``owner`` approves: the owner's
    roster then shows the contact with subscription 'from' (both must be available)."""
    owner_bare, contact_bare = bare(owner.jid), bare(contact.jid)
    contact.send(f"<presence type='subscribe' to='{owner_bare}'/>")
    await owner.expect(_presence_of("subscribe", contact_bare), 20)
    owner.send(f"<presence type='subscribed' to='{contact_bare}'/>")
    await contact.expect(_presence_of("subscribed", owner_bare), 20)


async def close(*clients: XmlClient) -> None:
    for client in clients:
        await client.close()


# ----------------------------------------------------------------------------- pubsub


def form(form_type: str, fields: Mapping[str, str], *, kind: str = "submit") -> str:
    inner = f"<field var='FORM_TYPE' type='hidden'><value>{form_type}</value></field>"
    for var, value in fields.items():
        inner += f"<field var={quoteattr(var)}><value>{escape(value)}</value></field>"
    return f"<x xmlns='{DATA}' type='{kind}'>{inner}</x>"


def entry(text: str) -> str:
    """A test payload."""
    return f"<entry xmlns='{TEST_NS}'>{escape(text)}</entry>"


async def publish(
    client: XmlClient,
    node: str,
    payload: str | None,
    *,
    item_id: str | None = None,
    options: Mapping[str, str] | None = None,
    to: str | None = None,
) -> Element:
    """Publish one item (``payload`` XML); the IQ reply."""
    item = f"<item{attrs(id=item_id)}>{payload or ''}</item>"
    extra = ""
    if options is not None:
        extra = f"<publish-options>{form(PUBLISH_OPTIONS, options)}</publish-options>"
    return await client.iq(
        "set",
        f"<pubsub xmlns='{PUBSUB}'><publish{attrs(node=node)}>{item}</publish>{extra}</pubsub>",
        to=to,
        timeout=20,
    )


def published_id(reply: Element) -> str:
    assert reply.get("type") == "result", etree.tostring(reply)
    item = reply.find(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}publish/{{{PUBSUB}}}item")
    assert item is not None, etree.tostring(reply)
    return item.get("id", "")


async def get_items(
    client: XmlClient,
    owner: str | None,
    node: str,
    *,
    max_items: int | None = None,
    ids: Iterable[str] = (),
) -> Element:
    inner = "".join(f"<item id={quoteattr(i)}/>" for i in ids)
    max_attr = None if max_items is None else str(max_items)
    return await client.iq(
        "get",
        f"<pubsub xmlns='{PUBSUB}'><items{attrs(node=node, max_items=max_attr)}>{inner}</items>"
        "</pubsub>",
        to=owner,
        timeout=20,
    )


def texts(reply: Element) -> list[tuple[str, str]]:
    """(item id, entry text) of an items result, in order."""
    assert reply.get("type") == "result", etree.tostring(reply)
    items = reply.findall(f"{{{PUBSUB}}}pubsub/{{{PUBSUB}}}items/{{{PUBSUB}}}item")
    return [(i.get("id", ""), i.findtext(f"{{{TEST_NS}}}entry") or "") for i in items]


async def owner_iq(client: XmlClient, type: str, inner: str, to: str | None = None) -> Element:
    return await client.iq(type, f"<pubsub xmlns='{OWNER}'>{inner}</pubsub>", to=to, timeout=20)


def error_of(reply: Element) -> tuple[str | None, str | None]:
    """(defined condition, pubsub#errors condition) of an error reply."""
    assert reply.get("type") == "error", etree.tostring(reply)
    app = None
    err = reply.find(f"{{{CLIENT}}}error")
    if err is not None:
        for el in err:
            if etree.QName(el).namespace == ERRORS:
                app = etree.QName(el).localname
    return error_condition(reply), app


async def disco_nodes(client: XmlClient, owner: str) -> list[str]:
    reply = await client.iq("get", f"<query xmlns='{DISCO_ITEMS}'/>", to=owner, timeout=20)
    assert reply.get("type") == "result", etree.tostring(reply)
    return sorted(i.get("node", "") for i in reply.iter(f"{{{DISCO_ITEMS}}}item"))


# ----------------------------------------------------------------------------- events


def event_of(owner: str, node: str, kind: str = "items") -> Callable[[Element], bool]:
    """Matches a headline from ``owner`` whose ``<event/>`` has ``<kind node=node>``."""

    def match(el: Element) -> bool:
        if el.tag != tag("message") or el.get("from") != owner or el.get("type") != "headline":
            return False
        found = el.find(f"{{{EVENT}}}event/{{{EVENT}}}{kind}")
        return found is not None and found.get("node") == node

    return match


def event_items(message: Element) -> list[tuple[str, str]]:
    """(item id, entry text) of an items event."""
    items = message.findall(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}item")
    return [(i.get("id", ""), i.findtext(f"{{{TEST_NS}}}entry") or "") for i in items]


def retracted(message: Element) -> list[str]:
    found = message.findall(f"{{{EVENT}}}event/{{{EVENT}}}items/{{{EVENT}}}retract")
    return [r.get("id", "") for r in found]


async def pep_rows(server: XmppdServer, username: str) -> dict[str, int]:
    """Rows of this user in the module's tables."""
    return await user_rows(server, username, ["mod_pep__nodes", "mod_pep__items"])
