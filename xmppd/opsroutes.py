"""The operator's endpoints on the HTTP listeners: ``GET /metrics`` and the health probes.

``/metrics`` is the server's one metrics registry in the Prometheus text exposition
format; ``/health/ready`` (and its older name ``/health``) is the readiness report as
JSON, with HTTP 200 when every part is ready and 503 (with the parts and why they are
not ready) otherwise, so a load balancer or an orchestrator's readiness probe can use
the status alone; ``/health/live`` answers 200 whenever the process serves HTTP at all
(a liveness probe: restart only what no longer answers, not what waits for its
database).

Both are for the operator, not the world: only clients whose address (as the HTTP
front works it out, i.e. the forwarded one behind a trusted proxy) falls in
``http.ops_allowed`` (loopback by default) are answered; anyone else gets 403.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web

from xmppd.httproutes import client_of
from xmppd.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from xmppd.config import HttpSection
    from xmppd.health import Health
    from xmppd.httproutes import HttpRoutes
    from xmppd.metrics import Metrics

METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/health"
READY_PATH: Final = "/health/ready"
LIVE_PATH: Final = "/health/live"
_NO_STORE: Final = {"Cache-Control": "no-store"}


class OpsEndpoints:
    """``/metrics`` and the health probes, restricted to ``http.ops_allowed``."""

    def __init__(
        self,
        config: HttpSection,
        metrics: Metrics,
        health: Health,
        *,
        render: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        """``render``: what ``/metrics`` answers instead of this process's metrics
        (under ``server.workers``, every worker's: :mod:`xmppd.workermetrics`)."""
        self.metrics = metrics
        self._render = render
        self.health = health
        self._metrics_on = config.metrics
        self._health_on = config.health
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in config.ops_allowed)

    def register(self, routes: HttpRoutes) -> None:
        """Add the enabled endpoints to the core's route registry."""
        if self._metrics_on:
            routes.add("GET", METRICS_PATH, self.serve_metrics)
        if self._health_on:
            routes.add("GET", HEALTH_PATH, self.serve_health)
            routes.add("GET", READY_PATH, self.serve_health)
            routes.add("GET", LIVE_PATH, self.serve_live)

    def allowed(self, address: str) -> bool:
        """Whether a client at ``address`` may read the operator's endpoints."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allowed)

    def _refuse(self, request: web.Request) -> web.Response | None:
        if self.allowed(client_of(request).address):
            return None
        return web.Response(status=403, text="forbidden\n")

    async def serve_metrics(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        return web.Response(
            body=self.metrics.render() if self._render is None else await self._render(),
            headers={"Content-Type": CONTENT_TYPE, **_NO_STORE},
        )

    async def serve_health(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        report = await self.health.check()
        return web.Response(
            status=200 if report.ready else 503,
            text=json.dumps(report.as_dict()),
            content_type="application/json",
            headers=_NO_STORE,
        )

    async def serve_live(self, request: web.Request) -> web.StreamResponse:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        return web.Response(
            text=json.dumps({"live": True}), content_type="application/json", headers=_NO_STORE
        )
