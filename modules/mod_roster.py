"""RFC 6121 §2: Roster management, with versioning (§2.6) and pushes.

Other modules (presence, last activity) use the roster through :data:`ROSTER`,
the :class:`Roster` service this module provides on each host.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from pydantic import Field

from xmppd.api import (
    INVALIDATE_ALL,
    JID,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Priority,
    Scope,
    ServiceKey,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.hooks import UserEvent
from xmppd.api.stanza import Element, child, element, new_id, payload
from xmppd.api.storage import (
    Boolean,
    Column,
    Integer,
    String,
    Text,
    bindparam,
    delete,
    prepared,
    sa,
    select,
)

Subscription = Literal["none", "to", "from", "both"]


class RosterOptions(Options):
    max_items: int = Field(1000, ge=1, description="Largest roster an account may have.")
    versioning: bool = Field(True, description="Offer roster versioning (RFC 6121 §2.6).")


module = Module(
    "roster",
    "RFC 6121: Roster management",
    options=RosterOptions,
    protocols=("RFC 6121 §2", "XEP-0237 v1.3"),
)
Ctx = ModuleContext[RosterOptions]

items_table: Final = module.table(
    "items",
    Column("username", String(1023), primary_key=True),
    Column("contact", String(3071), primary_key=True),
    Column("name", Text, nullable=False, default=""),
    Column("subscription", String(8), nullable=False, default="none"),
    Column("ask", Boolean, nullable=False, default=False),
    Column("approved", Boolean, nullable=False, default=False),
    Column("groups", Text, nullable=False, default="[]"),
)

pending_table: Final = module.table(
    "pending",
    Column("username", String(1023), primary_key=True),
    Column("contact", String(3071), primary_key=True),
    Column("status", Text, nullable=False, default=""),
)
"""Inbound subscription requests waiting for the user's answer (RFC 6121 §3.1.3)."""

versions_table: Final = module.table(
    "versions",
    Column("username", String(1023), primary_key=True),
    Column("version", Integer, nullable=False),
)


@dataclass(frozen=True, slots=True)
class RosterItem:
    contact: JID
    name: str = ""
    subscription: Subscription = "none"
    ask: bool = False
    """An outbound subscription request is pending."""
    approved: bool = False
    """The user pre-approved the contact's subscription (RFC 6121 §3.4)."""
    groups: tuple[str, ...] = ()

    @property
    def has_from(self) -> bool:
        """The contact receives the user's presence."""
        return self.subscription in ("from", "both")

    @property
    def has_to(self) -> bool:
        """The user receives the contact's presence."""
        return self.subscription in ("to", "both")

    def to_xml(self, parent: Element) -> Element:
        attrs = {"jid": str(self.contact), "subscription": self.subscription}
        if self.name:
            attrs["name"] = self.name
        if self.ask:
            attrs["ask"] = "subscribe"
        if self.approved:
            attrs["approved"] = "true"
        item = child(parent, "item", attrs)
        for group in self.groups:
            child(item, "group", text=group)
        return item


@dataclass(slots=True)
class _UserRoster:
    """What is cached for an online user: items, version, pending requests."""

    items: dict[JID, RosterItem]
    version: int
    pending: dict[JID, str]


_HOST: Final = bindparam("host", type_=String)
_USER: Final = bindparam("username", type_=String)


def _load_all() -> sa.CompoundSelect[Any]:
    """Items, version and pending requests of one user in one query (a login loads
    them once; three queries cost three times the statement overhead): one row per
    item (kind ``i``), the version row (``v``) and one row per request (``p``), in
    the items' shape."""
    items, versions, pending = items_table.c, versions_table.c, pending_table.c
    empty, no = sa.literal("", String), sa.literal(False, Boolean)
    return sa.union_all(
        select(
            sa.literal("i", String).label("kind"),
            items.contact,
            items.name,
            items.subscription,
            items.ask,
            items.approved,
            items.groups,
            sa.literal(0, Integer).label("version"),
        ).where(items.host == _HOST, items.username == _USER),
        select(sa.literal("v", String), empty, empty, empty, no, no, empty, versions.version).where(
            versions.host == _HOST, versions.username == _USER
        ),
        select(
            sa.literal("p", String),
            pending.contact,
            pending.status,
            empty,
            no,
            no,
            empty,
            sa.literal(0, Integer),
        ).where(pending.host == _HOST, pending.username == _USER),
    )


