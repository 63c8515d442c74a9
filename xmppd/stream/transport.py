"""What a stream and the connection under it know of each other.

A transport (TCP and direct TLS today; WebSocket and BOSH later) moves bytes; a
stream (:mod:`xmppd.stream.machine` and its kinds) turns them into elements and
back. They meet only through these protocols, so transports import this module and
never a stream kind, and a stream never imports a transport.

How the bytes are framed is the transport's choice too (:class:`Framing`): RFC 6120
``<stream:stream>`` over TCP, RFC 7395 ``<open/>``/``<close/>`` over WebSocket, one
``<body/>`` per HTTP request with BOSH (XEP-0124).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    import ssl

    from xmppd.stanza import Element
    from xmppd.stream.xmlreader import StreamHeader


class ElementReader(Protocol):
    """Turns the bytes of one direction of a stream into top-level elements.

    :class:`xmppd.stream.xmlreader.XmlReader` reads an RFC 6120 XML stream; a
    WebSocket reader would parse one element per frame and report ``<open/>`` as the
    header and ``<close/>`` as the end."""

    @property
    def header(self) -> StreamHeader | None:
        """The peer's stream header, once it arrived (``None`` after :meth:`reset`)."""

    @property
    def closed(self) -> bool:
        """The peer ended its stream."""

    def feed(self, data: bytes) -> list[Element]:
        """Parse ``data``; the complete top-level elements in it. Raises
        ``StreamError`` on bad XML or a limit exceeded."""

    def reset(self) -> None:
        """Expect a new stream header (after STARTTLS or SASL success)."""

    def release_if_idle(self) -> bool:
        """Free the parser's memory if nothing is half-parsed; ``True`` if it did."""

    def release_at_end(self) -> bool:
        """The stream ended: free what can be freed at once; ``True`` if a parser is
        left in a reference cycle (it was mid-element), which only a full collection
        of the cycle collector frees."""


class Framing(Protocol):
    """How stream headers, ends and readers look on one kind of transport."""

    @property
    def message_per_element(self) -> bool:
        """Each element goes to the transport in a write of its own (a WebSocket
        message each); otherwise a burst is joined into one write (a byte stream)."""

    def reader(self, namespace: str, max_stanza_size: int) -> ElementReader:
        """A reader for a new stream whose content namespace is ``namespace``."""

    def open(
        self, namespace: str, attrs: dict[str, str], prefixes: dict[str, str] | None = None
    ) -> bytes:
        """Our stream header (``id``, ``from``, ``version`` ... in ``attrs``; extra
        namespace ``prefixes`` declared on it, such as ``db`` for dialback)."""

    def close(self) -> bytes:
        """The end of our stream."""


class StreamInput(Protocol):
    """What a transport feeds: a stream of any kind."""

    def data_received(self, data: bytes) -> None:
        """Bytes from the peer (called synchronously, in order)."""

    def connection_lost(self) -> None:
        """The connection is gone (the peer left, or the stream closed it)."""

    def stream_error(self, condition: str, text: str | None = None) -> None:
        """The transport found a fault in the input it cannot hand over (a WebSocket
        message over the size limit): close with this stream error."""


class Transport(Protocol):
    """What a stream needs from the connection under it."""

    NAME: ClassVar[str]
    """The transport's name in metrics and logs: ``tcp``, ``websocket``, ``bosh``."""

    peer: str
    """The peer's address (for logs and the failed-login throttle)."""
    is_secure: bool

    @property
    def framing(self) -> Framing:
        """How streams look on this transport."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def write_buffer_size(self) -> int: ...

    def ssl_object(self) -> ssl.SSLObject | None: ...

    async def start_tls(self) -> None: ...

    def attach(self, stream: StreamInput) -> None:
        """Feed this connection's bytes to ``stream`` from now on (resumption)."""

    def detach(self) -> None:
        """Stop feeding any stream (the connection is being replaced)."""
