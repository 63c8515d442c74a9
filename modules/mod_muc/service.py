"""The MUC service of one host (``conference.<host>``): the destination the router hands
every stanza for the domain to. Stanzas to the service itself go to its
:class:`~xmppd.api.ServiceDomain` (disco, unique room names); stanzas to a room or an
occupant go to the room, found (or loaded, or created by a join) by its JID.

Rooms are found through :meth:`MucService.room` and handed stanzas with
:meth:`Room.handle`. In a cluster the service is served placed by the room's bare JID
(``ctx.serve_domain(..., placed_by=by_bare_jid)``): each room lives on the node that
rendezvous hashing of its JID chooses, every node forwards the room's stanzas there,
and when nodes join or die a node lets go of the rooms it no longer owns
(:meth:`MucService.rebalance`): their occupants are told with status 332, and the new
owner loads a persistent room from storage on its first stanza. Queries to the
service itself (disco, unique names) are answered by the node they reach.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

from xmppd.api import (
    JID,
    Destination,
    IqRequest,
    KeyedLocks,
    ServiceDomain,
    ServiceKey,
    Session,
    StanzaError,
    ns,
)
from xmppd.api.stanza import Element, child, error_reply, parse, payload
from xmppd_modules.mod_muc import errors
from xmppd_modules.mod_muc.admin import RoomAdmin
from xmppd_modules.mod_muc.archive import RoomArchive
from xmppd_modules.mod_muc.common import LISTED, NS_MUC, NS_MUC_UNIQUE, NS_VCARD, Ctx, avatar_hashes
from xmppd_modules.mod_muc.config import Limits, RoomConfig
from xmppd_modules.mod_muc.room import Room, addressed_elsewhere, new_salt
from xmppd_modules.mod_muc.store import RoomStore

_OWNED: Final = "muc-owners"
"""What a cluster node announces of the owners of the temporary rooms it holds (bare
JIDs, space-separated), so that ``max_rooms_per_user`` counts them on every node."""


class MucService:
    """One host's group chat service and the rooms it holds in memory."""

    def __init__(self, ctx: Ctx) -> None:
        self._ctx = ctx
        options = ctx.options
        self.domain = options.domain or f"conference.{ctx.domain}"
        self.name = options.name
        self._store = RoomStore(ctx)
        self._archive = RoomArchive(ctx)
        self._limits = Limits(max_users=options.max_occupants, max_history=options.max_history)
        self.rooms: dict[str, Room] = {}
        self._locks = KeyedLocks()
        self.service = ServiceDomain(ctx, self.domain, name=options.name)
        self.service.identity("conference", "text", options.name)
        self.service.feature(NS_MUC)
        self.service.feature(NS_VCARD)  # room avatars (XEP-0486)
        self.service.iq("get", ns.DISCO_ITEMS, "query")(self._disco_items)
        self.service.iq("get", NS_MUC_UNIQUE, "unique")(self._unique)
        self.entry: Destination = self
        """What the router hands the domain's stanzas to: in a cluster, the placement
        that forwards each to its room's node (set when the service is served)."""
        self.released = 0
        """Rooms let go of because another node owns them now (cluster)."""
        self._announced: dict[str, str] = {}
        self._owners_announced: dict[str, str] = {}
        """Temporary public rooms this node lists for the others (cluster): name → title."""

    # RoomHost
    @property
    def ctx(self) -> Ctx:
        return self._ctx

    @property
    def store(self) -> RoomStore:
        return self._store

    @property
    def archive(self) -> RoomArchive:
        return self._archive

    @property
    def limits(self) -> Limits:
        return self._limits

    def forget(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]

    async def redeliver(self, stanza: Element, to: JID, from_: JID) -> None:
        # Through the placement: a room released to another node gets its late stanzas.
        await self.entry.deliver(stanza, to, from_, None)

    # ------------------------------------------------------------------ cluster

    def holds(self, room: JID) -> bool:
        """Whether this node holds ``room`` (always, outside a cluster)."""
        cluster = self._ctx.cluster
        return cluster is None or cluster.is_mine(str(room.bare))

    def forget_user(self, bare: JID) -> None:
        """A removed account leaves the affiliations and nicknames of the rooms in
        memory here (storage is done by the caller)."""
        for room in self.rooms.values():
            room.affiliations.pop(bare, None)
            room.reasons.pop(bare, None)
            room.nicks.pop(bare, None)

    async def rebalance(self) -> None:
        """Nodes joined or died: let go of the rooms another node owns now. Their
        occupants are told the room shut down (332), so that clients join again (the
        join reaches the new owner); stanzas already queued for a released room follow
        it there."""
        for room in list(self.rooms.values()):
            if not self.holds(room.jid):
                await self.release(room)

    async def release(self, room: Room) -> None:
        """Unload ``room`` from this node (its stored state stays)."""
        self.forget(room)
        room.gone = True
        self.released += 1
        self._ctx.log.info("room %s moved to another node", room.jid)
        await self._list(room)
        await room.shutdown()

    def unload_idle(self, idle_for: float) -> int:
        """Let go of the persistent rooms idle for ``idle_for`` seconds with nobody in
        them (:meth:`Room.may_unload`); the next stanza for one loads it from storage
        again. Returns how many went."""
        now = time.monotonic()
        idle = [room for room in self.rooms.values() if room.may_unload(idle_for, now)]
        for room in idle:
            self.forget(room)
            room.gone = True  # a stanza that reached it meanwhile is routed again
        if idle:
            self._ctx.log.debug("unloaded %d idle rooms", len(idle))
        return len(idle)

    async def relist(self, room: Room) -> None:
        """A room changed outside a stanza (the REST API): list it for the other nodes
        as it is now."""
        await self._list(room)

    async def _list(self, room: Room) -> None:
        """Keep the other nodes' view of this node's temporary public rooms current
        (persistent ones are listed from storage): written only when it changes."""
        cluster = self._ctx.cluster
        if cluster is None:
            return
        listed = (
            self.rooms.get(room.name) is room
            and not room.gone
            and not room.locked
            and room.config.public
            and not room.config.persistent
        )
        title = room.config.name if listed else None
        await self._announce(self._announced, LISTED, room, title)
        held = self.rooms.get(room.name) is room and not room.gone
        owners = " ".join(sorted(str(j) for j, a in room.affiliations.items() if a == "owner"))
        temporary_owned = held and not room.config.persistent and bool(owners)
        await self._announce(
            self._owners_announced, _OWNED, room, owners if temporary_owned else None
        )

    async def _announce(
        self, announced: dict[str, str], kind: str, room: Room, value: str | None
    ) -> None:
        """Announce ``value`` for ``room`` (``None``: no longer) unless it is so already."""
        cluster = self._ctx.cluster
        if cluster is None or announced.get(room.name) == value:
            return
        if value is None:
            announced.pop(room.name, None)
        else:
            announced[room.name] = value
        await cluster.announce(kind, str(room.jid), value)

    # ------------------------------------------------------------------ Destination

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        if not to.local:
            await self.service.deliver(stanza, to, from_, origin)
            return
        room = self.rooms.get(to.local)
        if room is None:
            if addressed_elsewhere(stanza, to.bare):
                return  # a direct invitation shown to a room not in memory: no occupant
            try:
                room = await self.room(to.local, creator=self._creator(stanza, to, from_))
            except StanzaError as err:
                await self._bounce(stanza, err)
                return
        if room is None:
            if stanza.tag == "presence" and stanza.get("type") is not None:
                return  # unavailable, probes...: nothing to answer for a room that is not
            if stanza.tag == "iq" and to.resource:
                # Nobody is an occupant of a room that does not exist (any more: its
                # node died, the server restarted). XEP-0410 reads item-not-found as
                # "still joined under another nick", so a self-ping gets not-acceptable.
                await self._bounce(stanza, errors.NOT_OCCUPANT())
                return
            await self._bounce(stanza, errors.NO_SUCH_ROOM())
            return
        await room.handle(stanza, to, from_)
        await self._list(room)

    @staticmethod
    def _creator(stanza: Element, to: JID, from_: JID) -> JID | None:
        """The account that would create the room: the sender of a join presence."""
        if stanza.tag == "presence" and stanza.get("type") is None and to.resource:
            return from_
        return None

    async def room(self, name: str, *, creator: JID | None = None) -> Room | None:
        """The room ``name``: in memory, loaded from storage, or (when ``creator`` is
        given and may create rooms) a new one. ``StanzaError`` when creation is refused."""
        room = self.rooms.get(name)
        if room is not None:
            return room
        lock = self._locks.lock(name)
        async with lock:
            room = self.rooms.get(name)
            if room is not None:
                return room
            stored = await self._store.load(name)
            jid = JID.create(name, self.domain)
            if stored is not None:
                room = Room(
                    host=self,
                    jid=jid,
                    config=RoomConfig.from_json(stored.config, self._defaults()),
                    salt=stored.salt,
                    affiliations={j: a for j, (a, _) in stored.affiliations.items()},
                    reasons={j: r for j, (_, r) in stored.affiliations.items() if r},
                    nicks=dict(stored.nicks),
                    subject=stored.subject,
                    subject_by=stored.subject_by,
                    avatar=avatar_hashes(parse(stored.vcard.encode())) if stored.vcard else (),
                )
            elif creator is not None:
                await self._may_create(creator)
                room = Room(
                    host=self,
                    jid=jid,
                    config=self._defaults(),
                    salt=new_salt(),
                    affiliations={creator.bare: "owner"},
                    locked=self._ctx.options.lock_new_rooms,
                    fresh=True,
                )
                if room.config.persistent and not room.locked:
                    await room.save()
            else:
                return None
            self.rooms[name] = room
            return room

    @property
    def admin(self) -> RoomAdmin:
        """The service administrator's operations on rooms (the REST API's groups)."""
        return RoomAdmin(self)

    def defaults(self) -> RoomConfig:
        """The configuration of a new room (the service's options)."""
        return self._defaults()

    def _defaults(self) -> RoomConfig:
        options = self._ctx.options
        return RoomConfig(
            persistent=options.persistent_by_default,
            public=options.public_by_default,
            history_length=min(options.default_history, options.max_history),
        )

    async def _may_create(self, creator: JID) -> None:
        ctx = self._ctx
        if not ctx.may(ctx.options.create_rooms, creator):
            raise errors.CREATE_DENIED()
        limit = ctx.options.max_rooms_per_user
        if limit and not ctx.is_admin(creator):
            owned = await self._store.owned(creator.bare)
            owned |= {
                name
                for name, room in self.rooms.items()
                if room.affiliations.get(creator.bare) == "owner"
            }
            cluster = ctx.cluster
            if cluster is not None:  # temporary rooms held by the other nodes
                for jid, owners in (await cluster.announced(_OWNED)).items():
                    local, _, domain = jid.partition("@")
                    if domain == self.domain and str(creator.bare) in owners.split():
                        owned.add(local)
            if len(owned) >= limit:
                raise errors.TOO_MANY_ROOMS()

    async def _bounce(self, stanza: Element, err: StanzaError) -> None:
        reply = error_reply(stanza, err)
        if reply is not None and reply.get("to"):
            await self._ctx.send(reply)

    # ------------------------------------------------------------------ the service's IQs

    async def _disco_items(self, req: IqRequest) -> Element:
        """§6.3: the public rooms (locked and hidden ones are not listed)."""
        if req.payload.get("node") is not None:
            raise StanzaError("item-not-found")
        listed: dict[str, str] = {}
        for name, config_json in await self._store.rooms():
            config = RoomConfig.from_json(config_json, self._defaults())
            if config.public:
                listed[name] = config.name
        cluster = self._ctx.cluster
        if cluster is not None:  # temporary public rooms on every node
            for jid, title in (await cluster.announced(LISTED)).items():
                local, _, domain = jid.partition("@")
                if domain == self.domain:
                    listed[local] = title
        for name, room in self.rooms.items():
            if room.config.public and not room.locked:
                listed[name] = room.config.name
            else:
                listed.pop(name, None)
        result = payload(ns.DISCO_ITEMS, "query")
        for name in sorted(listed):
            attrs = {"jid": f"{name}@{self.domain}"}
            attrs["name"] = listed[name] or name
            child(result, "item", attrs)
        return req.result(result)

    async def _unique(self, req: IqRequest) -> Element:
        """§10.1.4: a room name nobody uses."""
        unique = payload(NS_MUC_UNIQUE, "unique")
        unique.text = secrets.token_hex(10)
        return req.result(unique)

    async def shutdown(self) -> None:
        for room in list(self.rooms.values()):
            await room.shutdown()


MUC: Final = ServiceKey[MucService]("muc")
"""The host's MUC service (for modules that look rooms up)."""

__all__ = ["MUC", "MucService"]