_LOAD_ALL: Final = prepared(_load_all())


class Roster:
    """Roster storage and pushes for one host (the ``ROSTER`` service).

    The database is the truth. The roster of a user with at least one session is also
    kept in memory (loaded once, updated by every change made here, dropped when the
    last session ends), so logins, presence broadcasts and probes do not query it again.
    """

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._cache: dict[JID, _UserRoster] = {}
        ctx.on_invalidate("roster", self._invalidated)

    def _invalidated(self, key: str) -> None:
        """Another node of the cluster changed a user's roster: drop this node's copy."""
        if key == INVALIDATE_ALL:
            self._cache.clear()
        else:
            self._cache.pop(JID.parse(key), None)

    def _changed(self, user: JID) -> Awaitable[object]:
        """Stored a change of ``user``'s roster: other nodes drop their copies (await
        it before a reply or push, so that the others no longer use them)."""
        return self._ctx.invalidate("roster", str(user.bare))

    def _params(self, user: JID) -> dict[str, str]:
        return {"host": self._ctx.domain, "username": user.local}

    async def _load(self, user: JID) -> _UserRoster:
        user = user.bare
        cached = self._cache.get(user)
        if cached is not None:
            return cached
        db, params = self._ctx.db, self._params(user)
        generation = self._ctx.invalidation_generation
        loaded = _UserRoster(items={}, version=0, pending={})
        for row in await db.fetch_all(_LOAD_ALL, params):
            if row.kind == "i":
                item = _from_row(row)
                loaded.items[item.contact] = item
            elif row.kind == "v":
                loaded.version = int(row.version or 0)
            else:
                loaded.pending[JID.parse(row.contact)] = row.name
        # Another await may have cached it meanwhile; keep the first, as changes
        # made since went to it.
        if self._ctx.sessions.is_online(user) and generation == self._ctx.invalidation_generation:
            return self._cache.setdefault(user, loaded)
        return loaded

    @property
    def max_items(self) -> int:
        """The largest roster an account may have (option ``max_items``)."""
        return self._ctx.options.max_items

    def forget_cached(self, user: JID) -> None:
        """Drop the in-memory copy (the user's last session ended)."""
        self._cache.pop(user.bare, None)

    async def items(self, user: JID) -> dict[JID, RosterItem]:
        """The user's roster by contact JID (do not change the returned mapping)."""
        return (await self._load(user)).items

    async def item(self, user: JID, contact: JID) -> RosterItem | None:
        return (await self._load(user)).items.get(contact.bare)

    async def version(self, user: JID) -> int:
        return (await self._load(user)).version

    async def _bump(self, user: JID, roster: _UserRoster) -> int:
        roster.version += 1
        await self._ctx.db.upsert(
            versions_table,
            {**self._params(user), "version": roster.version},
            ("host", "username"),
        )
        return roster.version

    async def save(self, user: JID, item: RosterItem, *, push: bool = True) -> None:
        """Store ``item`` and push it to the user's interested resources."""
        roster = await self._load(user)
        await self._ctx.db.upsert(
            items_table,
            {
                **self._params(user),
                "contact": str(item.contact),
                "name": item.name,
                "subscription": item.subscription,
                "ask": item.ask,
                "approved": item.approved,
                "groups": json.dumps(list(item.groups)),
            },
            ("host", "username", "contact"),
        )
        roster.items[item.contact] = item
        version = await self._bump(user, roster)
        await self._changed(user)
        if push:
            await self.push(user, item, version)

    async def remove(self, user: JID, contact: JID) -> None:
        roster = await self._load(user)
        await self._ctx.db.execute(
            delete(items_table).where(
                items_table.c.host == self._ctx.domain,
                items_table.c.username == user.local,
                items_table.c.contact == str(contact.bare),
            )
        )
        roster.items.pop(contact.bare, None)
        version = await self._bump(user, roster)
        await self._changed(user)
        await self.push(user, RosterItem(contact.bare), version, removed=True)

    async def push(
        self, user: JID, item: RosterItem, version: int, *, removed: bool = False
    ) -> None:
        """Send a roster push to every resource that requested the roster (§2.1.6)."""
        for session in self._ctx.sessions.of(user.bare):
            if not session.is_interested:
                continue
            iq = element("iq", {"type": "set", "id": new_id(), "to": str(session.jid)})
            query = payload(ns.ROSTER, "query")
            if self._ctx.options.versioning:
                query.set("ver", str(version))
            el = item.to_xml(query)
            if removed:
                el.attrib.clear()
                el.set("jid", str(item.contact))
                el.set("subscription", "remove")
                for grp in list(el):
                    el.remove(grp)
            iq.append(query)
            self._ctx.sessions.send_raw(session, iq)

    # -- pending inbound subscription requests
    async def pending(self, user: JID) -> list[tuple[JID, str]]:
        return list((await self._load(user)).pending.items())

    async def count_pending(self, user: JID) -> int:
        return len((await self._load(user)).pending)

    async def is_pending(self, user: JID, contact: JID) -> bool:
        return contact.bare in (await self._load(user)).pending

    async def add_pending(self, user: JID, contact: JID, status: str) -> None:
        roster = await self._load(user)
        await self._ctx.db.upsert(
            pending_table,
            {**self._params(user), "contact": str(contact.bare), "status": status},
            ("host", "username", "contact"),
        )
        roster.pending[contact.bare] = status
        await self._changed(user)

    async def clear_pending(self, user: JID, contact: JID) -> None:
        roster = await self._load(user)
        if contact.bare not in roster.pending:
            return
        await self._ctx.db.execute(
            delete(pending_table).where(
                pending_table.c.host == self._ctx.domain,
                pending_table.c.username == user.local,
                pending_table.c.contact == str(contact.bare),
            )
        )
        del roster.pending[contact.bare]
        await self._changed(user)

    async def forget_user(self, user: JID) -> None:
        self.forget_cached(user)
        for table in (items_table, pending_table, versions_table):
            await self._ctx.db.execute(
                delete(table).where(
                    table.c.host == self._ctx.domain, table.c.username == user.local
                )
            )
        await self._changed(user)


