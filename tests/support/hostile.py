"""Helpers for attack tests: the server process's RSS, and a raw sender that keeps
writing until the server closes the connection."""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (``VmRSS`` of /proc/<pid>/status)."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1)) * 1024


@dataclass
class Flood:
    """What one flooding connection saw: bytes sent before the server closed, the
    server's output, and the highest RSS sampled while sending."""

    sent: int = 0
    received: bytes = b""
    closed_by_server: bool = False
    peak_rss: int = 0
    samples: list[int] = field(default_factory=list)


async def flood(
    port: int,
    pid: int,
    *,
    prefix: bytes,
    filler: bytes,
    total: int,
    suffix: bytes = b"",
    chunk: int = 256 * 1024,
    timeout: float = 40,
) -> Flood:
    """Connect, send ``prefix`` then ``filler`` repeated up to ``total`` bytes in
    ``chunk``-sized writes (each drained), then ``suffix``; stop early when the server
    closes. Samples the server's RSS after every write. Then reads until the server
    closes (or ``timeout``)."""
    result = Flood()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    piece = (filler * (chunk // len(filler) + 1))[:chunk]

    async def collect() -> None:
        try:
            while data := await reader.read(65536):
                result.received += data
        except ConnectionError:
            pass  # a reset: the server closed with our unread bytes in its buffer
        result.closed_by_server = True

    collector = asyncio.get_running_loop().create_task(collect())
    try:
        async with asyncio.timeout(timeout):
            writer.write(prefix)
            await writer.drain()
            while result.sent < total and not collector.done():
                writer.write(piece)
                await writer.drain()
                result.sent += len(piece)
                sample = rss(pid)
                result.samples.append(sample)
                result.peak_rss = max(result.peak_rss, sample)
            if suffix and not collector.done():
                writer.write(suffix)
                await writer.drain()
    except (ConnectionError, TimeoutError):
        pass
    finally:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(10):
                await asyncio.shield(collector)
        collector.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    result.peak_rss = max(result.peak_rss, rss(pid))
    return result
