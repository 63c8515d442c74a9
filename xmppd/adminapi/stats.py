"""``/api/v1/stats``: what the server is doing right now."""

from __future__ import annotations

import time

import sqlalchemy as sa
from pydantic import BaseModel, Field

from xmppd.adminapi.base import ApiContext, Call, Route


class HostStats(BaseModel):
    sessions: int
    online_users: int


class Stats(BaseModel):
    uptime_seconds: float
    sessions: int
    sessions_by_transport: dict[str, int] = Field(description="tcp, websocket, bosh")
    hosts: dict[str, HostStats]
    stanzas_routed: int = Field(description="Since the server started.")
    stanzas_per_second: float = Field(
        description="Routed per second since the previous stats request (the first "
        "request: since start)."
    )
    storage_latency_ms: float = Field(description="One round trip to the database, now.")


class StatsResource:
    def __init__(self, api: ApiContext) -> None:
        self.api = api
        self._last = (time.monotonic() - api.core.uptime(), 0)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/stats", self.stats, "read-only", "Server statistics", response=Stats)
        ]

    async def stats(self, call: Call) -> Stats:
        core = self.api.core
        by_transport = {"tcp": 0, "websocket": 0, "bosh": 0}
        hosts = {domain: HostStats(sessions=0, online_users=0) for domain in core.hosts}
        users: dict[str, set[str]] = {domain: set() for domain in core.hosts}
        for endpoint in core.sessions.endpoints():
            name = endpoint.transport_name
            by_transport[name] = by_transport.get(name, 0) + 1
            domain = endpoint.jid.domain
            if domain in hosts:
                hosts[domain].sessions += 1
                users[domain].add(endpoint.jid.local)
        for domain, names in users.items():
            hosts[domain].online_users = len(names)
        started = time.perf_counter()
        await core.db.fetch_value(sa.select(sa.literal(1)))
        latency = (time.perf_counter() - started) * 1000
        routed = sum(core.router.routed.values())
        now = time.monotonic()
        then, before = self._last
        self._last = (now, routed)
        rate = (routed - before) / max(now - then, 1e-3)
        return Stats(
            uptime_seconds=round(core.uptime(), 3),
            sessions=len(core.sessions),
            sessions_by_transport=by_transport,
            hosts=hosts,
            stanzas_routed=routed,
            stanzas_per_second=round(rate, 3),
            storage_latency_ms=round(latency, 3),
        )