ROSTER: Final = ServiceKey[Roster]("roster")


def _from_row(row: object) -> RosterItem:
    return RosterItem(
        contact=JID.parse(row.contact),  # type: ignore[attr-defined]
        name=row.name,  # type: ignore[attr-defined]
        subscription=row.subscription,  # type: ignore[attr-defined]
        ask=bool(row.ask),  # type: ignore[attr-defined]
        approved=bool(row.approved),  # type: ignore[attr-defined]
        groups=tuple(json.loads(row.groups)),  # type: ignore[attr-defined]
    )


@module.on_load
async def provide(ctx: Ctx) -> None:
    ctx.provide(ROSTER, Roster(ctx))


@module.fold(hooks.C2S_STREAM_FEATURES)
async def advertise(
    ctx: Ctx, features: tuple[Element, ...], fctx: hooks.FeaturesContext
) -> tuple[Element, ...]:
    if fctx.stage != "post-auth":
        return features
    extra = [payload(ns.PRESENCE_PREAPPROVAL, "sub")]
    if ctx.options.versioning:
        extra.append(payload(ns.ROSTER_VER_FEATURE, "ver"))
    return (*features, *extra)


@module.iq("get", ns.ROSTER, "query", to=Scope.BARE)
async def roster_get(ctx: Ctx, req: IqRequest) -> Element | None:
    if not req.is_from_owner:
        raise StanzaError("forbidden", "a roster belongs to its owner")
    roster = ctx.service(ROSTER)
    user = req.to.bare
    if req.origin is not None:
        ctx.sessions.set_interested(req.origin)
    version = str(await roster.version(user))
    if ctx.options.versioning and req.payload.get("ver") == version:
        return req.result()
    query = payload(ns.ROSTER, "query")
    if ctx.options.versioning:
        query.set("ver", version)
    for item in (await roster.items(user)).values():
        item.to_xml(query)
    return req.result(query)


