"""RFC 6121 §3-4: Presence subscriptions, broadcast, probes and directed presence."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import replace
from typing import Final

from pydantic import Field

from xmppd.api import (
    JID,
    STOP,
    Module,
    ModuleContext,
    Options,
    Session,
    SessionKey,
    StanzaError,
    Stop,
    hooks,
)
from xmppd.api.hooks import PresenceEvent, SessionEvent, StanzaEvent
from xmppd.api.stanza import Element, child_text, copy, element
from xmppd_modules.mod_roster import ROSTER, Roster, RosterItem, Subscription


class PresenceOptions(Options):
    max_directed: int = Field(
        1000,
        ge=1,
        description="Entities (outside the roster's subscribers) one session may have sent "
        "directed available presence to and not yet unavailable (RFC 6121 §4.6). Beyond "
        "it a directed presence to a new entity is refused with resource-constraint: the "
        "server could not otherwise send it unavailable when the session ends.",
    )
    max_pending_subscriptions: int = Field(
        100,
        ge=1,
        description="Inbound subscription requests an account keeps waiting for the user's "
        "answer. Beyond it a request from a new entity is ignored, without an answer (the "
        "sender cannot tell a full queue from a user who has not answered yet); a request "
        "from an entity already waiting still updates its status.",
    )
    max_subscription_status: int = Field(
        1024,
        ge=0,
        description="Characters of a subscription request's `<status/>` text that are stored "
        "with it (and sent again at each login); the rest is cut off.",
    )


module = Module(
    "presence",
    "RFC 6121: Presence and subscriptions",
    options=PresenceOptions,
    depends=("roster",),
    protocols=("RFC 6121 §3", "RFC 6121 §4"),
)
Ctx = ModuleContext[PresenceOptions]

DIRECTED: SessionKey[Set[JID]] = SessionKey("presence.directed", frozenset())
"""Entities this session sent directed available presence to (RFC 6121 §4.6). Once the
first is added the value is a ``set`` changed in place and set again (a copy per
directed presence made a long series of them quadratic); it stays shared, as the
blocklist reads it for the user's sessions on other nodes of a cluster. Readers only
iterate it, never across an ``await``."""

# The refusals of this module (condition, text), declared once.
ROSTER_FULL: Final = ("not-allowed", "roster is full")
"""A new roster item would pass the roster's ``max_items`` (as a roster set is answered)."""
TOO_MANY_DIRECTED: Final = ("resource-constraint", "too many entities have your directed presence")
"""A directed presence to a new entity beyond ``max_directed``."""

SUBSCRIPTION_TYPES = frozenset({"subscribe", "subscribed", "unsubscribe", "unsubscribed"})


def _addressed(stanza: Element, to: JID, from_: JID | None = None) -> Element:
    out = copy(stanza)
    out.set("to", str(to))
    if from_ is not None:
        out.set("from", str(from_))
    return out


def _roster(ctx: Ctx) -> Roster:
    return ctx.service(ROSTER)


def _without_to(item: RosterItem) -> Subscription:
    """The subscription once the user no longer receives the contact's presence."""
    return "from" if item.has_from else "none"


def _without_from(item: RosterItem) -> Subscription:
    """The subscription once the contact no longer receives the user's presence."""
    return "to" if item.has_to else "none"


# ----------------------------------------------------------------------------- outbound


@module.on(hooks.PRESENCE_OUT)
async def outbound(ctx: Ctx, event: StanzaEvent) -> Stop | None:
    stanza = event.stanza
    ptype = stanza.get("type")
    session = event.origin
    if session is None:
        return None
    user = session.jid.bare
    if stanza.get("to") is None:
        if ptype is None:
            await _broadcast_available(ctx, session, stanza)
        elif ptype == "unavailable":
            await _broadcast_unavailable(ctx, session, stanza)
        return STOP
    target = event.to
    if ptype in SUBSCRIPTION_TYPES:
        await _outbound_subscription(ctx, user, target.bare, stanza, ptype)
        return STOP
    if ptype == "probe":
        return STOP  # clients do not probe (RFC 6121 §4.3); the server does
    if ptype is None:
        item = await _roster(ctx).item(user, target)
        if item is None or not item.has_from:
            _track_directed(ctx, session, target)
    elif ptype == "unavailable":
        _untrack_directed(ctx, session, target)
    return None  # the core routes directed presence as is


