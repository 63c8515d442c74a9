"""XEP-0191: Blocking Command — a per-account list of blocked JIDs, enforced by the server.

Protocol (IQs to one's own bare JID; anyone else gets ``forbidden``):

- ``<blocklist/>`` get returns the list and marks the session as wanting pushes;
- ``<block>`` set with one or more ``<item jid=.../>`` adds JIDs (none: ``bad-request``,
  an invalid JID: ``jid-malformed``, a missing ``jid``: ``bad-request``, more than
  ``max_items`` in all: ``not-allowed``);
- ``<unblock>`` set removes the listed JIDs, or every JID when it has no items.

A change is pushed (an IQ set carrying the items that actually changed) to every
resource of the account that requested the blocklist, and also to those that requested
the roster (interested resources), as clients that never asked still benefit.

Matching (§4, as in XEP-0016): an item ``user@domain/resource`` matches that full JID
only; ``user@domain`` matches it with any resource; ``domain/resource`` matches that
address only; ``domain`` matches the domain, any address at it, and its subdomains.
Stanzas between an account's own resources and stanzas from or to the account's own
server (a local host JID) are never blocked.

Enforcement, for accounts of hosts where the module is loaded:

- stanzas from a blocked entity to the user are not delivered: presence is dropped
  silently; a message (other than an error or a headline) and an IQ get/set are
  answered with ``service-unavailable``, so the user looks offline or absent; other
  stanzas are dropped. This holds whether the user is online or not;
- a stanza the user's client sends to a blocked entity is refused with
  ``not-acceptable`` plus ``<blocked xmlns='urn:xmpp:blocking:errors'/>`` (errors are
  dropped silently, never answered);
- the server does not send the user's presence to a blocked entity (broadcasts, probe
  answers, pending requests); only ``unavailable``, ``unsubscribe``, ``unsubscribed``
  and errors still go out, as they reveal nothing;
- on block, each available resource of the user sends ``unavailable`` to the blocked
  contacts that were receiving its presence (roster ``from``/``both``, or directed
  presence), and the user's resources see those contacts go ``unavailable``; on
  unblock, the user's current presence goes to them again and their presence is
  fetched for the user (XEP-0191 §3.3, §3.4).

The lists of online accounts are kept in memory (loaded on first use, updated on every
change, moved to a small LRU when the last session ends); offline accounts' lists are
read from storage once and kept in that LRU. One cache serves every host of the server,
as the routing filter is global. In a cluster, a node that stores a change tells the
others (``ctx.invalidate``), which drop their copy and read the list again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from pydantic import Field

from xmppd.api import (
    DROP,
    INVALIDATE_ALL,
    JID,
    Drop,
    InvalidJID,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Priority,
    Scope,
    ServiceKey,
    SessionKey,
    StanzaError,
    hooks,
)
from xmppd.api.hooks import PacketContext, RouteInfo, SessionEvent, UserEvent
from xmppd.api.stanza import Element, child, copy, element, error_reply, new_id, payload
from xmppd.api.storage import Column, String, bindparam, delete, prepared, select
from xmppd_modules.mod_presence import DIRECTED
from xmppd_modules.mod_roster import ROSTER, RosterItem

NS_BLOCKING: Final = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS: Final = "urn:xmpp:blocking:errors"


class BlocklistOptions(Options):
    max_items: int = Field(1000, ge=1, le=100_000, description="Most JIDs one account may block.")
    offline_cache_size: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="Blocklists of offline accounts kept in memory (least recently used "
        "first out) for stanzas addressed to them; 0 keeps none. The cache is shared by "
        "all hosts: the value of the first host that loads the module applies.",
    )


module = Module(
    "blocklist",
    "XEP-0191: Blocking Command",
    options=BlocklistOptions,
    depends=("roster", "presence"),
    protocols=("XEP-0191 v1.3",),
)
Ctx = ModuleContext[BlocklistOptions]

module.feature(NS_BLOCKING)  # XEP-0191 §3.1: discovered on the server

items_table: Final = module.table(
    "items",
    Column("username", String(1023), primary_key=True),
    Column("jid", String(3071), primary_key=True),
)

REQUESTED: Final = SessionKey("blocklist.requested", False)
"""The session fetched its blocklist: it gets block/unblock pushes (§3.3)."""

_EMPTY: Final[frozenset[str]] = frozenset()

_OUTBOUND_ALWAYS: Final = frozenset({"error", "unavailable", "unsubscribe", "unsubscribed"})
"""Stanza types the server still sends on behalf of a user to an entity it blocks."""

_HOST: Final = bindparam("host", type_=String)
_USER: Final = bindparam("username", type_=String)
# Read at a login (the first presence broadcast needs the list): built once and run on
# SQLite without SQLAlchemy's work per call (xmppd.storage.prepared).
_SELECT_ITEMS: Final = prepared(
    select(items_table.c.jid).where(items_table.c.host == _HOST, items_table.c.username == _USER)
)
_ANY_ITEM: Final = select(items_table.c.username).where(items_table.c.host == _HOST).limit(1)


# ----------------------------------------------------------------------------- matching


def _matches(items: frozenset[str], jid: JID) -> bool:
    """Does an item of the list match ``jid`` (XEP-0191 §4)?"""
    if not items:
        return False
    if str(jid) in items or (jid.local and jid.bare_str in items):
        return True
    domain = jid.domain
    if jid.resource and f"{domain}/{jid.resource}" in items:
        return True
    while True:
        if domain in items:
            return True
        dot = domain.find(".")
        if dot < 0:
            return False
        domain = domain[dot + 1 :]


def _is_local_server(ctx: Ctx, jid: JID) -> bool:
    """A host JID of this server (its own stanzas are never blocked)."""
    return not jid.local and ctx.is_local(jid)


# ----------------------------------------------------------------------------- the store


class Blocklists:
    """Blocklist storage and cache of one host's accounts (the ``BLOCKLIST`` service).

    The database is the truth. A list is cached while its account is online, and in a
    bounded LRU otherwise; every change goes through this object, which keeps the
    cache current.
    """

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self.in_use = False
        """Some account may have a non-empty list; until then the filters do nothing."""
        self._online: dict[JID, frozenset[str]] = {}
        self._offline: OrderedDict[JID, frozenset[str]] = OrderedDict()
        self._offline_max = ctx.options.offline_cache_size
        self._epoch = 0
        """Bumped by every change: a load that raced with one is not cached."""
        ctx.on_invalidate("list", self._invalidated)

    def _invalidated(self, key: str) -> None:
        """Another node of the cluster changed an account's list: drop this node's
        copy (read again on next use), and stop assuming no list has items."""
        self.in_use = True
        if key == INVALIDATE_ALL:
            self._epoch += 1
            self._online.clear()
            self._offline.clear()
        else:
            self.forget_cached(JID.parse(key))

    async def check_in_use(self) -> None:
        if not self.in_use:
            found = await self._ctx.db.fetch_value(_ANY_ITEM, {"host": self._ctx.domain})
            self.in_use = found is not None

    def _remember(self, user: JID, items: frozenset[str]) -> None:
        if self._ctx.sessions.is_online(user):
            self._offline.pop(user, None)
            self._online[user] = items
        elif self._offline_max > 0:
            self._online.pop(user, None)
            self._offline[user] = items
            self._offline.move_to_end(user)
            while len(self._offline) > self._offline_max:
                self._offline.popitem(last=False)

    async def get(self, user: JID) -> frozenset[str]:
        """The blocked JIDs (as strings) of the account ``user`` (a bare JID)."""
        items = self._online.get(user)
        if items is not None:
            return items
        items = self._offline.get(user)
        if items is not None:
            self._remember(user, items)
            return items
        epoch, generation = self._epoch, self._ctx.invalidation_generation
        rows = await self._ctx.db.fetch_all(
            _SELECT_ITEMS, {"host": user.domain, "username": user.local}
        )
        items = frozenset(row.jid for row in rows) or _EMPTY
        if epoch == self._epoch and generation == self._ctx.invalidation_generation:
            self._remember(user, items)
        return items

    def _changed(self, user: JID, items: frozenset[str]) -> Awaitable[object]:
        """Stored a change of ``user``'s list: keep it here, other nodes drop theirs."""
        self._epoch += 1
        self._online.pop(user, None)
        self._offline.pop(user, None)
        self._remember(user, items or _EMPTY)
        return self._ctx.invalidate("list", str(user))

    async def add(self, user: JID, added: Iterable[str]) -> frozenset[str]:
        current = await self.get(user)
        new = frozenset(added) - current
        if new:
            db = self._ctx.db
            async with db.transaction() as tx:
                for jid in sorted(new):
                    values = {"host": user.domain, "username": user.local, "jid": jid}
                    await db.upsert_in(tx, items_table, values, ("host", "username", "jid"))
            self.in_use = True
            await self._changed(user, current | new)
        return new

    async def remove(self, user: JID, removed: Iterable[str] | None) -> frozenset[str]:
        """Unblock ``removed`` (``None``: everything); returns what was actually removed."""
        current = await self.get(user)
        gone = current if removed is None else current & frozenset(removed)
        if gone:
            cond = [items_table.c.host == user.domain, items_table.c.username == user.local]
            if removed is not None:
                cond.append(items_table.c.jid.in_(sorted(gone)))
            await self._ctx.db.execute(delete(items_table).where(*cond))
            await self._changed(user, current - gone)
        return gone

    def went_offline(self, user: JID) -> None:
        """The account's last session ended: its list moves to the offline LRU."""
        items = self._online.pop(user, None)
        if items is not None:
            self._remember(user, items)

    def forget_cached(self, user: JID) -> None:
        self._epoch += 1
        self._online.pop(user, None)
        self._offline.pop(user, None)

    async def forget_user(self, user: JID) -> None:
        await self._ctx.db.execute(
            delete(items_table).where(
                items_table.c.host == user.domain, items_table.c.username == user.local
            )
        )
        self.forget_cached(user)
        await self._ctx.invalidate("list", str(user))


