"""The server-wide services, as one explicit object.

``Server`` (xmppd/server.py) builds a :class:`Core` at start and hands it down: the
module manager, module contexts and account operations get it instead of the whole
server, so every part says what it uses and none imports ``xmppd.server``. Hosts
and streams get even less: the few services they use, one by one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xmppd.health import Health
from xmppd.httproutes import HttpRoutes
from xmppd.invalidation import CacheInvalidations
from xmppd.iqtracker import IqTimeout
from xmppd.metrics import Metrics
from xmppd.stanza import new_id

if TYPE_CHECKING:
    from xmppd.auth.accounts import Accounts
    from xmppd.cluster.node import ClusterNode
    from xmppd.config import ServerConfig
    from xmppd.events import EventBus
    from xmppd.host import Host
    from xmppd.iqtracker import IqTracker
    from xmppd.router import Router
    from xmppd.sessions import SessionRegistry
    from xmppd.stanza import Element
    from xmppd.storage.database import Database
    from xmppd.tasks import TaskOwner


@dataclass(slots=True, eq=False)
class Core:
    """What the logic layer shares: configuration, hook bus, routing, sessions, storage,
    accounts, background tasks, and the hosts by domain."""

    config: ServerConfig
    bus: EventBus
    """The server-wide hook bus (``global`` hooks)."""
    router: Router
    sessions: SessionRegistry
    iq_tracker: IqTracker
    db: Database
    accounts: Accounts
    tasks: TaskOwner
    hosts: dict[str, Host] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    metrics: Metrics = field(default_factory=Metrics)
    """The server's metrics registry (``xmppd.metrics``)."""
    health: Health = field(default_factory=Health)
    """The server's health registry (``xmppd.health``)."""
    http: HttpRoutes = field(default_factory=HttpRoutes)
    """The routes of the HTTP listeners (``xmppd.httproutes``)."""
    http_listeners: list[tuple[str, str, int]] = field(default_factory=list)
    """(scheme, address, bound port) of each open ``kind = "http"`` listener."""
    invalidations: CacheInvalidations = field(default_factory=CacheInvalidations)
    """Cache invalidations between the nodes of a cluster (``xmppd.invalidation``)."""
    cluster: ClusterNode | None = None
    """This process's membership of a cluster (``None``: a single process)."""
    secret: bytes = b""
    """The persistent server secret (``xmppd.server_secret``), loaded at start before
    the modules; modules get keys derived from it (``ModuleContext.derived_key``)."""

    def uptime(self) -> float:
        """Seconds since the server started."""
        return time.monotonic() - self.started_at

    def is_local(self, domain: str) -> bool:
        """True when ``domain`` is one of this server's hosts."""
        return domain in self.hosts

    async def request(self, iq: Element, *, timeout: float = 30.0) -> Element:
        """Send an IQ get/set and await the result or error (``IqTimeout`` if none)."""
        iq_id = self.iq_tracker.request_id(iq.get("id") or new_id())
        iq.set("id", iq_id)
        fut = self.iq_tracker.expect(iq_id, iq.get("to", ""))
        try:
            await self.router.route(iq, None)
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise IqTimeout(iq_id) from None
        finally:
            self.iq_tracker.forget(iq_id)