def _track_directed(ctx: Ctx, session: Session, target: JID) -> None:
    """Remember ``target`` for the unavailable broadcast; refuse (before it is routed)
    a directed presence to a new target beyond ``max_directed``."""
    current = ctx.sessions.get_state(session, DIRECTED)
    if target in current:
        return
    if len(current) >= ctx.options.max_directed:
        raise StanzaError(*TOO_MANY_DIRECTED)
    targets = current if isinstance(current, set) else set(current)
    targets.add(target)
    ctx.sessions.set_state(session, DIRECTED, targets)  # in a cluster: published


def _untrack_directed(ctx: Ctx, session: Session, target: JID) -> None:
    current = ctx.sessions.get_state(session, DIRECTED)
    if target not in current:
        return
    targets = current if isinstance(current, set) else set(current)
    targets.discard(target)
    ctx.sessions.set_state(session, DIRECTED, targets)


async def _has_room(ctx: Ctx, user: JID, item: RosterItem | None) -> None:
    """Raise :data:`ROSTER_FULL` when saving a new item would pass ``max_items``."""
    roster = _roster(ctx)
    if item is None and len(await roster.items(user)) >= roster.max_items:
        raise StanzaError(*ROSTER_FULL)


async def _broadcast_available(ctx: Ctx, session: Session, stanza: Element) -> None:
    initial = not session.is_available
    prio = child_text(stanza, "priority")
    try:
        priority = max(-128, min(127, int(prio))) if prio else 0
    except ValueError:
        priority = 0
    session = ctx.sessions.set_presence(session, stanza, priority)
    # In a cluster: in Redis before anyone sees it (the user's own echo included), so
    # that whoever answers finds this session from any node (``caught_up``).
    await ctx.sessions.published()
    user = session.jid.bare
    roster = _roster(ctx)
    items = await roster.items(user)
    for item in items.values():
        if item.has_from:
            await ctx.send(_addressed(stanza, item.contact))
    for other in ctx.sessions.available(user):
        await ctx.sessions.deliver(other, _addressed(stanza, other.jid))
    if initial:
        for item in items.values():
            if item.has_to:
                await _probe(ctx, user, item.contact, session)
        for contact, status in await roster.pending(user):
            request = element(
                "presence", {"type": "subscribe", "from": str(contact), "to": str(user)}
            )
            if status:
                request.append(element("status", text=status))
            await ctx.sessions.deliver(session, request)
        await ctx.run(hooks.USER_AVAILABLE, PresenceEvent(session, stanza))


async def _probe(ctx: Ctx, user: JID, contact: JID, session: Session) -> None:
    """Get a contact's current presence for a user who just came online."""
    if ctx.is_local(contact):
        for other in ctx.sessions.available(contact):
            if (other_presence := other.presence) is None:
                continue
            # Routed, not handed over: filter_packet (blocking...) must see it too.
            await ctx.send(_addressed(other_presence, session.jid, other.jid))
        return
    await ctx.send(element("presence", {"type": "probe", "from": str(user), "to": str(contact)}))


