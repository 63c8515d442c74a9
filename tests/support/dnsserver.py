"""A small authoritative DNS server for tests (dnspython): UDP on a free loopback port,
answering SRV, A and AAAA records from a dict; anything else is NXDOMAIN."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = dict[tuple[str, str], list[str]]
"""(name, type) → record texts, e.g. ("_xmpp-server._tcp.x.test", "SRV"): ["0 5 5269 h.x.test."]."""


class _Dns(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = {(n.lower().rstrip("."), t): v for (n, t), v in zone.items()}
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[tuple[str, str]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
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
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


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
