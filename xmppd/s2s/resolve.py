"""Where a remote XMPP server listens (RFC 6120 §3.2, XEP-0368).

``_xmpps-server._tcp.<domain>`` SRV records (direct TLS) and ``_xmpp-server._tcp``
records (STARTTLS) are looked up together, ordered by priority and, within a
priority, randomly by weight (RFC 2782); a SRV answer of ``.`` says the domain offers
no service. Without any SRV record the domain itself is tried on port 5269
(STARTTLS). Each target name is resolved to its AAAA and A addresses, every address
is a separate attempt. An admin can pin a domain to ``host:port`` instead of DNS.

dnspython's asyncio resolver does the look-ups; its nameserver (address and port)
can be configured, so tests answer from their own DNS server.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

DEFAULT_PORT: Final = 5269


@dataclass(frozen=True, slots=True)
class Target:
    """One address to try: ``host`` (an IP address) and ``port``; ``direct_tls`` for
    XEP-0368 (TLS from the first byte), else STARTTLS. ``name`` is the DNS name it came
    from (SRV target or the domain), for logs and diagnostics."""

    host: str
    port: int
    direct_tls: bool
    name: str


@dataclass(slots=True)
class Resolution:
    """What DNS said about a domain: the targets in order and the steps, for the log
    and ``xmppd check-federation``."""

    domain: str
    targets: list[Target] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    """Why there is no target (``None`` when there are some)."""


def make_resolver(address: str | None, timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver on ``address`` (``"ip"`` or ``"ip:port"``, ``[v6]:port``), else the
    system's."""
    if address is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, port = _split_host_port(address, 53)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 3.0)
    resolver.cache = None
    return resolver


def _split_host_port(value: str, default_port: int) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port)
    return value, default_port


def parse_pin(value: str) -> tuple[str, int, bool]:
    """``"host:port"`` or ``"tls://host:port"`` → host, port, direct TLS."""
    direct = value.startswith("tls://")
    host, port = _split_host_port(value.removeprefix("tls://"), DEFAULT_PORT)
    return host, port, direct


def order_srv(records: Sequence[tuple[int, int, int, str, bool]]) -> list[tuple[int, str, bool]]:
    """RFC 2782 order of (priority, weight, port, target, direct) records: by
    priority, then a weighted random pick among each priority's records."""
    result: list[tuple[int, str, bool]] = []
    for prio in sorted({r[0] for r in records}):
        group = [r for r in records if r[0] == prio]
        # Zero-weight records first so they get a small chance (RFC 2782).
        group.sort(key=lambda r: r[1] != 0)
        while group:
            total = sum(r[1] for r in group)
            pick = random.randint(0, total) if total else 0
            chosen, running = len(group) - 1, 0
            for position, candidate in enumerate(group):
                running += candidate[1]
                if running >= pick:
                    chosen = position
                    break
            record = group.pop(chosen)
            result.append((record[2], record[3], record[4]))
    return result


async def resolve(
    domain: str, resolver: dns.asyncresolver.Resolver, pins: dict[str, str]
) -> Resolution:
    """The targets for ``domain``, in the order to try them."""
    res = Resolution(domain)
    pin = pins.get(domain)
    if pin is not None:
        host, port, direct = parse_pin(pin)
        res.steps.append(f"pinned in config to {pin}")
        for address in await _addresses(host, resolver, res):
            res.targets.append(Target(address, port, direct, host))
        if not res.targets:
            res.error = f"DNS: the pinned host {host} has no address"
        return res
    records: list[tuple[int, int, int, str, bool]] = []
    refused = 0
    for service, direct in (("_xmpps-server._tcp", True), ("_xmpp-server._tcp", False)):
        qname = f"{service}.{domain}"
        try:
            answer = await resolver.resolve(qname, "SRV", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            res.steps.append(f"SRV {qname}: none")
            continue
        except (dns.exception.DNSException, OSError) as exc:
            res.steps.append(f"SRV {qname}: lookup failed ({_why(exc)})")
            continue
        for rr in answer:
            target = str(rr.target).rstrip(".")
            if target == "":
                refused += 1
                res.steps.append(f"SRV {qname}: '.' (no service offered)")
                continue
            port = int(rr.port)
            prio, weight = int(rr.priority), int(rr.weight)
            records.append((prio, weight, port, target, direct))
            res.steps.append(f"SRV {qname}: {target}:{port} priority {prio} weight {weight}")
    if records:
        ordered = order_srv(records)
    elif refused:
        res.error = f"DNS: {domain} says it offers no XMPP server-to-server service"
        return res
    else:
        res.steps.append(f"no SRV records: falling back to {domain}:{DEFAULT_PORT}")
        ordered = [(DEFAULT_PORT, domain, False)]
    for port, name, direct in ordered:
        for address in await _addresses(name, resolver, res):
            res.targets.append(Target(address, port, direct, name))
    if not res.targets:
        res.error = f"DNS: no address found for {domain} (SRV, AAAA and A)"
    return res


async def _addresses(name: str, resolver: dns.asyncresolver.Resolver, res: Resolution) -> list[str]:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return [name]
    found: list[str] = []
    for rdtype in ("AAAA", "A"):
        try:
            answer = await resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            res.steps.append(f"{rdtype} {name}: none")
            continue
        except (dns.exception.DNSException, OSError) as exc:
            res.steps.append(f"{rdtype} {name}: lookup failed ({_why(exc)})")
            continue
        addresses = [rr.to_text() for rr in answer]
        res.steps.append(f"{rdtype} {name}: {', '.join(addresses)}")
        found += addresses
    return found


def _why(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
