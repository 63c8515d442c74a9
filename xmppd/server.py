"""The server: owns the configuration, storage, hosts, buses, router and listeners."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from xmppd import hooks
from xmppd.auth import sasl
from xmppd.auth.accounts import Accounts
from xmppd.auth.fast import FastTokens
from xmppd.auth.scram import SCRAM_HASHES
from xmppd.auth.throttle import FailedLoginThrottle
from xmppd.config import ServerConfig
from xmppd.errors import StanzaError
from xmppd.events import Drop, EventBus
from xmppd.host import Host
from xmppd.iqtracker import IqTimeout, IqTracker
from xmppd.jid import JID
from xmppd.router import Router
from xmppd.server_secret import derive, load_or_create
from xmppd.sessions import SessionManager
from xmppd.stanza import Element, describe_payload, error_reply, new_id
from xmppd.storage.database import Database
from xmppd.stream.component import ComponentRegistry
from xmppd.tls import TlsContexts, load_host_certificate

log = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def return_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``).

    libxml2 parser state freed for idle sessions lies between live allocations, so
    without this the RSS would not shrink even though the memory is free.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


class Server:
    """One xmppd process: a complete server (storage, hosts, modules, listeners)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.started_at = time.monotonic()
        self.bus = EventBus("global", summarize=describe_payload)
        self.sessions = SessionManager()
        self.router = Router(self)
        self.iq_tracker = IqTracker()
        self.db = Database(config.storage_url(), pool_size=config.storage.pool_size)
        self.accounts = Accounts(self.db, iterations=config.auth.scram_iterations)
        self.throttle = FailedLoginThrottle(
            free_failures=config.auth.failures_before_delay,
            max_delay=config.auth.max_failure_delay,
        )
        self.hosts: dict[str, Host] = {d: Host(self, d) for d in config.hosts}
        self.components = ComponentRegistry(config.components)
        """External components (XEP-0114): configured domains and connected streams."""
        self.tls: TlsContexts | None = None
        self.secret = b""
        """The persistent server secret (xmppd.server_secret), loaded by :meth:`start`."""
        self.fast_tokens: FastTokens | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.resumable: dict[str, Any] = {}
        """Stream-management sessions by resumption id (``C2SStream``)."""
        self._listeners: list[asyncio.Server] = []
        self._stopped = asyncio.Event()
        from xmppd.modules import ModuleManager

        self.modules = ModuleManager(self)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, listen: bool = True) -> None:
        """Prepare storage, load modules on every host, then open the listeners."""
        self.config.server.data_dir.mkdir(parents=True, exist_ok=True)
        self._load_secret()
        self.modules.import_all()
        await self.db.start()
        self.spawn(self.db.checkpoints(), name="sqlite-checkpoints")
        await self.modules.load_all()
        for host in self.hosts.values():
            host.bus.add(hooks.DISCO_ITEMS, self._component_items)
        if listen:
            await self._load_tls()
            from xmppd.transports.tcp import start_listeners

            self._listeners = await start_listeners(self)
        for host in self.hosts.values():
            await host.bus.run(hooks.HOST_STARTED, hooks.HostEvent(host.domain))
        if listen and self.config.c2s.idle_release > 0:
            self.spawn(self._release_idle_memory(), name="idle-release")

    async def _release_idle_memory(self) -> None:
        """Every so often, let idle client streams free their parsers."""
        idle_for = self.config.c2s.idle_release
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(idle_for / 2)
            now = loop.time()
            released = 0
            for session in self.sessions:
                release = getattr(session, "release_idle_memory", None)
                if release is not None and release(now, idle_for):
                    released += 1
            if released:
                log.debug("released the parsers of %d idle sessions", released)
                if released >= 64:
                    return_free_memory()

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

    async def _component_items(
        self, items: tuple[hooks.DiscoItem, ...], query: hooks.DiscoQuery
    ) -> tuple[hooks.DiscoItem, ...]:
        """A host's disco#items lists the components under its domain (XEP-0114
        services such as a push app server), as Prosody does for subdomains."""
        to = query.to
        if to.local or to.resource or query.node is not None:
            return items
        found = self.components.subdomains_of(to.domain)
        return (*items, *(hooks.DiscoItem(JID.parse(d)) for d in found)) if found else items

    def _load_secret(self) -> None:
        auth = self.config.auth
        self.secret = load_or_create(self.config.server.data_dir)
        # Unknown users get the same fake SCRAM salt after a restart, as real ones do.
        sasl.configure_unknown_user_disguise(
            derive(self.secret, "scram-unknown-user"), iterations=auth.scram_iterations
        )
        if auth.sasl2 and auth.fast:
            self.fast_tokens = FastTokens(self.db, self.secret, lifetime=auth.fast_token_lifetime)

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
                )
            return TlsContexts(certs)

        self.tls = await asyncio.to_thread(load)

    @property
    def listening_ports(self) -> list[tuple[str, int]]:
        """(tls mode, or ``component``; port) of each open listener, in config order."""
        ports: list[tuple[str, int]] = []
        for listener, section in zip(self._listeners, self.config.listeners, strict=False):
            mode = "component" if section.kind == "component" else section.tls
            for sock in listener.sockets:
                ports.append((mode, int(sock.getsockname()[1])))
                break
        return ports

    async def stop(self, reason: str = "shutdown") -> None:
        await self.bus.run(hooks.SERVER_STOPPING, hooks.ServerEvent(reason))
        for listener in self._listeners:
            listener.close()
        for session in list(self.sessions):
            session.close("system-shutdown")
        self.components.close_all("system-shutdown")
        await self.modules.unload_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
        _ = self.start_task(coro, name=name)

    def start_task(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]:
        """:meth:`spawn`, returning the task for callers that wait for it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    # ------------------------------------------------------------------ stanzas

    def error_reply(self, stanza: Element, err: StanzaError) -> Element | None:
        return error_reply(stanza, err)

    async def bounce(self, stanza: Element, err: StanzaError) -> None:
        """Answer ``stanza`` with an error from its recipient (never for errors/results)."""
        reply = error_reply(stanza, err)
        if reply is not None and reply.get("to"):
            await self.router.route(reply, None)

    async def send(self, stanza: Element) -> None:
        """Route a server-originated stanza."""
        await self.router.route(stanza, None)

    async def request(self, iq: Element, *, timeout: float = 30.0) -> Element:
        """Send an IQ get/set and await the result or error (``IqTimeout`` if none)."""
        iq_id = iq.get("id") or new_id()
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

    # ------------------------------------------------------------------ accounts

    async def register_user(self, jid: JID, password: str) -> None:
        """Create an account and announce it (``user_registered``)."""
        await self.accounts.create(jid.bare, password)
        host = self.hosts.get(jid.domain)
        if host is not None:
            await host.bus.run(hooks.USER_REGISTERED, hooks.UserEvent(jid.bare))

    async def export_user(self, jid: JID) -> Element:
        """The account's data as a XEP-0227 ``<server-data>`` document (credentials as
        SCRAM keys: there is no password to export), gathered through ``user_export``."""
        from xmppd.export import export_document

        bare = jid.bare
        host = self.hosts[bare.domain]
        creds = [
            c
            for h in SCRAM_HASHES
            if (c := await self.accounts.get_scram(bare.domain, bare.local, h)) is not None
        ]
        parts = await host.bus.fold(hooks.USER_EXPORT, (), hooks.UserEvent(bare))
        return export_document(bare, creds, () if isinstance(parts, Drop) else parts)

    async def remove_user(self, jid: JID) -> bool:
        """Delete an account and all its data; its sessions are closed.

        Order matters: the credentials go first (no new login can start), then the
        sessions end and their teardown (presence, last seen) finishes, then modules
        delete the user's data, so nothing is written back afterwards; the account row
        goes last, so the name cannot be registered again while its data is deleted.
        """
        bare = jid.bare
        host = self.hosts.get(bare.domain)
        existed = await self.accounts.exists(bare)
        await self.accounts.revoke_credentials(bare)
        for _ in range(2):  # a second pass catches a login that was mid-flight
            closing = []
            for session in self.sessions.of(bare):
                session.close("not-authorized", "account removed")
                closing.append(session.wait_closed())
            await asyncio.gather(*closing)
            if host is not None and _ == 0:
                await host.bus.run(hooks.USER_REMOVED, hooks.UserEvent(bare))
        await self.accounts.delete(bare)
        return existed


__all__ = ["IqTimeout", "Server"]
