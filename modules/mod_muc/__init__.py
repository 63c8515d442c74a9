"""XEP-0045: Multi-User Chat — group chat rooms on ``conference.<host>``.

The module serves the MUC domain of each host where it is loaded (option ``domain``)
and keeps each room as one :class:`~xmppd_modules.mod_muc.room.Room` (occupants,
roles, affiliations, history, subject), found through
:class:`~xmppd_modules.mod_muc.service.MucService`.
Persistent rooms (configuration, subject, affiliations, registered nicknames) are
stored; temporary rooms vanish when their last occupant leaves. XEP-0249 direct
invitations reach the invitee untouched and are shown to the room on the way (a
members-only room makes the invitee a member when the inviter may invite), and
XEP-0421 occupant ids are added to everything a room sends on an occupant's behalf.
"""

from __future__ import annotations

import asyncio
from typing import Final

from xmppd.api import INVALIDATE_ALL, JID, Drop, InvalidJID, Priority, by_bare_jid, ns
from xmppd.api import hooks as core_hooks  # importing .service binds "hooks" (.hooks)
from xmppd.api.hooks import PacketContext, ServerEvent, UserEvent
from xmppd.api.stanza import Element, child, copy, find_child, payload
from xmppd_modules.mod_muc.common import NS_CONFERENCE, Ctx, MucOptions, module
from xmppd_modules.mod_muc.service import MUC, MucService

__all__ = ["MUC", "MucOptions", "MucService", "module"]

FORGOTTEN: Final = "removed-account"
"""Invalidation topic: an account was removed (its affiliations leave every room)."""


@module.on_load
async def start(ctx: Ctx) -> None:
    service = MucService(ctx)
    await service.archive.start()
    ctx.provide(MUC, service)
    service.entry = ctx.serve_domain(
        service.domain, service, name=service.name, placed_by=by_bare_jid
    )
    ctx.on_cluster_change(service.rebalance)
    if ctx.options.unload_idle_after > 0:
        ctx.spawn(_unload_idle_rooms(ctx, service), name="muc idle rooms")

    def forgotten(key: str) -> None:
        # ALL (this node lost track of invalidations): rooms hold no cache of other
        # accounts' data to drop; what a removed account left is gone from storage.
        if key != INVALIDATE_ALL:
            service.forget_user(JID.parse(key))

    ctx.on_invalidate(FORGOTTEN, forgotten)
    rooms = service.rooms
    ctx.metrics.gauge_function("rooms", "Rooms in memory (active).", lambda: len(rooms))
    ctx.metrics.gauge_function(
        "occupants",
        "Occupants of the rooms in memory.",
        lambda: sum(len(room.occupants) for room in list(rooms.values())),
    )


async def _unload_idle_rooms(ctx: Ctx, service: MucService) -> None:
    """Every so often (a tenth of ``unload_idle_after``, between 1 s and a minute),
    unload the persistent rooms idle that long."""
    idle_for = ctx.options.unload_idle_after
    while True:
        await asyncio.sleep(min(60.0, max(1.0, idle_for / 10)))
        service.unload_idle(idle_for)


@module.on(core_hooks.SERVER_STOPPING)
async def shutdown(ctx: Ctx, event: ServerEvent) -> None:
    """Occupants hear that the rooms close (status 332) before their streams do."""
    for domain in ctx.loaded_hosts():
        peer = ctx.for_host(domain)
        service = peer.optional_service(MUC) if peer is not None else None
        if service is not None:
            await service.shutdown()


# Late: after the filters that may drop the message; the invitation itself is untouched.
@module.fold(core_hooks.USER_SEND_PACKET, priority=Priority.LATE)
async def direct_invitation(ctx: Ctx, stanza: Element, pctx: PacketContext) -> Element | Drop:
    """XEP-0249: a direct invitation to one of this service's rooms is shown to the
    room on its way, so that a members-only room can make the invitee a member."""
    if stanza.tag != "message" or stanza.get("type") in ("error", "groupchat"):
        return stanza
    x = find_child(stanza, NS_CONFERENCE, "x")
    if x is None:
        return stanza
    service = ctx.optional_service(MUC)
    try:
        room_jid = JID.parse(x.get("jid", ""))
    except InvalidJID:
        return stanza
    if service is None or room_jid.domain != service.domain or not room_jid.local:
        return stanza
    room = service.rooms.get(room_jid.local)
    if room is not None:
        await room.handle(copy(stanza), room_jid.bare, pctx.session.jid)
    elif not service.holds(room_jid):  # shown to the room on its node
        await service.entry.deliver(copy(stanza), room_jid.bare, pctx.session.jid, None)
    return stanza


@module.on(core_hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    """A deleted account loses its affiliations and registered nicknames."""
    service = ctx.service(MUC)
    await service.store.forget_user(event.jid.bare)
    await service.archive.forget_sender(event.jid.bare)
    service.forget_user(event.jid.bare)
    await ctx.invalidate(FORGOTTEN, str(event.jid.bare))  # rooms held by other cluster nodes


@module.fold(core_hooks.USER_EXPORT)
async def export(ctx: Ctx, parts: tuple[Element, ...], event: UserEvent) -> tuple[Element, ...]:
    """The account's affiliations and registered nicknames in this host's rooms."""
    service = ctx.service(MUC)
    affiliations, nicks = await service.store.user_entries(event.jid.bare)
    if not affiliations and not nicks:
        return parts
    muc = payload(ns.XMPPD_EXPORT, "muc", {"service": service.domain})
    for room, affiliation, reason in affiliations:
        attrs = {"room": f"{room}@{service.domain}", "affiliation": affiliation}
        child(muc, "affiliation", {**attrs, "reason": reason} if reason else attrs)
    for room, nick in nicks:
        child(muc, "nick", {"room": f"{room}@{service.domain}"}, text=nick)
    return (*parts, muc)
