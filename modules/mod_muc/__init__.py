"""XEP-0045: Multi-User Chat — group chat rooms on ``conference.<host>``.

The module serves the MUC domain of each host where it is loaded (option ``domain``)
and keeps each room as one :class:`~modules.mod_muc.room.Room` (occupants, roles,
affiliations, history, subject), found through :class:`~modules.mod_muc.service.MucService`.
Persistent rooms (configuration, subject, affiliations, registered nicknames) are
stored; temporary rooms vanish when their last occupant leaves. Also XEP-0249 direct
invitations pass through untouched, and XEP-0421 occupant ids are added to everything
a room sends on an occupant's behalf.
"""

from __future__ import annotations

from modules.mod_muc.common import Ctx, MucOptions, module
from modules.mod_muc.service import MUC, MucService
from xmppd.api import hooks
from xmppd.api.hooks import ServerEvent, UserEvent

__all__ = ["MUC", "MucOptions", "MucService", "module"]


@module.on_load
async def start(ctx: Ctx) -> None:
    service = MucService(ctx)
    ctx.provide(MUC, service)
    ctx.serve_domain(service.domain, service, name=service.name)


@module.on(hooks.SERVER_STOPPING)
async def shutdown(ctx: Ctx, event: ServerEvent) -> None:
    """Occupants hear that the rooms close (status 332) before their streams do."""
    for domain in ctx.loaded_hosts():
        peer = ctx.for_host(domain)
        service = peer.optional_service(MUC) if peer is not None else None
        if service is not None:
            await service.shutdown()


@module.on(hooks.USER_REMOVED)
async def forget(ctx: Ctx, event: UserEvent) -> None:
    """A deleted account loses its affiliations and registered nicknames."""
    service = ctx.service(MUC)
    await service.store.forget_user(event.jid.bare)
    for room in service.rooms.values():
        room.affiliations.pop(event.jid.bare, None)
        room.reasons.pop(event.jid.bare, None)
        room.nicks.pop(event.jid.bare, None)
