"""A domain served by a module (``pubsub.example.org``, ``conference.example.org``...):
a ready-made :class:`~xmppd.router.Destination` with its own IQ handler table and
disco#info, registered in the router with ``ctx.serve(service)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from xmppd import ns
from xmppd.errors import StanzaError
from xmppd.iq import BoundIqHandler, Identity, IqRequest, answer_iq, iq_payload
from xmppd.jid import JID
from xmppd.stanza import Element, child, error_reply, payload

if TYPE_CHECKING:
    from xmppd.module import ModuleContext
    from xmppd.sessions import Session

StanzaCallback = Callable[[Element, JID, JID], Awaitable[None]]

_DISCO_INFO: Final = f"{{{ns.DISCO_INFO}}}query"
_SERVICE_UNAVAILABLE: Final = StanzaError("service-unavailable")


class ServiceDomain:
    """A module-served domain. Register IQ handlers with :meth:`iq`, disco facts with
    :meth:`identity`/:meth:`feature`, set :attr:`on_message`/:attr:`on_presence` if the
    service takes those, then ``ctx.serve(service)``.

    Behaviour the service gets for free: an IQ get/set without a handler is answered
    ``service-unavailable``; disco#info without a node is answered from the identities
    and features (unless a disco#info handler is registered: then it answers every
    disco#info query); IQ results and errors go to the ``ctx.request`` waiting for them;
    a message without ``on_message`` bounces with ``service-unavailable``; presence
    without ``on_presence`` is ignored. Errors are never answered.
    """

    def __init__(self, ctx: ModuleContext[Any], domain: str, *, name: str = "") -> None:
        self.ctx = ctx
        self.domain = domain
        self.jid = JID.parse(domain)
        self.name = name
        self.identities: list[Identity] = []
        self.features: list[str] = [ns.DISCO_INFO]
        self.on_message: StanzaCallback | None = None
        self.on_presence: StanzaCallback | None = None
        self._iq: dict[tuple[str, str], BoundIqHandler] = {}

    def __repr__(self) -> str:
        return f"ServiceDomain({self.domain!r}, module={self.ctx.name!r})"

    # ------------------------------------------------------------------ registration

    def iq(self, type: str, namespace: str, tag: str) -> Callable[[BoundIqHandler], BoundIqHandler]:
        """Handle IQ ``type`` (get/set) whose payload is ``{namespace}tag``: the handler
        returns ``req.result(payload)`` or raises ``StanzaError``. The namespace is
        advertised in the service's disco#info."""
        if type not in ("get", "set"):
            raise ValueError("IQ handlers are for 'get' or 'set'")

        def deco(fn: BoundIqHandler) -> BoundIqHandler:
            key = (type, f"{{{namespace}}}{tag}")
            if key in self._iq:
                raise ValueError(f"{self.domain}: two handlers for IQ {type} {key[1]}")
            self._iq[key] = fn
            self.feature(namespace)
            return fn

        return deco

    def identity(self, category: str, type: str, name: str = "") -> None:
        self.identities.append(Identity(category, type, name))

    def feature(self, namespace: str) -> None:
        if namespace not in self.features:
            self.features.append(namespace)

    # ------------------------------------------------------------------ delivery

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        kind = stanza.tag
        stype = stanza.get("type")
        if kind == "iq":
            if stype in ("result", "error"):
                self.ctx.resolve_iq(stanza, from_)
                return
            if stype in ("get", "set"):
                await self._answer(stanza, to, from_, origin)
            return
        if kind == "message":
            if self.on_message is not None:
                await self.on_message(stanza, to, from_)
            elif stype != "error":
                await self._bounce(stanza, _SERVICE_UNAVAILABLE)
            return
        if kind == "presence" and self.on_presence is not None:
            await self.on_presence(stanza, to, from_)

    async def _answer(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        body = iq_payload(stanza)
        handler = None
        request = None
        if body is not None:
            tag = body.tag
            handler = self._iq.get((stanza.get("type", ""), tag))
            if handler is None and tag == _DISCO_INFO and stanza.get("type") == "get":
                handler = self._disco_info
            request = IqRequest(stanza, to, from_, body, origin)
        reply = await answer_iq(handler, stanza, request)
        if reply is not None:
            if reply.get("from") is None:
                reply.set("from", str(to))
            await self.ctx.send(reply)

    async def _disco_info(self, req: IqRequest) -> Element:
        if req.payload.get("node") is not None or req.to.local or req.to.resource:
            raise StanzaError("item-not-found")
        query = payload(ns.DISCO_INFO, "query")
        for identity in self.identities:
            attrs = {"category": identity.category, "type": identity.type}
            if identity.name:
                attrs["name"] = identity.name
            child(query, "identity", attrs)
        for feature in self.features:
            child(query, "feature", {"var": feature})
        return req.result(query)

    async def _bounce(self, stanza: Element, err: StanzaError) -> None:
        reply = error_reply(stanza, err)
        if reply is not None and reply.get("to"):
            await self.ctx.send(reply)
