"""External components (XEP-0114) as destinations in the routing table: one per
configured component domain, whether or not its stream is connected right now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from xmppd.errors import StanzaError

if TYPE_CHECKING:
    from xmppd.jid import JID
    from xmppd.router import Router
    from xmppd.sessions import Session
    from xmppd.stanza import Element
    from xmppd.stream.component import ComponentRegistry

COMPONENT_UNAVAILABLE: Final = StanzaError(
    "service-unavailable", "the component serving this domain is not connected", type="wait"
)
"""The bounce for a configured component that is not connected (RFC 6120 §8.3.3.19).

Type ``wait``, not the usual ``cancel``: the component is expected back, and a sender
that sees ``cancel`` may give up for good (mod_push disables a registration whose
app server answers ``cancel``)."""


class ComponentDestination:
    """Stanzas for a configured component domain: to its stream when it is connected;
    otherwise a ``wait`` bounce (presence to an absent entity is dropped)."""

    __slots__ = ("_components", "_router", "domain")

    def __init__(self, domain: str, components: ComponentRegistry, router: Router) -> None:
        self.domain = domain
        self._components = components
        self._router = router

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        components = self._components
        component = components.connected(self.domain)
        if component is not None:
            await component.deliver(stanza)
            return
        remote = components.remote
        if remote is not None:  # connected to another node of the cluster?
            node = remote.held_elsewhere(self.domain)
            if node is not None and await remote.forward(node, stanza, to, from_):
                return
        if stanza.tag != "presence":
            await self._router.bounce(stanza, COMPONENT_UNAVAILABLE)

    def __repr__(self) -> str:
        return f"ComponentDestination({self.domain!r})"
