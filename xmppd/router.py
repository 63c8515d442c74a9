"""The router: every stanza passes ``filter_packet`` once, then goes to its host."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

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


class Router:
    """filter_packet → local host (→ components, s2s and other cluster nodes later)."""

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
        # Not ours: server-to-server federation is not available yet.
        await server.bounce(stanza, StanzaError("remote-server-not-found"))
