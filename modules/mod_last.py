"""XEP-0012: Last Activity — server uptime, and when a contact was last seen."""

from __future__ import annotations

import time
from typing import Final

from pydantic import Field

from xmppd.api import (
    JID,
    IqRequest,
    Module,
    ModuleContext,
    Options,
    Scope,
    ServiceKey,
    StanzaError,
    hooks,
    ns,
)
from xmppd.api.hooks import PresenceEvent, UserEvent
from xmppd.api.stanza import Element, child_text, payload
from xmppd.api.storage import Column, Float, GroupCommit, String, Text, delete, select
from xmppd_modules.mod_roster import ROSTER


class LastOptions(Options):
    record_status: bool = Field(
        True, description="Keep the status text of the last unavailable presence."
    )


module = Module(
    "last",
    "XEP-0012: Last Activity",
    options=LastOptions,
    depends=("roster",),
    protocols=("XEP-0012 v2.0",),
)
Ctx = ModuleContext[LastOptions]

seen: Final = module.table(
    "seen",
    Column("username", String(1023), primary_key=True),
    Column("at", Float, nullable=False),
    Column("status", Text, nullable=False, default=""),
)


class SeenWriter:
    """Writes when users were last seen: the rows of one turn of the event loop (and of
    the transaction before) in one transaction. When many users go offline together (a
    network blip, a restart, sessions not resumed in time), a transaction each would
    cost the database far more than the rows."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        self._writer: GroupCommit[dict[str, object], None] = GroupCommit(self._write_all)

    async def remember(self, user: JID, status: str) -> None:
        """``user`` went offline now (with this status text); back once committed."""
        row = {"host": self._ctx.domain, "username": user.local, "at": time.time()}
        await self._writer.submit({**row, "status": status})

    async def _write_all(self, rows: list[dict[str, object]]) -> list[None]:
        db = self._ctx.db
        async with db.transaction() as tx:
            await db.upsert_all_in(tx, seen, rows, ("host", "username"))
        return [None] * len(rows)


SEEN: Final = ServiceKey[SeenWriter]("last-seen")


@module.on_load
async def start(ctx: Ctx) -> None:
    ctx.provide(SEEN, SeenWriter(ctx))


def _query(seconds: int, status: str = "") -> Element:
    query = payload(ns.LAST, "query", {"seconds": str(seconds)})
    if status:
        query.text = status
    return query


@module.iq("get", ns.LAST, "query", to=Scope.HOST)
async def uptime(ctx: Ctx, req: IqRequest) -> Element:
    return req.result(_query(int(ctx.uptime())))


@module.iq("get", ns.LAST, "query", to=Scope.BARE)
async def last_seen(ctx: Ctx, req: IqRequest) -> Element:
    assert req.from_ is not None
    user = req.to.bare
    if not req.is_from_owner:
        if not await ctx.account_exists(user):
            raise StanzaError("service-unavailable")  # RFC 6121 §8.5.1
        item = await ctx.service(ROSTER).item(user, req.from_.bare)
        if item is None or not item.has_from:
            raise StanzaError("forbidden", "only contacts subscribed to this account may ask")
    if ctx.sessions.available(user):
        return req.result(_query(0))
    row = await ctx.db.fetch_one(
        select(seen.c.at, seen.c.status).where(
            seen.c.host == ctx.domain, seen.c.username == user.local
        )
    )
    if row is None:
        raise StanzaError("item-not-found")
    return req.result(_query(max(0, int(time.time() - row.at)), row.status))


@module.on(hooks.USER_UNAVAILABLE)
async def remember(ctx: Ctx, event: PresenceEvent) -> None:
    user = event.session.jid.bare
    if ctx.sessions.available(user):
        return  # another resource is still online
    status = child_text(event.presence, "status") or "" if ctx.options.record_status else ""
    await ctx.service(SEEN).remember(user, status)


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    await ctx.db.execute(
        delete(seen).where(seen.c.host == ctx.domain, seen.c.username == event.jid.local)
    )


@module.fold(hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """The last logout and its status: ``<last xmlns='urn:xmppd:export:0' at='unix'/>``."""
    row = await ctx.db.fetch_one(
        select(seen.c.at, seen.c.status).where(
            seen.c.host == ctx.domain, seen.c.username == event.jid.local
        )
    )
    if row is None:
        return parts
    last = payload(ns.XMPPD_EXPORT, "last", {"at": f"{row.at:.0f}"})
    if row.status:
        last.text = row.status
    return (*parts, last)
