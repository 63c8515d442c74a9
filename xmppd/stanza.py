"""Stanza helpers over lxml elements.

Stanzas are stream-neutral: the top-level element and its content children
(``body``, ``subject``, ``thread``, ``show``, ``status``, ``priority``,
``error``) carry no namespace; the stream they are written to supplies
``jabber:client`` or ``jabber:server``. Payloads keep their own namespace.
Build payload elements with :func:`child` (it declares the namespace as the
default, never an ``ns0:`` prefix).
"""

from __future__ import annotations

import secrets
from copy import deepcopy
from typing import Final

from lxml import etree

from xmppd import ns
from xmppd.errors import StanzaError
from xmppd.jid import JID, InvalidJID

Element = etree._Element

STANZA_KINDS: Final = frozenset({"message", "presence", "iq"})
IQ_TYPES: Final = frozenset({"get", "set", "result", "error"})
MESSAGE_TYPES: Final = frozenset({"chat", "error", "groupchat", "headline", "normal"})
PRESENCE_TYPES: Final = frozenset(
    {"error", "probe", "subscribe", "subscribed", "unavailable", "unsubscribe", "unsubscribed"}
)


def element(tag: str, attrs: dict[str, str] | None = None, *, text: str | None = None) -> Element:
    """A stream-content element (no namespace): ``message``, ``iq``, ``body``..."""
    el = etree.Element(tag, attrs or {})
    if text is not None:
        el.text = text
    return el


def _default_ns(namespace: str) -> dict[str, str]:
    # lxml takes None as the key of the default namespace; its stubs only allow str.
    return {None: namespace}  # type: ignore[dict-item]


def payload(namespace: str, tag: str, attrs: dict[str, str] | None = None) -> Element:
    """A detached payload element with ``namespace`` declared as its default namespace."""
    return etree.Element(f"{{{namespace}}}{tag}", attrs or {}, nsmap=_default_ns(namespace))


def child(
    parent: Element,
    tag: str,
    attrs: dict[str, str] | None = None,
    *,
    namespace: str | None = None,
    text: str | None = None,
) -> Element:
    """Append a child. With ``namespace`` it is declared as default on the child unless
    the parent is already in it; without, the child takes the parent's namespace."""
    parent_ns: str | None = etree.QName(parent).namespace
    if namespace is None:
        namespace = parent_ns
    if namespace is None:
        el = etree.SubElement(parent, tag, attrs or {})
    elif parent_ns == namespace:
        el = etree.SubElement(parent, f"{{{namespace}}}{tag}", attrs or {})
    else:
        nsmap = _default_ns(namespace)
        el = etree.SubElement(parent, f"{{{namespace}}}{tag}", attrs or {}, nsmap=nsmap)
    if text is not None:
        el.text = text
    return el


def serialize(el: Element) -> bytes:
    """Serialize a stanza for writing on a stream (UTF-8, no XML declaration)."""
    return etree.tostring(el, encoding="utf-8")


