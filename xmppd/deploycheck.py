"""``xmppd check``: is this deployment ready to face clients and other servers?

Three parts, each line marked ``OK``, ``WARN`` or ``FAIL``:

1. **Config**: it loads and validates (the same checks as ``check-config``).
2. **Certificates**: for every host and external component, the certificate xmppd
   will present (configured, or generated in the data directory): it exists, names
   the domain (RFC 6125: DNS-ID, wildcard, SRV-ID or XmppAddr), is not expired or
   about to expire, and whether it is self-signed (remote servers then need dialback
   and clients a manual exception).
3. **DNS**: the SRV records the listeners call for (RFC 6120 §3.2.1, XEP-0368):
   ``_xmpp-client._tcp`` / ``_xmpps-client._tcp`` for client listeners of each host,
   ``_xmpp-server._tcp`` / ``_xmpps-server._tcp`` for s2s listeners of each host and
   component, looked up with the configured resolver; their targets' addresses.

It ends with the records to add, in zone-file syntax, pointing at ``target`` (the
public name of this machine; default each domain itself). Nothing is changed.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.resolver
from cryptography import x509

from xmppd.config import ServerConfig
from xmppd.s2s.certs import cert_names, name_matches
from xmppd.s2s.resolve import make_resolver
from xmppd.tls import certificate_paths

EXPIRY_WARNING: Final = datetime.timedelta(days=21)
"""A certificate expiring sooner than this is reported (renewal is due)."""

_SERVICES: Final = {
    ("c2s", "starttls"): "_xmpp-client._tcp",
    ("c2s", "direct"): "_xmpps-client._tcp",
    ("s2s", "starttls"): "_xmpp-server._tcp",
    ("s2s", "direct"): "_xmpps-server._tcp",
}


@dataclass(slots=True)
class Report:
    """What the checks found: counts and the records an admin should publish."""

    say: Callable[[str], None]
    failures: int = 0
    warnings: int = 0
    missing: list[str] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.say(f"OK   {text}")

    def warn(self, text: str) -> None:
        self.warnings += 1
        self.say(f"WARN {text}")

    def fail(self, text: str) -> None:
        self.failures += 1
        self.say(f"FAIL {text}")


def _certificate_domains(config: ServerConfig) -> list[tuple[str, str]]:
    """(domain, whose certificate covers it): hosts, then external components (which
    present their host's certificate: the parent domain's, else the first host's)."""
    domains = [(d, d) for d in config.hosts]
    for component in config.components:
        parent = component.domain.split(".", 1)[-1]
        owner = parent if parent in config.hosts else next(iter(config.hosts))
        domains.append((component.domain, owner))
    return domains


def check_certificates(config: ServerConfig, report: Report) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for domain, owner in _certificate_domains(config):
        section = config.hosts[owner]
        cert_path, _key = certificate_paths(
            owner,
            section.certificate or config.tls.certificate,
            section.key or config.tls.key,
            config.server.data_dir,
        )
        if not cert_path.exists():
            report.warn(
                f"certificate of {domain}: {cert_path} does not exist (a self-signed one "
                "is generated at first start; clients and servers will not trust it)"
            )
            continue
        try:
            cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        except ValueError as exc:
            report.fail(f"certificate of {domain}: {cert_path} cannot be read: {exc}")
            continue
        names = cert_names(cert)
        shown = ", ".join(names.all()) or "none"
        if name_matches(names, domain):
            report.ok(f"certificate of {domain} names it ({cert_path}: {shown})")
        else:
            report.fail(f"certificate of {domain} does not name it ({cert_path}: {shown})")
        expires = cert.not_valid_after_utc
        if expires < now:
            report.fail(f"certificate of {domain} expired on {expires:%Y-%m-%d}")
        elif expires - now < EXPIRY_WARNING:
            report.warn(f"certificate of {domain} expires on {expires:%Y-%m-%d}: renew it")
        else:
            report.ok(f"certificate of {domain} valid until {expires:%Y-%m-%d}")
        if cert.issuer == cert.subject:
            report.warn(
                f"certificate of {domain} is self-signed: servers can only use dialback, "
                "clients must accept it by hand"
            )


@dataclass(frozen=True, slots=True)
class Expected:
    """A SRV record the deployment should publish."""

    name: str
    port: int
    target: str

    def zone_line(self) -> str:
        return f"{self.name}. 3600 IN SRV 0 5 {self.port} {self.target}."


def expected_records(config: ServerConfig, target: str | None) -> list[Expected]:
    domains_c2s = list(config.hosts)
    domains_s2s = [*config.hosts, *(c.domain for c in config.components)]
    records: list[Expected] = []
    for listener in config.listeners:
        service = _SERVICES.get((listener.kind, listener.tls))
        if service is None:
            continue
        for domain in domains_c2s if listener.kind == "c2s" else domains_s2s:
            records.append(Expected(f"{service}.{domain}", listener.port, target or domain))
    return records


async def check_dns(
    config: ServerConfig,
    report: Report,
    target: str | None,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> None:
    resolver = resolver or make_resolver(config.s2s.resolver, config.s2s.dns_timeout)
    expected = expected_records(config, target)
    if not expected:
        report.warn("no c2s or s2s listener: no SRV records to publish")
    targets: set[str] = set()
    for record in expected:
        try:
            answer = await resolver.resolve(record.name, "SRV")
            found = [(int(r.port), str(r.target).rstrip(".").lower()) for r in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            found = []
        except dns.exception.DNSException as exc:
            report.fail(f"DNS {record.name} SRV: look-up failed ({type(exc).__name__})")
            report.missing.append(record.zone_line())
            continue
        wanted = (record.port, record.target.rstrip(".").lower())
        if wanted in found:
            report.ok(f"DNS {record.name} SRV → {record.target}:{record.port}")
            targets.add(record.target)
        elif found:
            shown = ", ".join(f"{t}:{p}" for p, t in found)
            report.fail(
                f"DNS {record.name} SRV points at {shown}, not {record.target}:{record.port}"
            )
            report.missing.append(record.zone_line())
        else:
            report.fail(f"DNS {record.name} SRV: missing")
            report.missing.append(record.zone_line())
            targets.add(record.target)
    for name in sorted(targets):
        addresses: list[str] = []
        for rdtype in ("A", "AAAA"):
            with contextlib.suppress(dns.exception.DNSException):
                addresses += [str(r) for r in await resolver.resolve(name, rdtype)]
        if addresses:
            report.ok(f"DNS {name} → {', '.join(addresses)}")
        else:
            report.fail(f"DNS {name}: no A or AAAA record (the SRV target must resolve)")


async def check_deployment(
    config: ServerConfig,
    say: Callable[[str], None],
    *,
    target: str | None = None,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> Report:
    """Run every check, printing with ``say``; the report (``failures`` > 0: not ready)."""
    report = Report(say)
    say("== certificates")
    check_certificates(config, report)
    say("== DNS")
    await check_dns(config, report, target, resolver)
    if report.missing:
        say("== records to add (zone-file syntax)")
        for line in report.missing:
            say(line)
    say(f"== {report.failures} failure(s), {report.warnings} warning(s)")
    return report
