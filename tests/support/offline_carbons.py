"""Test helpers for offline messages (XEP-0160) and message carbons (XEP-0280): clients
that collect carbons or keep the raw bytes they received, messages with extra payloads,
and a look at what the offline store holds."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from slixmpp.stanza import Message

from tests.support.clients import Slix
from tests.support.e2e import ALL_PLUGINS, online, user_rows
from tests.support.server import XmppdServer
from tests.support.xmlclient import XmlClient

CARBONS = "urn:xmpp:carbons:2"
FORWARD = "urn:xmpp:forward:0"
HINTS = "urn:xmpp:hints"
DELAY = "urn:xmpp:delay"
CARBON_PLUGINS = (*ALL_PLUGINS, "xep_0297", "xep_0280")
OFFLINE_PLUGINS = (*ALL_PLUGINS, "xep_0203")


@dataclass
class Resource:
    """A slixmpp resource and the carbons it received (events of the xep_0280 plugin,
    which keeps only those whose 'from' is the account's bare JID, as XEP-0280 §11
    requires)."""

    client: Slix
    received: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    sent: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.client.xmpp.add_event_handler("carbon_received", self.received.put_nowait)
        self.client.xmpp.add_event_handler("carbon_sent", self.sent.put_nowait)

    @property
    def jid(self) -> str:
        return self.client.jid

    async def enable(self) -> None:
        await self.client.xmpp.plugin["xep_0280"].enable(timeout=10)

    async def disable(self) -> None:
        await self.client.xmpp.plugin["xep_0280"].disable(timeout=10)


async def resource(
    server: XmppdServer, jid: str, name: str, *, priority: int = 0, carbons: bool = True
) -> Resource:
    """An available slixmpp resource ``jid/name``, with carbons enabled or not."""
    res = Resource(
        await online(server, jid, resource=name, priority=priority, plugins=CARBON_PLUGINS)
    )
    if carbons:
        await res.enable()
    return res


def send_message(
    client: Slix,
    to: str,
    body: str | None,
    *,
    type: str | None = "chat",
    payloads: Iterable[str] = (),
    id: str | None = None,
) -> None:
    """Send a message from slixmpp with extra payload elements given as XML text."""
    msg = client.xmpp.make_message(mto=to, mbody=body, mtype=type)
    if type is None:
        del msg["type"]
    if id is not None:
        msg["id"] = id
    for xml in payloads:
        msg.xml.append(ET.fromstring(xml))
    msg.send()


async def ping_server(client: Slix) -> None:
    """A round trip to the server on the client's stream. The server handles a
    session's stanzas one after the other, so when the answer arrives everything the
    client sent before has been handled, and what the server sent back was written."""
    await client.xmpp.plugin["xep_0199"].send_ping(client.server.domain, timeout=10)


async def server_features(client: Slix) -> set[str]:
    info = await client.xmpp.plugin["xep_0030"].get_info(jid=client.server.domain, timeout=10)
    return set(info["disco_info"]["features"])


def forwarded_message(carbon: Message, kind: str) -> Any:
    """The message inside a carbon (slixmpp's view of ``<forwarded><message/>``)."""
    return carbon[f"carbon_{kind}"]


class _RecordingParser:
    """A pull parser that also keeps every byte it is fed."""

    def __init__(self, sink: bytearray) -> None:
        self._sink = sink
        self._parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False)

    def feed(self, data: bytes) -> None:
        self._sink.extend(data)
        self._parser.feed(data)

    def read_events(self) -> Any:
        return self._parser.read_events()


class RecordingClient(XmlClient):
    """A raw client that keeps the bytes the server sent after TLS (``raw``)."""

    raw: bytearray

    def _new_parser(self) -> Any:  # type: ignore[override]
        if not hasattr(self, "raw"):
            self.raw = bytearray()
        self.raw.clear()  # a stream restart: only the last stream's bytes are kept
        return _RecordingParser(self.raw)


async def stored_rows(server: XmppdServer, username: str) -> int:
    """Rows the offline store holds for ``username`` on the server's host."""
    table = "mod_offline__messages"
    return (await user_rows(server, username, [table]))[table]