@module.iq("set", ns.ROSTER, "query", to=Scope.BARE)
async def roster_set(ctx: Ctx, req: IqRequest) -> Element:
    if not req.is_from_owner:
        raise StanzaError("forbidden", "a roster belongs to its owner")
    items = req.payload.findall(f"{{{ns.ROSTER}}}item")
    if len(items) != 1:
        raise StanzaError("bad-request", "a roster set carries exactly one item")
    el = items[0]
    try:
        contact = JID.parse(el.get("jid", ""))
    except ValueError:
        raise StanzaError("jid-malformed") from None
    user = req.to.bare
    if contact.bare == user:
        raise StanzaError("not-allowed", "you cannot add yourself")
    roster = ctx.service(ROSTER)
    existing = await roster.item(user, contact)
    if el.get("subscription") == "remove":
        if existing is None:
            raise StanzaError("item-not-found")
        await _cancel_subscriptions(ctx, user, existing)
        await roster.remove(user, contact)
        await roster.clear_pending(user, contact)
        return req.result()
    groups = [(g.text or "").strip() for g in el.findall(f"{{{ns.ROSTER}}}group")]
    if any(not g for g in groups):
        raise StanzaError("not-acceptable", "empty group name")
    if len(set(groups)) != len(groups):
        raise StanzaError("bad-request", "duplicate group")
    name = el.get("name", "")
    if len(name) > 1024 or any(len(g) > 1024 for g in groups):
        raise StanzaError("not-acceptable", "name too long")
    if existing is None:
        if len(await roster.items(user)) >= ctx.options.max_items:
            raise StanzaError("not-allowed", "roster is full")
        item = RosterItem(contact.bare, name=name, groups=tuple(groups))
    else:
        item = replace(existing, name=name, groups=tuple(groups))
    await roster.save(user, item)
    return req.result()


async def _cancel_subscriptions(ctx: Ctx, user: JID, item: RosterItem) -> None:
    """RFC 6121 §2.5.2: removing an item cancels subscriptions both ways."""
    if item.has_to or item.ask:
        await ctx.send(
            element("presence", {"type": "unsubscribe", "from": str(user), "to": str(item.contact)})
        )
    if item.has_from:
        await ctx.send(
            element(
                "presence", {"type": "unsubscribed", "from": str(user), "to": str(item.contact)}
            )
        )


# LATE: the other handlers of a session's end (presence's unavailable broadcast,
# which reads the roster and the blocklist) still find the copy in memory instead of
# loading it again from the database only for it to be dropped.
@module.on(hooks.RESOURCE_UNBOUND, priority=Priority.LATE)
async def drop_cache(ctx: Ctx, event: hooks.SessionEvent) -> None:
    user = event.session.jid.bare
    if not ctx.sessions.is_online(user):
        ctx.service(ROSTER).forget_cached(user)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.service(ROSTER).forget_user(event.jid)


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """XEP-0227: the roster as a ``jabber:iq:roster`` query, plus pending requests as
    ``subscribe`` presences (XEP-0227 §4.2)."""
    roster = ctx.service(ROSTER)
    query = payload(ns.ROSTER, "query", {"ver": str(await roster.version(event.jid))})
    for item in (await roster.items(event.jid)).values():
        item.to_xml(query)
    pending = [
        element("presence", {"type": "subscribe", "from": str(contact), "to": str(event.jid)})
        for contact, _status in await roster.pending(event.jid)
    ]
    return (*parts, query, *pending)
