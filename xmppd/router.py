"""The router: every stanza passes ``filter_packet`` once, then goes to its host or
to the external component (XEP-0114) that serves its domain."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from xmppd import hooks
from xmppd.errors import StanzaError
from xmppd.events import Drop
from xmppd.hooks import RouteInfo
from xmppd.jid import JID, InvalidJID
from xmppd.stanza import Element, summary

if TYPE_CHECKING:
    from xmppd.server import Server
    from xmppd.sessions import Session

log = logging.getLogger(__name__)

COMPONENT_UNAVAILABLE: Final = StanzaError(
    "service-unavailable", "the component serving this domain is not connected", type="wait"
)
"""The bounce for a configured component that is not connected (RFC 6120 §8.3.3.19).

Type ``wait``, not the usual ``cancel``: the component is expected back, and a sender
that sees ``cancel`` may give up for good (mod_push disables a registration whose
app server answers ``cancel``)."""


class Router:
    """filter_packet → local host → connected component (→ s2s and other cluster
    nodes later) → bounce."""

    def __init__(self, server: Server) -> None:
        self._server = server

    async def route(self, stanza: Element, origin: Session | None) -> None:
        server = self._server
        bus = server.bus
        if bus.has_handlers(hooks.FILTER_PACKET):
            result = await bus.fold(hooks.FILTER_PACKET, stanza, RouteInfo(origin))
            if isinstance(result, Drop):
                log.debug("dropped by filter_packet: %s", summary(stanza))
                return
            stanza = result
        try:
            to = JID.parse(stanza.get("to") or "")
            from_ = JID.parse(stanza.get("from") or "")
        except InvalidJID:
            log.debug("unroutable (bad address): %s", summary(stanza))
            return
        host = server.hosts.get(to.domain)
        if host is not None:
            await host.deliver(stanza, to, from_, origin)
            return
        components = server.components
        if to.domain in components:
            component = components.connected(to.domain)
            if component is not None:
                await component.deliver(stanza)
            elif stanza.tag != "presence":  # presence to an absent entity is dropped
                await server.bounce(stanza, COMPONENT_UNAVAILABLE)
            return
        # Not ours: server-to-server federation is not available yet.
        await server.bounce(stanza, StanzaError("remote-server-not-found"))
