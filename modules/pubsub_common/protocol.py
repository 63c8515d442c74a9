"""Reading XEP-0060 requests and building event notifications, for PEP and the service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from xmppd.api import JID, ns
from xmppd.api.stanza import Element, child, copy, element, new_id, parse, payload, serialize
from xmppd_modules.pubsub_common.common import MAX_NAME_BYTES, NS_EVENT, NS_PUBSUB
from xmppd_modules.pubsub_common.errors import (
    BAD_REQUEST,
    INVALID_PAYLOAD,
    ITEM_REQUIRED,
    NODEID_REQUIRED,
    NOT_ACCEPTABLE,
    PAYLOAD_REQUIRED,
    PAYLOAD_TOO_BIG,
)

P: Final = f"{{{NS_PUBSUB}}}"


def check_name(value: str, what: str) -> str:
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise NOT_ACCEPTABLE(f"{what} longer than {MAX_NAME_BYTES} bytes")
    return value


def node_name(action: Element) -> str:
    """The action's 'node' (``bad-request`` + ``<nodeid-required/>`` without one)."""
    name = action.get("node")
    if not name:
        raise NODEID_REQUIRED()
    return check_name(name, "node name")


def action_of(pubsub: Element, *, besides: tuple[str, ...] = ()) -> Element:
    """The pubsub child that says what to do (not ``publish-options``/``configure``)."""
    for el in pubsub:
        if isinstance(el.tag, str) and el.tag not in besides:
            return el
    raise BAD_REQUEST("no pubsub action")


def local_name(el: Element) -> str:
    return el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""


@dataclass(frozen=True, slots=True)
class Publication:
    item_id: str
    payload: str
    """The payload element, serialized."""


def publication(action: Element, *, max_size: int) -> Publication:
    """The one item of a ``<publish/>`` with its one payload (XEP-0060 §7.1.3); an item
    without id gets a generated one."""
    items = action.findall(f"{P}item")
    if not items:
        raise ITEM_REQUIRED()
    if len(items) > 1:
        raise INVALID_PAYLOAD("one item per publish")
    elements = [el for el in items[0] if isinstance(el.tag, str)]
    if not elements:
        raise PAYLOAD_REQUIRED()
    if len(elements) > 1:
        raise INVALID_PAYLOAD("an item has one payload")
    item_id = check_name(items[0].get("id") or new_id(), "item id")
    data = serialize(elements[0])
    if len(data) > max_size:
        raise PAYLOAD_TOO_BIG()
    return Publication(item_id, data.decode("utf-8"))


def retraction(action: Element) -> str:
    """The item id of a ``<retract/>`` (exactly one item with an id)."""
    items = action.findall(f"{P}item")
    if len(items) != 1 or not items[0].get("id"):
        raise ITEM_REQUIRED()
    return items[0].get("id", "")


def should_notify_retract(action: Element, default: bool) -> bool:
    asked = action.get("notify")
    return asked in ("1", "true") if asked is not None else default


def items_event(name: str, item_id: str, data: str | None) -> Element:
    """``<event><items node><item id>payload</item></items></event>``."""
    event = payload(NS_EVENT, "event")
    item = child(child(event, "items", {"node": name}), "item", {"id": item_id})
    if data is not None:
        item.append(parse(data.encode("utf-8")))
    return event


def retract_event(name: str, item_id: str) -> Element:
    event = payload(NS_EVENT, "event")
    child(child(event, "items", {"node": name}), "retract", {"id": item_id})
    return event


def node_event(kind: str, name: str) -> Element:
    """``<event><purge node/></event>`` or ``<event><delete node/></event>``."""
    event = payload(NS_EVENT, "event")
    child(event, kind, {"node": name})
    return event


def stamp(published_at: int) -> str:
    """XEP-0082 date-time of a time stamp in microseconds."""
    moment = datetime.fromtimestamp(published_at / 1_000_000, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def notifications(
    sender: JID, recipients: list[JID], event: Element, *, delayed: int | None = None
) -> list[Element]:
    """A headline carrying ``event`` from ``sender`` to each recipient (``delayed``: the
    item's time stamp, as ``<delay/>``)."""
    messages = []
    for index, to in enumerate(recipients):
        message = element(
            "message", {"from": str(sender), "to": str(to), "type": "headline", "id": new_id()}
        )
        message.append(event if index == len(recipients) - 1 else copy(event))
        if delayed is not None:
            child(
                message,
                "delay",
                {"from": str(sender), "stamp": stamp(delayed)},
                namespace=ns.DELAY,
            )
        messages.append(message)
    return messages


def items_result(name: str, stored: list[tuple[str, str]]) -> Element:
    """``<pubsub><items node>`` with (item id, payload) pairs."""
    result = payload(NS_PUBSUB, "pubsub")
    items = child(result, "items", {"node": name})
    for item_id, data in stored:
        child(items, "item", {"id": item_id}).append(parse(data.encode("utf-8")))
    return result
