"""What streams use of the rest of the server, as small explicit objects.

A stream never sees the ``Server``: the server assembles one :class:`C2SServices`
and one :class:`ComponentServices` at start and hands them to every stream it
opens. A test (or another process layout) builds them by hand from the parts it
wants, as ``tests/protocol/test_c2s_machine.py`` does.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

    from xmppd.auth.accounts import Accounts
    from xmppd.auth.fast import FastTokens
    from xmppd.auth.throttle import FailedLoginThrottle
    from xmppd.config import AuthSection, C2SSection
    from xmppd.events import EventBus
    from xmppd.jid import JID
    from xmppd.module import Scope
    from xmppd.sessions import Session, SessionRegistry
    from xmppd.stanza import Element
    from xmppd.stream.c2s import C2SStream
    from xmppd.stream.component import ComponentRegistry
    from xmppd.tls import TlsContexts


class StanzaRouter(Protocol):
    """Routes a stanza to its ``to`` (``filter_packet`` first)."""

    async def route(self, stanza: Element, origin: Session | None) -> None: ...


class StreamHost(Protocol):
    """What a c2s stream uses of the virtual host its client connected to."""

    @property
    def domain(self) -> str: ...

    @property
    def jid(self) -> JID: ...

    @property
    def bus(self) -> EventBus: ...

    async def dispatch_iq(
        self,
        stanza: Element,
        scope: Scope,
        to: JID,
        from_: JID | None,
        origin: Session | None,
    ) -> Element | None:
        """Answer an IQ addressed to the host (pre-authentication IQs, such as
        in-band registration)."""

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        """Deliver a stanza addressed to this host, without ``filter_packet``."""


class TaskStarter(Protocol):
    """Starts a background task owned by the server (cancelled at stop)."""

    def __call__(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]: ...


@dataclass(frozen=True, slots=True)
class C2SServices:
    """Everything a client stream (:class:`xmppd.stream.c2s.C2SStream`) uses."""

    c2s: C2SSection
    auth: AuthSection
    hosts: Mapping[str, StreamHost]
    """Served domains (lowercase) → their host."""
    router: StanzaRouter
    sessions: SessionRegistry
    """Bound sessions: a stream adds itself on bind and removes itself at close."""
    accounts: Accounts
    throttle: FailedLoginThrottle
    start_task: TaskStarter
    resumable: MutableMapping[str, C2SStream]
    """Stream-management sessions by resumption id (XEP-0198), shared by all streams."""
    secret: bytes = b""
    """The persistent server secret (stable Bind 2 resources)."""
    fast_tokens: FastTokens | None = None
    """XEP-0484 FAST tokens, when SASL2 and FAST are enabled."""
    tls: TlsContexts | None = None
    """The certificates (channel binding); ``None`` without TLS listeners."""


@dataclass(frozen=True, slots=True)
class ComponentServices:
    """Everything an external component stream (XEP-0114) uses."""

    limits: C2SSection
    """Stanza size, connect timeout and write buffer (shared with c2s)."""
    router: StanzaRouter
    throttle: FailedLoginThrottle
    components: ComponentRegistry
