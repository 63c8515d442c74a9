"""An in-memory connection under a stream, for protocol tests that drive a stream
machine with bytes in and bytes out (no sockets)."""

from __future__ import annotations

import asyncio
import ssl

from xmppd.stream.framing import XML_STREAM
from xmppd.stream.transport import Framing, StreamInput


class MemoryTransport:
    """The connection under a stream: collects what it writes; plaintext only."""

    NAME = "memory"

    def __init__(self) -> None:
        self.peer = "192.0.2.1"
        self.is_secure = False
        self.out = bytearray()
        self.closed = False
        self.wrote = asyncio.Event()

    @property
    def framing(self) -> Framing:
        return XML_STREAM

    def write(self, data: bytes) -> None:
        self.out += data
        self.wrote.set()

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write_buffer_size(self) -> int:
        return 0

    def ssl_object(self) -> ssl.SSLObject | None:
        return None

    async def start_tls(self) -> None:
        raise ConnectionError("no TLS in memory")

    def attach(self, stream: StreamInput) -> None:
        pass

    def detach(self) -> None:
        pass

    async def until(self, marker: bytes) -> bytes:
        """Everything written up to and including ``marker`` (and since); clears."""
        async with asyncio.timeout(5):
            while marker not in self.out:
                self.wrote.clear()
                await self.wrote.wait()
        data = bytes(self.out)
        self.out.clear()
        return data
