"""What a per-address limit counts as one source.

An IPv4 address is one source. An IPv6 address is counted by its /64 network: one
subscriber or one LAN is normally given a whole /64 (RFC 6177 and common practice), so
counting single IPv6 addresses would let one host step past every per-address limit
(connections, failed logins, registrations) by changing the low 64 bits. An
IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, from a dual-stack socket) is its IPv4
address. Anything that is not an IP address (a Unix socket, an empty peer) is itself.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=4096)
def source_key(address: str) -> str:
    """The key under which ``address`` is counted (see the module docstring)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
