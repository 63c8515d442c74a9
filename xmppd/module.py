"""The module API: ``Module`` records registrations; ``ModuleContext`` is a module's view
of one host. The ModuleManager (``xmppd.modules``) binds and unbinds them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from xmppd.access import AccessRule
from xmppd.auth.accounts import NoSuchAccount
from xmppd.auth.passwords import password_problem
from xmppd.config import ConfigError
from xmppd.configtext import strict_scalar
from xmppd.datarights import erase_user, export_files
from xmppd.events import Drop, EventHook, FoldHook, Priority, Stop
from xmppd.health import ModuleHealth
from xmppd.httproutes import RouteTaken
from xmppd.iq import Identity, IqRequest, Scope
from xmppd.metrics import ModuleMetrics
from xmppd.router import DomainTaken
from xmppd.server_secret import derive
from xmppd.storage.keyval import KeyValueStore
from xmppd.storage.schema import METADATA
from xmppd.users import export_user, register_user, remove_user

if TYPE_CHECKING:
    from pathlib import Path

    from xmppd.cluster.placement import KeyOf, Placement
    from xmppd.core import Core
    from xmppd.host import Host
    from xmppd.httproutes import HttpHandler
    from xmppd.jid import JID
    from xmppd.router import Destination, ServedDomain
    from xmppd.sessions import SessionRegistry
    from xmppd.stanza import Element
    from xmppd.storage.database import Database

E = TypeVar("E")
V = TypeVar("V")
C = TypeVar("C")
T = TypeVar("T")
OptionsT = TypeVar("OptionsT", bound="Options")


class Options(BaseModel):
    """Base class of a module's options: a frozen pydantic model, unknown keys rejected.

    Declare each option with a default and ``Field(..., description=...)``; the
    description is the option's documentation in ``docs/modules/``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        """Numbers and booleans must be written as such, not as strings."""
        assert info.field_name is not None
        return strict_scalar(cls, info.field_name, value)


class NoOptions(Options):
    """For modules without options."""


