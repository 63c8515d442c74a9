"""The server configuration: one TOML file, validated by pydantic models.

Every error names the file, the key path and what was expected, and stops
start-up (``xmppd check-config`` runs the same validation without starting).
Module and hook-file options are validated later, against each module's own
``Options`` class, with the same error format.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xmppd.configtext import KeyLines, problems, strict_scalar
from xmppd.jid import InvalidJID, domainprep

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KiB": 1024,
    "k": 1024,
    "K": 1024,
    "KB": 1000,
    "MiB": 1024**2,
    "M": 1024**2,
    "MB": 1000**2,
    "GiB": 1024**3,
    "G": 1024**3,
    "GB": 1000**3,
}


_PairT = TypeVar("_PairT", bound="_CertificatePair")


LOOPBACK: Final[tuple[IPvAnyNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
"""The networks exempt from the per-address connection limits by default."""


class ConfigError(Exception):
    """The configuration is invalid; the message is meant for the admin, as is (one
    line per problem)."""

    @property
    def lines(self) -> list[str]:
        return str(self).splitlines()


def parse_duration(value: object) -> float:
    """``30`` / ``"30s"`` / ``"5m"`` / ``"1d"`` → seconds (``"forever"`` → ``inf``)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', '5m' or '1d'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        if value.strip().lower() in ("forever", "never", "infinite"):
            return float("inf")
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    raise ValueError("expected a duration such as '30s', '5m' or '1d'")


def parse_size(value: object) -> int:
    """``1024`` / ``"256KiB"`` / ``"10MiB"`` → bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '256KiB' or '10MiB'")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2) or "B"]
    raise ValueError("expected a size such as '256KiB' or '10MiB'")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; accepts ``"30s"``, ``"5m"``, ``"1d"``, ``"forever"`` or a number."""
Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes; accepts ``"256KiB"``, ``"10MiB"`` or a number."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors; values are frozen;
    numbers and booleans must be written as such, not as strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return strict_scalar(cls, info.field_name, value)


class ServerSection(Section):
    data_dir: Path = Field(
        Path("data"), description="Where the database, keys and certificates live."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        description="info: lifecycle, logins, failed logins and session ends; debug: "
        "also one line per stanza.",
    )
    log_target: Literal["stderr", "file", "journal"] = Field(
        "stderr",
        description="Where the log goes: stderr, log_file, or the systemd journal (needs "
        "python3-systemd; stderr otherwise).",
    )
    log_file: Path = Field(
        Path("xmppd.log"),
        description="The log file when log_target = 'file' (relative: to data_dir).",
    )
    log_format: Literal["plain", "json"] = Field(
        "plain", description="plain text lines, or one JSON object per line."
    )
    module_paths: tuple[Path, ...] = Field(
        (), description="Extra directories searched for mod_<name>.py module files."
    )
    workers: int | Literal["auto"] = Field(
        1,
        description='Processes serving this configuration on this machine ("auto": one '
        "per core). More than one shares the listening sockets (SO_REUSEPORT) and needs "
        "[cluster] redis_url: the workers form a local cluster through Redis.",
    )
    secret_file: Path | None = Field(
        None,
        description="File holding the server secret (64 hex digits, or any random text "
        "of 32 characters or more), shared by every node of a cluster (a Kubernetes "
        "Secret). Unset: <data_dir>/server.key, or in a cluster on PostgreSQL the "
        "database's copy, made by the first node.",
    )

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError('expected 1 to 256, or "auto"')
        return v


class StorageSection(Section):
    url: str = Field(
        "",
        description="SQLAlchemy URL: sqlite+aiosqlite:///path or "
        "postgresql+asyncpg://user@host/db. Empty means <data_dir>/xmppd.sqlite3.",
    )
    pool_size: int = Field(10, ge=1, le=1000)
    auto_upgrade: bool = Field(
        True,
        description="At start, upgrade the database schema to this release's (Alembic "
        "revisions, as `xmppd db upgrade` does). Off: a database at an older revision "
        "stops start-up until `xmppd db upgrade` is run; an empty one is still set up.",
    )

    @field_validator("url")
    @classmethod
    def _known_driver(cls, v: str) -> str:
        if v and not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("expected a sqlite+aiosqlite:// or postgresql+asyncpg:// URL")
        return v