async def _broadcast_unavailable(
    ctx: Ctx, session: Session, stanza: Element, *, echo: bool = True
) -> None:
    """RFC 6121 §4.5: unavailable to subscribers, directed-presence targets and the
    user's other resources (and, with ``echo``, to the session itself)."""
    if not session.is_available:
        return
    session = ctx.sessions.set_presence(session, None, 0)
    user = session.jid.bare
    items = await _roster(ctx).items(user)
    sent: set[JID] = set()
    for item in items.values():
        if item.has_from:
            sent.add(item.contact)
            await ctx.send(_addressed(stanza, item.contact))
    # Taken and reset before the sends below yield: nothing changes it under the loop.
    directed = ctx.sessions.get_state(session, DIRECTED)
    ctx.sessions.set_state(session, DIRECTED, frozenset())
    for target in directed:
        if target not in sent:
            await ctx.send(_addressed(stanza, target))
    for other in ctx.sessions.available(user):
        await ctx.sessions.deliver(other, _addressed(stanza, other.jid))
    if echo:
        await ctx.sessions.deliver(session, _addressed(stanza, session.jid))
    await ctx.run(hooks.USER_UNAVAILABLE, PresenceEvent(session, stanza))


@module.on(hooks.RESOURCE_UNBOUND)
async def gone(ctx: Ctx, event: SessionEvent) -> None:
    """A session that ends while available goes unavailable for everyone who saw it."""
    session = event.session
    unavailable = element("presence", {"type": "unavailable", "from": str(session.jid)})
    await _broadcast_unavailable(ctx, session, unavailable, echo=False)


async def _outbound_subscription(
    ctx: Ctx, user: JID, contact: JID, stanza: Element, ptype: str
) -> None:
    """RFC 6121 §3: the user's server updates the user's roster, then routes the stanza
    stamped with the user's bare JID."""
    roster = _roster(ctx)
    item = await roster.item(user, contact)
    out = _addressed(stanza, contact, user)
    if ptype == "subscribe":
        await _has_room(ctx, user, item)
        if item is None:
            item = RosterItem(contact)
        if not item.has_to and not item.ask:
            await roster.save(user, replace(item, ask=True))
        await ctx.send(out)
    elif ptype == "subscribed":
        if await roster.is_pending(user, contact):
            await _has_room(ctx, user, item)
            base = item or RosterItem(contact)
            sub: Subscription = "both" if base.has_to else "from"
            await roster.save(user, replace(base, subscription=sub, approved=False))
            await roster.clear_pending(user, contact)
            await ctx.send(out)
            for session in ctx.sessions.available(user):
                if (session_presence := session.presence) is None:
                    continue
                await ctx.send(_addressed(session_presence, contact, session.jid))
        elif item is None or not item.has_from:
            # Pre-approval (RFC 6121 §3.4).
            await _has_room(ctx, user, item)
            await roster.save(user, replace(item or RosterItem(contact), approved=True))
    elif ptype == "unsubscribe":
        if item is not None and (item.has_to or item.ask):
            await roster.save(user, replace(item, subscription=_without_to(item), ask=False))
        await ctx.send(out)
    elif ptype == "unsubscribed":
        # RFC 6121 §3.2.2 and appendix A.2.4.
        was_pending = await roster.is_pending(user, contact)
        if was_pending:
            await roster.clear_pending(user, contact)
        if item is not None and item.has_from:
            # While the contact is still subscribed: unavailable from every resource.
            for session in ctx.sessions.available(user):
                off = element("presence", {"type": "unavailable", "from": str(session.jid)})
                await ctx.send(_addressed(off, contact))
            await roster.save(user, replace(item, subscription=_without_from(item), approved=False))
            await ctx.send(out)
        elif item is not None and item.approved:
            # Cancelling a pre-approval (§3.4): nothing is routed to the contact.
            await roster.save(user, replace(item, approved=False))
        elif was_pending:
            await ctx.send(out)  # denial of a pending request


# ----------------------------------------------------------------------------- inbound


@module.on(hooks.PRESENCE_TO_FULL)
async def inbound_full(ctx: Ctx, event: StanzaEvent) -> Stop | None:
    ptype = event.stanza.get("type")
    if ptype in SUBSCRIPTION_TYPES or ptype == "probe":
        # RFC 6121 §3: subscription stanzas to a full JID are handled as if to the bare JID.
        await _inbound_bare(ctx, event, event.to.bare)
        return STOP
    return None


