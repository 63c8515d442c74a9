"""The core's own metrics and health parts, read from numbers the server already keeps.

:func:`observe` is called once by the server after it has built its parts. Nothing here
runs per stanza: gauges and counters are functions read at scrape time (the size of the
session map, the router's count of routed stanzas by kind, the login outcomes the
failed-login throttle sees anyway), and the few hook handlers are on rare events
(account registered or removed, host started, server stopping).

Core metrics (all ``xmppd_``):

=============================  =======  ==================================================
name                           type     meaning
=============================  =======  ==================================================
``info{version}``              gauge    always 1; the running version as a label
``start_time_seconds``         gauge    Unix time the server started
``uptime_seconds``             gauge    seconds since start
``c2s_sessions``               gauge    bound client sessions (all hosts)
``components_connected``       gauge    authenticated external components (XEP-0114)
``logins_total``               counter  by ``mechanism`` and ``result`` (success/failure)
``registrations_total``        counter  accounts created, by ``host``
``accounts_removed_total``     counter  accounts deleted, by ``host``
``stanzas_routed_total``       counter  stanzas through the router, by ``kind``
``sessions``                   gauge    bound client sessions by ``host`` and ``transport``
``c2s_stanzas_total``          counter  client stanzas by ``direction`` (in/out), ``kind``
``routing_seconds``            histo    time :meth:`Router.route` takes (hooks included)
``storage_query_seconds``      histo    time each SQL statement takes
``hook_errors_total``          counter  hook handler crashes by ``owner`` (module)
``event_loop_lag_seconds``     gauge    how late a 1 s timer last fired
``tls_certificate_expiry_days`` gauge   days until a host's certificate expires
=============================  =======  ==================================================

plus prometheus-client's ``process_*`` and ``python_*`` metrics. Health parts:
``database`` (pulled: ``SELECT 1``), ``listeners`` (pulled: every configured listener
is bound) and ``host`` per virtual host (pushed: ready once the host started, not ready
again when the server stops).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, Final, Protocol

from xmppd import __version__, hooks
from xmppd.health import Health
from xmppd.metrics import LatencyHistogram, Metrics, Samples, StanzaTraffic

if TYPE_CHECKING:
    from xmppd.auth.throttle import FailedLoginThrottle
    from xmppd.config import ServerConfig
    from xmppd.events import EventBus
    from xmppd.sessions import Endpoint
    from xmppd.tls import TlsContexts

KINDS: Final = ("message", "presence", "iq")
"""Stanza kinds reported by name; anything else routed is reported as ``other``."""


class _Router(Protocol):
    @property
    def routed(self) -> Mapping[str, int]: ...

    latency: LatencyHistogram


class _Sessions(Sized, Protocol):
    def endpoints(self) -> list[Endpoint]: ...


class _Database(Protocol):
    query_latency: LatencyHistogram

    async def health_check(self) -> str | None: ...


class _Components(Protocol):
    def connected(self, domain: str) -> object | None: ...


class _Host(Protocol):
    @property
    def bus(self) -> EventBus: ...


class ObservedServer(Protocol):
    """What :func:`observe` reads from the server."""

    @property
    def metrics(self) -> Metrics: ...
    @property
    def health(self) -> Health: ...
    @property
    def config(self) -> ServerConfig: ...
    @property
    def started_at(self) -> float:
        """``time.monotonic()`` at construction."""

    @property
    def sessions(self) -> _Sessions: ...
    @property
    def router(self) -> _Router: ...
    @property
    def throttle(self) -> FailedLoginThrottle: ...
    @property
    def components(self) -> _Components: ...
    @property
    def hosts(self) -> Mapping[str, _Host]: ...
    @property
    def bus(self) -> EventBus: ...
    @property
    def db(self) -> _Database: ...
    @property
    def traffic(self) -> StanzaTraffic: ...
    @property
    def tls(self) -> TlsContexts | None: ...
    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str | None = None) -> None: ...
    @property
    def listening_ports(self) -> Sequence[tuple[str, int]]: ...


def observe(server: ObservedServer) -> None:
    """Declare the core metrics and health parts of ``server``."""
    _metrics(server)
    _traffic_metrics(server)
    _runtime_metrics(server)
    _health(server)


_OUT_KINDS: Final = {ord("m"): "message", ord("p"): "presence", ord("i"): "iq"}


def _traffic_metrics(server: ObservedServer) -> None:
    m = server.metrics
    sessions = server.sessions

    def by_host_and_transport() -> Samples:
        counts = Counter((e.domain, e.transport_name) for e in sessions.endpoints())
        for domain in server.hosts:  # every host appears, with 0 when nobody is online
            counts.setdefault((domain, "tcp"), 0)
        return [((d, t), n) for (d, t), n in counts.items()]

    m.samples_function(
        "gauge",
        "sessions",
        "Client sessions bound on this node, by host and transport (tcp, websocket, bosh).",
        ["host", "transport"],
        by_host_and_transport,
    )
    traffic = server.traffic

    def stanzas() -> Samples:
        inbound = dict.fromkeys(KINDS, 0) | {"other": 0}
        for kind, n in list(traffic.inbound.items()):
            inbound[kind if kind in KINDS else "other"] += n
        outbound = dict.fromkeys(KINDS, 0) | {"other": 0}
        for first, n in list(traffic.outbound.items()):
            outbound[_OUT_KINDS.get(first, "other")] += n
        yield from ((("in", k), n) for k, n in inbound.items())
        yield from ((("out", k), n) for k, n in outbound.items())

    m.samples_function(
        "counter",
        "c2s_stanzas",
        "Stanzas received from and sent to client sessions, by direction and kind.",
        ["direction", "kind"],
        stanzas,
    )
    server.router.latency = m.fast_histogram(
        "routing_seconds",
        "Seconds the router takes per stanza, filter_packet and delivery hooks included.",
        buckets=server.router.latency.bounds,
    )
    server.db.query_latency = m.fast_histogram(
        "storage_query_seconds",
        "Seconds each SQL statement takes to execute.",
        buckets=server.db.query_latency.bounds,
    )
    buses = [server.bus, *(host.bus for host in server.hosts.values())]

    def hook_errors() -> Samples:
        total: Counter[str] = Counter({"core": 0})
        for bus in buses:
            total.update(bus.errors)
        return [((owner,), n) for owner, n in total.items()]

    m.samples_function(
        "counter",
        "hook_errors",
        "Hook handlers that raised (logged and skipped), by owner: a module or 'core'.",
        ["owner"],
        hook_errors,
    )


LAG_INTERVAL: Final = 1.0
"""How often the event-loop lag is measured (seconds)."""


def _runtime_metrics(server: ObservedServer) -> None:
    m = server.metrics
    lag = [0.0]
    m.gauge_function(
        "event_loop_lag_seconds",
        f"How much later than asked a {LAG_INTERVAL:g} s timer last woke up: time the loop "
        "spent busy with other work.",
        lambda: lag[0],
    )
    started = [False]

    async def measure() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_INTERVAL)
            lag[0] = max(0.0, loop.time() - before - LAG_INTERVAL)

    async def start(_event: hooks.HostEvent) -> None:
        if not started[0]:
            started[0] = True
            server.spawn(measure(), name="event-loop-lag")

    for host in server.hosts.values():
        host.bus.add(hooks.HOST_STARTED, start, owner="metrics")

    def expiry() -> Iterable[tuple[Sequence[str], float]]:
        tls = server.tls
        if tls is None:
            return []
        now = time.time()
        return [((c.domain,), (c.not_after - now) / 86400) for c in tls.certificates()]

    m.samples_function(
        "gauge",
        "tls_certificate_expiry_days",
        "Days until a host's TLS certificate expires (negative: expired).",
        ["host"],
        expiry,
    )


def _metrics(server: ObservedServer) -> None:
    m = server.metrics
    started = server.started_at
    start_unix = time.time() - (time.monotonic() - started)
    m.samples_function(
        "gauge", "info", "The running xmppd (always 1).", ["version"], lambda: [([__version__], 1)]
    )
    m.gauge_function(
        "start_time_seconds", "Unix time at which the server started.", lambda: start_unix
    )
    m.gauge_function(
        "uptime_seconds", "Seconds since the server started.", lambda: time.monotonic() - started
    )
    sessions = server.sessions
    m.gauge_function(
        "c2s_sessions", "Client sessions with a bound resource (all hosts).", lambda: len(sessions)
    )
    components = server.components
    domains = [c.domain for c in server.config.components]
    m.gauge_function(
        "components_connected",
        "External components (XEP-0114) connected and authenticated.",
        lambda: sum(components.connected(d) is not None for d in domains),
    )
    outcomes = server.throttle.outcomes

    def logins() -> Samples:
        for (mechanism, ok), count in list(outcomes.items()):
            yield (mechanism or "unknown", "success" if ok else "failure"), count

    m.samples_function(
        "counter",
        "logins",
        "Authentication attempts that completed, by SASL mechanism (or component "
        "'handshake') and result.",
        ["mechanism", "result"],
        logins,
    )
    routed = server.router.routed

    def by_kind() -> Samples:
        counts = dict.fromkeys(KINDS, 0) | {"other": 0}
        for kind, count in list(routed.items()):
            counts[kind if kind in KINDS else "other"] += count
        return [((kind,), count) for kind, count in counts.items()]

    m.samples_function(
        "counter",
        "stanzas_routed",
        "Stanzas passed to the router (before filter_packet), by kind.",
        ["kind"],
        by_kind,
    )
    registered: dict[str, int] = dict.fromkeys(server.hosts, 0)
    removed: dict[str, int] = dict.fromkeys(server.hosts, 0)
    for domain, host in server.hosts.items():
        host.bus.add(hooks.USER_REGISTERED, _bump(registered, domain), owner="metrics")
        host.bus.add(hooks.USER_REMOVED, _bump(removed, domain), owner="metrics")
    m.samples_function(
        "counter",
        "registrations",
        "Accounts created (in-band, admin tools), by host.",
        ["host"],
        lambda: [((d,), n) for d, n in registered.items()],
    )
    m.samples_function(
        "counter",
        "accounts_removed",
        "Accounts deleted with all their data, by host.",
        ["host"],
        lambda: [((d,), n) for d, n in removed.items()],
    )


def _bump(counts: dict[str, int], domain: str) -> Callable[[hooks.UserEvent], Awaitable[None]]:
    async def count(_event: hooks.UserEvent) -> None:
        counts[domain] += 1

    return count


def _health(server: ObservedServer) -> None:
    health = server.health
    health.add_check("database", server.db.health_check)
    configured = len(server.config.listeners)

    async def listeners() -> str | None:
        bound = len(server.listening_ports)
        if bound < configured:
            return f"{bound} of {configured} listeners bound"
        return None

    health.add_check("listeners", listeners)

    async def started(event: hooks.HostEvent) -> None:
        health.part("host", host=event.domain).set_ready()

    for domain, host in server.hosts.items():
        health.part("host", host=domain, reason="starting")
        host.bus.add(hooks.HOST_STARTED, started, owner="health")

    async def stopping(event: hooks.ServerEvent) -> None:
        for domain in server.hosts:
            health.part("host", host=domain).set_not_ready(
                f"server stopping ({event.reason})", expected=True
            )

    server.bus.add(hooks.SERVER_STOPPING, stopping, owner="health")