BLOCKLIST: Final = ServiceKey[Blocklists]("blocklist")


@module.on_load
async def provide(ctx: Ctx) -> None:
    store = Blocklists(ctx)
    await store.check_in_use()
    ctx.provide(BLOCKLIST, store)


# ----------------------------------------------------------------------------- IQs


def _require_owner(req: IqRequest) -> None:
    if not req.is_from_owner:
        raise StanzaError("forbidden", "a blocklist belongs to its owner")


def _requested_items(query: Element) -> list[str]:
    """The items' JIDs, prepared, without duplicates, in request order."""
    jids: dict[str, None] = {}
    for item in query.findall(f"{{{NS_BLOCKING}}}item"):
        value = item.get("jid")
        if value is None:
            raise StanzaError("bad-request", "an item needs a 'jid'")
        try:
            jids[str(JID.parse(value))] = None
        except InvalidJID:
            raise StanzaError("jid-malformed", "not a valid JID") from None
    return list(jids)


def _store(ctx: Ctx) -> Blocklists:
    return ctx.service(BLOCKLIST)


def _store_of(ctx: Ctx, jid: JID) -> Blocklists | None:
    """The store of the host of a local account ``jid`` where the module is loaded (the
    global filter runs with one host's context and acts for every host)."""
    if not jid.local:
        return None
    peer = ctx.for_host(jid.domain)
    return None if peer is None else peer.service(BLOCKLIST)


