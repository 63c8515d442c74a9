"""Memory per connection at each stage, before authentication: TCP or TLS connect, then
the stream header and features. Separates the TLS layer's cost from the stream's.

    python -m bench.connmem --connections 800 [--plain]

Starts xmppd with default modules on loopback ports in a temporary directory (SQLite,
self-signed certificate), opens the connections from this process and prints the
server's RSS growth per connection after each stage and after 12 s idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import tree_rss_kb

HEADER = (
    b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
    b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _xmppd(workdir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    starttls, direct = _free_port(), _free_port()
    config = workdir / "xmppd.toml"
    config.write_text(
        f'[server]\ndata_dir = "{workdir / "data"}"\nlog_level = "warning"\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = {starttls}\ntls = "starttls"\n'
        f'[[listeners]]\naddress = "127.0.0.1"\nport = {direct}\ntls = "direct"\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "xmppd", "--config", str(config), "run"])
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", direct)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("xmppd did not start")
            time.sleep(0.2)
        yield proc, starttls, direct, workdir / "data" / "certs" / "localhost.crt"
    finally:
        proc.terminate()
        proc.wait(20)


async def _measure(pid: int, port: int, tls: ssl.SSLContext | None, n: int) -> None:
    await asyncio.sleep(1)
    base = tree_rss_kb(pid)

    def per_connection(stage: str) -> None:
        print(f"{stage:<32} {(tree_rss_kb(pid) - base) / n:7.1f} KiB/connection")

    conns = []
    for _ in range(n):
        if tls is None:
            conns.append(await asyncio.open_connection("127.0.0.1", port))
        else:
            conns.append(
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls, server_hostname="localhost"
                )
            )
    await asyncio.sleep(2)
    per_connection("connected" + (" (TLS handshake)" if tls else " (TCP)"))
    for _, writer in conns:
        writer.write(HEADER)
    for reader, _ in conns:
        data = b""
        while b"</stream:features>" not in data:
            data += await reader.read(4096)
    await asyncio.sleep(2)
    per_connection("+ stream header and features")
    await asyncio.sleep(12)
    per_connection("+ 12 s idle")
    for _, writer in conns:
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=800)
    parser.add_argument("--plain", action="store_true", help="TCP without TLS")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _xmppd(Path(tmp)) as (proc, plain, direct, ca):
        tls = None
        if not args.plain:
            tls = ssl.create_default_context(cafile=str(ca))
            tls.check_hostname = False
        asyncio.run(_measure(proc.pid, plain if args.plain else direct, tls, args.connections))


if __name__ == "__main__":
    main()
