"""XEP-0352: Client State Indication — while a client says it is inactive (a phone in a
pocket), presence updates and chat states are held back and coalesced; anything that
matters (a message with a body, an IQ, an error) flushes them and goes out at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pydantic import Field

from xmppd.api import (
    DROP,
    STOP,
    Drop,
    Module,
    ModuleContext,
    Options,
    Priority,
    Session,
    SessionKey,
    Size,
    Stop,
    hooks,
)
from xmppd.api.hooks import Bind2Request, FeaturesContext, PacketContext, StreamElementEvent
from xmppd.api.stanza import Element, parse, payload, serialize

NS: Final = "urn:xmpp:csi:0"
CHAT_STATES: Final = "http://jabber.org/protocol/chatstates"


class CsiOptions(Options):
    max_held: int = Field(
        500, ge=1, description="Held stanzas per session before they are flushed anyway."
    )
    max_held_bytes: Size = Field(
        256 * 1024,
        ge=1024,
        description="Bytes of held stanzas (serialized) per session before they are flushed "
        "anyway. Anyone may send presence to a user's bare JID, so this, not the count, "
        "is what bounds the memory an inactive session holds (at most this plus one "
        "stanza); real presences are a few hundred bytes.",
    )


module = Module(
    "csi", "XEP-0352: Client State Indication", options=CsiOptions, protocols=("XEP-0352 v1.0",)
)
Ctx = ModuleContext[CsiOptions]

INACTIVE: SessionKey[bool] = SessionKey("csi.inactive", False)


@dataclass(slots=True)
class Held:
    """Held stanzas, serialized (an element would keep its parser alive), keyed so that a
    newer presence from the same sender replaces the older one, and their total size."""

    stanzas: dict[str, bytes] = field(default_factory=dict)
    size: int = 0

    def put(self, key: str, data: bytes) -> None:
        """Hold ``data``, replacing (and moving to the end) what ``key`` held before."""
        old = self.stanzas.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self.stanzas[key] = data
        self.size += len(data)


HELD: SessionKey[Held | None] = SessionKey("csi.held", None, shared=False)
"""What an inactive session holds. Only the session's own node reads it (its delivery
hook), so a cluster does not publish it; it is changed in place and set again (a copy
per held stanza would make holding quadratic)."""

_CHAT_STATE: Final = f"{{{CHAT_STATES}}}"


@module.fold(hooks.C2S_STREAM_FEATURES)
async def advertise(
    ctx: Ctx, features: tuple[Element, ...], fctx: FeaturesContext
) -> tuple[Element, ...]:
    if fctx.stage != "post-auth":
        return features
    return (*features, payload(NS, "csi"))


@module.fold(hooks.BIND2_FEATURES)
async def bind2_feature(ctx: Ctx, features: tuple[str, ...], _: FeaturesContext) -> tuple[str, ...]:
    return (*features, NS)


@module.fold(hooks.BIND2_BOUND)
async def bind2_state(
    ctx: Ctx, answers: tuple[Element, ...], request: Bind2Request
) -> tuple[Element, ...]:
    """A Bind 2 request may start the session inactive (``<inactive/>``)."""
    if request.find(NS, "inactive") is not None:
        ctx.sessions.set_state(request.session, INACTIVE, True)
    return answers


@module.on(hooks.C2S_STREAM_ELEMENT)
async def client_state(ctx: Ctx, event: StreamElementEvent) -> Stop | None:
    tag = event.element.tag
    if tag == f"{{{NS}}}inactive":
        ctx.sessions.set_state(event.session, INACTIVE, True)
        return STOP
    if tag == f"{{{NS}}}active":
        ctx.sessions.set_state(event.session, INACTIVE, False)
        flush(ctx, event.session)
        return STOP
    return None


def _is_holdable(stanza: Element) -> str | None:
    """The coalescing key of a stanza that can wait, or ``None`` if it cannot."""
    if stanza.tag == "presence":
        return f"p {stanza.get('from', '')}"
    if (
        stanza.tag == "message"
        and stanza.get("type") != "error"
        and len(stanza)
        and all(isinstance(c.tag, str) and c.tag.startswith(_CHAT_STATE) for c in stanza)
    ):
        return f"c {stanza.get('from', '')}"  # only the latest chat state matters
    return None


# Late: other modules (carbons, archive...) see the stanza before it is held.
@module.fold(hooks.USER_RECEIVE_PACKET, priority=Priority.LATE)
async def hold_while_inactive(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    session = pctx.session
    if not ctx.sessions.get_state(session, INACTIVE):
        return stanza
    key = _is_holdable(stanza)
    if key is None:
        flush(ctx, session)
        return stanza
    held = ctx.sessions.get_state(session, HELD) or Held()
    held.put(key, serialize(stanza))
    ctx.sessions.set_state(session, HELD, held)
    if len(held.stanzas) >= ctx.options.max_held or held.size >= ctx.options.max_held_bytes:
        flush(ctx, session)
    return DROP


def flush(ctx: Ctx, session: Session) -> None:
    """Send what was held, oldest first."""
    held = ctx.sessions.get_state(session, HELD)
    if not held:
        return
    ctx.sessions.set_state(session, HELD, None)
    for data in held.stanzas.values():
        ctx.sessions.send_raw(session, parse(data))
