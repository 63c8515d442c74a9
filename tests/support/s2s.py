"""Two xmppd servers on loopback that federate with each other (s2s tests).

Each runs as its own process with its own domain and an s2s listener, and pins the
other's domain to that listener (``[s2s] pins``), so no DNS is involved."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import XmppdServer, free_port, running_server


@dataclass
class Federated:
    a: XmppdServer
    b: XmppdServer
    a_s2s_port: int
    b_s2s_port: int


def s2s_extra(listen_port: int, pins: dict[str, str], more: str = "") -> str:
    """Config lines for an s2s listener on ``listen_port`` and ``pins``."""
    pin_lines = ", ".join(f'"{d}" = "{t}"' for d, t in pins.items())
    return (
        "[[listeners]]\n"
        'kind = "s2s"\n'
        'address = "127.0.0.1"\n'
        f"port = {listen_port}\n"
        "[s2s]\n"
        f"pins = {{ {pin_lines} }}\n" + more
    )


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.05)


@contextmanager
def federated_pair(
    tmp: Path,
    *,
    a_domain: str = "a.example",
    b_domain: str = "b.example",
    a_more: str = "",
    b_more: str = "",
    a_pins: dict[str, str] | None = None,
) -> Iterator[Federated]:
    pa, pb = free_port(), free_port()
    with ExitStack() as stack:
        a = stack.enter_context(
            running_server(
                tmp / "a",
                domain=a_domain,
                extra=s2s_extra(pa, {b_domain: f"127.0.0.1:{pb}", **(a_pins or {})}, a_more),
            )
        )
        b = stack.enter_context(
            running_server(
                tmp / "b",
                domain=b_domain,
                extra=s2s_extra(pb, {a_domain: f"127.0.0.1:{pa}"}, b_more),
            )
        )
        wait_port(pa)
        wait_port(pb)
        yield Federated(a, b, pa, pb)
