"""Message of the day: a headline from the host when a session first comes online.

The worked example of docs/module-guide.md: typed options, an event hook,
per-session state, a stanza sent by the server, and an IQ handler that answers
with a result or a ``StanzaError``.

Admins may replace the configured message at run time (XEP-0133 *set-motd* in
``mod_admin_adhoc``, through the :data:`MOTD` service); that message is stored and
kept across restarts until an admin sets or deletes it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from pydantic import Field

from xmppd.api import (
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    ServiceKey,
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

_STORE: Final = "motd"
"""Key/value store of the admin-set message (username ``""``: the host's, no account's)."""


@dataclass(frozen=True, slots=True)
class Message:
    text: str
    subject: str | None = None


class Motd:
    """The host's current message: the configured one, unless an admin set another."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self.current = Message(ctx.options.text, ctx.options.subject)
        self.set_by_admin = False
        """An admin's message replaces the configured one (until set or deleted again)."""
        ctx.on_invalidate("message", self._invalidated)

    def _invalidated(self, _key: str) -> None:
        """An admin set the message through another node of the cluster: read it again."""
        self._ctx.spawn(self.load(), name="motd-reload")

    async def load(self) -> None:
        stored = await self._ctx.keyval(_STORE).get("")
        if stored is not None:
            data = json.loads(stored)
            self.current = Message(str(data.get("text", "")), data.get("subject"))
            self.set_by_admin = True

    async def set(self, text: str, subject: str | None = None) -> None:
        """Replace the message (``""``: none); kept across restarts."""
        self.current = Message(text, subject or None)
        self.set_by_admin = True
        value = json.dumps({"text": text, "subject": subject or None})
        await self._ctx.keyval(_STORE).set("", value)
        await self._ctx.invalidate("message", "")

    def configured(self, options: MotdOptions) -> None:
        """The configuration changed (reload): its message applies unless an admin's
        replaces it."""
        if not self.set_by_admin:
            self.current = Message(options.text, options.subject)


MOTD: Final = ServiceKey[Motd]("motd")


@module.on_load
async def provide(ctx: Ctx) -> None:
    motd = Motd(ctx)
    await motd.load()
    ctx.provide(MOTD, motd)


def _fill(message: Message, parent: Element) -> Element:
    """Add ``subject`` (if any) and ``body`` children to ``parent``."""
    if message.subject:
        child(parent, "subject", text=message.subject)
    child(parent, "body", text=message.text)
    return parent


@module.on(hooks.USER_AVAILABLE)
async def greet(ctx: Ctx, event: PresenceEvent) -> None:
    session = event.session
    message = ctx.service(MOTD).current
    if not message.text or ctx.sessions.get_state(session, GREETED):
        return
    ctx.sessions.set_state(session, GREETED, True)
    attrs = {"type": "headline", "from": ctx.domain, "to": str(session.jid)}
    await ctx.send(_fill(message, element("message", attrs)))


@module.on_reload
async def reloaded(ctx: Ctx, old: MotdOptions) -> None:
    """New text or subject: sessions that come online from now on get the new message
    (those already greeted are not greeted again)."""
    motd = ctx.service(MOTD)
    motd.configured(ctx.options)
    if ctx.options.text != old.text:
        if motd.set_by_admin:
            ctx.log.info("configured message of the day changed; an admin's message replaces it")
        else:
            ctx.log.info("message of the day changed")


@module.iq("get", NS_MOTD, "motd", to=Scope.HOST)
async def current(ctx: Ctx, req: IqRequest) -> Element:
    message = ctx.service(MOTD).current
    if not message.text:
        raise StanzaError("item-not-found", "there is no message of the day")
    return req.result(_fill(message, payload(NS_MOTD, "motd")))
