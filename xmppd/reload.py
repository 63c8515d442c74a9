"""Reload without restart (``SIGHUP``, ``xmppd reload``).

What a reload does, in this order, all or nothing for the configuration:

1. Reads the configuration file again and validates it, module options included. If
   anything is wrong, it logs every problem and changes nothing.
2. Reads every host's certificate and key again (a Let's Encrypt renewal) into the TLS
   contexts the listeners already use: the next handshake presents the new
   certificate, open connections keep theirs.
3. Applies ``server.log_level`` and the failed-login limits
   (``auth.failures_before_delay``, ``auth.max_failure_delay``).
4. Gives modules that declare :meth:`~xmppd.module.Module.on_reload` their new options.
5. Logs, as a warning, every other changed key: those need a restart (listeners,
   storage, hosts, limits read once at start, modules added or removed, options of
   modules that do not reload).

Sessions, rooms and streams are not touched.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from xmppd.auth.throttle import FailedLoginThrottle
from xmppd.config import ConfigError, ServerConfig, load_config
from xmppd.modules import ModuleManager
from xmppd.tls import TlsContexts, certificate_paths

log = logging.getLogger(__name__)

RELOADABLE: Final = frozenset(
    {"server.log_level", "auth.failures_before_delay", "auth.max_failure_delay"}
)
"""Core keys a reload applies (besides certificates and module options)."""
_HANDLED: Final = ("modules", "hosts.*.modules")
"""Compared module by module (:meth:`xmppd.modules.ModuleManager.plan_reload`)."""


class Reloadable(Protocol):
    """What a reload needs of the server (:class:`xmppd.server.Server`)."""

    @property
    def config(self) -> ServerConfig: ...
    @property
    def tls(self) -> TlsContexts | None: ...
    @property
    def modules(self) -> ModuleManager: ...
    @property
    def throttle(self) -> FailedLoginThrottle: ...


@dataclass(slots=True)
class ReloadReport:
    """What a reload did: ``applied`` and ``restart`` are key paths (or module names),
    ``certificates`` the hosts whose certificate changed, ``errors`` why nothing was
    applied (configuration problems) or why a certificate was kept."""

    applied: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    certificates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list | tuple) and any(isinstance(v, dict) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}.{index}"))
        return out or {prefix: value}
    return {prefix: value}


def _is_module_key(path: str) -> bool:
    parts = path.split(".")
    return parts[0] == "modules" or (
        len(parts) > 2 and parts[0] == "hosts" and parts[2] == "modules"
    )


def core_changes(old: ServerConfig, new: ServerConfig) -> list[str]:
    """Key paths whose values differ (module tables left out), in file order."""
    before, after = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    keys = list(dict.fromkeys([*before, *after]))
    return [k for k in keys if before.get(k) != after.get(k) and not _is_module_key(k)]


async def reload_server(server: Reloadable) -> ReloadReport:
    report = ReloadReport()
    old = server.config
    source = old.source
    try:
        new = load_config(source) if source is not None else old
        if old.loopback_only and not new.loopback_only:  # started with --loopback
            new = new.on_loopback()
        plan = server.modules.plan_reload(new)
    except ConfigError as exc:
        report.errors = str(exc).splitlines()
        log.error("reload refused, nothing changed: the configuration has problems:\n%s", exc)
        return report
    await _renew_certificates(server, new, report)
    # Compared with the level in force, not the file read at start: an earlier reload
    # may have changed it. (server.config stays what the server started with, so what
    # needs a restart is reported on every reload until there is one.)
    level = logging.getLevelName(new.server.log_level.upper())
    if logging.getLogger().level != level:
        logging.getLogger().setLevel(level)
        report.applied.append("server.log_level")
    # Failed-login limits: read by the throttle at each failure.
    throttle = server.throttle
    if throttle.free_failures != new.auth.failures_before_delay:
        throttle.free_failures = new.auth.failures_before_delay
        report.applied.append("auth.failures_before_delay")
    if throttle.max_delay != new.auth.max_failure_delay:
        throttle.max_delay = new.auth.max_failure_delay
        report.applied.append("auth.max_failure_delay")
    applied, restart = await server.modules.apply_reload(plan)
    report.applied += applied
    for key in core_changes(old, new):
        if key in RELOADABLE:
            continue
        if key.endswith((".certificate", ".key")) and key.split(".")[0] in ("tls", "hosts"):
            continue  # read by _renew_certificates
        report.restart.append(key)
    report.restart += restart
    if report.restart:
        log.warning(
            "reload: these changes need a restart to take effect: %s",
            ", ".join(dict.fromkeys(report.restart)),
        )
    log.info(
        "reload done: %s applied; certificates renewed: %s",
        ", ".join(report.applied) or "nothing",
        ", ".join(report.certificates) or "none",
    )
    return report


async def _renew_certificates(
    server: Reloadable, config: ServerConfig, report: ReloadReport
) -> None:
    tls = server.tls
    if tls is None:  # not listening (CLI) or no TLS yet
        return
    for domain in tls.domains():
        section = config.hosts.get(domain)
        if section is None:
            continue
        cert, key = certificate_paths(
            domain,
            section.certificate or config.tls.certificate,
            section.key or config.tls.key,
            config.server.data_dir,
        )
        try:
            what = await asyncio.to_thread(tls.renew, domain, cert, key)
        except (OSError, ValueError, ssl.SSLError) as exc:
            report.errors.append(f"{domain}: certificate kept: {exc}")
            log.error("reload: %s keeps its certificate: %s (%s)", domain, exc, cert)
            continue
        if what is not None:
            report.certificates.append(domain)
            log.info("reload: %s: %s (%s)", domain, what, cert)