@module.on(hooks.PRESENCE_TO_BARE)
async def inbound_bare(ctx: Ctx, event: StanzaEvent) -> Stop | None:
    await _inbound_bare(ctx, event, event.to)
    return STOP


async def _deliver_to_available(ctx: Ctx, user: JID, stanza: Element) -> None:
    for session in ctx.sessions.available(user):
        await ctx.sessions.deliver(session, stanza)


async def _inbound_bare(ctx: Ctx, event: StanzaEvent, user: JID) -> None:
    stanza = event.stanza
    ptype = stanza.get("type")
    contact = event.from_.bare
    roster = _roster(ctx)
    if ptype is None or ptype in ("unavailable", "error"):
        await _deliver_to_available(ctx, user, stanza)
        return
    if not await ctx.account_exists(user):
        if ptype == "subscribe":
            await ctx.send(
                element("presence", {"type": "unsubscribed", "from": str(user), "to": str(contact)})
            )
        return
    item = await roster.item(user, contact)
    if ptype == "probe":
        if item is not None and item.has_from:
            for session in ctx.sessions.available(user):
                if (session_presence := session.presence) is None:
                    continue
                await ctx.send(_addressed(session_presence, event.from_, session.jid))
        return
    if ptype == "subscribe":
        if item is not None and item.has_from:
            await ctx.send(
                element("presence", {"type": "subscribed", "from": str(user), "to": str(contact)})
            )
            return
        if item is not None and item.approved:
            sub: Subscription = "both" if item.has_to else "from"
            await roster.save(user, replace(item, subscription=sub, approved=False))
            await ctx.send(
                element("presence", {"type": "subscribed", "from": str(user), "to": str(contact)})
            )
            for session in ctx.sessions.available(user):
                if (session_presence := session.presence) is None:
                    continue
                await ctx.send(_addressed(session_presence, contact, session.jid))
            return
        if not await _store_request(ctx, user, contact, stanza):
            return
        request = _addressed(stanza, user, contact)
        for session in ctx.sessions.available(user):
            if session.priority >= 0:
                await ctx.sessions.deliver(session, request)
        return
    if ptype == "subscribed":
        if item is not None and item.ask:
            sub = "both" if item.has_from else "to"
            await roster.save(user, replace(item, subscription=sub, ask=False))
            await _deliver_to_available(ctx, user, _addressed(stanza, user, contact))
        return
    if ptype == "unsubscribe":
        await roster.clear_pending(user, contact)
        if item is not None and item.has_from:
            await roster.save(user, replace(item, subscription=_without_from(item), approved=False))
            await _deliver_to_available(ctx, user, _addressed(stanza, user, contact))
        return
    if ptype == "unsubscribed":
        if item is not None and (item.has_to or item.ask):
            await roster.save(user, replace(item, subscription=_without_to(item), ask=False))
            await _deliver_to_available(ctx, user, _addressed(stanza, user, contact))
            # The contact's presence no longer reaches the user: show it as offline.
            for session in ctx.sessions.available(user):
                off = element("presence", {"type": "unavailable", "from": str(contact)})
                await ctx.sessions.deliver(session, _addressed(off, session.jid))
        return


async def _store_request(ctx: Ctx, user: JID, contact: JID, stanza: Element) -> bool:
    """Keep an inbound subscription request for the user's answer (RFC 6121 §3.1.3);
    ``False`` when it is ignored, the account having ``max_pending_subscriptions``
    requests from others waiting already. Not answered: an error or ``unsubscribed``
    would tell anyone who asks how full the queue is, or speak for the user."""
    roster = _roster(ctx)
    if (
        not await roster.is_pending(user, contact)
        and await roster.count_pending(user) >= ctx.options.max_pending_subscriptions
    ):
        ctx.log.debug("pending subscription requests of %s full: ignored one", user)
        return False
    status = (child_text(stanza, "status") or "")[: ctx.options.max_subscription_status]
    await roster.add_pending(user, contact, status)
    return True
