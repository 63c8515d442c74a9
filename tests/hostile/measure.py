"""Print, for each parser-state attack, what the server did and its RSS.

``python -m tests.hostile.measure [MiB]`` starts its own server (SQLite) and sends
each attack of ``test_parser_limits`` on one connection; docs/security.md records its
output. Not part of the suite (the suite asserts the same with smaller volumes)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.hostile.test_parser_limits import ATTACKS, _namespaces
from tests.support.hostile import MIB, flood, rss
from tests.support.rawstream import stream_error
from tests.support.server import running_server


async def _measure(port: int, pid: int, total: int) -> None:
    for name, (prefix, filler, _) in ATTACKS.items():
        before = rss(pid)
        started = time.monotonic()
        result = await flood(port, pid, prefix=prefix, filler=filler or _namespaces(), total=total)
        after = rss(pid)
        print(
            f"{name:32} sent {result.sent / MIB:8.2f} MiB  error {stream_error(result.received)!s:18}"
            f" closed {result.closed_by_server!s:5}  RSS before {before / MIB:6.1f}"
            f" peak {result.peak_rss / MIB:6.1f} after {after / MIB:6.1f} MiB"
            f"  ({time.monotonic() - started:.1f} s)",
            flush=True,
        )


def main() -> None:
    total = int(sys.argv[1]) * MIB if len(sys.argv) > 1 else 64 * MIB
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_server(Path(tmp), modules={"ping": {}}, extra="[c2s]\ninput_rate = 0\n") as srv,
    ):
        asyncio.run(_measure(srv.starttls_port, srv.process.pid, total))


if __name__ == "__main__":
    main()
