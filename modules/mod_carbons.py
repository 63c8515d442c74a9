"""XEP-0280: Message Carbons — every resource of a user sees both sides of each chat.

A session enables carbons with ``<iq type='set'><enable xmlns='urn:xmpp:carbons:2'/></iq>``
(and turns them off with ``<disable/>``). From then on:

* a message *to* the user that another resource received gets to this one wrapped in
  ``<received><forwarded>`` (XEP-0280 §6);
* a message one of the user's other resources *sends* gets to this one wrapped in
  ``<sent><forwarded>`` (§7).

Only instant messages are copied (§5): type ``chat``; type ``normal`` with a body, or
with a receipt, chat marker or chat state. Never groupchat, headline or error, nothing
from a MUC (``muc#user``), and nothing marked ``<private xmlns='urn:xmpp:carbons:2'/>``
or with the XEP-0334 ``<no-copy/>`` hint. A ``<private/>`` element is removed before
the recipient's client gets the message (§8).
"""

from __future__ import annotations

from typing import Final

from xmppd.api import (
    JID,
    Drop,
    InvalidJID,
    IqRequest,
    Module,
    ModuleContext,
    NoOptions,
    Priority,
    Scope,
    Session,
    SessionKey,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.hooks import Bind2Request, FeaturesContext, PacketContext, StanzaEvent
from xmppd.api.stanza import Element, child, copy, element, payload

NS_CARBONS: Final = "urn:xmpp:carbons:2"
NS_FORWARD: Final = "urn:xmpp:forward:0"
NS_HINTS: Final = "urn:xmpp:hints"
NS_MUC_USER: Final = "http://jabber.org/protocol/muc#user"
IM_PAYLOADS: Final = frozenset(
    {
        "urn:xmpp:receipts",  # XEP-0184
        "urn:xmpp:chat-markers:0",  # XEP-0333
        "http://jabber.org/protocol/chatstates",  # XEP-0085
    }
)
"""Namespaces that make a bodyless ``normal`` message an instant message."""

module: Module[NoOptions] = Module(
    "carbons",
    "XEP-0280: Message Carbons",
    protocols=("XEP-0280 v1.0.1",),
)
Ctx = ModuleContext[NoOptions]
module.feature(NS_CARBONS)  # the IQ handlers below only advertise it on accounts

ENABLED: Final = SessionKey("carbons.enabled", False)
"""The session asked for carbons."""

_PRIVATE: Final = f"{{{NS_CARBONS}}}private"
_NO_COPY: Final = f"{{{NS_HINTS}}}no-copy"
_MUC_X: Final = f"{{{NS_MUC_USER}}}x"
_CARBON_TAGS: Final = frozenset({f"{{{NS_CARBONS}}}received", f"{{{NS_CARBONS}}}sent"})


# ----------------------------------------------------------------------------- enable


def _own_session(req: IqRequest) -> Session:
    if req.origin is None or not req.is_from_owner:
        raise StanzaError("not-allowed", "carbons are switched by the session itself")
    return req.origin


@module.iq("set", NS_CARBONS, "enable", to=Scope.BARE)
async def enable(ctx: Ctx, req: IqRequest) -> Element:
    ctx.sessions.set_state(_own_session(req), ENABLED, True)
    # In a cluster the copies are made where the messages are routed: that node must
    # know before the client, told it is done, expects copies.
    await ctx.sessions.published()
    return req.result()


@module.iq("set", NS_CARBONS, "disable", to=Scope.BARE)
async def disable(ctx: Ctx, req: IqRequest) -> Element:
    ctx.sessions.set_state(_own_session(req), ENABLED, False)
    await ctx.sessions.published()
    return req.result()


@module.fold(hooks.BIND2_FEATURES)
async def bind2_feature(ctx: Ctx, features: tuple[str, ...], _: FeaturesContext) -> tuple[str, ...]:
    return (*features, NS_CARBONS)


@module.fold(hooks.BIND2_BOUND)
async def bind2_enable(
    ctx: Ctx, answers: tuple[Element, ...], request: Bind2Request
) -> tuple[Element, ...]:
    """``<enable xmlns='urn:xmpp:carbons:2'/>`` inside a Bind 2 request (no answer)."""
    if request.find(NS_CARBONS, "enable") is not None:
        ctx.sessions.set_state(request.session, ENABLED, True)
    return answers


# ----------------------------------------------------------------------------- eligibility


def eligible(stanza: Element) -> bool:
    """XEP-0280 §5: is this message one to copy?"""
    mtype = stanza.get("type", "normal")
    if mtype not in ("chat", "normal"):
        return False
    has_body = False
    im_payload = False
    for el in stanza:  # the reader never yields comments or PIs (restricted XML)
        tag = el.tag
        if tag in (_PRIVATE, _NO_COPY, _MUC_X) or tag in _CARBON_TAGS:
            return False  # opted out, from a MUC, or a carbon itself (never copy those)
        if tag == "body":
            has_body = True
        elif tag.startswith("{") and tag[1:].partition("}")[0] in IM_PAYLOADS:
            im_payload = True
    return mtype == "chat" or has_body or im_payload


def _interested(ctx: Ctx, user: JID, skip: list[Session]) -> list[Session]:
    """The user's carbons-enabled sessions, except those in ``skip``."""
    skipped = {s.jid for s in skip}
    return [
        s
        for s in ctx.sessions.of(user)
        if s.jid not in skipped and ctx.sessions.get_state(s, ENABLED)
    ]


# ----------------------------------------------------------------------------- copies


def _client_copy(el: Element, parent: Element | None = None) -> Element:
    """``el`` with its stream-neutral parts put in ``jabber:client``.

    Stanzas in xmppd carry no content namespace (the stream supplies it). Inside
    ``<forwarded xmlns='urn:xmpp:forward:0'>`` the message must say
    ``xmlns='jabber:client'`` itself, and so must its ``body``, ``thread``, ``subject``.
    Payloads that have their own namespace are copied as they are.
    """
    attrs = {str(k): str(v) for k, v in el.attrib.items()}
    # A child without a namespace argument takes its parent's: jabber:client.
    out = payload(ns.CLIENT, el.tag, attrs) if parent is None else child(parent, el.tag, attrs)
    out.text = el.text
    for sub in el:
        if sub.tag.startswith("{"):
            out.append(copy(sub))
        else:
            _client_copy(sub, out).tail = sub.tail
    return out


def carbon(kind: str, user: JID, to: Session, original: Element) -> Element:
    """``<message from=user to=session><{kind}><forwarded>original</forwarded>...``"""
    attrs = {"from": str(user), "to": str(to.jid)}
    if (mtype := original.get("type")) is not None:
        attrs["type"] = mtype  # §6: the wrapper SHOULD keep the type
    wrapper = element("message", attrs)
    forwarded = child(child(wrapper, kind, namespace=NS_CARBONS), "forwarded", namespace=NS_FORWARD)
    forwarded.append(_client_copy(original))
    return wrapper


async def _send_copies(
    ctx: Ctx, kind: str, user: JID, sessions: list[Session], original: Element
) -> None:
    for session in sessions:
        await ctx.sessions.deliver(session, carbon(kind, user, session, original))


# ----------------------------------------------------------------------------- received


# Late: a module that takes the message over (STOP) runs first, and then nobody copies it.
@module.on(hooks.MESSAGE_TO_FULL, priority=Priority.LATE)
async def to_full(ctx: Ctx, event: StanzaEvent) -> None:
    user = event.to.bare
    if not any(ctx.sessions.get_state(s, ENABLED) for s in ctx.sessions.of(user)) or not eligible(
        event.stanza
    ):
        return
    target = ctx.sessions.get(event.to)
    # An unknown resource: the core delivers as to the bare JID (RFC 6121 §8.5.3.2.1).
    receivers = [target] if target is not None else ctx.sessions.message_targets(user)
    await _received(ctx, event, user, receivers)


@module.on(hooks.MESSAGE_TO_BARE, priority=Priority.LATE)
async def to_bare(ctx: Ctx, event: StanzaEvent) -> None:
    user = event.to
    if not any(ctx.sessions.get_state(s, ENABLED) for s in ctx.sessions.of(user)) or not eligible(
        event.stanza
    ):
        return
    await _received(ctx, event, user, ctx.sessions.message_targets(user))


async def _received(ctx: Ctx, event: StanzaEvent, user: JID, receivers: list[Session]) -> None:
    skip = list(receivers)
    if event.origin is not None:
        skip.append(event.origin)  # between one's own resources: the sender has it
    await _send_copies(ctx, "received", user, _interested(ctx, user, skip), event.stanza)


# ----------------------------------------------------------------------------- sent


# Late: after the filters that may change or drop what the client sent.
@module.fold(hooks.USER_SEND_PACKET, priority=Priority.LATE)
async def sent(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    if stanza.tag != "message":
        return stanza
    session = pctx.session
    user = session.jid.bare
    others = _interested(ctx, user, [session])
    if not others or not eligible(stanza):
        return stanza
    try:
        to = JID.parse(stanza.get("to", ""))
    except InvalidJID:
        return stanza
    if to.bare == user:
        return stanza  # to the user's own account: copied as received, on delivery
    await _send_copies(ctx, "sent", user, others, stanza)
    return stanza


# ----------------------------------------------------------------------------- private


@module.fold(hooks.USER_RECEIVE_PACKET)
async def strip_private(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    """§8: the receiving server SHOULD remove ``<private/>`` before delivery."""
    if stanza.tag != "message" or stanza.find(_PRIVATE) is None:
        return stanza
    out = copy(stanza)
    for el in out.findall(_PRIVATE):
        out.remove(el)
    return out
