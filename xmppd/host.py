"""A virtual host: its hook bus, IQ handler table, services, disco items, and the
default RFC 6121 delivery of stanzas addressed to it or its accounts.

A host is one destination in the router's table. It is given the few server-wide
services it uses (the router, the session registry, the IQ tracker); it never sees
the ``Server``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from xmppd import hooks
from xmppd.errors import StanzaError
from xmppd.events import EventBus, EventHook
from xmppd.hooks import StanzaEvent
from xmppd.iq import BoundIqHandler, Identity, IqRequest, Scope, answer_iq, iq_payload
from xmppd.jid import JID
from xmppd.stanza import Element, describe_payload

if TYPE_CHECKING:
    from xmppd.iqtracker import IqTracker
    from xmppd.router import Router
    from xmppd.sessions import Session, SessionRegistry

log = logging.getLogger(__name__)

_DELIVERY: Final[dict[tuple[str, str], EventHook[StanzaEvent]]] = {
    ("message", "bare"): hooks.MESSAGE_TO_BARE,
    ("message", "full"): hooks.MESSAGE_TO_FULL,
    ("message", "host"): hooks.MESSAGE_TO_HOST,
    ("presence", "bare"): hooks.PRESENCE_TO_BARE,
    ("presence", "full"): hooks.PRESENCE_TO_FULL,
    ("presence", "host"): hooks.PRESENCE_TO_HOST,
    ("iq", "bare"): hooks.IQ_TO_BARE,
    ("iq", "full"): hooks.IQ_TO_FULL,
    ("iq", "host"): hooks.IQ_TO_HOST,
}


class Host:
    """One virtual host (``example.org``)."""

    def __init__(
        self,
        domain: str,
        *,
        router: Router,
        sessions: SessionRegistry,
        iq_tracker: IqTracker,
        admins: frozenset[JID] = frozenset(),
    ) -> None:
        self.domain = domain
        self.jid = JID.parse(domain)
        self.router = router
        self.sessions = sessions
        self.iq_tracker = iq_tracker
        self.admins = admins
        """Bare JIDs of the host's administrators (``[hosts.<domain>] admins``)."""
        self.served: dict[str, str] = {}
        """Domains modules serve under this host (``ctx.serve``): domain → name, for
        the host's disco#items."""
        self.bus = EventBus(f"host:{domain}", summarize=describe_payload)
        self.iq_handlers: dict[tuple[Scope, str, str], BoundIqHandler] = {}
        self.services: dict[str, Any] = {}
        self.features: dict[Scope, list[str]] = {Scope.HOST: [], Scope.BARE: []}
        self.identities: list[Identity] = []
        self.loaded_modules: list[str] = []

    # ------------------------------------------------------------------ registration

    def add_iq_handler(
        self, scope: Scope, type: str, namespace: str, tag: str, handler: BoundIqHandler
    ) -> None:
        key = (scope, type, f"{{{namespace}}}{tag}")
        if key in self.iq_handlers:
            raise ValueError(f"{self.domain}: two handlers for IQ {type} {key[2]} ({scope.name})")
        self.iq_handlers[key] = handler
        feats = self.features.setdefault(scope, [])
        if namespace not in feats:
            feats.append(namespace)

    def remove_iq_handler(self, scope: Scope, type: str, namespace: str, tag: str) -> None:
        self.iq_handlers.pop((scope, type, f"{{{namespace}}}{tag}"), None)

    # ------------------------------------------------------------------ delivery

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        """Deliver a stanza whose ``to`` is on this host (after ``filter_packet``)."""
        kind = stanza.tag
        target = "host" if not to.local else ("full" if to.resource else "bare")
        hook = _DELIVERY.get((kind, target))
        if hook is None:
            return
        if self.bus.has_handlers(hook) and await self.bus.run(
            hook, StanzaEvent(stanza, to, from_, origin)
        ):
            return
        if kind == "message":
            await self._message(stanza, to, from_, origin, target)
        elif kind == "iq":
            await self._iq(stanza, to, from_, origin, target)
        elif target == "full":
            session = self.sessions.get(to)
            if session is not None:
                await self.sessions.deliver(session, stanza)
        elif target == "bare":
            # Presence to a bare JID that no module handled: directed presence to every
            # available resource (RFC 6121 §4.6); subscription handling lives in mod_presence.
            for session in self.sessions.available(to):
                await self.sessions.deliver(session, stanza)

    async def deliver_prepared(
        self, stanza: Element, to: JID, from_: JID, origin: Session | None, data: bytes
    ) -> bool:
        """A fan-out copy for the live session bound to the full JID ``to``: the same
        delivery hook and ``user_receive_packet`` as :meth:`deliver`, ``data`` written
        unless a handler replaced the stanza (``False``: no such session)."""
        if not to.local or not to.resource:
            return False
        hook = _DELIVERY.get((stanza.tag, "full"))
        session = self.sessions.get(to)
        if hook is None or session is None or stanza.tag == "iq":
            return False
        if self.bus.has_handlers(hook) and await self.bus.run(
            hook, StanzaEvent(stanza, to, from_, origin)
        ):
            return True
        await self.sessions.deliver(session, stanza, data)
        return True

    async def _message(
        self, stanza: Element, to: JID, from_: JID, origin: Session | None, target: str
    ) -> None:
        mtype = stanza.get("type", "normal")
        sessions = self.sessions
        if target == "full":
            session = sessions.get(to)
            if session is not None:
                await sessions.deliver(session, stanza)
                return
            if mtype == "groupchat":
                await self.router.bounce(stanza, StanzaError("service-unavailable"))
                return
            if mtype == "error":
                return
            # RFC 6121 §8.5.3.2.1: chat/normal/headline to an unknown resource: as bare.
        elif target == "host":
            return
        if mtype == "error":
            return
        if mtype == "groupchat":
            await self.router.bounce(stanza, StanzaError("service-unavailable"))
            return
        if mtype == "headline":
            for session in sessions.available(to.bare):
                if session.priority >= 0:
                    await sessions.deliver(session, stanza)
            return
        targets = sessions.message_targets(to.bare)
        if not targets:
            # Someone who came online on another node a moment ago is not offline.
            await sessions.caught_up()
            found = sessions.get(to) if target == "full" else None
            targets = [found] if found is not None else sessions.message_targets(to.bare)
        if targets:
            for session in targets:
                await sessions.deliver(session, stanza)
            return
        event = StanzaEvent(stanza, to, from_, origin)
        if await self.bus.run(hooks.OFFLINE_MESSAGE, event):
            return
        await self.router.bounce(stanza, StanzaError("service-unavailable"))

    async def _iq(
        self, stanza: Element, to: JID, from_: JID, origin: Session | None, target: str
    ) -> None:
        itype = stanza.get("type")
        if target == "full":
            session = self.sessions.get(to)
            if session is None:
                await self.sessions.caught_up()
                session = self.sessions.get(to)
            if session is not None:
                await self.sessions.deliver(session, stanza)
            else:
                await self.router.bounce(stanza, StanzaError("service-unavailable"))
            return
        if itype in ("result", "error"):
            if target == "host" or (to.bare == to and to.resource == ""):
                self.iq_tracker.resolve(stanza, from_)
            return
        await self.dispatch_iq(
            stanza, Scope.HOST if target == "host" else Scope.BARE, to, from_, origin
        )

    async def dispatch_iq(
        self,
        stanza: Element,
        scope: Scope,
        to: JID,
        from_: JID | None,
        origin: Session | None,
    ) -> Element | None:
        """Run the IQ handler for a get/set; returns the reply (already routed unless
        ``scope`` is ``STREAM``, where the caller writes it)."""
        payload = iq_payload(stanza)
        handler = None
        request = None
        if payload is not None:
            handler = self.iq_handlers.get((scope, stanza.get("type", ""), payload.tag))
            request = IqRequest(stanza, to, from_, payload, origin)
        reply = await answer_iq(handler, stanza, request)
        if reply is not None and scope is not Scope.STREAM:
            if reply.get("from") is None:
                reply.set("from", str(to))
            await self.router.route(reply, None)
        return reply
