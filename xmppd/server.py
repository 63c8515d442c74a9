"""The server: assembles the parts (storage, routing table, session registry, hosts,
modules, listeners) at start and owns their lifecycle. Nothing below it imports it:
each part is given the services it uses (:class:`~xmppd.core.Core` for the logic
layer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from xmppd import hooks
from xmppd.adminapi import AdminApi
from xmppd.adminapi.rooms import ROOMS_CALL, RoomResource
from xmppd.apitokens import ApiTokens
from xmppd.auth import hashing, sasl
from xmppd.auth.accounts import Accounts
from xmppd.auth.fast import FastTokens
from xmppd.auth.throttle import FailedLoginThrottle
from xmppd.cluster.membership import default_node_name
from xmppd.cluster.node import ClusterNode
from xmppd.cluster.placement import by_domain
from xmppd.cluster.registry import ClusterSessions
from xmppd.components import ComponentDestination
from xmppd.config import ServerConfig
from xmppd.control import ControlSocket
from xmppd.core import Core
from xmppd.datarights import erasure_sweeper
from xmppd.errors import StanzaError
from xmppd.events import EventBus
from xmppd.health import Health
from xmppd.heap import release_idle, trim_if_worthwhile
from xmppd.host import Host
from xmppd.iqtracker import IqTimeout, IqTracker
from xmppd.jid import JID
from xmppd.metrics import Metrics, StanzaTraffic
from xmppd.modules import ModuleManager
from xmppd.observe import observe
from xmppd.opsroutes import OpsEndpoints
from xmppd.reload import ReloadReport, reload_server
from xmppd.router import Router
from xmppd.s2s.certs import TrustStore
from xmppd.s2s.dialback import dialback_secret
from xmppd.s2s.links import (
    S2SLinks,
    S2SStats,
    configured_domains,
    register_metrics,
    verify_dialback,
)
from xmppd.server_secret import derive
from xmppd.server_secret import load as load_secret
from xmppd.sessions import Endpoint, SessionRegistry, make_registry
from xmppd.stanza import Element, describe_payload, error_reply
from xmppd.storage.database import Database
from xmppd.stream.c2s import C2SServices, C2SStream, adopt_hibernated, end_mirrored
from xmppd.stream.component import ComponentRegistry, ComponentServices, ComponentStream
from xmppd.stream.s2s import S2SInStream, S2SServices, s2s_remote_of
from xmppd.stream.teardowns import Teardowns
from xmppd.tasks import TaskOwner
from xmppd.tls import TlsContexts, certificate_paths, load_host_certificate, s2s_client_context
from xmppd.transports.bosh import BODY_OVERHEAD
from xmppd.transports.boshrelay import BoshRelay, relay_address
from xmppd.transports.http import HttpFront
from xmppd.transports.peerlimit import ConnectionsPerAddress
from xmppd.transports.peertls import PeerTlsContexts
from xmppd.transports.tcp import StreamOpeners, start_listeners
from xmppd.turnpacer import TurnPacer
from xmppd.users import export_user, register_user, remove_user
from xmppd.workermetrics import gather as gather_worker_metrics

if TYPE_CHECKING:
    from xmppd.stream.transport import Transport

log = logging.getLogger(__name__)

IDLE_CHECK: Final = 2.5
"""Seconds between heap checks when idle parsers are not released (``idle_release = 0``)."""
SHUTDOWN_TEARDOWN_WAIT: Final = 10.0
"""Seconds a stopping server waits for its sessions' teardown hooks to finish."""
SHUTDOWN_ACK_WAIT: Final = 1.0
"""Seconds a stopping server waits for stream management clients to acknowledge what
they have before it closes their sessions (and delivers the rest again)."""


async def _collect_acks(endpoints: Sequence[Endpoint], timeout: float) -> None:
    """Ask every stream management client with unacknowledged stanzas for an ack and
    wait (at most ``timeout``) for their answers: what a session never acknowledged is
    delivered again when it ends, and a client that got it would get it twice."""
    waiting = [e for e in endpoints if isinstance(e, C2SStream) and e.ask_for_acks()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while waiting and loop.time() < deadline:
        await asyncio.sleep(0.05)
        waiting = [e for e in waiting if e.awaiting_acks]


async def _all_closed(endpoints: Sequence[Endpoint], timeout: float | None) -> None:
    """Wait (at most ``timeout``; ``None``: however long) until each endpoint's
    teardown hooks are done."""
    waits = [asyncio.ensure_future(endpoint.wait_closed()) for endpoint in endpoints]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=timeout)
    for wait in pending:
        wait.cancel()
    if pending:
        log.warning("stopping: %d sessions' teardown did not finish in time", len(pending))


