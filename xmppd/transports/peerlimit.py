"""Connections per source address: the c2s listeners' ``max_connections_per_ip``."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from xmppd.peeraddress import source_key
from xmppd.stream.framing import XML_STREAM, stream_error

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSAL_TEXT: Final = "too many connections from your address"


class ConnectionsPerAddress:
    """Counts open connections per source (an address; an IPv6 /64,
    :func:`~xmppd.peeraddress.source_key`); :meth:`acquire` refuses one more than
    ``limit`` (addresses in ``exempt`` are not counted)."""

    __slots__ = ("_exempt", "_open", "limit")

    def __init__(self, limit: int, exempt: Sequence[Network] = ()) -> None:
        self.limit = limit
        self._exempt = tuple(exempt)
        self._open: dict[str, int] = {}

    def is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._exempt)

    def acquire(self, address: str) -> bool:
        """Count a new connection from ``address``; ``False`` (not counted) when it
        already has ``limit`` open."""
        if self.is_exempt(address):
            return True
        key = source_key(address)  # an IPv6 /64 is one source
        count = self._open.get(key, 0)
        if count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def release(self, address: str) -> None:
        """A connection :meth:`acquire` counted has closed."""
        key = source_key(address)
        count = self._open.get(key, 0)
        if count <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = count - 1

    def open_from(self, address: str) -> int:
        return self._open.get(source_key(address), 0)


def refusal(namespace: str) -> bytes:
    """What a refused connection gets: our stream header, ``<policy-violation/>``
    (RFC 6120 §4.9.3.14) and the end of the stream."""
    header = XML_STREAM.open(namespace, {"version": "1.0", "id": "refused"})
    return header + stream_error("policy-violation", REFUSAL_TEXT) + XML_STREAM.close()
