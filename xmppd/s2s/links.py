"""Outgoing federation: the router's default route.

:class:`S2SLinks` is the :class:`~xmppd.router.Destination` for every domain not
served here. It keeps one :class:`OutgoingLink` per remote domain, shared by all the
traffic to it (from every local domain: the stream authenticates each with dialback
as it is first used). A link connects on demand: DNS (:mod:`xmppd.s2s.resolve`),
then each address in turn until a stream authenticates (:class:`S2SOutStream`).
Stanzas wait in a bounded queue meanwhile. When every address failed, queued
messages and IQs bounce with ``remote-server-not-found`` (``remote-server-timeout``
when the last attempt timed out), whose text says why, and presence is dropped; the
log says the same at ``warning``. A link without traffic for ``s2s.idle_timeout``
closes its stream; the next stanza opens a new one.

After a failure the domain is *backing off*: for ``s2s.retry_initial`` (doubling with
each further failure, up to ``s2s.retry_max``) stanzas to it bounce at once with the
last reason instead of redialling for every stanza; the first stanza after that tries
again. A link that authenticates clears the back-off. Back-off entries hold only the
reason in words and the times; one is forgotten once ``s2s.retry_max`` has passed
after its wait ended, and at most :data:`MAX_BACKOFF` are kept (oldest dropped first):
a local user writing to thousands of made-up domains leaves nothing behind.

The metrics' ``domain`` label is bounded too (:meth:`S2SStats.label`): only configured
domains and domains that authenticated get a label of their own; any other (a name
claimed by an unauthenticated remote, a domain that could not be reached) is counted
as :data:`OTHER_DOMAIN`.

An incoming stream that asked for XEP-0288 (bidirectional s2s) and authenticated a
remote domain is registered too: while we have no link of our own to that domain,
stanzas from the local domains it authenticated go back over it.

It also answers the incoming streams' need to check a dialback key
(:meth:`S2SLinks.verify_dialback`): a short-lived stream to the remote's
authoritative server carries one ``<db:verify/>``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Sized
from typing import TYPE_CHECKING, Final

from xmppd.errors import StanzaError
from xmppd.s2s.certs import CertCheck, TrustStore
from xmppd.s2s.resolve import make_resolver, resolve
from xmppd.stream.s2s import LinkFailure, S2SInStream, S2SOutStream, S2SServices
from xmppd.tls import peer_chain
from xmppd.transports.tcp import connect_outgoing

if TYPE_CHECKING:
    from xmppd.config import S2SSection
    from xmppd.jid import JID
    from xmppd.metrics import Metrics
    from xmppd.router import Router
    from xmppd.s2s.resolve import Target
    from xmppd.sessions import Session
    from xmppd.stanza import Element
    from xmppd.stream.transport import Transport

log = logging.getLogger(__name__)

_FAILURE_CONDITION: Final = {"timeout": "remote-server-timeout"}

OTHER_DOMAIN: Final = "other"
"""The ``domain`` label of every remote domain without a label of its own."""
MAX_DOMAIN_LABELS: Final = 1000
"""Authenticated remote domains that get a ``domain`` label of their own (configured
domains always do); later ones count as :data:`OTHER_DOMAIN`."""
MAX_BACKOFF: Final = 10_000
"""Remote domains whose back-off is remembered at once (the oldest is dropped first)."""
DOMAIN_LABEL_HELP: Final = (
    "; domain: a configured domain ([s2s] pins, policies, allow, deny) or one that "
    f"authenticated (the first {MAX_DOMAIN_LABELS}), any other is counted as "
    f"{OTHER_DOMAIN}"
)


def configured_domains(config: S2SSection) -> set[str]:
    """Remote domains the configuration names (their metrics keep their own label)."""
    return {*config.pins, *config.policies, *config.allow, *config.deny}


class S2SStats:
    """Plain counters per remote domain, read by the metrics registry at scrape time.
    Their domain is a :meth:`label`: never a free-form name from the network."""

    __slots__ = (
        "_known",
        "_labelled",
        "authenticated",
        "failures",
        "refused",
        "stanzas_out",
        "throttled",
    )

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known = frozenset(known)
        self._labelled: set[str] = set()
        """Domains that authenticated (at most :data:`MAX_DOMAIN_LABELS`)."""
        self.authenticated: Counter[tuple[str, str]] = Counter()
        """(direction, remote domain) → streams authenticated."""
        self.failures: Counter[tuple[str, str]] = Counter()
        """(remote domain, reason) → outgoing attempts that failed."""
        self.stanzas_out: Counter[str] = Counter()
        """remote domain → stanzas handed to its link."""
        self.refused: Counter[tuple[str, str]] = Counter()
        """(remote domain, reason) → incoming authentications refused."""
        self.throttled: Counter[tuple[str, str]] = Counter()
        """(direction, remote domain) → times a connection was slowed down (its rate)."""

    def label(self, domain: str) -> str:
        """``domain`` as a metric label: itself when configured or authenticated
        (:meth:`authenticated_as`), else :data:`OTHER_DOMAIN`. Labels made from names
        an unauthenticated peer or a made-up address chose would be unbounded."""
        if domain in self._known or domain in self._labelled:
            return domain
        return OTHER_DOMAIN

    def authenticated_as(self, direction: str, domain: str) -> None:
        """A stream authenticated ``domain``: it earns a label of its own (while fewer
        than :data:`MAX_DOMAIN_LABELS` have) and the stream is counted."""
        if domain not in self._known and len(self._labelled) < MAX_DOMAIN_LABELS:
            self._labelled.add(domain)
        self.authenticated[(direction, self.label(domain))] += 1


class S2SLinks:
    """The default route: one outgoing link per remote domain."""

    __slots__ = (
        "_backoff",
        "_bidi",
        "_client_tls",
        "_links",
        "_resolver",
        "_router",
        "config",
        "services",
        "stats",
        "stopping",
        "trust",
    )

    def __init__(
        self,
        config: S2SSection,
        router: Router,
        *,
        client_tls: Callable[[str], ssl.SSLContext],
        trust: TrustStore,
        stats: S2SStats,
    ) -> None:
        self.config = config
        self._router = router
        self._client_tls = client_tls
        self.trust = trust
        self.stats = stats
        self._resolver = make_resolver(config.resolver, config.dns_timeout)
        self._links: dict[str, OutgoingLink] = {}
        self._backoff: OrderedDict[str, _Backoff] = OrderedDict()
        """Domains backing off, oldest failure first (at most :data:`MAX_BACKOFF`)."""
        self._bidi: dict[str, S2SInStream] = {}
        self.services: S2SServices | None = None
        """Set by the server once assembled (the streams' services)."""
        self.stopping = ""
        """Why stanzas no longer wait for a link (:meth:`bounce_waiting`: the server is
        stopping); a stanza that would have to wait bounces at once, with this text."""

    # ------------------------------------------------------------------ Destination

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        remote = to.domain
        policy = self.config.policy_for(remote)
        if policy == "deny":
            log.info("s2s: %s is denied by policy; bouncing %s", remote, stanza.tag)
            await _bounce(self._router, stanza, "remote-server-not-found", "policy: denied")
            return
        link = self._links.get(remote)
        if link is None or link.stream is None:
            back = self._bidi.get(remote)
            if back is not None and back.closed:
                del self._bidi[remote]
            elif back is not None and back.can_send(remote, from_.domain):
                # XEP-0288: the remote's own stream carries our stanzas back.
                self.stats.stanzas_out[self.stats.label(remote)] += 1
                back.send(stanza)
                return
        if link is None:
            self._sweep_backoff()
            backoff = self._backoff.get(remote)
            if backoff is not None and backoff.waiting():
                log.debug("s2s %s: backing off; bouncing %s", remote, stanza.tag)
                await _bounce(
                    self._router,
                    stanza,
                    _FAILURE_CONDITION.get(backoff.reason, "remote-server-not-found"),
                    f"{backoff.reason}: {backoff.detail} (next attempt in "
                    f"{backoff.remaining():.0f}s)",
                )
                return
            link = self._links[remote] = OutgoingLink(self, remote)
        self.stats.stanzas_out[self.stats.label(remote)] += 1
        await link.send(stanza, from_.domain)

    def bidi_ready(self, stream: S2SInStream, remote: str) -> None:
        """An incoming bidirectional stream (XEP-0288) authenticated ``remote``."""
        self._bidi[remote] = stream
        self._backoff.pop(remote, None)

    def _count_throttle(self, remote: str) -> None:
        log.info("s2s-out %s: the remote sends faster than incoming_rate; slowed down", remote)
        self.stats.throttled[("out", self.stats.label(remote))] += 1

    def queue_lengths(self) -> list[tuple[str, int]]:
        """Stanzas waiting per remote domain label (see :meth:`S2SStats.label`)."""
        lengths: Counter[str] = Counter()
        for domain, link in self._links.items():
            lengths[self.stats.label(domain)] += len(link.queue)
        return list(lengths.items())

    def connected(self) -> list[str]:
        return [d for d, link in self._links.items() if link.stream is not None]

    def failed(self, domain: str, failure: LinkFailure) -> float:
        """Start (or lengthen) ``domain``'s back-off; returns the wait in seconds."""
        self._sweep_backoff()
        previous = self._backoff.pop(domain, None)
        config = self.config
        delay = (
            config.retry_initial if previous is None else min(previous.delay * 2, config.retry_max)
        )
        # The reason in words, not the exception: its traceback holds the failed
        # attempt's frames (its stream, parser and transport), ~23 KB a domain.
        self._backoff[domain] = _Backoff(failure.reason, failure.detail, delay)
        while len(self._backoff) > MAX_BACKOFF:
            self._backoff.popitem(last=False)
        return delay

    def _sweep_backoff(self) -> None:
        """Forget the oldest entries whose wait ended ``retry_max`` ago or more (a
        later failure of theirs starts at ``retry_initial`` again). Entries are in
        the order of their last failure, so the sweep stops at the first one still
        needed (an older one behind it goes at a later sweep, or by MAX_BACKOFF)."""
        backoff = self._backoff
        if not backoff:
            return
        now = asyncio.get_running_loop().time()
        grace = self.config.retry_max
        while backoff:
            domain, entry = next(iter(backoff.items()))
            if entry.until + grace > now:
                return
            del backoff[domain]

    def backing_off(self) -> int:
        """Remote domains whose back-off is remembered."""
        return len(self._backoff)

    def succeeded(self, domain: str) -> None:
        self._backoff.pop(domain, None)

    def forget(self, link: OutgoingLink) -> None:
        if self._links.get(link.domain) is link and link.is_idle():
            del self._links[link.domain]

    def release(self, keep: Callable[[str], bool]) -> int:
        """Close the open links to the remote domains ``keep`` refuses (in a cluster:
        another node sends to them now), as an idle link closes; a link still
        connecting comes up and idles out. The number closed."""
        closed = 0
        for domain, link in list(self._links.items()):
            if link.stream is not None and not keep(domain):
                log.info("s2s %s: another cluster node sends there now; closing the link", domain)
                link.stream.close()
                closed += 1
        return closed

    async def bounce_waiting(self, text: str) -> int:
        """Answer every stanza still waiting for a remote server (a link being set up,
        a new local domain being authenticated by dialback) with
        ``remote-server-timeout``: the server is stopping, and its senders are still
        connected to hear it (RFC 6120 §8.3.3.18). Returns how many were waiting."""
        self.stopping = text
        waiting: list[Element] = []
        for link in self._links.values():
            waiting.extend(stanza for stanza, _local in link.queue)
            link.queue.clear()
            stream = link.stream
            if stream is not None:
                for stanzas in stream.pending.values():
                    waiting.extend(stanzas)
                stream.pending.clear()
        for stanza in waiting:
            await _bounce(self._router, stanza, "remote-server-timeout", text)
        return len(waiting)

    def close_all(self) -> None:
        for link in list(self._links.values()):
            link.close()
        self._links.clear()

    # ------------------------------------------------------------------ connecting

    async def open_stream(
        self,
        remote: str,
        local: str,
        events: OutgoingLink | _VerifyEvents,
        *,
        verify: tuple[str, str] | None = None,
    ) -> S2SOutStream:
        """Resolve ``remote`` and try its addresses in turn until one gives an
        authenticated stream (``verify``: one that carries the db:verify). Raises
        :class:`LinkFailure` with the last reason."""
        services = self.services
        assert services is not None, "s2s is not started"
        resolution = await resolve(remote, self._resolver, self.config.pins)
        for step in resolution.steps:
            log.debug("s2s %s: %s", remote, step)
        if resolution.error is not None:
            raise LinkFailure("dns", resolution.error)
        failure = LinkFailure("connect", "no address to try")
        for target in resolution.targets:
            try:
                return await self._attempt(target, remote, local, events, verify)
            except LinkFailure as exc:
                log.info(
                    "s2s %s: %s:%d (%s) failed: %s",
                    remote,
                    target.host,
                    target.port,
                    "direct TLS" if target.direct_tls else "STARTTLS",
                    exc,
                )
                failure = exc
        raise failure

    async def _attempt(
        self,
        target: Target,
        remote: str,
        local: str,
        events: OutgoingLink | _VerifyEvents,
        verify: tuple[str, str] | None,
    ) -> S2SOutStream:
        services = self.services
        assert services is not None
        trust = self.trust
        opened: list[S2SOutStream] = []
        outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A verify stream's outcome is read from the stream itself, never from here.
        outcome.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        watcher = _AttemptWatcher(events, outcome)

        def open_stream(transport: Transport) -> S2SOutStream:
            def check() -> CertCheck:
                return trust.check(peer_chain(transport.ssl_object()), remote)

            stream = S2SOutStream(
                services,
                transport,
                local=local,
                remote=remote,
                events=watcher,
                verify=verify,
                secure=transport.is_secure,
                check_certificate=check,
            )
            opened.append(stream)
            return stream

        try:
            await connect_outgoing(
                target.host,
                target.port,
                open_stream=open_stream,
                client_tls=self._client_tls(local),
                server_hostname=remote,
                direct_tls=target.direct_tls,
                timeout=self.config.connect_timeout,
                rate=self.config.incoming_rate,
                on_throttle=lambda: self._count_throttle(remote),
            )
        except ssl.SSLError as exc:
            raise LinkFailure("tls", f"TLS handshake failed: {exc}") from None
        except TimeoutError:
            raise LinkFailure("timeout", "connection timed out") from None
        except OSError as exc:
            raise LinkFailure("connect", exc.strerror or str(exc)) from None
        stream = opened[0]
        if verify is not None:
            return stream
        await outcome  # LinkFailure when the stream failed
        return stream


class _Backoff:
    """A domain that could not be reached: why (a failure reason and its words), and
    until when we do not try again."""

    __slots__ = ("delay", "detail", "reason", "until")

    def __init__(self, reason: str, detail: str, delay: float) -> None:
        self.reason = reason
        self.detail = detail
        self.delay = delay
        self.until = asyncio.get_running_loop().time() + delay

    def remaining(self) -> float:
        return max(0.0, self.until - asyncio.get_running_loop().time())

    def waiting(self) -> bool:
        return self.remaining() > 0


class _AttemptWatcher:
    """Relays a stream's events to the link, and its first outcome to the attempt."""

    __slots__ = ("_events", "_outcome")

    def __init__(self, events: OutgoingLink | _VerifyEvents, outcome: asyncio.Future[None]) -> None:
        self._events = events
        self._outcome = outcome

    def ready(self, stream: S2SOutStream) -> None:
        if not self._outcome.done():
            self._outcome.set_result(None)
        self._events.ready(stream)

    def failed(self, stream: S2SOutStream, failure: LinkFailure) -> None:
        if not self._outcome.done():
            self._outcome.set_exception(failure)

    def closed(self, stream: S2SOutStream) -> None:
        self._events.closed(stream)


class _VerifyEvents:
    """A verify stream is never a link."""

    __slots__ = ()

    def ready(self, stream: S2SOutStream) -> None:
        stream.close()

    def closed(self, stream: S2SOutStream) -> None:
        pass


async def verify_dialback(
    links: S2SLinks, local: str, remote: str, stream_id: str, key: str
) -> bool:
    """Ask ``remote``'s authoritative server whether ``key`` is the one it sent us
    (XEP-0220 §2.1.2) over a connection of its own."""
    stream = await links.open_stream(remote, local, _VerifyEvents(), verify=(stream_id, key))
    result = stream.verify_result
    assert result is not None
    try:
        return await result
    finally:
        stream.close()


class OutgoingLink:
    """Everything we send to one remote domain: its stream (once up) and the queue."""

    __slots__ = ("_idle", "_links", "_task", "domain", "last_used", "queue", "stream")

    def __init__(self, links: S2SLinks, domain: str) -> None:
        self._links = links
        self.domain = domain
        self.queue: deque[tuple[Element, str]] = deque()
        self.stream: S2SOutStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.last_used = 0.0

    def is_idle(self) -> bool:
        return self.stream is None and self._task is None and not self.queue

    async def send(self, stanza: Element, local: str) -> None:
        self.last_used = asyncio.get_running_loop().time()
        stream = self.stream
        if stream is not None and not stream.closed:
            stream.send(stanza, local)
            return
        config = self._links.config
        if self._links.stopping:
            await _bounce(
                self._links._router, stanza, "remote-server-timeout", self._links.stopping
            )
            return
        if len(self.queue) >= config.max_queue:
            log.warning("s2s %s: queue full (%d); bouncing", self.domain, config.max_queue)
            await _bounce(
                self._links._router,
                stanza,
                "remote-server-timeout",
                "too many stanzas waiting for the server",
            )
            return
        self.queue.append((stanza, local))
        if self._task is None:
            services = self._links.services
            assert services is not None
            self._task = services.start_task(self._connect(local), name=f"s2s-out {self.domain}")

    async def _connect(self, local: str) -> None:
        links = self._links
        try:
            try:
                await links.open_stream(self.domain, local, self)
            except LinkFailure as failure:
                await self._failed(failure)
        finally:
            self._task = None
            links.forget(self)

    async def _failed(self, failure: LinkFailure) -> None:
        links = self._links
        links.stats.failures[(links.stats.label(self.domain), failure.reason)] += 1
        delay = links.failed(self.domain, failure)
        log.warning(
            "s2s %s: cannot federate (%s): %s; %d queued stanza(s) bounce; next attempt "
            "in %.0fs at the earliest",
            self.domain,
            failure.reason,
            failure.detail,
            len(self.queue),
            delay,
        )
        condition = _FAILURE_CONDITION.get(failure.reason, "remote-server-not-found")
        # Stanzas that arrive while these bounce join the queue: they bounce too.
        while self.queue:
            stanza, _local = self.queue.popleft()
            await _bounce(links._router, stanza, condition, f"{failure.reason}: {failure.detail}")

    # LinkEvents of the stream that became this link's
    def ready(self, stream: S2SOutStream) -> None:
        self.stream = stream
        self._links.succeeded(self.domain)
        queued = list(self.queue)
        self.queue.clear()
        for stanza, local in queued:
            stream.send(stanza, local)
        self._arm_idle()

    def failed(self, stream: S2SOutStream, failure: LinkFailure) -> None:
        """Reported to the attempt (``_AttemptWatcher``), which tries the next address."""

    def closed(self, stream: S2SOutStream) -> None:
        if self.stream is stream:
            self.stream = None
            log.info("s2s %s: link closed", self.domain)
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._links.forget(self)

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        idle = self._links.config.idle_timeout
        wait = max(0.0, self.last_used + idle - loop.time())
        self._idle = loop.call_later(wait, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        stream = self.stream
        if stream is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self.last_used >= self._links.config.idle_timeout:
            log.info("s2s %s: idle, closing the link", self.domain)
            stream.close()
        else:
            self._arm_idle()

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.stream is not None:
            self.stream.close("system-shutdown")
        if self._task is not None:
            self._task.cancel()


async def _bounce(router: Router, stanza: Element, condition: str, text: str) -> None:
    """Messages and IQs bounce; presence is dropped (never an error to an error)."""
    if stanza.tag == "presence":
        return
    await router.bounce(stanza, StanzaError(condition, text))


def register_metrics(metrics: Metrics, links: S2SLinks, incoming: Sized) -> None:
    """The federation's metrics (all read at scrape time from plain counters)."""
    stats = links.stats
    metrics.samples_function(
        "counter",
        "s2s_streams_authenticated",
        "Server-to-server streams authenticated, by direction and remote domain"
        + DOMAIN_LABEL_HELP,
        ("direction", "domain"),
        lambda: [((d, r), n) for (d, r), n in stats.authenticated.items()],
    )
    metrics.samples_function(
        "counter",
        "s2s_failures",
        "Outgoing links that could not be established, by remote domain and reason "
        "(dns, connect, tls, certificate, auth, policy, timeout, stream, closed)"
        + DOMAIN_LABEL_HELP,
        ("domain", "reason"),
        lambda: [((d, r), n) for (d, r), n in stats.failures.items()],
    )
    metrics.samples_function(
        "counter",
        "s2s_refused",
        "Incoming authentications refused, by remote domain and reason (certificate, "
        "policy, limit, dialback), the domain being the one the remote claimed" + DOMAIN_LABEL_HELP,
        ("domain", "reason"),
        lambda: [((d, r), n) for (d, r), n in stats.refused.items()],
    )
    metrics.samples_function(
        "counter",
        "s2s_throttled",
        "Times an s2s connection was slowed down to [s2s] incoming_rate, by direction "
        "(in; out: what a remote sends back on our connection) and remote domain"
        + DOMAIN_LABEL_HELP,
        ("direction", "domain"),
        lambda: [((d, r), n) for (d, r), n in stats.throttled.items()],
    )
    metrics.samples_function(
        "counter",
        "s2s_stanzas_out",
        "Stanzas handed to an outgoing link, by remote domain" + DOMAIN_LABEL_HELP,
        ("domain",),
        lambda: [((d,), n) for d, n in stats.stanzas_out.items()],
    )
    metrics.samples_function(
        "gauge",
        "s2s_queued",
        "Stanzas waiting for an outgoing link to come up, by remote domain" + DOMAIN_LABEL_HELP,
        ("domain",),
        lambda: [((d,), n) for d, n in links.queue_lengths()],
    )
    metrics.gauge_function(
        "s2s_backing_off",
        "Remote domains that could not be reached whose back-off is remembered "
        f"(at most {MAX_BACKOFF})",
        links.backing_off,
    )
    metrics.gauge_function(
        "s2s_outgoing_links", "Authenticated outgoing links", lambda: len(links.connected())
    )
    metrics.gauge_function(
        "s2s_incoming_streams", "Open incoming s2s streams", lambda: len(incoming)
    )
