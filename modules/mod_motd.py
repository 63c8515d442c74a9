"""Message of the day: a headline from the host when a session first comes online.

The worked example of docs/module-guide.md: typed options, an event hook,
per-session state, a stanza sent by the server, and an IQ handler that answers
with a result or a ``StanzaError``.
"""

from __future__ import annotations

from typing import Final

from pydantic import Field

from xmppd.api import (
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    SessionKey,
    StanzaError,
    hooks,
)
from xmppd.api.hooks import PresenceEvent
from xmppd.api.stanza import Element, child, element, payload

NS_MOTD: Final = "urn:xmppd:motd:0"
"""Our own namespace: ``<motd xmlns='urn:xmppd:motd:0'/>`` asks the host for the message."""


class MotdOptions(Options):
    text: str = Field(
        "", max_length=4000, description="The message of the day; empty means none is sent."
    )
    subject: str | None = Field(
        None, max_length=200, description="Subject line of the message (none by default)."
    )


module = Module("motd", "Message of the day", options=MotdOptions, depends=("presence",))
Ctx = ModuleContext[MotdOptions]

GREETED: Final = SessionKey("motd.greeted", False)
"""Set once this session has been sent the message (a session may go away and back)."""


def _fill(ctx: Ctx, parent: Element) -> Element:
    """Add ``subject`` (if configured) and ``body`` children to ``parent``."""
    if ctx.options.subject:
        child(parent, "subject", text=ctx.options.subject)
    child(parent, "body", text=ctx.options.text)
    return parent


@module.on(hooks.USER_AVAILABLE)
async def greet(ctx: Ctx, event: PresenceEvent) -> None:
    session = event.session
    if not ctx.options.text or ctx.sessions.get_state(session, GREETED):
        return
    ctx.sessions.set_state(session, GREETED, True)
    attrs = {"type": "headline", "from": ctx.domain, "to": str(session.jid)}
    await ctx.send(_fill(ctx, element("message", attrs)))


@module.on_reload
async def reloaded(ctx: Ctx, old: MotdOptions) -> None:
    """New text or subject: sessions that come online from now on get the new message
    (those already greeted are not greeted again)."""
    if ctx.options.text != old.text:
        ctx.log.info("message of the day changed")


@module.iq("get", NS_MOTD, "motd", to=Scope.HOST)
async def current(ctx: Ctx, req: IqRequest) -> Element:
    if not ctx.options.text:
        raise StanzaError("item-not-found", "there is no message of the day")
    return req.result(_fill(ctx, payload(NS_MOTD, "motd")))
