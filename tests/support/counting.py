"""A raw stream-management client that counts, for the cluster tests that stop nodes
under traffic: the messages it received (by body), the ones it sent, and how many of
those the server acknowledged (XEP-0198 ``<a h/>``). It can resume its session on
another node (``<resume/>``) with the count of what it handled, as a real client does.
Used by the node-killed, drain and rolling-restart tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from collections import Counter

from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer

SM = "urn:xmpp:sm:3"
_ITEM = re.compile(
    rb"<message[^>]*/>|<message[^>]*>.*?</message>|<presence[^>]*/>|<presence[^>]*>.*?"
    rb"</presence>|<iq[^>]*/>|<iq[^>]*>.*?</iq>|<r [^>]*/>|<a [^>]*/>",
    re.S,
)


class ResumeFailed(AssertionError):
    """The server refused to resume (``<failed/>``)."""


class CountingClient:
    """A raw client with stream management that counts: messages received (by body),
    and its own messages the server acknowledged."""

    def __init__(self, name: str, resource: str, password: str) -> None:
        self.name = name
        self.resource = resource
        self.password = password
        self.received: Counter[str] = Counter()
        self.sent: list[str] = []
        self.acked_upto = 0
        """How many of our stanzas the server has handled (its ``h``)."""
        self.sm_id = ""
        self.resumed = 0
        """How many times the session was resumed (on another node)."""
        self._numbers: dict[str, int] = {}
        self._targets: dict[str, str] = {}
        self._stanzas_out = 0
        self._handled = 0
        self._client: RawClient | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lost_connection = asyncio.Event()
        self.closing = b""
        """What the server sent last before it closed the connection."""
        self.resumed_h: int | None = None
        """The server's ``h`` at the last resumption."""
        self._acks: list[tuple[float, int]] = []
        """When we told the server which ``h``."""
        self._bodies_at: dict[str, int] = {}
        self.unacked_at_loss: set[str] = set()
        """Bodies received but not acknowledged (by an ack older than half a second,
        which surely reached the server) when a connection was lost: a server may
        deliver them again to a client that logs in afresh instead of resuming."""

    @property
    def jid(self) -> str:
        return f"{self.name}@localhost/{self.resource}"

    @property
    def connected(self) -> bool:
        return self._client is not None and not self.lost_connection.is_set()

    async def start(self, node: XmppdServer) -> None:
        """Log in afresh on ``node`` and enable resumable stream management."""
        client = RawClient(node)
        await client.connect()
        await client.login(self.name, self.password, resource=self.resource)
        client.send(f"<enable xmlns='{SM}' resume='true'/>")
        reply = await client.read_until(b"<enabled[^>]*>")
        match = re.search(rb"id=['\"]([^'\"]+)", reply)
        assert match, reply
        self.sm_id = match.group(1).decode()
        self._stanzas_out = 0
        self._handled = 0
        self._acks = []
        self._begin(client, b"")
        self._send_stanza("<presence/>")

    async def resume(self, node: XmppdServer) -> bytes:
        """Resume the session on ``node`` (after a lost connection): SASL, then
        ``<resume h/>`` with what this client handled; the ``<resumed/>`` element.
        Raises :class:`ResumeFailed` when the server answers ``<failed/>``."""
        await self.stop()
        client = RawClient(node)
        await client.connect()
        await client.starttls()
        await client.open_stream()
        token = base64.b64encode(f"\0{self.name}\0{self.password}".encode()).decode()
        client.send(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"
        )
        reply = await client.read_until(b"<success|<failure")
        assert b"<success" in reply, f"{self.name}: login failed: {reply!r}"
        await client.open_stream()
        client.send(f"<resume xmlns='{SM}' previd='{self.sm_id}' h='{self._handled}'/>")
        data = await client.read_until(rb"<resumed[^>]*>|<failed[^>]*>.*?(</failed>|/>)")
        match = re.search(rb"<resumed[^>]*>", data)
        if match is None:
            raise ResumeFailed(f"{self.name}: {data!r}")
        h = re.search(rb"h=['\"](\d+)", match.group(0))
        assert h, data
        handled = self.resumed_h = int(h.group(1))
        self.acked_upto = max(self.acked_upto, handled)
        self.resumed += 1
        # What the server never read (written into the dying connection) is sent
        # again, as XEP-0198 says: the count goes on from the server's ``h``.
        unacked = [b for b in self.sent if self._numbers[b] > handled]
        targets = {b: self._targets[b] for b in unacked}
        self._stanzas_out = handled
        self.sent = [b for b in self.sent if self._numbers[b] <= handled]
        self._begin(client, data[match.end() :])
        for body in unacked:
            self.send(targets[body], body)
        return match.group(0)

    def _begin(self, client: RawClient, buffered: bytes) -> None:
        self._client = client
        self.lost_connection = asyncio.Event()
        self._reader = asyncio.create_task(self._read(client, buffered))

    def _send_stanza(self, data: str) -> int:
        assert self._client is not None
        self._client.send(data)
        self._stanzas_out += 1
        return self._stanzas_out

    def send(self, to: str, body: str) -> None:
        number = self._send_stanza(f"<message type='chat' to='{to}'><body>{body}</body></message>")
        self.sent.append(body)
        self._numbers[body] = number
        self._targets[body] = to
        self.request_ack()

    def request_ack(self) -> None:
        assert self._client is not None
        self._client.send(f"<r xmlns='{SM}'/>")

    def acknowledged(self) -> list[str]:
        return [b for b in self.sent if self._numbers.get(b, 1 << 60) <= self.acked_upto]

    @property
    def all_acknowledged(self) -> bool:
        return self.acked_upto >= self._stanzas_out

    async def _read(self, client: RawClient, buffer: bytes) -> None:
        assert client.reader is not None
        try:
            while True:
                while match := _ITEM.search(buffer):
                    item, buffer = match.group(0), buffer[match.end() :]
                    self._take(client, item)
                chunk = await client.reader.read(65536)
                if not chunk:
                    break
                buffer += chunk
        except (ConnectionError, OSError):
            pass
        finally:
            self.closing = buffer[-2000:]
            if not self.lost_connection.is_set():
                settled = time.monotonic() - 0.5
                acked = max((h for t, h in self._acks if t < settled), default=0)
                self.unacked_at_loss |= {b for b, n in self._bodies_at.items() if n > acked}
            self.lost_connection.set()

    def _take(self, client: RawClient, item: bytes) -> None:
        if item.startswith(b"<r "):
            client.send(f"<a xmlns='{SM}' h='{self._handled}'/>")
            self._acks.append((time.monotonic(), self._handled))
        elif item.startswith(b"<a "):
            h = re.search(rb"h=['\"](\d+)", item)
            if h:
                self.acked_upto = max(self.acked_upto, int(h.group(1)))
        else:
            self._handled += 1
            body = re.search(rb"<body>([^<]+)</body>", item)
            if body:
                self.received[body.group(1).decode()] += 1
                self._bodies_at[body.group(1).decode()] = self._handled

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._client is not None:
            await self._client.close()
