"""What streams use of the rest of the server, as small explicit objects.

A stream never sees the ``Server``: the server assembles one ``C2SServices``
(xmppd.stream.c2s) and one ``ComponentServices`` (xmppd.stream.component) at start
and hands them to every stream it opens. A test (or another process layout) builds
them by hand from the parts it wants, as ``tests/protocol/test_c2s_machine.py`` does.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

    from xmppd.events import EventBus
    from xmppd.jid import JID
    from xmppd.module import Scope
    from xmppd.sessions import Session
    from xmppd.stanza import Element


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
