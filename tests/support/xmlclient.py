"""A minimal XMPP client on a raw socket, for tests that need every byte under control.

It negotiates STARTTLS (trusting the server's CA file), SASL PLAIN and resource binding
like any client, then hands the test the parsed top-level elements it receives. It can
also misbehave on purpose: stay silent when pinged, or drop the TCP connection without
closing the XML stream.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Final
from xml.sax.saxutils import escape, quoteattr

from lxml import etree

from tests.support.clients import client_tls_context
from tests.support.server import XmppdServer

Element = etree._Element

CLIENT: Final = "jabber:client"
STREAMS: Final = "http://etherx.jabber.org/streams"
STANZA_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
STREAM_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
TLS: Final = "urn:ietf:params:xml:ns:xmpp-tls"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND: Final = "urn:ietf:params:xml:ns:xmpp-bind"
PING: Final = "urn:xmpp:ping"

_ids = itertools.count(1)


class StreamClosed(ConnectionError):
    """The server ended the stream while the test was waiting for something else."""


def tag(kind: str) -> str:
    """The qualified tag of a stanza as received on a client stream: ``{jabber:client}iq``."""
    return f"{{{CLIENT}}}{kind}"


def attrs(**values: str | None) -> str:
    """XML attributes from keyword arguments (``from_`` → ``from``); ``None`` is left out."""
    return "".join(f" {k.rstrip('_')}={quoteattr(v)}" for k, v in values.items() if v is not None)


def text(value: str) -> str:
    return escape(value)


def error_condition(stanza: Element) -> str | None:
    """The defined condition of an error stanza (``service-unavailable``...), or ``None``."""
    err = stanza.find(f"{{{CLIENT}}}error")
    if err is None:
        return None
    for child in err:
        if etree.QName(child).namespace == STANZA_ERRORS and etree.QName(child).localname != "text":
            return etree.QName(child).localname
    return None


class XmlClient:
    """One client connection driven by hand. Create it with :meth:`connect`."""

    def __init__(
        self,
        server: XmppdServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        answer_pings: bool,
    ) -> None:
        self.server = server
        self.domain = server.domain
        self.answer_pings = answer_pings
        self.jid = ""
        self.features: Element | None = None
        self.stream_error: str | None = None
        self.pings_received = 0
        self.ping_times: list[float] = []
        """When each server ping arrived (``time.monotonic()``)."""
        self._aborted = False
        self._reader = reader
        self._writer = writer
        self._parser = self._new_parser()
        self._depth = 0
        self._inbox: list[Element] = []
        self._changed = asyncio.Event()
        self._ended = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    # ------------------------------------------------------------------ set-up

    @classmethod
    async def connect(cls, server: XmppdServer, *, answer_pings: bool = True) -> XmlClient:
        """Open a stream on the STARTTLS port and secure it; stops before authentication."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.starttls_port)
        client = cls(server, reader, writer, answer_pings=answer_pings)
        await client._open_stream()
        client.send(f"<starttls xmlns='{TLS}'/>")
        await client.expect(lambda el: el.tag == f"{{{TLS}}}proceed")
        client._restart()
        await writer.start_tls(client_tls_context(server), server_hostname=server.domain)
        await client._open_stream()
        return client

    @classmethod
    async def login(
        cls,
        server: XmppdServer,
        jid: str,
        password: str,
        *,
        resource: str | None = None,
        answer_pings: bool = True,
    ) -> XmlClient:
        """Connect, authenticate with SASL PLAIN and bind ``resource`` (or one chosen by
        the server). No roster request, no initial presence."""
        client = await cls.connect(server, answer_pings=answer_pings)
        try:
            await client.authenticate(jid.split("@", 1)[0], password)
            await client.bind(resource)
        except BaseException:
            # Not left for the garbage collector: an unclosed transport found later
            # fails whichever test happens to be running then.
            await client.close()
            raise
        from tests.support.server import SESSION_REGISTRY

        if SESSION_REGISTRY == "cluster":
            await asyncio.sleep(0.15)  # the other nodes learn of the session via Redis
        return client

    async def authenticate(self, username: str, password: str) -> None:
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{token}</auth>")
        outcome = await self.expect(
            lambda el: el.tag in (f"{{{SASL}}}success", f"{{{SASL}}}failure")
        )
        if outcome.tag != f"{{{SASL}}}success":
            condition = etree.QName(outcome[0]).localname if len(outcome) else "?"
            raise PermissionError(f"SASL failure: {condition}")
        self._restart()
        await self._open_stream()

    async def bind(self, resource: str | None = None) -> str:
        inner = f"<resource>{text(resource)}</resource>" if resource else ""
        reply = await self.iq("set", f"<bind xmlns='{BIND}'>{inner}</bind>", to=None)
        if reply.get("type") != "result":
            raise RuntimeError(f"bind failed: {error_condition(reply)}")
        self.jid = reply.findtext(f"{{{BIND}}}bind/{{{BIND}}}jid") or ""
        return self.jid

    async def _open_stream(self) -> None:
        self.send(
            "<?xml version='1.0'?><stream:stream"
            f" to={quoteattr(self.domain)} version='1.0' xml:lang='en'"
            f" xmlns='{CLIENT}' xmlns:stream='{STREAMS}'>"
        )
        self.features = await self.expect(lambda el: el.tag == f"{{{STREAMS}}}features")

    def _restart(self) -> None:
        """A stream restart: the next bytes from the server open a new XML document."""
        self._parser = self._new_parser()
        self._depth = 0

    @staticmethod
    def _new_parser() -> etree.XMLPullParser:
        return etree.XMLPullParser(events=("start", "end"), resolve_entities=False)

    # ------------------------------------------------------------------ I/O

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._parser.feed(data)
                if self._handle_events():
                    break
        except (ConnectionError, OSError, etree.XMLSyntaxError):
            pass  # the stream is over either way; tests see it through ``wait_closed``
        finally:
            self._ended.set()
            self._changed.set()

    def _handle_events(self) -> bool:
        """Queue completed top-level elements; ``True`` once the stream is closed."""
        for event, el in self._parser.read_events():
            if event == "start":
                self._depth += 1
                continue
            self._depth -= 1
            if self._depth == 0:
                return True  # </stream:stream>
            if self._depth != 1:
                continue
            parent = el.getparent()
            if parent is not None:
                parent.remove(el)
            if el.tag == f"{{{STREAMS}}}error":
                cond = [c for c in el if etree.QName(c).localname != "text"]
                self.stream_error = etree.QName(cond[0]).localname if cond else "?"
            elif self._is_ping(el):
                self.pings_received += 1
                self.ping_times.append(time.monotonic())
                self._changed.set()
                if self.answer_pings:
                    self.send(f"<iq{attrs(type='result', id=el.get('id'), to=el.get('from'))}/>")
                    continue
            self._inbox.append(el)
            self._changed.set()
        return False

    @staticmethod
    def _is_ping(el: Element) -> bool:
        return (
            el.tag == tag("iq")
            and el.get("type") == "get"
            and len(el) == 1
            and el[0].tag == f"{{{PING}}}ping"
        )

    def send(self, data: str) -> None:
        self._writer.write(data.encode())

    @property
    def is_connected(self) -> bool:
        return not self._ended.is_set()

    async def expect(self, predicate: Callable[[Element], bool], timeout: float = 10) -> Element:
        """The first received element matching ``predicate`` (removed from the inbox)."""
        async with asyncio.timeout(timeout):
            while True:
                for i, el in enumerate(self._inbox):
                    if predicate(el):
                        del self._inbox[i]
                        return el
                if self._ended.is_set():
                    raise StreamClosed(f"stream closed (error: {self.stream_error})")
                self._changed.clear()
                await self._changed.wait()

    async def wait_pings(self, count: int, timeout: float = 10) -> None:
        """Wait until the server has pinged this client ``count`` times in all."""
        async with asyncio.timeout(timeout):
            while self.pings_received < count:
                if self._ended.is_set():
                    raise StreamClosed(f"stream closed (error: {self.stream_error})")
                self._changed.clear()
                await self._changed.wait()

    def pending(self, predicate: Callable[[Element], bool] = lambda el: True) -> list[Element]:
        """Received elements matching ``predicate`` that no ``expect`` took yet."""
        return [el for el in self._inbox if predicate(el)]

    async def iq(self, type: str, payload: str, *, to: str | None, timeout: float = 10) -> Element:
        """Send an IQ get/set and return its result or error."""
        iq_id = f"raw{next(_ids)}"
        self.send(f"<iq{attrs(type=type, id=iq_id, to=to)}>{payload}</iq>")
        return await self.expect(
            lambda el: (
                el.tag == tag("iq")
                and el.get("id") == iq_id
                and el.get("type") in ("result", "error")
            ),
            timeout,
        )

    async def wait_closed(self, timeout: float = 10) -> str | None:
        """Wait until the server ends the stream; its stream error condition, if any."""
        async with asyncio.timeout(timeout):
            await self._ended.wait()
        return self.stream_error

    def abort(self) -> None:
        """Drop the TCP connection without closing the XML stream."""
        self._aborted = True
        self._writer.transport.abort()

    async def close(self) -> None:
        """Close the stream properly and wait for the server to close its side."""
        if self.is_connected and not self._aborted:
            try:
                self.send("</stream:stream>")
                await self.wait_closed(5)
            except (ConnectionError, TimeoutError):
                pass
        self._writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self._writer.wait_closed()
        if not self._writer.transport.is_closing():
            self._writer.transport.abort()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> XmlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