@module.iq("get", NS_BLOCKING, "blocklist", to=Scope.BARE)
async def get_blocklist(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    items = await _store(ctx).get(req.to.bare)
    if req.origin is not None:
        ctx.sessions.set_state(req.origin, REQUESTED, True)
    result = payload(NS_BLOCKING, "blocklist")
    for jid in sorted(items):
        child(result, "item", {"jid": jid})
    return req.result(result)


@module.iq("set", NS_BLOCKING, "block", to=Scope.BARE)
async def block(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    jids = _requested_items(req.payload)
    if not jids:
        raise StanzaError("bad-request", "a block carries at least one item")
    user = req.to.bare
    store = _store(ctx)
    current = await store.get(user)
    if len(current | frozenset(jids)) > ctx.options.max_items:
        raise StanzaError("not-allowed", "the blocklist is full")
    added = await store.add(user, jids)
    if added:
        await _push(ctx, user, "block", added)
        await _hide_presence(ctx, user, added)
    return req.result()


@module.iq("set", NS_BLOCKING, "unblock", to=Scope.BARE)
async def unblock(ctx: Ctx, req: IqRequest) -> Element:
    _require_owner(req)
    jids = _requested_items(req.payload)
    user = req.to.bare
    store = _store(ctx)
    removed = await store.remove(user, jids or None)
    if removed:
        await _push(ctx, user, "unblock", _EMPTY if not jids else removed)
        await _show_presence(ctx, user, removed, await store.get(user))
    return req.result()


async def _push(ctx: Ctx, user: JID, kind: str, items: frozenset[str]) -> None:
    """§3.3-3.5: tell the user's resources what changed (an empty unblock: everything)."""
    for session in ctx.sessions.of(user):
        if not (ctx.sessions.get_state(session, REQUESTED) or session.is_interested):
            continue
        iq = element("iq", {"type": "set", "id": new_id(), "to": str(session.jid)})
        query = payload(NS_BLOCKING, kind)
        for jid in sorted(items):
            child(query, "item", {"jid": jid})
        iq.append(query)
        ctx.sessions.send_raw(session, iq)


# ----------------------------------------------------------------------------- presence


def _affected(
    roster: dict[JID, RosterItem],
    changed: frozenset[str],
    wanted: Callable[[RosterItem], bool],
    still_blocked: frozenset[str] = _EMPTY,
) -> list[JID]:
    """Roster contacts (or their blocked resources) that ``changed`` items match."""
    full_items: dict[JID, list[JID]] = {}
    for text in changed:
        jid = JID.parse(text)
        if jid.local and jid.resource:
            full_items.setdefault(jid.bare, []).append(jid)
    found: list[JID] = []
    for contact, item in roster.items():
        if not wanted(item):
            continue
        if _matches(changed, contact):
            if not _matches(still_blocked, contact):
                found.append(contact)
            continue
        found.extend(j for j in full_items.get(contact, ()) if not _matches(still_blocked, j))
    return found


async def _hide_presence(ctx: Ctx, user: JID, added: frozenset[str]) -> None:
    """§3.3: blocked contacts that received the user's presence now see it unavailable;
    the user's resources stop seeing theirs."""
    roster = await ctx.service(ROSTER).items(user)
    available = ctx.sessions.available(user)
    subscribers = _affected(roster, added, lambda item: item.has_from)
    for session in available:
        targets = dict.fromkeys(subscribers)
        targets.update(
            dict.fromkeys(
                t for t in ctx.sessions.get_state(session, DIRECTED) if _matches(added, t)
            )
        )
        for target in targets:
            await ctx.send(
                element(
                    "presence",
                    {"type": "unavailable", "from": str(session.jid), "to": str(target)},
                )
            )
    # Written as is: the filters would (rightly) drop anything from a blocked contact.
    for contact in _affected(roster, added, lambda item: item.has_to):
        for session in available:
            ctx.sessions.send_raw(
                session,
                element(
                    "presence",
                    {"type": "unavailable", "from": str(contact), "to": str(session.jid)},
                ),
            )


async def _show_presence(
    ctx: Ctx, user: JID, removed: frozenset[str], remaining: frozenset[str]
) -> None:
    """§3.4: the user's current presence goes again to unblocked contacts allowed to see
    it, and the user gets theirs."""
    roster = await ctx.service(ROSTER).items(user)
    available = ctx.sessions.available(user)
    subscribers = _affected(roster, removed, lambda item: item.has_from, remaining)
    for session in available:
        presence = session.presence
        if presence is None:
            continue
        targets = dict.fromkeys(subscribers)
        targets.update(
            dict.fromkeys(
                t
                for t in ctx.sessions.get_state(session, DIRECTED)
                if _matches(removed, t) and not _matches(remaining, t)
            )
        )
        for target in targets:
            out = copy(presence)
            out.set("from", str(session.jid))
            out.set("to", str(target))
            await ctx.send(out)
    for contact in _affected(roster, removed, lambda item: item.has_to, remaining):
        if not ctx.is_local(contact):
            probe = {"type": "probe", "from": str(user), "to": str(contact.bare)}
            await ctx.send(element("presence", probe))
            continue
        for other in ctx.sessions.available(contact.bare):
            other_presence = other.presence
            if other_presence is None or (contact.resource and other.jid != contact):
                continue
            for session in available:
                out = copy(other_presence)
                out.set("from", str(other.jid))
                out.set("to", str(session.jid))
                await ctx.sessions.deliver(session, out)


# ----------------------------------------------------------------------------- enforcement


def _blocked_error(stanza: Element) -> Element | None:
    """§3.3: the error for a stanza the user tried to send to a blocked entity."""
    reply = error_reply(stanza, StanzaError("not-acceptable", type="cancel"))
    if reply is None:
        return None
    error = reply.find("error")
    if error is not None:
        child(error, "blocked", namespace=NS_BLOCKING_ERRORS)
    return reply


@module.fold(hooks.USER_SEND_PACKET, priority=Priority.EARLY)
async def refuse_outbound(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    """A client's stanza to an entity its account blocks is answered, never routed."""
    store = _store(ctx)
    to_attr = stanza.get("to")
    if not store.in_use or to_attr is None:
        return stanza
    session = pctx.session
    items = await store.get(session.jid.bare)
    if not items:
        return stanza
    try:
        to = JID.parse(to_attr)
    except InvalidJID:
        return stanza
    if to.bare == session.jid.bare or _is_local_server(ctx, to) or not _matches(items, to):
        return stanza
    reply = _blocked_error(stanza)
    if reply is not None:
        ctx.sessions.send_raw(session, reply)
    return DROP


def _needs_offline_check(kind: str, stype: str | None) -> bool:
    """Whether a stanza to an offline account matters enough to load its list (presence
    broadcasts and probes to an offline account reach nobody anyway)."""
    return not (kind == "presence" and stype in (None, "unavailable", "error", "probe"))


async def _refuse_inbound(ctx: Ctx, stanza: Element, kind: str, stype: str | None) -> None:
    """§3.3: presence is dropped; messages and IQ get/set get service-unavailable
    (headlines are dropped, as they are for an offline account, RFC 6121 §8.5.2)."""
    if kind == "presence" or stype in ("error", "headline"):
        return
    if kind == "iq" and stype not in ("get", "set"):
        return
    reply = error_reply(stanza, StanzaError("service-unavailable"))
    if reply is not None:
        await ctx.send(reply)


@module.fold(hooks.FILTER_PACKET, priority=Priority.EARLY)
async def enforce(ctx: Ctx, stanza: Element, route: RouteInfo) -> Element | Drop:
    """Every routed stanza: from a blocked entity to a local account, or sent by the
    server on behalf of a local account to an entity it blocks."""
    try:
        to = JID.parse(stanza.get("to") or "")
        frm = JID.parse(stanza.get("from") or "")
    except InvalidJID:
        return stanza  # the router drops it
    if to.bare == frm.bare:
        return stanza
    kind, stype = stanza.tag, stanza.get("type")
    to_store = _store_of(ctx, to)
    if (
        to_store is not None
        and to_store.in_use
        and not _is_local_server(ctx, frm)
        and (ctx.sessions.is_online(to.bare) or _needs_offline_check(kind, stype))
        and _matches(await to_store.get(to.bare), frm)
    ):
        await _refuse_inbound(ctx, stanza, kind, stype)
        return DROP
    if route.origin is not None:
        return stanza  # a client's own stanzas were checked in user_send_packet
    from_store = _store_of(ctx, frm)
    if (
        from_store is not None
        and from_store.in_use
        and stype not in _OUTBOUND_ALWAYS
        and not _is_local_server(ctx, to)
        and _matches(await from_store.get(frm.bare), to)
    ):
        return DROP
    return stanza


@module.fold(hooks.USER_RECEIVE_PACKET, priority=Priority.EARLY)
async def filter_delivery(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    """Stanzas written to a session without routing (mod_presence answers a local
    user's probes directly), and blocks of one resource of a bare-addressed recipient."""
    store = _store(ctx)
    frm_attr = stanza.get("from")
    if frm_attr is None or stanza.get("type") == "error":
        return stanza  # errors: bounces, including this module's own
    try:
        frm = JID.parse(frm_attr)
    except InvalidJID:
        return stanza
    recipient = pctx.session.jid
    if frm.bare == recipient.bare or _is_local_server(ctx, frm):
        return stanza
    if store.in_use and _matches(await store.get(recipient.bare), frm):
        return DROP
    from_store = _store_of(ctx, frm)
    if (
        from_store is not None
        and from_store.in_use
        and stanza.get("type") not in _OUTBOUND_ALWAYS
        and _matches(await from_store.get(frm.bare), recipient)
    ):
        return DROP
    return stanza


# ----------------------------------------------------------------------------- lifecycle


# LATE: the other handlers of a session's end (presence's unavailable broadcast,
# which reads the roster and the blocklist) still find the copy in memory instead of
# loading it again from the database only for it to be dropped.
@module.on(hooks.RESOURCE_UNBOUND, priority=Priority.LATE)
async def drop_cache(ctx: Ctx, event: SessionEvent) -> None:
    user = event.session.jid.bare
    if not ctx.sessions.is_online(user):
        _store(ctx).went_offline(user)


@module.on(hooks.USER_REGISTERED)
async def fresh_account(ctx: Ctx, event: UserEvent) -> None:
    # An account deleted by another process (the CLI) left its list in this cache.
    _store(ctx).forget_cached(event.jid.bare)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await _store(ctx).forget_user(event.jid.bare)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: the blocklist, as XEP-0191 ``<blocklist>``."""
    items = await _store(ctx).get(event.jid.bare)
    if not items:
        return parts
    blocklist = payload(NS_BLOCKING, "blocklist")
    for jid in sorted(items):
        child(blocklist, "item", {"jid": jid})
    return (*parts, blocklist)
