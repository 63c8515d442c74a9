"""External components (XEP-0114) for tests: a real one (slixmpp ``ComponentXMPP``) that
records what it receives, and a raw one that sends exactly the bytes a test gives it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Callable
from typing import Any, Final, Literal, cast
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

from lxml import etree
from slixmpp import ComponentXMPP
from slixmpp.stanza import Iq, Message
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from tests.support.server import XmppdServer

Element = etree._Element

ACCEPT: Final = "jabber:component:accept"
STREAMS: Final = "http://etherx.jabber.org/streams"
STREAM_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"

_ids = itertools.count()


def ctag(kind: str) -> str:
    """A stanza's qualified tag as received on a component stream."""
    return f"{{{ACCEPT}}}{kind}"


class _Everything(MatcherBase):
    """Matches every stanza, so slixmpp neither drops nor auto-answers any."""

    def __init__(self) -> None:
        super().__init__(None)

    def match(self, xml: StanzaBase) -> bool:
        return True


class SlixComponent:
    """A slixmpp external component that queues every stanza it receives (as lxml
    elements, parsed from what slixmpp got) and the stream error that ended it."""

    def __init__(self, server: XmppdServer, domain: str, secret: str) -> None:
        assert server.component_port is not None, "start the server with components"
        self.server = server
        self.domain = domain
        self.xmpp = ComponentXMPP(  # type: ignore[no-untyped-call]
            domain, secret, "127.0.0.1", server.component_port
        )
        self.received: asyncio.Queue[Element] = asyncio.Queue()
        self.stream_error: str | None = None
        self._outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._ended = asyncio.Event()
        self.xmpp.register_handler(Callback("record everything", _Everything(), self._record))
        self.xmpp.add_event_handler("session_start", lambda _: self._settle("ok"))
        self.xmpp.add_event_handler("stream_error", self._on_stream_error)
        self.xmpp.add_event_handler("disconnected", self._on_disconnected)
        self.xmpp.add_event_handler("connection_failed", lambda _: self._settle("failed"))

    def _record(self, stanza: StanzaBase) -> None:
        # ElementTree keeps the stream namespace that slixmpp's str() leaves out.
        self.received.put_nowait(etree.fromstring(ElementTree.tostring(stanza.xml)))

    def _on_stream_error(self, error: Any) -> None:
        self.stream_error = str(error["condition"])

    def _on_disconnected(self, _: object) -> None:
        self._ended.set()
        self._settle("disconnected")

    def _settle(self, outcome: str) -> None:
        if not self._outcome.done():
            self._outcome.set_result(outcome)

    async def start(self, timeout: float = 20) -> str:
        """Connect and hand-shake; ``"ok"``, or ``"disconnected"`` when refused."""
        _ = self.xmpp.connect()  # the outcome comes through the events below
        async with asyncio.timeout(timeout):
            return await self._outcome

    async def connected(self) -> SlixComponent:
        outcome = await self.start()
        assert outcome == "ok", f"component refused: {self.stream_error}"
        return self

    async def wait_disconnected(self, timeout: float = 10) -> str | None:
        """Wait until the server has ended the stream; its stream error condition."""
        async with asyncio.timeout(timeout):
            await self._ended.wait()
        return self.stream_error

    async def next(self, predicate: Callable[[Element], bool], timeout: float = 10) -> Element:
        """The first stanza received matching ``predicate`` (the others stay queued)."""
        skipped: list[Element] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    el = await self.received.get()
                    if predicate(el):
                        return el
                    skipped.append(el)
        finally:
            rest = [self.received.get_nowait() for _ in range(self.received.qsize())]
            for el in skipped + rest:
                self.received.put_nowait(el)

    def pending(self, predicate: Callable[[Element], bool] = lambda _: True) -> list[Element]:
        items = [self.received.get_nowait() for _ in range(self.received.qsize())]
        for el in items:
            self.received.put_nowait(el)
        return [el for el in items if predicate(el)]

    def send_message(
        self, mto: str, body: str, mfrom: str, mtype: Literal["chat", "normal"] = "chat"
    ) -> None:
        msg: Message = self.xmpp.make_message(mto=mto, mbody=body, mtype=mtype, mfrom=mfrom)
        self.xmpp.send(msg)

    def reply_result(self, iq: Element) -> None:
        """Answer a received IQ get/set with an empty result."""
        reply: Iq = self.xmpp.make_iq_result(
            id=iq.get("id", ""), ito=iq.get("from"), ifrom=iq.get("to")
        )
        self.xmpp.send(reply)

    def reply_error(self, iq: Element, condition: str, etype: str = "cancel") -> None:
        # The error as slixmpp writes it (in jabber:client unless fix_error_ns is set).
        reply: Iq = self.xmpp.make_iq_error(  # type: ignore[no-untyped-call]
            id=iq.get("id", ""),
            type=etype,
            condition=condition,
            ito=iq.get("from"),
            ifrom=iq.get("to"),
        )
        self.xmpp.send(reply)

    async def ping(self, to: str | None = None) -> None:
        """An IQ round trip to the server (``to``: the host ``localhost``)."""
        iq_id = f"ping-{next(_ids)}"
        self.xmpp.send_raw(
            f"<iq type='get' id='{iq_id}' from={quoteattr(self.domain)}"
            f" to={quoteattr(to or self.server.domain)}><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        reply = await self.next(lambda el: el.get("id") == iq_id)
        assert reply.get("type") == "result", etree.tostring(reply)

    async def stop(self) -> None:
        if self.xmpp.transport is not None:
            await self.xmpp.disconnect(wait=1)
        with contextlib.suppress(TimeoutError):
            await self.wait_disconnected(5)


def handshake(stream_id: str, secret: str) -> str:
    return hashlib.sha1((stream_id + secret).encode()).hexdigest()


class RawComponent:
    """A component stream driven by hand: open, hand-shake, then send what the test
    says; received top-level elements and the stream error are recorded."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = etree.XMLPullParser(events=("start", "end"), resolve_entities=False)
        self._depth = 0
        self.header: Element | None = None
        self.stream_error: str | None = None
        self.inbox: list[Element] = []
        self._changed = asyncio.Event()
        self._ended = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, server: XmppdServer) -> RawComponent:
        assert server.component_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.component_port)
        return cls(reader, writer)

    @classmethod
    async def authenticated(cls, server: XmppdServer, domain: str, secret: str) -> RawComponent:
        raw = await cls.connect(server)
        await raw.open(domain)
        assert await raw.handshake(secret), f"handshake refused: {raw.stream_error}"
        return raw

    async def _read_loop(self) -> None:
        try:
            while data := await self._reader.read(65536):
                self._parser.feed(data)
                if self._handle_events():
                    break
        except (ConnectionError, OSError, etree.XMLSyntaxError):
            pass
        finally:
            self._ended.set()
            self._changed.set()

    def _handle_events(self) -> bool:
        for event, item in self._parser.read_events():
            el = cast(Element, item)
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.header = el
                    self._changed.set()
                continue
            self._depth -= 1
            if self._depth == 0:
                return True
            if self._depth != 1:
                continue
            if el.tag == f"{{{STREAMS}}}error":
                conditions = [c for c in el if etree.QName(c).localname != "text"]
                self.stream_error = etree.QName(conditions[0]).localname if conditions else "?"
            else:
                self.inbox.append(el)
            self._changed.set()
        return False

    def send(self, data: str | bytes) -> None:
        self._writer.write(data.encode() if isinstance(data, str) else data)

    async def _wait_for(self, ready: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not ready():
                if self._ended.is_set():
                    return
                self._changed.clear()
                await self._changed.wait()

    async def open(self, to: str) -> Element | None:
        """Send the stream header; the server's header (``None`` if none came)."""
        self.send(f"<stream:stream xmlns='{ACCEPT}' xmlns:stream='{STREAMS}' to={quoteattr(to)}>")
        await self._wait_for(lambda: self.header is not None)
        return self.header

    async def handshake(self, secret: str) -> bool:
        """Send the handshake for ``secret``; ``True`` when the server accepted it."""
        assert self.header is not None
        self.send(f"<handshake>{handshake(self.header.get('id', ''), secret)}</handshake>")
        await self._wait_for(lambda: any(el.tag == ctag("handshake") for el in self.inbox))
        return any(el.tag == ctag("handshake") for el in self.inbox)

    async def expect(self, predicate: Callable[[Element], bool], timeout: float = 10) -> Element:
        found: list[Element] = []

        def ready() -> bool:
            for i, el in enumerate(self.inbox):
                if predicate(el):
                    found.append(self.inbox.pop(i))
                    return True
            return False

        await self._wait_for(ready, timeout)
        if not found:
            raise ConnectionError(f"stream closed (error: {self.stream_error})")
        return found[0]

    async def wait_closed(self, timeout: float = 10) -> str | None:
        """Wait until the server ends the stream; its stream error condition, if any."""
        async with asyncio.timeout(timeout):
            await self._ended.wait()
        return self.stream_error

    async def close(self) -> None:
        if not self._ended.is_set():
            with contextlib.suppress(ConnectionError, TimeoutError):
                self.send("</stream:stream>")
                await self.wait_closed(5)
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def stanza_error(el: Element) -> tuple[str | None, str | None]:
    """(type, condition) of an error stanza received on a component stream."""
    err = el.find(ctag("error"))
    if err is None:
        return None, None
    for c in err:
        qname = etree.QName(c)
        if qname.namespace == STANZA_ERRORS and qname.localname != "text":
            return err.get("type"), qname.localname
    return err.get("type"), None
