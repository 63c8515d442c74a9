"""RFC 7395 framing: XMPP over WebSocket.

Each WebSocket message holds one complete element. The stream header is
``<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to=... version='1.0'/>`` and
its end ``<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>``; stanzas spell out
their namespace (``<message xmlns='jabber:client'>``).

Incoming messages go through the same restricted reader as TCP streams
(:class:`~xmppd.stream.xmlreader.XmlReader`, fed a synthetic stream header), so the
same XML restrictions and stanza size limit apply and stanzas come out
stream-neutral as they do over TCP. The stream machine sees no difference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from lxml import etree

from xmppd import ns
from xmppd.errors import StreamError
from xmppd.stream.xmlreader import StreamHeader, XmlReader

if TYPE_CHECKING:
    from xmppd.stanza import Element

_OPEN: Final = f"{{{ns.FRAMING}}}open"
_CLOSE: Final = f"{{{ns.FRAMING}}}close"
_STANZAS: Final = frozenset({b"message", b"presence", b"iq"})
_XMLNS_CLIENT: Final = b' xmlns="jabber:client"'


class FramedReader:
    """An :class:`~xmppd.stream.transport.ElementReader` for RFC 7395 messages: one
    :meth:`feed` per WebSocket message."""

    __slots__ = ("_inner", "_namespace", "closed", "header")

    def __init__(self, namespace: str, max_stanza_size: int) -> None:
        self._namespace = namespace
        self._inner = XmlReader(expected_namespace=namespace, max_stanza_size=max_stanza_size)
        self.header: StreamHeader | None = None
        self.closed = False
        self._start_inner()

    def _start_inner(self) -> None:
        root = etree.Element(
            f"{{{ns.STREAMS}}}stream",
            {"version": "1.0"},
            nsmap={None: self._namespace, "stream": ns.STREAMS},  # type: ignore[dict-item]
        )
        self._inner.feed(etree.tostring(root)[:-2] + b">")

    def feed(self, data: bytes) -> list[Element]:
        if self.closed:
            return []
        elements = self._inner.feed(data)
        if not self._inner.is_between_stanzas:
            # A message must hold whole elements (RFC 7395 §3.3.3): an unfinished one
            # (a <stream:stream> header, a split stanza) is not this framing.
            raise StreamError("not-well-formed", "a WebSocket message must hold whole elements")
        out: list[Element] = []
        for el in elements:
            tag = el.tag
            if tag == _OPEN:
                if self.header is not None:
                    raise StreamError("not-well-formed", "<open/> on an open stream")
                self.header = _header(el)
            elif self.header is None:
                raise StreamError("not-well-formed", "expected <open/>")
            elif tag == _CLOSE:
                self.closed = True
                break
            else:
                out.append(el)
        return out

    def reset(self) -> None:
        """A new ``<open/>`` is expected (after SASL success)."""
        self.header = None
        self.closed = False

    def release_if_idle(self) -> bool:
        return self._inner.release_if_idle()

    def release_at_end(self) -> bool:
        return self._inner.release_at_end()


def _header(el: Element) -> StreamHeader:
    return StreamHeader(
        to=el.get("to"),
        from_=el.get("from"),
        version=el.get("version"),
        id=el.get("id"),
        lang=el.get(f"{{{ns.XML}}}lang"),
        content_namespace=ns.CLIENT,
    )


class WebSocketFraming:
    """RFC 7395 framing; stateless, :data:`WEBSOCKET` is the one instance."""

    __slots__ = ()

    @property
    def message_per_element(self) -> bool:
        return True

    def reader(self, namespace: str, max_stanza_size: int) -> FramedReader:
        return FramedReader(namespace, max_stanza_size)

    def open(
        self, namespace: str, attrs: dict[str, str], prefixes: dict[str, str] | None = None
    ) -> bytes:
        # Only c2s streams run over WebSocket: no extra prefixes (dialback) to declare.
        nsmap = {None: ns.FRAMING}
        return etree.tostring(etree.Element(_OPEN, attrs, nsmap=nsmap))  # type: ignore[arg-type]

    def close(self) -> bytes:
        return etree.tostring(etree.Element(_CLOSE, nsmap={None: ns.FRAMING}))  # type: ignore[dict-item]


WEBSOCKET: Final = WebSocketFraming()


def qualify_stanza(data: bytes) -> bytes:
    """A serialized stanza with ``xmlns='jabber:client'`` on its root, as RFC 7395
    §3.3.3 wants every stanza to carry (ours are stream-neutral, as on TCP, where the
    stream header declares it). Other elements (features, SASL, SM) keep their own
    namespace. lxml escapes ``>`` in attribute values, so the first ``>`` ends the
    start tag."""
    if data[:1] != b"<":
        return data
    end = data.find(b">")
    if end < 0:
        return data
    start = data[1:end]
    name_end = 0
    while name_end < len(start) and start[name_end] not in b" \t\r\n/":
        name_end += 1
    if start[:name_end] not in _STANZAS or b"xmlns=" in start.replace(b"xmlns:", b"xmlns_"):
        return data
    return data[: 1 + name_end] + _XMLNS_CLIENT + data[1 + name_end :]
