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
``http.ops_allowed`` (loopback by default), or that send a REST admin API token of any
scope as ``Authorization: Bearer xat_...`` (a Prometheus scraping from another
network), are answered. Anyone else gets 403, and a wrong or revoked token 401.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from aiohttp import web

from xmppd.httproutes import client_of
from xmppd.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from xmppd.apitokens import ApiTokens
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
        tokens: ApiTokens | None = None,
    ) -> None:
        """``render``: what ``/metrics`` answers instead of this process's metrics
        (under ``server.workers``, every worker's: :mod:`xmppd.workermetrics`);
        ``tokens``: the REST API's tokens, which open the endpoints to clients outside
        ``http.ops_allowed``."""
        self.metrics = metrics
        self._tokens = tokens
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

    async def _refuse(self, request: web.Request) -> web.Response | None:
        """``None`` when the client may read the endpoints, else the answer: 403, or
        401 for a bearer token that is not a valid admin API token."""
        if self.allowed(client_of(request).address):
            return None
        kind, _, credential = request.headers.get("Authorization", "").partition(" ")
        if self._tokens is None or kind.lower() != "bearer":
            return web.Response(status=403, text="forbidden\n")
        try:
            token = await self._tokens.check(credential.strip())
        except (sa.exc.SQLAlchemyError, OSError):
            # The database holds the tokens: without it no token can be checked.
            return web.Response(status=503, text="cannot check the token now\n")
        if token is None:
            return web.Response(
                status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"}
            )
        return None

    async def serve_metrics(self, request: web.Request) -> web.StreamResponse:
        refused = await self._refuse(request)
        if refused is not None:
            return refused
        return web.Response(
            body=self.metrics.render() if self._render is None else await self._render(),
            headers={"Content-Type": CONTENT_TYPE, **_NO_STORE},
        )

    async def serve_health(self, request: web.Request) -> web.StreamResponse:
        refused = await self._refuse(request)
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
        refused = await self._refuse(request)
        if refused is not None:
            return refused
        return web.Response(
            text=json.dumps({"live": True}), content_type="application/json", headers=_NO_STORE
        )
