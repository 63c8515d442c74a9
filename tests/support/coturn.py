"""coturn (Debian's ``turnserver``) for tests: started on free loopback ports with the
shared-secret REST scheme (``use-auth-secret`` / ``static-auth-secret``), ended
afterwards; :func:`turn_allocates` asks it for a relay with ``turnutils_uclient``."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port, service_unavailable


@dataclass
class Coturn:
    port: int
    secret: str


@contextmanager
def running_coturn(tmp: Path, secret: str) -> Iterator[Coturn]:
    """Start ``turnserver``; skip (fail under CI) when coturn is not installed."""
    if shutil.which("turnserver") is None or shutil.which("turnutils_uclient") is None:
        service_unavailable("coturn is not installed (apt-get install coturn)")
    port = free_port()
    low = random.randrange(50000, 60000, 100)  # relay ports: a range of its own
    log = tmp / "turnserver.log"
    proc = subprocess.Popen(
        [
            "turnserver",
            "-n",  # no configuration file
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            f"--min-port={low}",
            f"--max-port={low + 99}",
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            "--realm=localhost",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            f"--userdb={tmp / 'turndb'}",
            f"--pidfile={tmp / 'turnserver.pid'}",
            f"--log-file={log}",
            "--no-stdout-log",
            "--simple-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"turnserver did not start: {text[-2000:]}") from None
                time.sleep(0.1)
        yield Coturn(port, secret)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def turn_allocates(turn: Coturn, username: str, password: str) -> tuple[bool, str]:
    """Whether coturn grants a relay allocation to these credentials (two
    ``turnutils_uclient`` clients that relay a message to each other), and its output."""
    proc = await asyncio.create_subprocess_exec(
        "turnutils_uclient",
        "-u",
        username,
        "-w",
        password,
        "-p",
        str(turn.port),
        "-n",
        "1",
        "-m",
        "1",
        "-l",
        "50",
        "-y",  # client to client through the relay
        "-c",  # no RTCP
        "127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode == 0, out.decode(errors="replace")
