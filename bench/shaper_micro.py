"""Per-read cost of the input shapers, in process, without sockets.

What every read from a peer pays before its bytes reach the parser, on the path where
the peer stays within its rate (the common case), for:

- ``c2s``: :meth:`StreamMachine.data_received` of a stream with ``input_rate`` set,
  minus the same with ``input_rate = 0`` (no shaper): the shaper's own cost;
- ``s2s``: ``OutgoingConnection.data_received`` (the connection's shaper in front of
  its stream) against a bare ``C2SConnection.data_received`` (no shaper).

The stream's parsing (``_feed``) and the s2s stream are stubs: only the shaping is
timed. Best of ``--repeat`` runs of ``--reads`` reads each, in ns per read. Written to
run against older commits too (it uses only constructors and entry points that have
not changed), so a before/after comparison runs the same file in two checkouts:

    .venv/bin/python -m bench.shaper_micro --reads 300000 --repeat 7
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

from xmppd.stream.framing import XML_STREAM
from xmppd.stream.machine import StreamMachine, StreamState
from xmppd.transports.tcp import C2SConnection, OutgoingConnection

DATA = b"<message to='a@b/c' id='x'><body>" + b"x" * 150 + b"</body></message>"
RATE = 1 << 40
"""So high that no read is ever held: the within-budget path."""


class _Transport:
    """What the stream and the connection call on a transport; does nothing."""

    framing = XML_STREAM
    peer = "bench"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def write_buffer_size(self) -> int:
        return 0


class _Stream(StreamMachine):
    """A stream whose parsing is a stub: ``data_received`` costs only the shaping."""

    __slots__ = ()
    TRANSITIONS = {StreamState.CONNECTED: frozenset({StreamState.CLOSED})}

    def _feed(self, data: bytes) -> None:
        pass


class _NullStream:
    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self) -> None:
        pass


def _time(call: Callable[[bytes], None], reads: int) -> float:
    data = DATA
    started = time.perf_counter()
    for _ in range(reads):
        call(data)
    return (time.perf_counter() - started) / reads * 1e9


def _stream(rate: int) -> _Stream:
    return _Stream(
        _Transport(),  # type: ignore[arg-type]
        max_stanza_size=1 << 20,
        connect_timeout=3600,
        write_limit=1 << 30,
        input_rate=rate,
        input_burst=1 << 30,
    )


def _connection(shaped: bool) -> C2SConnection:
    def open_stream(transport: Any) -> Any:
        return _NullStream()

    conn: C2SConnection
    if shaped:
        ctx = ssl.create_default_context()
        conn = OutgoingConnection(open_stream, ctx, "bench", False, RATE)
    else:
        conn = C2SConnection(open_stream, None, "none")
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    return conn


async def run(reads: int, repeat: int) -> dict[str, float]:
    plain, shaped = _stream(0), _stream(RATE)
    bare, outgoing = _connection(False), _connection(True)
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, call in (
            ("c2s none", plain.data_received),
            ("c2s shaped", shaped.data_received),
            ("s2s none", bare.data_received),
            ("s2s shaped", outgoing.data_received),
        ):
            ns = _time(call, reads)
            best[name] = min(best.get(name, ns), ns)
            await asyncio.sleep(0)
    for stream in (plain, shaped):
        stream._shutdown()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    best = asyncio.run(run(args.reads, args.repeat))
    for name, ns in best.items():
        print(f"{name:12} {ns:7.1f} ns/read")
    print(f"c2s shaper   {best['c2s shaped'] - best['c2s none']:7.1f} ns/read")
    print(f"s2s shaper   {best['s2s shaped'] - best['s2s none']:7.1f} ns/read")


if __name__ == "__main__":
    main()