def worker_node_name(configured: str, worker: int | None) -> str:
    """A process's node name: ``[cluster] node`` (else the host name), with
    ``-w<N>`` for worker N of ``server.workers``."""
    if not configured:
        return default_node_name(worker)
    return configured if worker is None else f"{configured}-w{worker}"


class Server:
    """One xmppd process: a complete server (storage, hosts, modules, listeners)."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        node_name: str | None = None,
        worker: int | None = None,
        standalone: bool = False,
    ) -> None:
        """``node_name``: this process's name in a cluster (default: ``[cluster] node``,
        else the host name; ``-w<worker>`` appended for a worker of ``xmppd run``).
        ``worker``: this process is worker number ``worker`` of ``server.workers``: its
        listeners share their ports with the other workers (SO_REUSEPORT) and its
        control socket is its own. ``standalone``: never join the cluster (the CLI's
        offline commands, which must not pass for a node)."""
        self.config = config
        self.worker = worker
        self.bus = EventBus("global", summarize=describe_payload)
        self.cluster: ClusterNode | None = None
        """This process's membership of a cluster (``[cluster] redis_url``), from start."""
        self.sessions: SessionRegistry
        if config.cluster.enabled and not standalone:
            name = node_name or worker_node_name(config.cluster.node, worker)
            self.sessions = ClusterSessions(name)
            log.info("session registry: cluster (node %s)", name)
        else:
            self.sessions = make_registry(config.sessions.registry)
            log.info("session registry: %s", config.sessions.registry)
        self.router = Router(self.bus)
        self.iq_tracker = IqTracker()
        self.db = Database(config.storage_url(), pool_size=config.storage.pool_size)
        self.accounts = Accounts(self.db, iterations=config.auth.scram_iterations)
        hashing.configure(niceness=config.auth.hashing_niceness)
        self.tasks = TaskOwner()
        self.core = Core(
            config=config,
            bus=self.bus,
            router=self.router,
            sessions=self.sessions,
            iq_tracker=self.iq_tracker,
            db=self.db,
            accounts=self.accounts,
            tasks=self.tasks,
        )
        self.started_at = self.core.started_at
        self.throttle = FailedLoginThrottle(
            free_failures=config.auth.failures_before_delay,
            max_delay=config.auth.max_failure_delay,
        )
        self.hosts: dict[str, Host] = self.core.hosts
        for domain, section in config.hosts.items():
            host = Host(
                domain,
                router=self.router,
                sessions=self.sessions,
                iq_tracker=self.iq_tracker,
                admins=frozenset(JID.parse(a).bare for a in section.admins),
            )
            self.hosts[domain] = host
            self.router.add(domain, host)
        self.components = ComponentRegistry(config.components)
        """External components (XEP-0114): configured domains and connected streams."""
        for component in config.components:
            self.router.add(
                component.domain,
                ComponentDestination(component.domain, self.components, self.router),
            )
        self.tls: TlsContexts | None = None
        self.secret = b""
        """The persistent server secret (xmppd.server_secret), loaded by :meth:`start`."""
        self.fast_tokens: FastTokens | None = None
        self.resumable: MutableMapping[str, C2SStream] = {}
        """Stream-management sessions by resumption id."""
        self.c2s_services: C2SServices | None = None
        """What client streams use of the server; assembled by :meth:`start`."""
        self.component_services: ComponentServices | None = None
        self.s2s_services: S2SServices | None = None
        """What server-to-server streams use; assembled by :meth:`start` when federating."""
        self.s2s: S2SLinks | None = None
        """Outgoing federation, the router's default route (``None``: not federating)."""
        self.s2s_incoming: set[S2SInStream] = set()
        self.s2s_stats = S2SStats(known=configured_domains(config.s2s))
        self._listeners: list[asyncio.Server] = []
        self.http: HttpFront | None = None
        """The HTTP front, when a ``kind = "http"`` listener is configured."""
        self.bosh_relay: BoshRelay | None = None
        """In a cluster with BOSH: passes requests on to the node holding the session."""
        self._s2s_client_contexts: dict[str, ssl.SSLContext] = {}
        """Outgoing federation's TLS contexts per host, built on first use (a reload
        empties it, so renewed certificates are read again)."""
        self._stopped = asyncio.Event()
        self.modules = ModuleManager(self.core)
        self.traffic = StanzaTraffic()
        """Client stanzas in and out by kind (metrics)."""
        self.admin_api = AdminApi(self.core, ApiTokens(self.core.db), self.throttle)
        """The REST API (xmppd.adminapi), on the HTTP listeners and the control socket."""
        self.control = ControlSocket(
            self.admin_api,
            config.server.data_dir,
            worker=worker,
            metrics=self.core.metrics.render if worker is not None else None,
            node=getattr(self.sessions, "node", ""),
        )
        self.metrics: Metrics = self.core.metrics
        self.health: Health = self.core.health
        observe(self)  # the core's own metrics and health parts

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, listen: bool = True) -> None:
        """Prepare storage, load modules on every host, then open the listeners."""
        self.config.server.data_dir.mkdir(parents=True, exist_ok=True)
        self.modules.import_all()
        await self.db.start(auto_upgrade=self.config.storage.auto_upgrade)
        await self._load_secret()
        self.spawn(self.db.checkpoints(), name="sqlite-checkpoints")
        if isinstance(self.sessions, ClusterSessions):
            self.cluster = ClusterNode(
                self.config.cluster,
                self.sessions,
                self.router,
                self.hosts,
                self.secret,
                invalidations=self.core.invalidations,
                resume_timeout=self.config.c2s.resume_timeout,
                start_task=self.tasks.start_task,
                health=self.health.part("cluster", reason="joining"),
            )
            self.core.cluster = self.cluster
            self.resumable = self.cluster.resumable
            self.cluster.answers_elsewhere(self.iq_tracker)
            self.components.remote = self.cluster.components
            self.cluster.register_metrics(self.metrics)
            # REST room endpoints run on the room's node (xmppd.adminapi.rooms).
            self.cluster.serve(ROOMS_CALL, RoomResource(self.admin_api.context).answer)
        await self.modules.load_all()
        if self.cluster is not None:
            await self.cluster.start()
        for host in self.hosts.values():
            host.bus.add(hooks.DISCO_ITEMS, self._subdomain_items)
        if listen:
            await self._load_tls()
        self._assemble_stream_services()
        if listen and self.config.s2s.enabled:
            await self._start_federation()
        if listen:
            if any(section.kind == "http" for section in self.config.listeners):
                self.http = HttpFront(
                    self.config.http,
                    self.config.c2s,
                    self.core.http,
                    self.metrics,
                    self.open_c2s,
                    self.tls,
                    lambda: frozenset(self.hosts),
                    reuse_port=self.worker is not None,
                )
                OpsEndpoints(
                    self.config.http,
                    self.metrics,
                    self.health,
                    render=self._metrics_render(),
                    tokens=ApiTokens(self.core.db),
                ).register(self.core.http)
                AdminApi(self.core, ApiTokens(self.core.db), self.throttle).register(self.core.http)
            await self.control.start()
            openers = StreamOpeners(
                c2s=self.open_c2s,
                component=self.open_component,
                components_configured=bool(len(self.components)),
                s2s=self.open_s2s if self.s2s is not None else None,
                http=self.http.listen if self.http is not None else None,
                s2s_tls=await self._peer_tls() if self.s2s is not None else None,
                s2s_rate=self.config.s2s.incoming_rate,
                s2s_on_throttle=self._s2s_throttled,
                c2s_per_address=ConnectionsPerAddress(
                    self.config.c2s.max_connections_per_ip, self.config.c2s.connection_limit_exempt
                ),
                s2s_per_address=ConnectionsPerAddress(
                    self.config.s2s.max_connections_per_ip, self.config.s2s.connection_limit_exempt
                ),
                component_per_address=ConnectionsPerAddress(
                    self.config.s2s.max_connections_per_ip, self.config.s2s.connection_limit_exempt
                ),
                reuse_port=self.worker is not None,
                login_pacer=(
                    TurnPacer(self.config.c2s.login_reads_per_turn)
                    if self.config.c2s.login_reads_per_turn > 0
                    else None
                ),
            )
            self._listeners = await start_listeners(self.config.listeners, self.tls, openers)
            for listener, section in zip(self._listeners, self.config.listeners, strict=False):
                if section.kind == "http" and listener.sockets:
                    port = int(listener.sockets[0].getsockname()[1])
                    scheme = "https" if section.tls == "direct" else "http"
                    self.core.http_listeners.append((scheme, section.address, port))
            await self._start_bosh_relay()
            if self.worker is not None:
                log.info("worker %d listening (ports shared with the other workers)", self.worker)
        for host in self.hosts.values():
            await host.bus.run(hooks.HOST_STARTED, hooks.HostEvent(host.domain))
        if listen:
            self.spawn(self._release_idle_memory(), name="idle-release")
        if listen:
            self.spawn(erasure_sweeper(self.core), name="erasure-sweeper")

    async def _start_bosh_relay(self) -> None:
        """In a cluster, BOSH requests may land on any node: open this node's relay
        listener and publish its address (docs/architecture.md, "HTTP transports")."""
        cluster, http = self.cluster, self.http
        if cluster is None or http is None or not self.config.http.bosh:
            return
        listener = next(s for s in self.config.listeners if s.kind == "http")
        host, port = await relay_address(self.config.cluster.http_address, listener.address)

        async def address_of(node: str) -> str | None:
            url = (await cluster.node_info(node)).get("http")
            return url if isinstance(url, str) else None

        relay = BoshRelay(
            cluster.name,
            derive(self.secret, "cluster-http"),
            is_live=cluster.is_live_now,
            address_of=address_of,
            hold_timeout=self.config.http.bosh_max_wait + 30,
            max_body=self.config.c2s.max_stanza_size + BODY_OVERHEAD,
        )
        bosh = http.bosh
        url = await relay.listen(
            host,
            port,
            lambda data, client: bosh.answer(data, client, relayed=True),
            http.count_request,
        )
        bosh.relay = relay
        self.bosh_relay = relay
        self.metrics.counter_function(
            "bosh_relay_forwarded",
            "BOSH requests passed on to the node holding the session",
            lambda: relay.forwarded,
        )
        self.metrics.counter_function(
            "bosh_relay_taken",
            "BOSH requests other nodes passed on to this one",
            lambda: relay.taken,
        )
        self.metrics.counter_function(
            "bosh_relay_refused",
            "Relay requests refused (not signed by a node)",
            lambda: relay.refused,
        )
        await cluster.announce(http=url)

    def _metrics_render(self) -> Callable[[], Awaitable[bytes]] | None:
        """Under ``server.workers``: ``/metrics`` shows every worker's, by node."""
        if self.worker is None or self.cluster is None:
            return None
        data_dir, sock, node = self.config.server.data_dir, self.control.path, self.cluster.name
        render = self.metrics.render

        async def every_worker() -> bytes:
            return await gather_worker_metrics(data_dir, sock, node, render)

        return every_worker

    def _assemble_stream_services(self) -> None:
        """The explicit dependencies of streams (they never see the ``Server``)."""
        self.c2s_services = C2SServices(
            c2s=self.config.c2s,
            auth=self.config.auth,
            hosts=self.hosts,
            router=self.router,
            sessions=self.sessions,
            accounts=self.accounts,
            throttle=self.throttle,
            start_task=self.tasks.start_task,
            resumable=self.resumable,
            resume_elsewhere=self.cluster.handovers.take_over if self.cluster else None,
            sm_mirrors=(
                self.cluster.mirrors
                if self.cluster is not None and self.config.cluster.sm_mirror
                else None
            ),
            secret=self.secret,
            fast_tokens=self.fast_tokens,
            tls=self.tls,
            traffic=self.traffic,
            teardowns=(
                Teardowns(self.config.c2s.teardowns_per_turn)
                if self.config.c2s.teardowns_per_turn > 0
                else None
            ),
        )
        if self.cluster is not None:
            services = self.c2s_services
            self.cluster.adopt = lambda handover: adopt_hibernated(services, handover) is not None
            self.cluster.end_replaced = lambda handover: end_mirrored(services, handover)
        self.component_services = ComponentServices(
            limits=self.config.c2s,
            router=self.router,
            throttle=self.throttle,
            components=self.components,
        )

    async def _start_federation(self) -> None:
        """Outgoing links as the router's default route, and the incoming streams'
        services (federation is on)."""
        config = self.config
        data_dir = config.server.data_dir
        contexts = self._s2s_client_contexts

        def certificate_host(local: str) -> str:
            # A service domain (conference.example.org) presents its host's certificate,
            # which the generated ones cover with *.example.org.
            if local in config.hosts:
                return local
            parent = local.split(".", 1)[-1]
            return parent if parent in config.hosts else next(iter(config.hosts))

        def client_tls(local: str) -> ssl.SSLContext:
            host = certificate_host(local)
            ctx = contexts.get(host)
            if ctx is None:
                section = config.hosts[host]
                cert, key = certificate_paths(
                    host,
                    section.certificate or config.tls.certificate,
                    section.key or config.tls.key,
                    data_dir,
                )
                ctx = contexts[host] = s2s_client_context(cert, key)
            return ctx

        trust = await asyncio.to_thread(TrustStore, config.s2s.ca_file)
        links = S2SLinks(
            config.s2s, self.router, client_tls=client_tls, trust=trust, stats=self.s2s_stats
        )
        stats = self.s2s_stats

        def authenticated(direction: str, remote: str) -> None:
            stats.authenticated_as(direction, remote)

        def refused(remote: str, reason: str) -> None:
            # ``remote`` is only claimed: a made-up name gets no series of its own.
            stats.refused[(stats.label(remote), reason)] += 1

        async def verify(local: str, remote: str, stream_id: str, key: str) -> bool:
            return await verify_dialback(links, local, remote, stream_id, key)

        self.s2s_services = links.services = S2SServices(
            config=config.s2s,
            router=self.router,
            is_local=self.router.__contains__,
            dialback_secret=dialback_secret(self.secret),
            verify_dialback=verify,
            start_task=self.tasks.start_task,
            on_authenticated=authenticated,
            on_refused=refused,
            incoming=self.s2s_incoming,
            check_certificate=trust.check,
            bidi_ready=links.bidi_ready,
        )
        self.s2s = links
        # One outgoing link per remote domain for the whole cluster: stanzas to a remote
        # domain leave through the node that rendezvous hashing of the domain chooses.
        if self.cluster is None:
            self.router.default = links
        else:
            placement = self.cluster.placement
            self.router.default = placement.place(links, by_domain)

            async def release_links() -> None:
                links.release(placement.is_mine)

            placement.on_change(release_links)
        register_metrics(self.metrics, links, self.s2s_incoming)

    def _s2s_throttled(self, stream: object) -> None:
        remote = s2s_remote_of(stream)
        log.info("s2s-in %s: sends faster than [s2s] incoming_rate; slowed down", remote)
        self.s2s_stats.throttled[("in", self.s2s_stats.label(remote))] += 1

    def open_s2s(self, transport: Transport, offer_starttls: bool) -> S2SInStream:
        """An incoming server-to-server stream on a new connection (federation on)."""
        assert self.s2s_services is not None, "federation is not started"
        return S2SInStream(self.s2s_services, transport, offer_starttls=offer_starttls)

    def open_c2s(self, transport: Transport, offer_starttls: bool) -> C2SStream:
        """A client stream on a new connection (after :meth:`start`)."""
        assert self.c2s_services is not None, "the server is not started"
        return C2SStream(self.c2s_services, transport, offer_starttls=offer_starttls)

    def open_component(self, transport: Transport) -> ComponentStream:
        """An external component's stream on a new connection (after :meth:`start`)."""
        assert self.component_services is not None, "the server is not started"
        return ComponentStream(self.component_services, transport)

    async def _release_idle_memory(self) -> None:
        """Every so often, let idle client streams free their parsers (unless
        ``c2s.idle_release`` is 0), and give the heap back to the OS once enough
        parsers were freed, by them or by streams that ended (:mod:`xmppd.heap`)."""
        idle_for = self.config.c2s.idle_release
        while True:
            await asyncio.sleep(idle_for / 2 if idle_for > 0 else IDLE_CHECK)
            if idle_for > 0:
                await release_idle(self.sessions.endpoints(), idle_for)
            trim_if_worthwhile()

    def check(self) -> None:
        """Validate without side effects: module and hook options, configured certificates.

        Raises ``ConfigError``. Creates no directory, database or certificate.
        """
        from xmppd.config import ConfigError
        from xmppd.tls import server_context

        self.modules.import_all()
        source = self.config.source or "<config>"
        pairs = [("tls", self.config.tls)] + [
            (f"hosts.{d}", h) for d, h in self.config.hosts.items()
        ]
        for path, section in pairs:
            if section.certificate is None or section.key is None:
                continue
            try:
                server_context(section.certificate, section.key)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{source}: {path}.certificate: cannot load: {exc}") from None

    async def _subdomain_items(
        self, items: tuple[hooks.DiscoItem, ...], query: hooks.DiscoQuery
    ) -> tuple[hooks.DiscoItem, ...]:
        """A host's disco#items lists the services under its domain: the components
        (XEP-0114, such as a push app server), as Prosody does for subdomains, and the
        domains its modules serve (``pubsub.<host>``...)."""
        to = query.to
        if to.local or to.resource or query.node is not None:
            return items
        found = [hooks.DiscoItem(JID.parse(d)) for d in self.components.subdomains_of(to.domain)]
        host = self.hosts.get(to.domain)
        if host is not None:
            found.extend(
                hooks.DiscoItem(JID.parse(d), name=name or None)
                for d, name in sorted(host.served.items())
            )
        return (*items, *found) if found else items

    async def _load_secret(self) -> None:
        auth = self.config.auth
        self.secret = await load_secret(self.config, self.db)
        self.core.secret = self.secret
        # Unknown users get the same fake SCRAM salt after a restart, as real ones do.
        sasl.configure_unknown_user_disguise(
            derive(self.secret, "scram-unknown-user"), iterations=auth.scram_iterations
        )
        if auth.sasl2 and auth.fast:
            self.fast_tokens = FastTokens(self.db, self.secret, lifetime=auth.fast_token_lifetime)

    async def _peer_tls(self) -> PeerTlsContexts | None:
        """The TLS of s2s listeners: asks remotes for their certificate (SASL EXTERNAL)."""
        if not any(section.kind == "s2s" for section in self.config.listeners):
            return None
        data_dir = self.config.server.data_dir
        tls = self.config.tls
        pairs = {
            domain: certificate_paths(
                domain, section.certificate or tls.certificate, section.key or tls.key, data_dir
            )
            for domain, section in self.config.hosts.items()
        }
        return await asyncio.to_thread(PeerTlsContexts, pairs, min_version=tls.min_version)

    async def _load_tls(self) -> None:
        data_dir = self.config.server.data_dir
        tls = self.config.tls

        def load() -> TlsContexts:
            certs = {}
            for domain, section in self.config.hosts.items():
                certs[domain] = load_host_certificate(
                    domain,
                    section.certificate or tls.certificate,
                    section.key or tls.key,
                    data_dir,
                    min_version=tls.min_version,
                    session_tickets=tls.session_tickets,
                )
            return TlsContexts(certs)

        self.tls = await asyncio.to_thread(load)

    async def reload(self) -> ReloadReport:
        """Re-read the configuration file and certificates and apply what can change
        while running (``SIGHUP``, ``xmppd reload``); see :mod:`xmppd.reload`."""
        report = await reload_server(self)
        self._s2s_client_contexts.clear()
        return report

    @property
    def listening_ports(self) -> list[tuple[str, int]]:
        """(tls mode, ``s2s-<tls mode>``, ``component``, ``http`` or ``https``; port) of
        each open listener, in config order."""
        ports: list[tuple[str, int]] = []
        for listener, section in zip(self._listeners, self.config.listeners, strict=False):
            mode: str = "component" if section.kind == "component" else section.tls
            if section.kind == "s2s":
                mode = f"s2s-{section.tls}"
            elif section.kind == "http":
                mode = "https" if section.tls == "direct" else "http"
            for sock in listener.sockets:
                ports.append((mode, int(sock.getsockname()[1])))
                break
        return ports

    async def drain(self) -> None:
        """A cluster node about to stop: stop accepting connections and move this
        node's clients to the others (docs/user-guide.md, "Draining a node").

        Resumable stream-management sessions lose their connection without the stream
        ending, so their clients resume on another node, which takes the session over
        with everything unacknowledged; the others are asked to reconnect
        (``see-other-host`` with another node's public address, else
        ``system-shutdown``). Waits ``[cluster] drain_timeout`` at most."""
        cluster = self.cluster
        timeout = self.config.cluster.drain_timeout
        if cluster is None or timeout <= 0 or not cluster.can_drain() or self._siblings_only():
            return
        for listener in self._listeners:
            if listener.sockets:
                listener.close()
        redirect = await cluster.drain()
        moved = 0
        for endpoint in self.sessions.endpoints():
            move = getattr(endpoint, "move_elsewhere", None)
            if move is not None:
                move(redirect)
                moved += 1
        log.info(
            "draining: %d sessions asked to move%s; waiting up to %gs",
            moved,
            f" (see-other-host {redirect})" if redirect else "",
            timeout,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await cluster.registry.no_local_sessions()
        left = len(self.sessions.endpoints())
        log.info("drained: %d sessions left to close", left)

    def _siblings_only(self) -> bool:
        """A worker whose only live peers are the other workers of its supervisor:
        they all stop together, so there is nowhere to drain to."""
        if self.worker is None or self.cluster is None:
            return False
        name = self.cluster.name
        base = name[: name.rfind("-w") + 2]
        return all(node.startswith(base) for node in self.cluster.membership.live)

    async def stop(self, reason: str = "shutdown") -> None:
        if reason == "shutdown":
            await self.drain()
        await self.bus.run(hooks.SERVER_STOPPING, hooks.ServerEvent(reason))
        for listener in self._listeners:
            listener.close()
        endpoints = self.sessions.endpoints()
        if self.s2s is not None:  # while the senders are still connected to hear it
            bounced = await self.s2s.bounce_waiting("the server is stopping")
            if bounced:
                log.info("stopping: %d stanzas waiting for remote servers bounced", bounced)
        await _collect_acks(endpoints, SHUTDOWN_ACK_WAIT)
        if self.c2s_services is not None and self.c2s_services.teardowns is not None:
            self.c2s_services.teardowns.unpace()
        for endpoint in endpoints:
            endpoint.close("system-shutdown")
        self.components.close_all("system-shutdown")
        if self.s2s is not None:
            self.s2s.close_all()
        for stream in list(self.s2s_incoming):
            stream.close("system-shutdown")
        if self.http is not None:
            await self.http.stop()
        if self.bosh_relay is not None:
            await self.bosh_relay.stop()
        await self.control.stop()
        # Every ended session's resource_unbound hooks (last activity, unavailable
        # presence) finish before the modules unload and the tasks are cancelled; a
        # cluster node waits for all, whatever it takes, before it leaves the cluster.
        await _all_closed(endpoints, None if self.cluster is not None else SHUTDOWN_TEARDOWN_WAIT)
        if self.cluster is not None:
            await self.cluster.stop()
        await self.modules.unload_all()
        await self.tasks.cancel_all()
        for listener in self._listeners:
            await listener.wait_closed()
        await self.db.close()
        self._stopped.set()

    async def serve_until_stopped(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        """Run a background task owned by the server; it is cancelled at stop."""
        self.tasks.spawn(coro, name=name)

    def start_task(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]:
        """:meth:`spawn`, returning the task for callers that wait for it."""
        return self.tasks.start_task(coro, name=name)

    def uptime(self) -> float:
        return self.core.uptime()

    # ------------------------------------------------------------------ stanzas

    def error_reply(self, stanza: Element, err: StanzaError) -> Element | None:
        return error_reply(stanza, err)

    async def bounce(self, stanza: Element, err: StanzaError) -> None:
        """Answer ``stanza`` with an error from its recipient (never for errors/results)."""
        await self.router.bounce(stanza, err)

    async def send(self, stanza: Element) -> None:
        """Route a server-originated stanza."""
        await self.router.route(stanza, None)

    async def request(self, iq: Element, *, timeout: float = 30.0) -> Element:
        """Send an IQ get/set and await the result or error (``IqTimeout`` if none)."""
        return await self.core.request(iq, timeout=timeout)

    # ------------------------------------------------------------------ accounts

    async def register_user(self, jid: JID, password: str) -> None:
        """Create an account and announce it (``user_registered``)."""
        await register_user(self.core, jid, password)

    async def export_user(self, jid: JID) -> Element:
        """The account's data as a XEP-0227 document (``user_export``)."""
        return await export_user(self.core, jid)

    async def remove_user(self, jid: JID) -> bool:
        """Delete an account and all its data; its sessions are closed."""
        return await remove_user(self.core, jid)


__all__ = ["IqTimeout", "Server"]