class Addressed:
    """One stanza serialised once for many recipients: the bytes of the stanza with
    ``to`` set to each recipient, built by splicing the recipient's address into the
    serialisation of a template (a fan-out writes N copies that differ only in ``to``).
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self._head, self._tail = head, tail

    @classmethod
    def of(cls, template: Element) -> Addressed | None:
        """``None`` when the template cannot be spliced (it would then be serialised
        per copy, as before)."""
        marker = "xmppd-to-" + secrets.token_hex(8)
        probe = copy(template)
        probe.set("to", marker)
        data = serialize(probe)
        token = marker.encode()
        if data.count(token) != 1:
            return None
        head, tail = data.split(token)
        if not head.endswith(b'to="'):
            return None
        return cls(head, tail)

    def to(self, jid: str) -> bytes:
        """The serialised stanza addressed to ``jid`` (escaped as lxml escapes
        attribute values)."""
        value = jid.translate(_ATTR_ESCAPES).encode() if _needs_escape(jid) else jid.encode()
        return self._head + value + self._tail


_ATTR_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def _needs_escape(value: str) -> bool:
    return any(c in value for c in '&<>"\t\n\r')


_PARSER: Final = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def parse(data: bytes) -> Element:
    """Read back a stanza this server serialized (from storage or a queue)."""
    return etree.fromstring(data, _PARSER)


def in_client_namespace(el: Element) -> Element:
    """A copy of a stream-neutral stanza as ``<message xmlns='jabber:client'>``, for
    embedding in another namespace (forwarded messages, archives, exports)."""
    data = serialize(el)
    tag = el.tag.encode()
    if not data.startswith(b"<" + tag):
        return copy(el)
    return parse(b"<" + tag + b' xmlns="jabber:client"' + data[len(tag) + 1 :])


def new_id() -> str:
    """A fresh stanza id."""
    return secrets.token_hex(8)


def jid_attr(el: Element, name: str) -> JID | None:
    """Parse the ``to``/``from`` attribute; ``None`` when absent. Raises ``jid-malformed``."""
    value = el.get(name)
    if value is None:
        return None
    try:
        return JID.parse(value)
    except InvalidJID:
        raise StanzaError("jid-malformed", f"invalid '{name}' address") from None


def summary(el: Element) -> str:
    """One line for logs: kind, type, id, from, to and payload namespace; never bodies."""
    first = el[0] if len(el) else None
    inner = etree.QName(first).namespace if first is not None and isinstance(first.tag, str) else ""
    return (
        f"<{el.tag} type={el.get('type')} id={el.get('id')} "
        f"from={el.get('from')} to={el.get('to')} payload={inner}>"
    )


def describe_payload(payload: object) -> str:
    """One line for crash logs about a hook payload: a stanza summary when it is one."""
    if isinstance(payload, etree._Element):
        return summary(payload)
    describe = getattr(payload, "summary", None)
    if callable(describe):
        return str(describe())
    stanza = getattr(payload, "stanza", None)
    if isinstance(stanza, etree._Element):
        return summary(stanza)
    return type(payload).__name__


def error_element(err: StanzaError, *, by: str | None = None) -> Element:
    """The ``<error/>`` child describing ``err`` (RFC 6120 §8.3.2)."""
    attrs: dict[str, str] = {"type": err.type}
    if by:
        attrs["by"] = by
    error = element("error", attrs)
    child(error, err.condition, namespace=ns.STANZA_ERRORS)
    if err.text:
        text = child(error, "text", namespace=ns.STANZA_ERRORS, text=err.text)
        text.set(f"{{{ns.XML}}}lang", "en")
    if err.application is not None:
        error.append(copy(err.application))
    return error


def error_reply(stanza: Element, err: StanzaError, *, by: str | None = None) -> Element | None:
    """An error reply to ``stanza`` (addresses swapped), or ``None`` if it was itself an
    error or an IQ result (those are never answered)."""
    stype = stanza.get("type")
    if stype == "error" or (stanza.tag == "iq" and stype == "result"):
        return None
    reply = element(stanza.tag, {"type": "error"})
    sid = stanza.get("id")
    if sid is not None:
        reply.set("id", sid)
    if (to := stanza.get("from")) is not None:
        reply.set("to", to)
    if (frm := stanza.get("to")) is not None:
        reply.set("from", frm)
    reply.append(error_element(err, by=by))
    return reply


def iq_result(iq: Element, result_payload: Element | None = None) -> Element:
    """A ``result`` for the IQ request ``iq`` (addresses swapped)."""
    reply = element("iq", {"type": "result"})
    if (sid := iq.get("id")) is not None:
        reply.set("id", sid)
    if (to := iq.get("from")) is not None:
        reply.set("to", to)
    if (frm := iq.get("to")) is not None:
        reply.set("from", frm)
    if result_payload is not None:
        reply.append(result_payload)
    return reply


def find_child(el: Element, namespace: str | None, tag: str) -> Element | None:
    """First direct child with this namespace and local name."""
    return el.find(f"{{{namespace}}}{tag}" if namespace else tag)


def child_text(el: Element, tag: str, namespace: str | None = None) -> str | None:
    found = find_child(el, namespace, tag)
    return None if found is None else (found.text or "")


def copy(el: Element) -> Element:
    """A deep copy (use before changing a stanza you did not create)."""
    return deepcopy(el)