class ServiceKey(Generic[T]):
    """A typed key under which a module provides an object to other modules on a host."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ServiceKey({self.name!r})"


IqHandler = Callable[["ModuleContext[Any]", "IqRequest"], Awaitable["Element | None"]]


@dataclass(frozen=True, slots=True)
class IqRegistration:
    type: str
    namespace: str
    tag: str
    scope: Scope
    handler: IqHandler


@dataclass(frozen=True, slots=True)
class HookRegistration:
    hook: EventHook[Any] | FoldHook[Any, Any]
    handler: Callable[..., Awaitable[Any]]
    priority: int
    fold: bool


@dataclass(slots=True)
class Module(Generic[OptionsT]):
    """A feature module. Create one per ``modules/mod_<name>.py`` file as ``module``.

    Decorators record registrations; nothing is bound until the module is
    loaded on a host, and everything is unbound when it is unloaded.
    """

    name: str
    summary: str
    options: type[OptionsT] = cast("type[OptionsT]", NoOptions)  # noqa: RUF009
    protocols: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
    soft_depends: tuple[str, ...] = ()
    iq_handlers: list[IqRegistration] = field(default_factory=list)
    hook_handlers: list[HookRegistration] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    identities: list[Identity] = field(default_factory=list)
    tables: list[sa.Table] = field(default_factory=list)
    load_handlers: list[Callable[[ModuleContext[OptionsT]], Awaitable[None]]] = field(
        default_factory=list
    )
    unload_handlers: list[Callable[[ModuleContext[OptionsT]], Awaitable[None]]] = field(
        default_factory=list
    )
    reload_handlers: list[Callable[[ModuleContext[OptionsT], OptionsT], Awaitable[None]]] = field(
        default_factory=list
    )

    def iq(
        self, type: str, namespace: str, tag: str, *, to: Scope = Scope.HOST
    ) -> Callable[[Callable[[ModuleContext[OptionsT], IqRequest], Awaitable[Element | None]]], Any]:
        """Handle IQs of ``type`` (get/set) whose payload is ``{namespace}tag``.

        The handler returns the result IQ (``req.result(payload)``) or raises
        ``StanzaError``. Returning ``None`` means it answered by itself.
        The namespace is advertised in disco#info of the matching entity.
        """
        if type not in ("get", "set"):
            raise ValueError("IQ handlers are for 'get' or 'set'")

        def deco(
            fn: Callable[[ModuleContext[OptionsT], IqRequest], Awaitable[Element | None]],
        ) -> Callable[[ModuleContext[OptionsT], IqRequest], Awaitable[Element | None]]:
            self.iq_handlers.append(IqRegistration(type, namespace, tag, to, cast(IqHandler, fn)))
            return fn

        return deco

    def on(
        self, hook: EventHook[E], *, priority: int = Priority.DEFAULT
    ) -> Callable[
        [Callable[[ModuleContext[OptionsT], E], Awaitable[Stop | None]]],
        Callable[[ModuleContext[OptionsT], E], Awaitable[Stop | None]],
    ]:
        """Handle an event hook: ``async def h(ctx, event) -> None | STOP``."""

        def deco(
            fn: Callable[[ModuleContext[OptionsT], E], Awaitable[Stop | None]],
        ) -> Callable[[ModuleContext[OptionsT], E], Awaitable[Stop | None]]:
            self.hook_handlers.append(HookRegistration(hook, fn, int(priority), False))
            return fn

        return deco

    def fold(
        self, hook: FoldHook[V, C], *, priority: int = Priority.DEFAULT
    ) -> Callable[
        [Callable[[ModuleContext[OptionsT], V, C], Awaitable[V | Drop]]],
        Callable[[ModuleContext[OptionsT], V, C], Awaitable[V | Drop]],
    ]:
        """Handle a fold hook: ``async def h(ctx, value, context) -> value | DROP``."""

        def deco(
            fn: Callable[[ModuleContext[OptionsT], V, C], Awaitable[V | Drop]],
        ) -> Callable[[ModuleContext[OptionsT], V, C], Awaitable[V | Drop]]:
            self.hook_handlers.append(HookRegistration(hook, fn, int(priority), True))
            return fn

        return deco

    def feature(self, *namespaces: str) -> None:
        """Advertise extra disco#info features on the host (beyond IQ namespaces)."""
        self.features.extend(namespaces)

    def identity(self, category: str, type: str, name: str = "") -> None:
        """Advertise a disco#info identity on the host."""
        self.identities.append(Identity(category, type, name))

    def table(self, name: str, *columns: sa.Column[Any], schema_version: int = 1) -> sa.Table:
        """Declare a table ``mod_<module>__<name>``; a ``host`` column is put first.

        Index and constraints may be passed among ``columns`` (``sa.Index``...).
        """
        table = sa.Table(
            f"mod_{self.name}__{name}",
            _MODULE_METADATA,
            sa.Column("host", sa.String(255), primary_key=True),
            *columns,
            info={"schema_version": schema_version, "module": self.name},
        )
        self.tables.append(table)
        return table

    def on_load(
        self, fn: Callable[[ModuleContext[OptionsT]], Awaitable[None]]
    ) -> Callable[[ModuleContext[OptionsT]], Awaitable[None]]:
        """Run when the module is loaded on a host (may raise to abort start-up)."""
        self.load_handlers.append(fn)
        return fn

    def on_unload(
        self, fn: Callable[[ModuleContext[OptionsT]], Awaitable[None]]
    ) -> Callable[[ModuleContext[OptionsT]], Awaitable[None]]:
        """Run when the module is unloaded from a host (server stop)."""
        self.unload_handlers.append(fn)
        return fn

    def on_reload(
        self, fn: Callable[[ModuleContext[OptionsT], OptionsT], Awaitable[None]]
    ) -> Callable[[ModuleContext[OptionsT], OptionsT], Awaitable[None]]:
        """Run when a reload (``SIGHUP``, ``xmppd reload``) changed the module's options on
        a host: ``async def h(ctx, old_options)``, with ``ctx.options`` already the new
        ones. Declaring one says the module takes new options while running (it reads
        ``ctx.options`` when it needs them, or rebuilds here what it derived from them);
        without one, changed options are reported as needing a restart."""
        self.reload_handlers.append(fn)
        return fn

    @property
    def is_reloadable(self) -> bool:
        """Whether the module takes new options without a restart (:meth:`on_reload`)."""
        return bool(self.reload_handlers)


_MODULE_METADATA = METADATA
"""All module tables, created or checked at start-up."""


def module_metadata() -> sa.MetaData:
    return _MODULE_METADATA