class AuthSection(Section):
    scram_iterations: int = Field(4096, ge=4096, le=10_000_000)
    allow_insecure_plain: bool = Field(
        False, description="Offer PLAIN without TLS. Only for benchmarks on loopback."
    )
    failures_before_delay: int = Field(3, ge=1)
    max_failure_delay: Duration = Field(10.0, ge=0)
    sasl2: bool = Field(
        True,
        description="Offer XEP-0388 SASL2 with XEP-0386 Bind 2 (authenticate, bind and "
        "enable carbons, stream management and CSI in one round trip). Only over TLS.",
    )
    fast: bool = Field(
        True, description="Issue XEP-0484 FAST tokens for password-less re-login (SASL2)."
    )
    fast_token_lifetime: Duration = Field(
        14 * 86400.0,
        ge=3600,
        le=365 * 86400,
        description="How long a FAST token stays valid; it is renewed when half is used.",
    )
    hashing_niceness: int = Field(
        19,
        ge=0,
        le=19,
        description="CPU niceness of the threads that hash passwords (registrations, "
        "password changes, PLAIN logins; Linux): 19 lets logged-in users' traffic go "
        "first (chat p99 beside 100 registrations 174 -> 1.5 ms). Relative to the "
        "other threads of the same session or service, so a service of its own; 0 on a "
        "host where everything runs in one session (a test suite).",
    )


_COMPONENT_LISTENER_DEFAULTS: dict[str, object] = {
    "address": "127.0.0.1",
    "port": 5347,
    "tls": "none",
}
"""What a ``kind = "component"`` listener takes for the keys it leaves out."""

_S2S_LISTENER_DEFAULTS: dict[str, object] = {"port": 5269}
"""What a ``kind = "s2s"`` listener takes for the keys it leaves out (RFC 6120 §14.7)."""

_HTTP_LISTENER_DEFAULTS: dict[str, object] = {
    "address": "127.0.0.1",
    "port": 5280,
    "tls": "none",
}
"""What a ``kind = "http"`` listener takes for the keys it leaves out: plain HTTP on
loopback, behind a reverse proxy that terminates TLS (or for a browser on the same
machine)."""


