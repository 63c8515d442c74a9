"""Health: is this server ready to serve, and if not, which part is not and why.

Each part of the server registers under a name and reports *ready* or *not ready* with
a reason, in one of two ways:

* **pushed**: :meth:`Health.part` returns a :class:`HealthPart` whose owner calls
  ``set_ready()`` / ``set_not_ready(reason)`` when its state changes (a listener bound,
  a connection to an upstream lost);
* **pulled**: :meth:`Health.add_check` registers an async function run at each
  :meth:`Health.check`, with a timeout (the database answering ``SELECT 1``). It returns
  ``None`` when ready or a reason; an exception or a timeout also means not ready.

The server is ready when every registered part is. :meth:`Health.check` returns a
:class:`HealthReport` (overall status plus one :class:`PartStatus` per part) for the
HTTP layer's readiness endpoint and for the admin tools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds a pulled check may take before it counts as not ready."""

HealthCheck = Callable[[], Awaitable[str | None]]
"""A pulled check: returns ``None`` when ready, else the reason it is not."""


@dataclass(frozen=True, slots=True)
class PartStatus:
    """One part's state in a report."""

    name: str
    ready: bool
    reason: str = ""
    """Why it is not ready (empty when ready)."""
    host: str | None = None
    """The virtual host the part belongs to (a module's part), or ``None``."""
    since: float = 0.0
    """Unix time of the last change of ``ready`` (pushed parts) or of the check."""

    def as_dict(self) -> dict[str, str | bool | float | None]:
        return {
            "name": self.name,
            "host": self.host,
            "ready": self.ready,
            "reason": self.reason,
            "since": self.since,
        }


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The overall status and every part's, sorted by name then host."""

    ready: bool
    parts: tuple[PartStatus, ...]

    def part(self, name: str, host: str | None = None) -> PartStatus:
        """The status of one part (``KeyError`` when not registered)."""
        for status in self.parts:
            if status.name == name and status.host == host:
                return status
        raise KeyError((name, host))

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form: ``{"ready": bool, "parts": [...]}``."""
        return {"ready": self.ready, "parts": [p.as_dict() for p in self.parts]}


class HealthPart:
    """A pushed part: its owner reports changes of state."""

    __slots__ = ("host", "name", "ready", "reason", "since")

    def __init__(self, name: str, host: str | None, reason: str) -> None:
        self.name = name
        self.host = host
        self.ready = False
        self.reason = reason
        self.since = time.time()

    def set_ready(self) -> None:
        """The part works."""
        if not self.ready:
            self.since = time.time()
            log.info("health: %s is ready", self._label())
        self.ready, self.reason = True, ""

    def set_not_ready(self, reason: str, *, expected: bool = False) -> None:
        """The part does not work, because of ``reason`` (shown to operators);
        ``expected`` (the server is stopping): logged at INFO, not as a warning."""
        if self.ready:
            self.since = time.time()
            log.log(
                logging.INFO if expected else logging.WARNING,
                "health: %s is not ready: %s",
                self._label(),
                reason,
            )
        self.ready, self.reason = False, reason

    def status(self) -> PartStatus:
        return PartStatus(self.name, self.ready, self.reason, self.host, self.since)

    def _label(self) -> str:
        return self.name if self.host is None else f"{self.name} ({self.host})"


@dataclass(slots=True)
class _Check:
    fn: HealthCheck
    timeout: float
    last: PartStatus


class Health:
    """The health registry of one server (``server.health``)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str | None], HealthPart] = {}
        self._checks: dict[tuple[str, str | None], _Check] = {}

    def _free(self, key: tuple[str, str | None], *, kind: str) -> None:
        if not key[0]:
            raise ValueError("a health part needs a name")
        other = self._checks if kind == "part" else self._parts
        if key in other:
            raise ValueError(f"health part {key[0]!r} is already registered as another kind")

    def part(self, name: str, *, host: str | None = None, reason: str = "starting") -> HealthPart:
        """A pushed part, not ready with ``reason`` until its owner says otherwise.

        Asking again for the same name (and host) returns the same part.
        """
        key = (name, host)
        existing = self._parts.get(key)
        if existing is not None:
            return existing
        self._free(key, kind="part")
        part = self._parts[key] = HealthPart(name, host, reason)
        return part

    def add_check(
        self,
        name: str,
        check: HealthCheck,
        *,
        host: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """A pulled part: ``check()`` runs at each :meth:`check` (concurrently with the
        others) and must finish within ``timeout`` seconds. Registering the same name
        (and host) again replaces the function."""
        key = (name, host)
        self._free(key, kind="check")
        last = PartStatus(name, False, "not checked yet", host, time.time())
        self._checks[key] = _Check(check, timeout, last)

    def remove(self, name: str, *, host: str | None = None) -> None:
        """Forget a part (a module unloaded from a host)."""
        self._parts.pop((name, host), None)
        self._checks.pop((name, host), None)

    async def check(self) -> HealthReport:
        """Run the pulled checks and report every part."""
        checks = list(self._checks.items())
        results = await asyncio.gather(*(self._run(key, c) for key, c in checks))
        for (_, c), status in zip(checks, results, strict=True):
            c.last = status
        return self._report([*results, *(p.status() for p in self._parts.values())])

    def snapshot(self) -> HealthReport:
        """The report without running the pulled checks (their last results)."""
        statuses = [c.last for c in self._checks.values()]
        return self._report([*statuses, *(p.status() for p in self._parts.values())])

    @staticmethod
    def _report(statuses: list[PartStatus]) -> HealthReport:
        parts = tuple(sorted(statuses, key=lambda s: (s.name, s.host or "")))
        return HealthReport(all(p.ready for p in parts), parts)

    @staticmethod
    async def _run(key: tuple[str, str | None], check: _Check) -> PartStatus:
        name, host = key
        try:
            async with asyncio.timeout(check.timeout):
                reason = await check.fn()
        except TimeoutError:
            reason = f"no answer within {check.timeout:g}s"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if reason is not None and check.last.ready:
            log.warning("health: %s is not ready: %s", name, reason)
        return PartStatus(name, reason is None, reason or "", host, time.time())


class ModuleHealth:
    """``ctx.health``: a module's health parts on its host.

    Parts are named ``mod_<module>`` (or ``mod_<module>.<sub>``) with the host::

        upstream = ctx.health.part("upstream", reason="connecting")
        ...
        upstream.set_ready()            # or upstream.set_not_ready("refused: ...")

        ctx.health.add_check(ping_app_server, sub="app_server", timeout=3)
    """

    __slots__ = ("_health", "_host", "_name")

    def __init__(self, health: Health, module: str, host: str) -> None:
        self._health = health
        self._name = f"mod_{module}"
        self._host = host

    def _part_name(self, sub: str) -> str:
        return f"{self._name}.{sub}" if sub else self._name

    def part(self, sub: str = "", *, reason: str = "starting") -> HealthPart:
        """A pushed part, not ready with ``reason`` until ``set_ready()``."""
        return self._health.part(self._part_name(sub), host=self._host, reason=reason)

    def add_check(
        self, check: HealthCheck, *, sub: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """A pulled check (returns ``None`` when ready, else the reason)."""
        self._health.add_check(self._part_name(sub), check, host=self._host, timeout=timeout)
