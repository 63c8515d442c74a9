"""A small authoritative DNS server for tests (dnspython): UDP on a free loopback port,
answering SRV, A and AAAA records from a dict; anything else is NXDOMAIN.

:func:`dns_server` runs in the test's event loop (xmppd's resolver, ``check``);
:func:`threaded_dns_server` in a thread of its own, for servers that outlive one test
(ejabberd's resolver is pointed at it through its ``inetrc``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import cast

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = dict[tuple[str, str], list[str]]
"""(name, type) → record texts, e.g. ("_xmpp-server._tcp.x.test", "SRV"): ["0 5 5269 h.x.test."]."""


class _Answers:
    """The zone and the questions asked so far."""

    def __init__(self, zone: Zone) -> None:
        self.zone = {(n.lower().rstrip("."), t): v for (n, t), v in zone.items()}
        self.queries: list[tuple[str, str]] = []

    def answer(self, data: bytes) -> bytes:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        records = self.zone.get((name, rdtype))
        if records:
            response.answer.append(
                dns.rrset.from_text(question.name, 60, dns.rdataclass.IN, rdtype, *records)
            )
        elif not any(n == name for n, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


class _Dns(asyncio.DatagramProtocol, _Answers):
    def __init__(self, zone: Zone) -> None:
        _Answers.__init__(self, zone)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(self.answer(data), addr)


@asynccontextmanager
async def dns_server(zone: Zone) -> AsyncIterator[tuple[str, _Dns]]:
    """Serve ``zone``; yields ``"127.0.0.1:<port>"`` (for ``[s2s] resolver``) and the
    protocol (its ``queries``)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Dns(zone), local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        yield f"127.0.0.1:{port}", protocol
    finally:
        transport.close()


@contextmanager
def threaded_dns_server(zone: Zone) -> Iterator[tuple[int, _Answers]]:
    """Serve ``zone`` from a thread; yields the UDP port on 127.0.0.1 and the answers
    (their ``queries``). The thread ends with the block."""
    answers = _Answers(zone)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                sock.sendto(answers.answer(data), addr)
            except Exception:  # a malformed query is not answered
                continue

    thread = threading.Thread(target=serve, name="test-dns", daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1]), answers
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()
