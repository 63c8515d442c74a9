"""The stream machine every stream kind shares (c2s, component; s2s later).

Written once here: feeding the transport's bytes to the reader (framing, restricted
XML and size limits are the reader's), the input queue and its ordered drain worker
with back-pressure on the transport, stream errors (``StreamError`` →
``<stream:error>`` and close), batched output with the write-buffer limit, the
connect timeout, close and shutdown. A stream kind subclasses :class:`StreamMachine`
and fills in what differs: its header (:meth:`StreamMachine._on_header`,
:meth:`StreamMachine._header_bytes`), what one element means
(:meth:`StreamMachine._on_element`), how a refused stanza is answered
(:meth:`StreamMachine._answer_error`) and its teardown
(:meth:`StreamMachine._on_shutdown`).

Its lifecycle is a :class:`StreamState`; each kind declares the moves it allows in
``TRANSITIONS`` and changes state only through :meth:`StreamMachine._enter`, which
raises :class:`IllegalTransition` on any other move. Only lifecycle events change
state, never a stanza: the per-stanza cost is one identity comparison.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar, Final

from xmppd.errors import StanzaError, StreamError
from xmppd.heap import note_freed
from xmppd.stanza import summary
from xmppd.stream.framing import CLOSE_MARK, stream_error, write_batch
from xmppd.stream.shaper import Shaper

if TYPE_CHECKING:
    from xmppd.stanza import Element
    from xmppd.stream.transport import ElementReader, Transport

log = logging.getLogger(__name__)

QUEUE_HIGH_WATER: Final = 500
"""Elements waiting to be handled before the transport stops being read."""


class StreamState(enum.Enum):
    """Where a stream is in its life. Each stream kind uses a subset (its
    ``TRANSITIONS`` table): a component never binds, an s2s stream never detaches."""

    CONNECTED = "connected"
    """Open, not authenticated: stream header, features, STARTTLS, SASL/handshake."""
    TLS_HANDSHAKE = "tls-handshake"
    """``<proceed/>`` sent; the TLS handshake runs, input is ignored."""
    AUTHENTICATED = "authenticated"
    """The peer proved who it is; a client still has to bind a resource."""
    BOUND = "bound"
    """A client's resource is bound: the session is routable (the live state)."""
    DETACHED = "detached"
    """The connection dropped; the session stays routable, keeping what it is sent,
    until it is resumed or times out (XEP-0198 hibernation)."""
    CLOSED = "closed"
    """Ended: nothing is read or written any more."""


Transitions = Mapping[StreamState, frozenset[StreamState]]


class IllegalTransition(RuntimeError):
    """A stream was asked to move between two states its kind does not connect."""

    def __init__(self, kind: str, current: StreamState, new: StreamState) -> None:
        super().__init__(f"{kind} stream: no transition from {current.name} to {new.name}")
        self.current = current
        self.new = new


_CONNECTED: Final = StreamState.CONNECTED
_DETACHED: Final = StreamState.DETACHED
_CLOSED: Final = StreamState.CLOSED


