"""Pieces every stream kind (c2s, component, later s2s) shares: stream errors, the
end-of-stream marker of the input queue, batched output, and the RFC 6120 framing
(``<stream:stream>`` over TCP)."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Final

from lxml import etree

from xmppd import ns
from xmppd.stanza import child
from xmppd.stream.xmlreader import XmlReader

if TYPE_CHECKING:
    from xmppd.stream.transport import Transport

CLOSE_MARK: Final = etree.Element("close-mark")
"""Queued after the last element when the peer closed its stream."""

_STREAM_TAG: Final = f"{{{ns.STREAMS}}}stream"
_OPEN_START: Final = b"<?xml version='1.0'?><stream:stream xmlns=\""
_OPEN_STREAMS: Final = b'" xmlns:stream="' + ns.STREAMS.encode() + b'"'
_XML_LANG_CLARK: Final = f"{{{ns.XML}}}lang"
_XML_LANG: Final = "xml:lang"
_PLAIN: Final = re.compile(r"[ !#-%(-;=?-~]*\Z")
"""Printable ASCII that needs no escaping in an attribute value."""
_NAME: Final = re.compile(r"(?:xml:)?[A-Za-z_][A-Za-z0-9_.-]*\Z")


def stream_error(condition: str, text: str | None) -> bytes:
    """``<stream:error>`` with an RFC 6120 §4.9.3 condition and an optional text.

    For ``see-other-host`` the text is the other host (``host`` or ``host:port``,
    §4.9.3.19) and goes inside the condition element."""
    if not text:
        return _bare_stream_error(condition)
    return _build_stream_error(condition, text)


@functools.lru_cache(maxsize=64)
def _bare_stream_error(condition: str) -> bytes:
    """Without a text the bytes depend on the condition only (``conflict`` closes every
    session replaced by a new login under its full JID: a storm's worth of them)."""
    return _build_stream_error(condition, None)


def _build_stream_error(condition: str, text: str | None) -> bytes:
    err = etree.Element(f"{{{ns.STREAMS}}}error", nsmap={"stream": ns.STREAMS})
    cond = child(err, condition, namespace=ns.STREAM_ERRORS)
    if condition == "see-other-host":
        cond.text = text
    elif text:
        t = child(err, "text", namespace=ns.STREAM_ERRORS, text=text)
        t.set(f"{{{ns.XML}}}lang", "en")
    return etree.tostring(err)


def write_batch(out: list[bytes], transport: Transport, limit: int) -> bool:
    """Write what was queued during this event-loop turn in one call and empty ``out``;
    ``False`` when the peer reads so slowly that more than ``limit`` bytes wait."""
    if len(out) == 1:
        transport.write(out[0])
    elif transport.framing.message_per_element:
        for data in out:
            transport.write(data)
    else:
        transport.write(b"".join(out))
    out.clear()
    return transport.write_buffer_size() <= limit


class XmlStreamFraming:
    """RFC 6120 §4: one long-lived ``<stream:stream>`` document per direction (TCP,
    direct TLS). Stateless; :data:`XML_STREAM` is the one instance."""

    __slots__ = ()

    @property
    def message_per_element(self) -> bool:
        return False

    def reader(self, namespace: str, max_stanza_size: int) -> XmlReader:
        return XmlReader(expected_namespace=namespace, max_stanza_size=max_stanza_size)

    def open(
        self, namespace: str, attrs: dict[str, str], prefixes: dict[str, str] | None = None
    ) -> bytes:
        if not prefixes and _PLAIN.match(namespace):
            # The common case, written directly: what lxml writes for the same
            # element, several times faster (a login opens three streams).
            parts = [_OPEN_START, namespace.encode(), _OPEN_STREAMS]
            for name, value in attrs.items():
                name = _XML_LANG if name == _XML_LANG_CLARK else name
                if not (_PLAIN.match(value) and _NAME.match(name)):
                    break
                parts.append(f' {name}="{value}"'.encode())
            else:
                parts.append(b">")
                return b"".join(parts)
        nsmap: dict[str | None, str] = {None: namespace, "stream": ns.STREAMS}
        if prefixes:
            nsmap.update(prefixes)
        root = etree.Element(_STREAM_TAG, attrs, nsmap=nsmap)  # type: ignore[arg-type]
        return b"<?xml version='1.0'?>" + etree.tostring(root)[:-2] + b">"

    def close(self) -> bytes:
        return b"</stream:stream>"


XML_STREAM: Final = XmlStreamFraming()