class ModuleContext(Generic[OptionsT]):
    """A module's view of one host: options, logger, storage, sessions, routing, timers.

    Built by the module manager from the host and the server-wide services
    (:class:`~xmppd.core.Core`); one per module per host."""

    def __init__(
        self,
        module: Module[OptionsT],
        host: Host,
        options: OptionsT,
        core: Core,
        peers: dict[str, ModuleContext[OptionsT]],
    ) -> None:
        self.module = module
        self.name = module.name
        self.options: OptionsT = options
        self._host = host
        self._core = core
        self._peers = peers
        self._served: list[tuple[str, Destination]] = []
        self._routes: list[tuple[str, str]] = []
        self._invalidation_handlers: list[tuple[str, Callable[[str], None]]] = []
        self._node_handlers: dict[str, Callable[[Any], Awaitable[None]]] = {}
        self._cluster_listeners: list[Callable[[], None]] = []
        self.domain: str = host.domain
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"xmppd.mod.{module.name}"), {"host": host.domain}
        )

    @property
    def host(self) -> Host:
        """The host this context is bound to (see ``xmppd.api`` for what to use on it)."""
        return self._host

    @property
    def jid(self) -> JID:
        """The host's own JID."""
        return self._host.jid

    def for_host(self, domain: str) -> ModuleContext[OptionsT] | None:
        """This module's context on the host ``domain`` (``None`` if it is not loaded
        there). A handler of a ``global`` hook runs once per server, with the context
        of the first host that loaded the module: it uses this to act for the host a
        stanza concerns."""
        return self._peers.get(domain)

    def loaded_hosts(self) -> list[str]:
        """The hosts where this module is loaded (for a ``global`` hook handler that acts
        on each of them through :meth:`for_host`)."""
        return list(self._peers)

    def provide(self, key: ServiceKey[T], value: T) -> None:
        """Offer ``value`` to other modules on this host under ``key``."""
        self._host.services[key.name] = value

    def service(self, key: ServiceKey[T]) -> T:
        """The object another module provided under ``key`` (``KeyError`` when absent)."""
        return cast(T, self._host.services[key.name])

    def optional_service(self, key: ServiceKey[T]) -> T | None:
        return cast("T | None", self._host.services.get(key.name))

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str | None = None) -> None:
        """Run ``coro`` in the background, owned by the server (cancelled at stop)."""
        self._core.tasks.spawn(coro, name=name or f"mod_{self.name}")

    # -- routing
    @property
    def sessions(self) -> SessionRegistry:
        """Bound client sessions of the whole server: look them up by full or bare JID,
        deliver to them, read and write their per-session state."""
        return self._core.sessions

    async def send(self, stanza: Element) -> None:
        """Route a stanza from the server (through ``filter_packet``)."""
        await self._core.router.route(stanza, None)

    async def send_many(self, stanza: Element, recipients: Iterable[JID]) -> None:
        """Send a copy of ``stanza`` to each of ``recipients`` (``to`` set to each), as
        :meth:`send` would one by one, but serialised once: each copy is routed on its
        own (``filter_packet`` and the recipient's ``user_receive_packet`` run for it,
        a copy a handler changes is serialised on its own, copies for remote servers
        and components go through the router as usual); copies that reach local
        sessions unchanged are written from one serialisation with ``to`` spliced in.
        For a room's groupchat message or presence to every occupant."""
        await self._core.router.fanout(stanza, recipients)

    async def request(self, iq: Element, *, timeout: float = 30.0) -> Element:
        """Send an IQ get/set and await its result or error (``IqTimeout`` when none).

        Without a ``from``, the IQ is sent from this host's JID.
        """
        if iq.get("from") is None:
            iq.set("from", self.domain)
        return await self._core.request(iq, timeout=timeout)

    def serve_domain(
        self,
        domain: str,
        destination: Destination,
        *,
        name: str = "",
        placed_by: KeyOf | None = None,
    ) -> Destination:
        """Route every stanza for ``domain`` (and its JIDs) to ``destination`` for as long
        as this module is loaded on this host. The host lists it in its disco#items
        (with ``name``) when it is a subdomain of the host. ``ConfigError`` when
        something else already serves the domain (a host, a component, a module).

        ``placed_by`` (in a cluster): the placement key of a stanza's ``to``
        (``by_bare_jid``: one room per key; ``by_domain``: the whole service on one
        node; ``None`` from the function: handled on the node the stanza reached).
        Each stanza is then handed to ``destination`` on the node that owns its key
        (see :attr:`cluster`); outside a cluster it changes nothing. Returns what the
        router hands the domain's stanzas to (the placing wrapper in a cluster): a
        module that passes a stanza on to a placed thing delivers it there."""
        cluster = self.cluster
        if cluster is not None and placed_by is not None:
            destination = cluster.place(destination, placed_by)
        try:
            self._core.router.add(domain, destination)
        except DomainTaken as exc:
            raise ConfigError(f"{self.domain}: modules.{self.name}: {exc}") from None
        self._served.append((domain, destination))
        if domain.endswith("." + self.domain):
            self._host.served[domain] = name
        return destination

    def serve(self, service: ServedDomain, *, placed_by: KeyOf | None = None) -> Destination:
        """:meth:`serve_domain` for a :class:`~xmppd.service.ServiceDomain`."""
        return self.serve_domain(service.domain, service, name=service.name, placed_by=placed_by)

    @property
    def cluster(self) -> Placement | None:
        """This node's share of the cluster (``None``: a single process): the owner of
        a placement key (``owner_of``, ``is_mine``), the live nodes. A module that
        holds placed things (rooms) lets go of those it no longer owns in
        :meth:`on_cluster_change`."""
        node = self._core.cluster
        return None if node is None else node.placement

    def on_cluster_change(self, listener: Callable[[], Awaitable[None]]) -> None:
        """Run ``listener()`` in the background each time nodes join or leave the
        cluster (owners may have changed), for as long as this module is loaded. Does
        nothing outside a cluster."""
        cluster = self.cluster
        if cluster is not None:
            self._cluster_listeners.append(cluster.on_change(listener))

    def send_to_node(self, node: str, topic: str, value: object) -> None:
        """Hand ``value`` (picklable: plain data) to this module's handler of ``topic``
        (:meth:`on_node_message`) on the cluster node ``node``, typically the owner of
        something (``ctx.cluster.owner_of``). It travels in that node's inbox, in order
        with the stanzas this node sends there; nobody waits for it. When ``node`` is
        this node, has left or is known dead, the handler runs here (and a dead node's
        unread messages run on the survivor that cleans up after it). Outside a cluster
        the handler runs here, as a task."""
        cluster = self.cluster
        name = self._topic(topic)
        if cluster is not None:
            cluster.send(node, name, value)
            return
        handler = self._node_handlers.get(name)
        if handler is not None:

            async def run(handler: Callable[[Any], Awaitable[None]] = handler) -> None:
                await handler(value)

            self.spawn(run(), name=f"{self.name}-node-message")

    def on_node_message(self, topic: str, handler: Callable[[Any], Awaitable[None]]) -> None:
        """Run ``await handler(value)`` for each :meth:`send_to_node` of ``topic`` (from
        any node, this one included) on this host, for as long as this module is
        loaded. Messages from the inbox are handled one at a time, in order: keep the
        handler short."""
        name = self._topic(topic)
        self._node_handlers[name] = handler
        cluster = self.cluster
        if cluster is not None:
            cluster.on_message(name, handler)

    def stop_serving(self) -> None:
        """Remove this context's domains from the routing table and its HTTP routes
        (done at unload)."""
        for domain, destination in self._served:
            self._core.router.remove(domain, destination)
            self._host.served.pop(domain, None)
        self._served.clear()
        for remove in self._cluster_listeners:
            remove()
        self._cluster_listeners.clear()
        for method, path in self._routes:
            self._core.http.remove(method, path)
        self._routes.clear()
        for topic, handler in self._invalidation_handlers:
            self._core.invalidations.unsubscribe(topic, handler)
        self._invalidation_handlers.clear()
        cluster = self.cluster
        for name in self._node_handlers:
            if cluster is not None:
                cluster.on_message(name, None)
        self._node_handlers.clear()

    # -- caches in a cluster
    def invalidate(self, topic: str, key: str) -> Awaitable[object]:
        """Tell the other nodes of a cluster that ``key`` of ``topic`` changed, so they
        drop what they cached of it (nothing is sent in a single process). Call it
        after the change is stored. Topics are per host: this module's name, the host
        and ``topic`` make the name the other nodes' handlers are registered under.

        It is sent whether or not the result is awaited; await it before answering the
        client that made the change, so that its next stanza, or another client's that
        reaches another node, finds that node's copy gone (the other nodes follow
        Redis within a few milliseconds; awaiting takes one Redis round trip)."""
        return self._core.invalidations.send(self._topic(topic), key)

    def on_invalidate(self, topic: str, handler: Callable[[str], None]) -> None:
        """Run ``handler(key)`` when another node invalidates ``key`` of ``topic`` on
        this host (``key`` is ``"*"``, :data:`xmppd.invalidation.ALL`, when every entry
        must go). Removed when the module is unloaded."""
        name = self._topic(topic)
        self._core.invalidations.subscribe(name, handler)
        self._invalidation_handlers.append((name, handler))

    @property
    def invalidation_generation(self) -> int:
        """Bumped by every invalidation this node receives: a cache that read stored
        data across an await compares it before and after, and does not keep data
        that may have been invalidated meanwhile."""
        return self._core.invalidations.generation

    def _topic(self, topic: str) -> str:
        return f"{self.name}:{self.domain}:{topic}"

    def http_route(self, method: str, path: str, handler: HttpHandler) -> bool:
        """Serve ``method`` on ``path`` on every HTTP listener (``kind = "http"``), for
        as long as this module is loaded. A path ending with ``/`` is a prefix
        (``/upload/`` serves ``/upload/<slot>/<name>``). ``handler`` is an aiohttp
        handler (``async def h(request: web.Request) -> web.StreamResponse``); the
        client's real address (behind trusted proxies) and whether the request was
        encrypted are ``client_of(request)`` from ``xmppd.api``.

        Routes are server-wide: for a module loaded on several hosts, the first host
        to register a route serves it (``True``); the others get ``False`` and nothing
        changes (the handler finds the host a request concerns, e.g. with
        :meth:`for_host`). ``ConfigError`` when another module or the core serves it."""
        try:
            added = self._core.http.add(method, path, handler, owner=f"mod_{self.name}")
        except RouteTaken as exc:
            raise ConfigError(f"{self.domain}: modules.{self.name}: {exc}") from None
        if added:
            self._routes.append((method.upper(), path))
        return added

    @property
    def http_base_url(self) -> str:
        """Where clients reach the HTTP listeners, for URLs a module hands out:
        ``http.public_url``, else the first open ``kind = "http"`` listener's scheme,
        address (this host's domain when it listens on every address) and port; ``""``
        when no HTTP listener is open."""
        config = self._core.config
        if config.http.public_url:
            return config.http.public_url
        for scheme, address, port in self._core.http_listeners:
            host = address
            if host in ("0.0.0.0", "::", ""):
                host = self.domain
            elif ":" in host:
                host = f"[{host}]"
            return f"{scheme}://{host}:{port}"
        return ""

    def derived_key(self, purpose: str) -> bytes:
        """A 32-byte key for ``purpose``, derived from the persistent server secret and
        this module's name: the same on every start and on every node sharing the data
        directory's secret (signed URLs, tokens). Never log it."""
        return derive(self._core.secret, f"mod_{self.name}", purpose)

    @property
    def data_dir(self) -> Path:
        """This module's directory under the server's data directory (created on first
        use by the module: ``<data_dir>/mod_<name>``)."""
        return self._core.config.server.data_dir / f"mod_{self.name}"

    def resolve_iq(self, stanza: Element, from_: JID) -> bool:
        """Hand an IQ result/error to the :meth:`request` waiting for it (for served
        domains: a request sent from the service's own address)."""
        return self._core.iq_tracker.resolve(stanza, from_)

    async def run(self, hook: EventHook[E], event: E) -> bool:
        """Run an event hook on this host's bus (or the global bus for global hooks)."""
        bus = self._core.bus if hook.scope == "global" else self._host.bus
        return await bus.run(hook, event)

    async def fold_hook(self, hook: FoldHook[V, C], value: V, context: C) -> V | Drop:
        bus = self._core.bus if hook.scope == "global" else self._host.bus
        return await bus.fold(hook, value, context)

    # -- storage and accounts
    @property
    def db(self) -> Database:
        """The server's database (tables declared with ``module.table``)."""
        return self._core.db

    def keyval(self, store: str) -> KeyValueStore:
        """A per-user key/value store named ``store`` on this host."""
        return KeyValueStore(self._core.db, self.domain, store)

    async def account_exists(self, jid: JID) -> bool:
        return await self._core.accounts.exists(jid.bare)

    async def register_user(self, jid: JID, password: str) -> None:
        """Create an account (raises ``AccountExists``) and run ``user_registered``."""
        await register_user(self._core, jid, password)

    async def remove_user(self, jid: JID) -> None:
        """Delete an account and all its data (runs ``user_removed``)."""
        await remove_user(self._core, jid)

    async def set_password(self, jid: JID, password: str) -> None:
        await self._core.accounts.set_password(jid.bare, password)

    def password_problem(self, password: str) -> str | None:
        """Why the server's password policy (``accounts.min_password_length``) refuses
        ``password``, ``None`` when it is acceptable. Check before creating an account
        or changing a password."""
        return password_problem(password, self._core.config.accounts.min_password_length)

    async def list_users(self, limit: int | None = None) -> list[str]:
        """The usernames of this host's accounts, sorted (the first ``limit``)."""
        return await self._core.accounts.list(self.domain, limit)

    async def count_users(self) -> int:
        """How many accounts this host has."""
        return await self._core.accounts.count(self.domain)

    async def export_user(self, jid: JID) -> tuple[Element, int]:
        """Everything stored about an account (GDPR): its XEP-0227 ``<server-data>``
        document (the ``user_export`` hook; credentials as SCRAM keys, never a
        password) and how many stored files (uploads, ``user_export_files``) belong to
        it; the files themselves travel only in ``xmppd export`` and the REST API's
        archive. Raises ``NoSuchAccount``."""
        if not await self._core.accounts.exists(jid.bare):
            raise NoSuchAccount(str(jid.bare))
        document = await export_user(self._core, jid)
        return document, len(await export_files(self._core, jid))

    async def erase_user(self, jid: JID, grace: float = 0.0) -> float | None:
        """Erase an account and all its data (GDPR): at once when ``grace`` is 0
        (returns ``None``), else disable it now and erase it after ``grace`` seconds,
        even across a restart (returns the Unix time it is due). Raises
        ``NoSuchAccount``, or ``ValueError`` for a grace period out of range."""
        pending = await erase_user(self._core, jid, grace)
        return None if pending is None else pending.erase_at

    # -- server facts and access
    def is_local(self, jid: JID) -> bool:
        """True when ``jid`` belongs to one of this server's hosts."""
        return self._core.is_local(jid.domain)

    def is_admin(self, jid: JID) -> bool:
        """True when ``jid`` is an administrator of this host (``[hosts.<d>] admins``)."""
        return jid.bare in self._host.admins

    def may(self, rule: AccessRule, jid: JID) -> bool:
        """Whether ``jid`` passes the access rule ``rule`` on this host."""
        return rule.allows(jid, is_local=self.is_local, is_admin=self.is_admin)

    def uptime(self) -> float:
        """Seconds since the server started."""
        return self._core.uptime()

    @property
    def metrics(self) -> ModuleMetrics:
        """Declare this module's metrics (``xmppd_mod_<name>_*``, labelled by host)."""
        return ModuleMetrics(self._core.metrics, self.name, self.domain)

    @property
    def health(self) -> ModuleHealth:
        """Register this module's health parts on this host (``mod_<name>``)."""
        return ModuleHealth(self._core.health, self.name, self.domain)

    def disco_info_for(self, scope: Scope) -> tuple[list[Identity], list[str]]:
        """Identities and features registered on this host for ``scope``."""
        return list(self._host.identities), list(self._host.features.get(scope, []))


class HookSet(Module[OptionsT]):
    """A deployer's hook file (``hooks/<name>.py``): a module with only hook handlers.

    Export it as ``handlers``; enable it in config under ``[hooks.<name>]`` (the
    table holds its options, if it declares an ``options`` class).
    """

    def __init__(
        self, name: str, *, summary: str = "", options: type[OptionsT] | None = None
    ) -> None:
        super().__init__(name, summary, options or cast("type[OptionsT]", NoOptions))


__all__ = [
    "HookSet",
    "Identity",
    "IqRequest",
    "Module",
    "ModuleContext",
    "NoOptions",
    "Options",
    "Scope",
    "ServiceKey",
    "module_metadata",
]