class StreamMachine:
    """One XML stream over one transport, from stream header to close.

    Subclasses keep ``__slots__`` (one stream exists per connection) and implement
    the ``_on_*`` hooks. Input arrives through :meth:`data_received` (synchronous:
    parse, queue); a single worker task handles the queue in order, so a slow handler
    delays the stanzas after it, never reorders them.

    The worker outlives the queue it emptied: it waits for the next read on a future
    (waking a waiting task costs far less than creating one per read), and ends when the
    stream closes or when :meth:`_stop_idle_worker` says the stream has gone idle (an idle
    stream holds no task).
    """

    __slots__ = (
        "_out",
        "_paused",
        "_queue",
        "_shaper",
        "_timeout",
        "_wake",
        "_worker",
        "_write_limit",
        "end_reason",
        "last_activity",
        "reader",
        "state",
        "stream_id",
        "transport",
    )

    KIND: ClassVar[str] = "xml"
    """Names the stream kind in logs and errors."""
    TRANSITIONS: ClassVar[Transitions] = {}
    """The moves this kind allows: state → the states it may enter next."""
    CONTENT_NAMESPACE: ClassVar[str] = ""
    """The stream's default namespace (``jabber:client``, ``jabber:component:accept``)."""

    def __init__(
        self,
        transport: Transport,
        *,
        max_stanza_size: int,
        connect_timeout: float,
        write_limit: int,
        input_rate: int = 0,
        input_burst: int = 0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.transport = transport
        self.reader: ElementReader = transport.framing.reader(
            self.CONTENT_NAMESPACE, max_stanza_size
        )
        self.state = _CONNECTED
        self.stream_id = ""
        self.last_activity = loop.time()
        self._write_limit = write_limit
        self._queue: deque[Element | None] = deque()
        self._out: list[bytes] = []
        self._worker: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[bool] | None = None
        """What a waiting worker waits on: True for "the queue has more", False for "stop"."""
        self._paused = False
        self._shaper = (
            Shaper(
                input_rate,
                input_burst,
                loop.time(),
                deliver=self._feed,
                pause=self._pause_input,
                resume=self._resume_input,
            )
            if input_rate > 0
            else None
        )
        self._timeout = loop.call_later(connect_timeout, self._connect_timed_out)
        self.end_reason = ""
        """Why the stream ended, for the log (set by the first close or loss)."""

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    def _enter(self, new: StreamState) -> None:
        """Move to ``new``; :class:`IllegalTransition` if this kind does not allow it."""
        if new not in self.TRANSITIONS.get(self.state, ()):
            raise IllegalTransition(self.KIND, self.state, new)
        self.state = new

    # ------------------------------------------------------------------ hooks for stream kinds

    async def _on_header(self) -> None:
        """The peer's stream header was read (``self.reader.header``)."""
        raise NotImplementedError

    async def _on_element(self, el: Element) -> None:
        """One top-level element from the peer."""
        raise NotImplementedError

    def _header_bytes(self, domain: str | None) -> bytes:
        """Our stream header (sets ``stream_id``); ``domain`` is ``from``, if known."""
        raise NotImplementedError

    def _answer_error(self, stanza: Element, err: StanzaError) -> None:
        """A stanza the handler refused with ``err``: answer it on this stream."""
        raise NotImplementedError

    def _on_shutdown(self, previous: StreamState) -> None:
        """Teardown of this kind (unregister ...), once, after the stream was in
        ``previous`` and is now closed."""

    def summary(self) -> str:
        return f"{self.KIND} {self.transport.peer}"

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        """Bytes from the transport (synchronous: parse, then queue for handling)."""
        # During a STARTTLS handshake (TLS_HANDSHAKE) bytes still count: the TLS layer
        # hands over what the client sent right after its last handshake flight (its
        # new stream header) before ``start_tls`` returns. Nothing sent in the clear
        # after <starttls/> gets here: the reader and queue were reset and the TLS layer
        # took the socket before any further read.
        if self.state is _CLOSED:
            return
        now = self.last_activity = asyncio.get_running_loop().time()
        shaper = self._shaper
        if shaper is not None:
            shaper.received(data, now)  # to _feed, now or once paid for
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        reader = self.reader
        had_header = reader.header is not None
        try:
            elements = reader.feed(data)
        except StreamError as err:
            self._fail(err)
            return
        queue = self._queue
        if not had_header and reader.header is not None:
            queue.append(None)
        queue.extend(elements)
        if reader.closed:
            queue.append(CLOSE_MARK)
        self._start_worker()
        if len(queue) > QUEUE_HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def _start_worker(self) -> None:
        """Have the queue handled: wake the waiting worker, or start one."""
        if not self._queue:
            return
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(True)
        elif self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())

    def _stop_idle_worker(self) -> None:
        """End a worker that waits for input (the stream is idle or closing)."""
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(False)

    def _pause_input(self) -> None:
        """The shaper's pause starts (the stream's transport may change on resumption)."""
        self.transport.pause_reading()

    def _resume_input(self) -> None:
        """The shaper's pause is over: read again unless the queue is still full."""
        if not self._paused and not self.closed:
            self.transport.resume_reading()

    def connection_lost(self) -> None:
        """The transport closed (the peer went away, or we closed it)."""
        self._ending("connection-lost")
        self._shutdown()

    def stream_error(self, condition: str, text: str | None = None) -> None:
        """A fault the transport found in the input: close with this stream error."""
        self._fail(StreamError(condition, text))

    def _ending(self, reason: str) -> None:
        """Record why the stream ends unless a reason is already known."""
        if not self.end_reason:
            self.end_reason = reason

    async def _drain(self) -> None:
        queue = self._queue
        try:
            while True:
                while queue and self.state is not _CLOSED:
                    item = queue.popleft()
                    if self._paused and len(queue) < QUEUE_HIGH_WATER // 2:
                        self._paused = False
                        if self._shaper is None or not self._shaper.holding:
                            self.transport.resume_reading()
                    try:
                        if item is None:
                            await self._on_header()
                        elif item is CLOSE_MARK:
                            self._ending("closed-by-peer")
                            self.close()
                        else:
                            await self._on_element(item)
                    except StreamError as err:
                        self._fail(err)
                    except StanzaError as err:
                        if item is not None and item is not CLOSE_MARK:
                            self._answer_error(item, err)
                    except Exception:
                        what = "stream header" if item is None else summary(item)
                        if self.closed:  # closed under the handler (timeout, server stop)
                            log.debug("%s: closed while handling %s", self.summary(), what)
                        else:
                            log.exception("%s: failed on %s", self.summary(), what)
                            self._fail(StreamError("internal-server-error"))
                if self.state is _CLOSED:
                    return
                # Waiting holds no stanza: the last one would keep its parser's document
                # (and so the parser's memory) alive after an idle release.
                item = None
                wake = self._wake = asyncio.get_running_loop().create_future()
                # Told to stop: end, unless a read came between that and this wake-up.
                if not await wake and not queue:
                    return
        finally:
            self._wake = None
            self._worker = None

    def _fail(self, err: StreamError) -> None:
        """Close with a stream error (sending our header first if we had not)."""
        if self.state is _CLOSED:
            return
        log.debug("%s: stream error %s", self.summary(), err.condition)
        if not self.stream_id:
            self._write(self._header_bytes(None))
        self.close(err.condition, err.text)

    def _connect_timed_out(self) -> None:
        """The connect timeout fired (a kind cancels ``_timeout`` once established)."""
        if self.state is not _CLOSED:
            self._fail(StreamError("connection-timeout"))

    # ------------------------------------------------------------------ output and teardown

    def _write(self, data: bytes) -> None:
        """Queue output; it is written once per event-loop turn (one syscall per burst,
        not one per stanza). Nothing is written while detached."""
        if self.state is _DETACHED:
            return
        out = self._out
        out.append(data)
        if len(out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        if out and not write_batch(out, self.transport, self._write_limit):
            log.warning("%s: peer too slow to read; closing", self.summary())
            self._ending("peer-too-slow")
            self._shutdown()
            self.transport.close()

    def close(self, condition: str | None = None, text: str | None = None) -> None:
        """Close the stream, with a stream error when ``condition`` is given."""
        if self.state is _CLOSED:
            return
        if condition is not None:
            self._ending(condition)
            self._write(stream_error(condition, text))
        else:
            self._ending("closed-by-server")
        self._write(self.transport.framing.close())
        self._flush()
        self._shutdown()
        self.transport.close()

    def _shutdown(self) -> None:
        """Mark closed and tear down (idempotent): timers, queue, worker, then the
        kind's :meth:`_on_shutdown`."""
        previous = self.state
        if previous is _CLOSED:
            return
        self._enter(_CLOSED)
        # The reader's parser goes with the stream: worth a heap trim. Ended cleanly
        # (between stanzas or after the peer's </stream:stream>), it leaves no reference
        # cycle, and neither does the rest of an ended stream (measured: nothing for
        # the collector after 200 sessions closed or dropped); ended mid-stanza, lxml's
        # cycle keeps it until a full collection (a pause that walks every session's
        # objects), so only then does it count towards one.
        note_freed(cyclic=self.reader.release_at_end())
        self._timeout.cancel()
        if self._shaper is not None:
            self._shaper.cancel()
        self._queue.clear()
        self._stop_idle_worker()
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        self._on_shutdown(previous)
