"""Two xmppd servers on loopback that federate with each other (s2s tests).

Each runs as its own process with its own domain and an s2s listener, and pins the
other's domain to that listener (``[s2s] pins``), so no DNS is involved."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer, free_port, running_server
from xmppd.s2s.dialback import dialback_key, dialback_secret


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
    b_pins: dict[str, str] | None = None,
    modules: dict[str, dict[str, Any]] | None = None,
    b_services: tuple[str, ...] = (),
    http: bool = False,
) -> Iterator[Federated]:
    """Two servers pinned to each other; ``a_pins``/``b_pins``: more pins (e.g. the
    other's service subdomains); ``modules``: both servers' modules (else the tests'
    default set); ``b_services``: more domains of b (``pubsub.b.example``) that a
    reaches on b's listener; ``http``: both serve HTTP (``/metrics``)."""
    pa, pb = free_port(), free_port()
    with ExitStack() as stack:
        a = stack.enter_context(
            running_server(
                tmp / "a",
                domain=a_domain,
                modules=modules,
                http=http,
                extra=s2s_extra(
                    pa,
                    {
                        b_domain: f"127.0.0.1:{pb}",
                        **{d: f"127.0.0.1:{pb}" for d in b_services},
                        **(a_pins or {}),
                    },
                    a_more,
                ),
            )
        )
        b = stack.enter_context(
            running_server(
                tmp / "b",
                domain=b_domain,
                modules=modules,
                http=http,
                extra=s2s_extra(pb, {a_domain: f"127.0.0.1:{pa}", **(b_pins or {})}, b_more),
            )
        )
        wait_port(pa)
        wait_port(pb)
        yield Federated(a, b, pa, pb)


S2S_HEADER = (
    "<?xml version='1.0'?><stream:stream xmlns='jabber:server' "
    "xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' "
    "from='{frm}' to='{to}' version='1.0'>"
)


class RawServer:
    """A raw s2s peer: opens a stream to ``port`` pretending to be ``frm``."""

    def __init__(self, port: int, frm: str, to: str) -> None:
        self.port, self.frm, self.to = port, frm, to
        self.raw = RawClient.__new__(RawClient)
        self.raw.received = b""
        self.stream_id = ""

    async def connect(self) -> None:
        raw = self.raw
        raw.reader, raw.writer = await asyncio.open_connection("127.0.0.1", self.port)
        raw.send(S2S_HEADER.format(frm=self.frm, to=self.to))
        features = await raw.read_until(b"</stream:features>")
        assert b"<starttls" in features
        raw.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await raw.read_until(b"<proceed")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await raw.writer.start_tls(ctx, server_hostname=self.to)
        raw.send(S2S_HEADER.format(frm=self.frm, to=self.to))
        opened = await raw.read_until(b"</stream:features>")
        assert b"urn:xmpp:features:dialback" in opened
        found = re.search(rb"<stream:stream [^>]*\bid=['\"]([^'\"]+)", opened)
        assert found is not None
        self.stream_id = found.group(1).decode()

    def dialback(self, key: str) -> None:
        self.raw.send(f"<db:result from='{self.frm}' to='{self.to}'>{key}</db:result>")

    async def close(self) -> None:
        writer = self.raw.writer
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def key_of(server: XmppdServer, receiving: str, stream_id: str) -> str:
    """The dialback key ``server`` itself would send (read from its server.key)."""
    secret = bytes.fromhex((server.data_dir / "server.key").read_text().strip())
    return dialback_key(dialback_secret(secret), receiving, server.domain, stream_id)


async def metric(server: XmppdServer, name: str, **labels: str) -> float:
    """The value of one sample of ``/metrics`` (0 when absent)."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if not line.startswith(f"xmppd_{name}{{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