class ListenerSection(Section):
    """One listening socket. Client listeners (``c2s``) default to every address,
    port 5222 and STARTTLS; server-to-server listeners (``s2s``) to every address,
    port 5269 and STARTTLS; component listeners (XEP-0114) to loopback, port 5347
    and no TLS, which is the only mode that protocol has; HTTP listeners (WebSocket,
    BOSH, discovery, module routes) to loopback, port 5280 and plain HTTP (``tls =
    "direct"`` is HTTPS with the hosts' certificates, chosen by SNI)."""

    kind: Literal["c2s", "s2s", "component", "http"] = "c2s"
    address: str = "0.0.0.0"
    port: int = Field(5222, ge=0, le=65535)
    tls: Literal["starttls", "direct", "none"] = "starttls"
    backlog: int = Field(1024, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _component_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") == "component":
            return {**_COMPONENT_LISTENER_DEFAULTS, **data}
        if isinstance(data, Mapping) and data.get("kind") == "s2s":
            return {**_S2S_LISTENER_DEFAULTS, **data}
        if isinstance(data, Mapping) and data.get("kind") == "http":
            return {**_HTTP_LISTENER_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _component_is_plain_tcp(self) -> Self:
        if self.kind == "component" and self.tls != "none":
            raise ValueError(
                f"listener on port {self.port}: component listeners speak plain TCP "
                "(XEP-0114 has no TLS): leave tls out or set tls = 'none', and bind the "
                "listener to a loopback or private address"
            )
        if self.kind == "s2s" and self.tls == "none":
            raise ValueError(
                f"listener on port {self.port}: server-to-server streams need TLS: use "
                "tls = 'starttls' (port 5269) or 'direct' (XEP-0368)"
            )
        if self.kind == "http" and self.tls == "starttls":
            raise ValueError(
                f"listener on port {self.port}: HTTP listeners have no STARTTLS: use "
                "tls = 'direct' (HTTPS) or tls = 'none' (plain HTTP)"
            )
        return self


S2SPolicy = Literal["certificates", "dialback", "deny"]
"""How a remote domain may authenticate: ``certificates`` (a certificate that validates
for the domain, SASL EXTERNAL), ``dialback`` (a valid certificate, else server dialback,
XEP-0220), ``deny`` (no federation with it)."""


def _domain_list(v: tuple[str, ...]) -> tuple[str, ...]:
    for name in v:
        if domainprep(name) != name:
            raise ValueError(f"{name!r}: expected a lowercase domain name")
    return v


class S2SSection(Section):
    """Federation (server-to-server, RFC 6120): outgoing links, DNS, policies."""

    enabled: bool = Field(
        True,
        description="Federate: stanzas for domains not served here go to their servers. "
        "Off: they bounce with remote-server-not-found.",
    )
    resolver: str | None = Field(
        None,
        description='DNS server for SRV/A/AAAA look-ups, "address" or "address:port"; '
        "default: the system's resolvers (/etc/resolv.conf).",
    )
    dns_timeout: Duration = Field(10.0, gt=0, description="Time for all DNS look-ups of a domain.")
    pins: dict[str, str] = Field(
        default_factory=dict,
        description='Domain → "host:port" (STARTTLS) or "tls://host:port" (direct TLS), '
        "used instead of DNS (closed networks, tests).",
    )
    default_policy: S2SPolicy = Field(
        "dialback", description="Policy for remote domains without their own entry."
    )
    policies: dict[str, S2SPolicy] = Field(
        default_factory=dict, description="Policy per remote domain (overrides the default)."
    )
    allow: tuple[str, ...] = Field(
        (), description="When not empty, federate only with these domains (and subdomains)."
    )
    deny: tuple[str, ...] = Field(
        (), description="Never federate with these domains (and their subdomains)."
    )
    ca_file: Path | None = Field(
        None, description="PEM CA bundle for remote certificates; default: the system's."
    )
    connect_timeout: Duration = Field(
        10.0, gt=0, description="Time for one TCP connection attempt (per address)."
    )
    auth_timeout: Duration = Field(
        30.0, gt=0, description="Time from TCP connect to an authenticated stream."
    )
    idle_timeout: Duration = Field(
        300.0, gt=0, description="An outgoing link with no traffic this long is closed."
    )
    max_queue: int = Field(
        1000, ge=1, description="Stanzas held per remote domain while its link comes up."
    )
    retry_initial: Duration = Field(
        15.0,
        gt=0,
        description="After a domain could not be reached, stanzas to it bounce at once "
        "(with the same reason) for this long before the next attempt; the wait doubles "
        "after each further failure.",
    )
    retry_max: Duration = Field(
        600.0, gt=0, description="Longest wait between attempts to reach a failing domain."
    )
    incoming_rate: Size = Field(
        256 * 1024,
        ge=1024,
        description="Bytes per second a remote may send on one s2s connection, incoming "
        "or outgoing (with XEP-0288 its stanzas come back on ours; bursts of one second's "
        "worth); a remote that sends faster is slowed down by pausing reads from its "
        "connection, without affecting other connections.",
    )
    max_incoming_per_domain: int = Field(
        10,
        ge=1,
        description="Authenticated incoming connections at once per remote domain; more "
        "are refused (resource-constraint).",
    )
    max_connections_per_ip: int = Field(
        32,
        ge=1,
        description="Incoming s2s connections (authenticated or not) one source address "
        "may have open at once, and connections to a component listener; the next one "
        "gets the stream error policy-violation and is closed (a direct-TLS one is "
        "dropped before its handshake). Several remote servers may share an address, "
        "hundreds should not.",
    )
    connection_limit_exempt: tuple[IPvAnyNetwork, ...] = Field(
        LOOPBACK,
        description="Networks (CIDR) s2s.max_connections_per_ip does not apply to: "
        "loopback by default (components, a local relay).",
    )
    bidi: bool = Field(
        True,
        description="Bidirectional streams (XEP-0288): offered to remotes and asked of "
        "remotes that offer it, so one connection carries both directions.",
    )
    max_stanza_size: Size = Field(512 * 1024, ge=1024)
    max_write_buffer: Size = Field(16 * 1024 * 1024, ge=65536)

    @field_validator("allow", "deny")
    @classmethod
    def _domains(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _domain_list(v)

    @field_validator("pins")
    @classmethod
    def _valid_pins(cls, v: dict[str, str]) -> dict[str, str]:
        for domain, target in v.items():
            rest = target.removeprefix("tls://")
            host, sep, port = rest.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f'{domain}: expected "host:port" or "tls://host:port", got {target!r}'
                )
        return v

    def policy_for(self, domain: str) -> S2SPolicy:
        """The policy of ``domain`` (deny and allow lists first, then per domain)."""
        if _listed(domain, self.deny) or (self.allow and not _listed(domain, self.allow)):
            return "deny"
        return self.policies.get(domain, self.default_policy)


def _listed(domain: str, names: tuple[str, ...]) -> bool:
    return any(domain == n or domain.endswith("." + n) for n in names)


class ComponentSection(Section):
    """An external component (XEP-0114) allowed to connect and serve ``domain``."""

    domain: str = Field(description="The component's domain, e.g. push.example.org.")
    secret: SecretStr = Field(
        description="Shared secret of the <handshake/>; never logged or shown."
    )

    @field_validator("domain")
    @classmethod
    def _is_a_domain(cls, v: str) -> str:
        try:
            canonical = domainprep(v)
        except InvalidJID as exc:
            raise ValueError(f"{v!r} is not a valid domain: {exc}") from None
        if canonical != v:
            raise ValueError(f"expected a lowercase domain name, such as {canonical!r}")
        return v

    @field_validator("secret")
    @classmethod
    def _not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value():
            raise ValueError("the secret must not be empty")
        return v


class C2SSection(Section):
    require_encryption: bool = True
    max_stanza_size: Size = Field(256 * 1024, ge=1024)
    connect_timeout: Duration = Field(60.0, gt=0, description="Time to authenticate and bind.")
    max_write_buffer: Size = Field(
        4 * 1024 * 1024, ge=65536, description="A peer that reads slower than this is cut off."
    )
    input_rate: Size = Field(
        256 * 1024,
        ge=0,
        description="Bytes per second one client stream may send on average (shaper, "
        "before and after login); above it the server stops reading the connection for "
        "a while (back-pressure), it drops nothing. 0 disables.",
    )
    input_burst: Size = Field(
        1024 * 1024,
        ge=1024,
        description="Bytes a client stream may send at once above input_rate (a login, "
        "a roster, a catch-up after a network change).",
    )
    max_connections_per_ip: int = Field(
        64,
        ge=1,
        description="Client connections (TCP and direct TLS listeners) one source address "
        "may have open at once; the next one gets the stream error policy-violation and "
        "is closed. WebSocket and BOSH are limited by http.max_connections_per_ip.",
    )
    connection_limit_exempt: tuple[IPvAnyNetwork, ...] = Field(
        LOOPBACK,
        description="Networks (CIDR) max_connections_per_ip does not apply to: loopback "
        "by default (a local proxy or gateway); add a NAT gateway you trust.",
    )
    stream_management: bool = Field(True, description="Offer XEP-0198 stream management.")
    resume_timeout: Duration = Field(
        300.0,
        ge=0,
        le=86400,
        description="How long a dropped connection with stream management stays "
        "resumable; its unacknowledged messages are then re-delivered (to other "
        "resources or offline storage). 0 disables resumption.",
    )
    max_unacked: int = Field(
        5000, ge=10, description="Unacknowledged stanzas kept per session before giving up."
    )
    max_unacked_bytes: Size = Field(
        16 * 1024 * 1024,
        ge=64 * 1024,
        description="Bytes of unacknowledged stanzas kept per session before giving up "
        "(a hibernated session writes nothing, so its write buffer limit does not bound "
        "what others send it while it waits).",
    )
    idle_release: Duration = Field(
        5.0,
        ge=0,
        description="Free the XML parser and input task of a client idle this long (both "
        "come back with its next byte): an idle connection then costs a few KB instead of "
        "~30 KB. 0 disables.",
    )
    login_reads_per_turn: int = Field(
        1,
        ge=0,
        description="Reads of connections not yet logged in (TLS handshake, SASL, bind) "
        "handled per turn of the event loop; more wait, nothing dropped, for the next "
        "turns, so that logged-in users' messages do not queue behind a login storm "
        "(chat p99 beside 10,000 logins: 176-312 ms unpaced, 8-10 ms with 4, 3-4 ms "
        "with 1; a pure login ramp 6 % slower with 1 than with 4). 0 disables.",
    )
    teardowns_per_turn: int = Field(
        8,
        ge=0,
        description="Ended client sessions whose resource_unbound hooks (unavailable "
        "presence to every contact, last activity, caches) start per turn of the event "
        "loop; more wait, in order, for the next turns, so that when thousands of "
        "connections end at once (a network blip, resumptions timing out together) "
        "logged-in users' messages do not queue behind their teardown. 0 disables.",
    )


class HttpSection(Section):
    """The HTTP listeners' shared settings (``kind = "http"`` listeners)."""

    public_url: str = Field(
        "",
        description="The base URL the outside world reaches the HTTP listener at, when "
        "behind a reverse proxy (e.g. https://chat.example.org); discovery "
        "(/.well-known/host-meta) lists URLs under it. Empty: built from each request.",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="Addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto headers are believed; from anyone else "
        "they are ignored.",
    )
    loopback_is_secure: bool = Field(
        True,
        description="Treat plain-HTTP requests from a loopback address as encrypted (a "
        "reverse proxy on the same machine terminating TLS, or a local browser), so "
        "c2s.require_encryption lets them log in.",
    )
    max_connections_per_ip: int = Field(
        32,
        ge=1,
        description="Concurrent requests one client address may have open (a WebSocket "
        "counts for its whole life; more get 429 Too Many Requests), and TCP connections "
        "one peer address may have open (more are dropped; trusted proxies are exempt).",
    )
    max_request_size: Size = Field(
        1024 * 1024, ge=1024, description="Largest request body read into memory."
    )
    keepalive_timeout: Duration = Field(
        75.0, gt=0, description="An idle keep-alive HTTP connection is closed after this."
    )
    request_header_timeout: Duration = Field(
        10.0,
        gt=0,
        le=300,
        description="A new connection that has not sent its request headers within "
        "this time is closed (slow-header attacks).",
    )
    request_body_timeout: Duration = Field(
        30.0,
        gt=0,
        le=3600,
        description="A request body read into memory (a BOSH request) must have arrived "
        "within this time; else 408 and the connection is closed (slow-body attacks). "
        "Uploads have their own limits (modules.http_upload: put_timeout, min_put_rate).",
    )
    websocket: bool = Field(True, description="Serve XMPP over WebSocket at /xmpp-websocket.")
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="Origins (scheme://host[:port]) whose web pages may use the WebSocket "
        "and BOSH endpoints, besides the server's own; '*' allows any. Requests without "
        "Origin (non-browser clients) are always allowed.",
    )
    websocket_ping: Duration = Field(
        60.0, gt=0, description="WebSocket ping interval; a peer that does not answer is cut."
    )
    bosh: bool = Field(True, description="Serve BOSH (XEP-0124/0206) at /http-bind.")
    bosh_max_wait: Duration = Field(
        60.0, ge=1, le=3600, description="Longest a BOSH request is held open (its wait)."
    )
    bosh_max_hold: int = Field(
        1, ge=0, le=5, description="Most BOSH requests one session may have held at once."
    )
    bosh_inactivity: Duration = Field(
        60.0,
        ge=1,
        le=3600,
        description="A BOSH session with no request held for this long ends (stream "
        "management can resume it).",
    )
    bosh_max_pause: Duration = Field(
        120.0, ge=0, le=86400, description="Longest pause a BOSH client may ask for."
    )
    bosh_polling: Duration = Field(
        2.0,
        ge=0,
        le=60,
        description="Shortest interval between two empty requests of a polling BOSH "
        "session (hold = 0); closer ones are overactivity.",
    )

    metrics: bool = Field(
        True, description="Serve the metrics in the Prometheus text format at /metrics."
    )
    health: bool = Field(
        True,
        description="Serve the readiness report as JSON at /health (200 when every part "
        "is ready, else 503 with the parts and their reasons).",
    )
    ops_allowed: tuple[str, ...] = Field(
        ("127.0.0.0/8", "::1/128"),
        description="Addresses or networks (CIDR) allowed to read /metrics and /health "
        "(the client's address as the HTTP front works it out, behind trusted proxies the "
        "forwarded one); others get 403 unless they send a REST admin API token "
        "(Authorization: Bearer xat_..., any scope). Empty: token holders only.",
    )

    @field_validator("public_url")
    @classmethod
    def _is_base_url(cls, v: str) -> str:
        if v and (not v.startswith(("http://", "https://")) or v.endswith("/")):
            raise ValueError("expected an http:// or https:// URL without a trailing slash")
        return v

    @field_validator("trusted_proxies", "ops_allowed")
    @classmethod
    def _are_networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
        return v


class _CertificatePair(Section):
    certificate: Path | None = Field(
        None, description="PEM certificate chain; default: self-signed, generated."
    )
    key: Path | None = Field(None, description="PEM private key of the certificate.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if (self.certificate is None) != (self.key is None):
            raise ValueError("set both certificate and key, or neither")
        return self


class TlsSection(_CertificatePair):
    min_version: Literal["1.2", "1.3"] = "1.2"
    session_tickets: bool = Field(
        True,
        description="Issue stateless TLS session tickets to clients (no state kept on "
        "the server): a client coming back resumes its TLS session without the "
        "certificate's signature. The ticket key is new at each start.",
    )


class HostSection(_CertificatePair):
    modules: dict[str, dict[str, Any]] | None = Field(
        None, description="Replaces the global [modules] table for this host when set."
    )
    hooks: dict[str, dict[str, Any]] | None = None
    admins: tuple[str, ...] = Field(
        (),
        description="Bare JIDs of this host's administrators (accounts on one of this "
        'server\'s hosts). Access rules that say "admins" mean them.',
    )


class AccountsSection(Section):
    min_password_length: int = Field(
        8,
        ge=1,
        le=1024,
        description="The password policy: the shortest password accepted when an account "
        "is created or its password changed, by the CLI, the admin API and in-band "
        "registration alike.",
    )


class SessionsSection(Section):
    registry: Literal["memory", "serialised"] = Field(
        "memory",
        description="Where live sessions and their per-session state are kept. "
        '"memory": in this process (the default). "serialised": in this process too, '
        "but as bytes, as a shared registry (Redis) will keep them; slower, for testing "
        "modules.",
    )


class ClusterSection(Section):
    """Several processes or machines serving the same hosts (docs/user-guide.md,
    "Clustering"): live sessions and the node-to-node stanza bus in Redis, everything
    stored in the shared database."""

    redis_url: str = Field(
        "",
        description="Redis of the cluster (redis://host:port/db, rediss:// with TLS). "
        "Empty: a single process, no cluster. With redis_mode = 'sentinel': "
        "redis://sentinel1:26379,sentinel2:26379/db; with 'cluster': any node of the "
        "Redis Cluster.",
    )
    redis_mode: Literal["single", "sentinel", "cluster"] = Field(
        "single", description="One Redis, Redis Sentinel (failover), or a Redis Cluster."
    )
    sentinel_service: str = Field(
        "xmppd", min_length=1, description="The Sentinel master name (redis_mode = 'sentinel')."
    )
    node: str = Field(
        "",
        max_length=100,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="This node's name in the cluster; unique per process. Empty: the "
        "machine's host name (a Kubernetes pod name), with -w<N> per worker.",
    )
    key_prefix: str = Field(
        "xmppd", min_length=1, max_length=64, description="Prefix of every Redis key."
    )
    heartbeat_interval: Duration = Field(
        2.0, gt=0, description="How often a node renews its liveness key."
    )
    node_timeout: Duration = Field(
        10.0,
        gt=0,
        description="A node whose liveness key is older than this is dead: the others "
        "remove its sessions and take over its rooms and links.",
    )
    outage_hold: Duration = Field(
        30.0,
        ge=0,
        description="While Redis is unreachable, stanzas for other nodes wait this long "
        "(bounded by outage_hold_stanzas) before they bounce to their sender.",
    )
    outage_hold_stanzas: int = Field(100_000, ge=0, le=10_000_000)
    drain_timeout: Duration = Field(
        30.0,
        ge=0,
        description="On stop (SIGTERM), how long a node of a cluster waits for its clients "
        "to move to other nodes: stream-management sessions are handed over when their "
        "clients resume elsewhere; others are asked to reconnect (see-other-host when "
        "another node has a public_address, else system-shutdown). 0: no drain.",
    )
    sm_mirror: bool = Field(
        True,
        description="Keep a copy of every resumable stream-management session (counters "
        "and unacknowledged stanzas) in Redis, so that its client resumes it on another "
        "node after this one died (kill -9, machine lost). Costs about 3 Redis commands "
        "and 400 bytes per message (docs/scaling.md). false: such sessions die with "
        "their node and their clients log in again.",
    )
    public_address: str = Field(
        "",
        max_length=300,
        description="host or host:port at which clients reach this node directly; sent "
        "in see-other-host when another node drains. Empty: clients reconnect to "
        "the cluster's usual address.",
    )
    http_address: str = Field(
        "",
        max_length=300,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)?(:[0-9]{1,5})?$",
        description="Where this node accepts HTTP requests the other nodes pass on to "
        "it (a BOSH request for a session this node holds): host or host:port on a "
        "network the nodes share; no port or :0: a free port, published in Redis (one "
        "per worker). Empty: the first HTTP listener's address (when it listens on every "
        "address, the address the machine's host name resolves to).",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    @model_validator(mode="after")
    def _timeout_outlasts_heartbeats(self) -> ClusterSection:
        if self.node_timeout < 2 * self.heartbeat_interval:
            raise ValueError("node_timeout must be at least twice heartbeat_interval")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ValueError("redis_url: expected a redis:// or rediss:// URL")
        return self


class ServerConfig(Section):
    """The whole configuration file."""

    server: ServerSection = ServerSection()
    storage: StorageSection = StorageSection()
    auth: AuthSection = AuthSection()
    accounts: AccountsSection = AccountsSection()
    c2s: C2SSection = C2SSection()
    sessions: SessionsSection = SessionsSection()
    cluster: ClusterSection = ClusterSection()
    s2s: S2SSection = S2SSection()
    tls: TlsSection = TlsSection()
    listeners: tuple[ListenerSection, ...] = (
        ListenerSection(port=5222, tls="starttls"),
        ListenerSection(port=5223, tls="direct"),
        ListenerSection(kind="http"),
    )
    http: HttpSection = HttpSection()
    hosts: dict[str, HostSection] = Field(default_factory=lambda: {"localhost": HostSection()})
    components: tuple[ComponentSection, ...] = Field(
        (), description="External components (XEP-0114); none by default."
    )
    modules: dict[str, dict[str, Any]] = Field(default_factory=dict)
    hooks: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: Path | None = Field(None, exclude=True, description="File this was read from.")
    _key_lines: KeyLines | None = PrivateAttr(None)
    _loopback: bool = PrivateAttr(False)

    def on_loopback(self) -> ServerConfig:
        """This configuration with every listener bound to 127.0.0.1 (``xmppd run
        --loopback``, ``./dev run``); a reload applies the same to the file it reads."""
        listeners = tuple(
            listener.model_copy(update={"address": "127.0.0.1"}) for listener in self.listeners
        )
        copy = self.model_copy(update={"listeners": listeners})
        copy._loopback = True
        return copy

    @property
    def loopback_only(self) -> bool:
        return self._loopback

    @property
    def key_lines(self) -> KeyLines | None:
        """Where each key is in the file (``None``: not read from a file)."""
        return self._key_lines

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, raw: Any) -> Any:
        """COMPAT: ``modules.register.min_password_length`` (before 0.x) became
        ``accounts.min_password_length``; the old key still works, with a warning."""
        if isinstance(raw, dict):
            return _move_min_password_length(raw)
        return raw

    @model_validator(mode="after")
    def _workers_need_a_cluster(self) -> ServerConfig:
        if self.server.workers != 1 and not self.cluster.enabled:
            raise ValueError(
                "server.workers: more than one worker needs [cluster] redis_url (the "
                "workers share sessions through Redis)"
            )
        if self.server.workers != 1 and self.storage_url().startswith("sqlite"):
            raise ValueError(
                "server.workers: more than one worker needs a database server "
                "(storage.url = postgresql+asyncpg://...): an SQLite file is written by "
                "one process only"
            )
        port = re.search(r":([0-9]+)$", self.cluster.http_address)
        if self.server.workers != 1 and port is not None and int(port.group(1)) != 0:
            raise ValueError(
                "cluster.http_address: with server.workers each worker needs a relay port "
                "of its own: give a host without a port (or :0)"
            )
        return self

    @property
    def worker_count(self) -> int:
        """How many worker processes ``xmppd run`` starts (``"auto"``: one per core)."""
        workers = self.server.workers
        if workers == "auto":
            return max(1, os.cpu_count() or 1)
        return workers

    @field_validator("hosts")
    @classmethod
    def _at_least_one_host(cls, v: dict[str, HostSection]) -> dict[str, HostSection]:
        if not v:
            raise ValueError("at least one host is needed")
        for name in v:
            if name != name.lower() or "/" in name or "@" in name or not name:
                raise ValueError(f"host {name!r}: expected a lowercase domain name")
        return v

    def storage_url(self) -> str:
        if self.storage.url:
            return self.storage.url
        return f"sqlite+aiosqlite:///{self.server.data_dir.resolve() / 'xmppd.sqlite3'}"

    def modules_for(self, host: str) -> Mapping[str, Mapping[str, Any]]:
        section = self.hosts[host]
        return section.modules if section.modules is not None else self.modules

    def hooks_for(self, host: str) -> Mapping[str, Mapping[str, Any]]:
        section = self.hosts[host]
        return section.hooks if section.hooks is not None else self.hooks


def format_problem(source: str, path: str, message: str, lines: KeyLines | None = None) -> str:
    """``file: key.path: message (line N)``."""
    line = lines.line_of(path) if lines is not None else None
    return f"{source}: {path}: {message}" + (f" (line {line})" if line else "")


def format_validation_error(
    source: str,
    err: ValidationError,
    prefix: str = "",
    *,
    model: type[BaseModel] | None = None,
    lines: KeyLines | None = None,
) -> str:
    """``file: a.b.c: what was expected (line N)`` lines, one per problem."""
    found = problems(err, model, prefix)
    if lines is not None:  # in the file's order
        found.sort(key=lambda item: lines.line_of(item[0]) or 1 << 30)
    return "\n".join(format_problem(source, path, message, lines) for path, message in found)


def _move_min_password_length(raw: dict[str, Any]) -> dict[str, Any]:
    """Take the deprecated ``min_password_length`` out of every ``register`` module
    section (top level and per host) and, unless ``accounts.min_password_length`` is
    set, use the largest one found as the shared policy."""
    found: list[int] = []
    raw = dict(raw)

    def strip(modules: Any, where: str) -> Any:
        if not isinstance(modules, dict):
            return modules
        register = modules.get("register")
        if not isinstance(register, dict) or "min_password_length" not in register:
            return modules
        register = dict(register)
        value = register.pop("min_password_length")
        log.warning(
            "%s.register.min_password_length is deprecated: set "
            "accounts.min_password_length instead (it applies to every way of setting "
            "a password)",
            where,
        )
        found.append(value)  # a wrong type is reported by the new key's validation
        return {**modules, "register": register}

    raw["modules"] = strip(raw.get("modules"), "modules")
    if raw["modules"] is None:
        del raw["modules"]
    hosts = raw.get("hosts")
    if isinstance(hosts, dict):
        raw["hosts"] = {
            name: (
                {**section, "modules": strip(section["modules"], f"hosts.{name}.modules")}
                if isinstance(section, dict) and "modules" in section
                else section
            )
            for name, section in hosts.items()
        }
    accounts = raw.get("accounts")
    if found and not (isinstance(accounts, dict) and "min_password_length" in accounts):
        ints = [v for v in found if isinstance(v, int) and not isinstance(v, bool)]
        value = max(ints) if len(ints) == len(found) else found[0]
        base = accounts if isinstance(accounts, dict) else {}
        raw["accounts"] = {**base, "min_password_length": value}
    return raw


def load_config(path: Path | None) -> ServerConfig:
    """Read and validate ``path`` (``None``: built-in defaults). Raises :class:`ConfigError`
    naming every problem found."""
    if path is None:
        return ServerConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {toml_error(exc)}") from None
    return parse_config(raw, source=path, text=text)


def toml_error(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's message with its Python spelling of keys (``('a', 'b')``) written as
    TOML (``a.b``) and the position moved to the end: ``... (line 3, column 5)``."""
    text = str(exc)
    where = re.search(r"\s*\(at line (\d+), column (\d+)\)", text)
    if where:
        text = text[: where.start()] + text[where.end() :]
    text = re.sub(
        r"\(((?:'[^']*'(?:, )?)+),?\)",
        lambda m: ".".join(re.findall(r"'([^']*)'", m.group(1))),
        text,
    )
    text = text[:1].lower() + text[1:]
    if where:
        text += f" (line {where.group(1)}, column {where.group(2)})"
    elif "end of document" in text:
        text += " (at the end of the file)"
    return text


def parse_config(
    raw: Mapping[str, Any], *, source: Path | None = None, text: str | None = None
) -> ServerConfig:
    lines = KeyLines(text) if text is not None else None
    where = str(source or "<config>")
    try:
        config = ServerConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(where, exc, model=ServerConfig, lines=lines)
        ) from None
    found = cross_checks(config)
    if found:
        raise ConfigError("\n".join(format_problem(where, p, m, lines) for p, m in found))
    if source is not None:
        config = _resolve_paths(config, source)
    config._key_lines = lines
    return config


def _overlap(a: str, b: str) -> bool:
    """Whether binding both addresses on one port conflicts (a wildcard takes its family,
    "::" both families on a dual-stack system)."""
    if a == b or "::" in (a, b):
        return True
    if "0.0.0.0" in (a, b):
        other = b if a == "0.0.0.0" else a
        return ":" not in other
    return False


def cross_checks(config: ServerConfig) -> list[tuple[str, str]]:
    """Problems between sections, all of them: (key path, message)."""
    found: list[tuple[str, str]] = []
    listeners = config.listeners
    for index, listener in enumerate(listeners):
        if config.c2s.require_encryption and listener.kind == "c2s" and listener.tls == "none":
            found.append(
                (
                    f"listeners.{index}.tls",
                    f"listener on port {listener.port} has tls = 'none' but "
                    "c2s.require_encryption is true: use 'starttls' or 'direct', or set "
                    "c2s.require_encryption = false",
                )
            )
        for earlier in range(index):
            other = listeners[earlier]
            if (
                listener.port
                and listener.port == other.port
                and _overlap(listener.address, other.address)
            ):
                found.append(
                    (
                        f"listeners.{index}",
                        f"{listener.address} port {listener.port} is already taken by "
                        f"listeners.{earlier} ({other.address} port {other.port}): two "
                        "listeners cannot share an address and port",
                    )
                )
    if config.components and not any(lst.kind == "component" for lst in listeners):
        found.append(
            (
                "components",
                "external components are configured but no listener has kind = "
                "'component', so none of them can connect: add a [[listeners]] table with "
                'kind = "component"',
            )
        )
    seen: set[str] = set()
    for index, component in enumerate(config.components):
        where = f"components.{index}.domain"
        if component.domain in config.hosts:
            found.append(
                (
                    where,
                    f"{component.domain!r} is one of the hosts; a component needs a "
                    "domain of its own (such as a subdomain)",
                )
            )
        if component.domain in seen:
            found.append((where, f"{component.domain!r} is configured twice"))
        seen.add(component.domain)
    for domain, section in config.hosts.items():
        for index, admin in enumerate(section.admins):
            where = f"hosts.{domain}.admins.{index}"
            local, at, rest = admin.partition("@")
            if not at or not local or "/" in rest:
                found.append((where, f"{admin!r} is not a bare JID (user@domain)"))
            elif rest.lower() not in config.hosts:
                found.append(
                    (
                        where,
                        f"{admin!r} is not on one of this server's hosts "
                        f"({', '.join(sorted(config.hosts))})",
                    )
                )
    return found


def _resolve_paths(config: ServerConfig, source: Path) -> ServerConfig:
    """Relative paths in a config file are relative to the file's directory."""
    base = source.parent

    def rel(path: Path | None) -> Path | None:
        return None if path is None or path.is_absolute() else base / path

    def pair(section: _PairT) -> _PairT:
        update = {k: v for k in ("certificate", "key") if (v := rel(getattr(section, k)))}
        return section.model_copy(update=update) if update else section

    server = config.server
    server = server.model_copy(
        update={
            "data_dir": rel(server.data_dir) or server.data_dir,
            "module_paths": tuple(rel(p) or p for p in server.module_paths),
        }
    )
    storage = config.storage
    prefix = "sqlite+aiosqlite:///"
    if storage.url.startswith(prefix) and not storage.url.startswith(prefix + "/"):
        storage = storage.model_copy(
            update={"url": prefix + str(base.resolve() / storage.url[len(prefix) :])}
        )
    return config.model_copy(
        update={
            "source": source,
            "server": server,
            "storage": storage,
            "tls": pair(config.tls),
            "s2s": config.s2s.model_copy(update={"ca_file": rel(config.s2s.ca_file)})
            if rel(config.s2s.ca_file)
            else config.s2s,
            "hosts": {name: pair(host) for name, host in config.hosts.items()},
        }
    )
