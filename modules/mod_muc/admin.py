"""The service administrator's view of the rooms (``MucService.admin``), for the REST
API's group endpoints: list, create with owners, admins and members, change an
affiliation, configure, destroy, read the occupants. Changes go through the room's own
logic (affiliation changes reach occupants as presence, a configuration change is
announced with status 104, destruction tells every occupant), with the service itself
as the actor; the creation access rules and per-user room limits do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Final, Protocol

from xmppd.api import JID, InvalidJID
from xmppd_modules.mod_muc.common import LISTED
from xmppd_modules.mod_muc.config import ALLOW_PM, WHOIS, RoomConfig
from xmppd_modules.mod_muc.hooks import ROOM_CREATED, RoomEvent
from xmppd_modules.mod_muc.room import Room, RoomHost, new_salt

AFFILIATIONS: Final = ("owner", "admin", "member", "outcast", "none")
SETTINGS: Final = frozenset(f.name for f in fields(RoomConfig))


class RoomAdminError(ValueError):
    """A request the rooms cannot take; ``kind`` is ``not-found``, ``conflict`` or
    ``invalid`` (with ``field`` naming the culprit)."""

    def __init__(self, kind: str, text: str, field: str | None = None) -> None:
        super().__init__(text)
        self.kind = kind
        self.field = field


@dataclass(frozen=True, slots=True)
class OccupantView:
    nick: str
    jid: JID
    role: str
    affiliation: str


class RoomDirectory(RoomHost, Protocol):
    """What the administrator's view needs from the service (``MucService``): its
    rooms, in memory and stored, and how a new room is configured."""

    domain: str
    rooms: dict[str, Room]

    async def room(self, name: str, *, creator: JID | None = None) -> Room | None:
        """The room ``name``, loaded from storage if it is not in memory."""

    def defaults(self) -> RoomConfig:
        """The configuration of a new room."""

    async def relist(self, room: Room) -> None:
        """Keep the other cluster nodes' room list current after a change."""


class RoomAdmin:
    def __init__(self, service: RoomDirectory) -> None:
        self._service = service

    @property
    def domain(self) -> str:
        return self._service.domain

    def _actor(self) -> JID:
        return JID.create("", self.domain)

    def room_jid(self, name: str) -> JID:
        try:
            return JID.create(name, self.domain)
        except InvalidJID:
            raise RoomAdminError("invalid", f"{name!r} is not a room name", "name") from None

    def room_jid_or_none(self, name: str) -> JID | None:
        """The JID of room ``name`` (``None``: not a room name)."""
        try:
            return JID.create(name, self.domain)
        except InvalidJID:
            return None

    async def names(self) -> list[str]:
        """Every room: stored (persistent) ones, those in memory, and in a cluster the
        public temporary rooms the other nodes announce (a hidden temporary room is
        known only to its node)."""
        names = {name for name, _ in await self._service.store.rooms()}
        cluster = self._service.ctx.cluster
        if cluster is not None:
            for jid in await cluster.announced(LISTED):
                local, _, domain = jid.partition("@")
                if domain == self.domain:
                    names.add(local)
        return sorted(names | set(self._service.rooms))

    async def get(self, name: str) -> Room:
        name = self.room_jid(name).local  # as stored: nodeprep'd
        room = await self._service.room(name)
        if room is None or room.gone:
            raise RoomAdminError("not-found", f"no room {name!r}")
        return room

    def _config(self, base: RoomConfig, changes: dict[str, Any]) -> RoomConfig:
        unknown = set(changes) - SETTINGS
        if unknown:
            field = sorted(unknown)[0]
            raise RoomAdminError("invalid", f"unknown setting {field!r}", field)
        if "whois" in changes and changes["whois"] not in WHOIS:
            raise RoomAdminError("invalid", f"whois: one of {', '.join(WHOIS)}", "whois")
        if "allow_pm" in changes and changes["allow_pm"] not in ALLOW_PM:
            raise RoomAdminError("invalid", f"allow_pm: one of {', '.join(ALLOW_PM)}", "allow_pm")
        limits = self._service.limits
        if changes.get("history_length", 0) > limits.max_history:
            raise RoomAdminError("invalid", f"at most {limits.max_history}", "history_length")
        if limits.max_users and changes.get("max_users", 0) > limits.max_users:
            raise RoomAdminError("invalid", f"at most {limits.max_users}", "max_users")
        return replace(base, **changes)

    async def create(
        self,
        name: str,
        settings: dict[str, Any],
        owners: list[JID],
        admins: list[JID],
        members: list[JID],
    ) -> Room:
        """A new room, unlocked, persistent unless ``settings`` say otherwise."""
        jid = self.room_jid(name)
        name = jid.local
        service = self._service
        if name in service.rooms or await service.store.load(name) is not None:
            raise RoomAdminError("conflict", f"room {name!r} exists")
        config = self._config(replace(service.defaults(), persistent=True), settings)
        affiliations = {m.bare: "member" for m in members}
        affiliations.update({a.bare: "admin" for a in admins})
        affiliations.update({o.bare: "owner" for o in owners})
        room = Room(
            host=service, jid=jid, config=config, salt=new_salt(), affiliations=affiliations
        )
        service.rooms[name] = room
        if config.persistent:
            await room.save()
        first_owner = owners[0].bare if owners else None
        await service.ctx.run(ROOM_CREATED, RoomEvent(jid, first_owner))
        await service.relist(room)
        return room

    async def set_affiliation(self, room: Room, jid: JID, affiliation: str) -> None:
        if affiliation not in AFFILIATIONS:
            raise RoomAdminError("invalid", f"one of {', '.join(AFFILIATIONS)}", "affiliation")
        bare = jid.bare
        if room.affiliation(bare) == "owner" and affiliation != "owner" and room.owners() == [bare]:
            raise RoomAdminError("conflict", "a room keeps at least one owner")
        await room._set_affiliation(bare, affiliation, "", actor_nick=None)

    async def configure(self, room: Room, changes: dict[str, Any]) -> None:
        new = self._config(room.config, changes)
        await room._reconfigure(new, {}, self._actor())
        await self._service.relist(room)

    async def destroy(self, room: Room) -> None:
        await room.destroy(None, None)
        await self._service.relist(room)

    def occupants(self, room: Room) -> list[OccupantView]:
        return [
            OccupantView(o.nick, o.bare, o.role, room.affiliation(o.bare))
            for o in sorted(room.occupants.values(), key=lambda o: o.nick)
        ]
