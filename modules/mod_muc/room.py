"""One room (XEP-0045): its occupants, roles, affiliations, history and subject, and
the state machine that every stanza addressed to the room or one of its occupants
goes through.

A room is reached through one interface, :meth:`Room.handle` (hand it a stanza), and
processes its stanzas one at a time in arrival order. It talks to the world only
through its :class:`RoomHost` (send a stanza, run a hook, store, forget the room),
so the place where a room lives (this process now, a cluster node later) is not the
room's concern.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

from xmppd.api import JID, Drop, InvalidJID, StanzaError, ns
from xmppd.api.stanza import (
    Element,
    child,
    copy,
    element,
    error_reply,
    find_child,
    in_client_namespace,
    iq_result,
    new_id,
    parse,
    payload,
    serialize,
)
from xmppd_modules.mam_common import (
    NS_MAM,
    NS_SID,
    fin,
    parse_rsm,
    query_fields,
    result_message,
    unknown_field,
)
from xmppd_modules.mod_muc import errors
from xmppd_modules.mod_muc.archive import Filters
from xmppd_modules.mod_muc.common import (
    AFFILIATION_RANK,
    AFFILIATIONS,
    NS_CONFERENCE,
    NS_MUC,
    NS_MUC_ADMIN,
    NS_MUC_OWNER,
    NS_MUC_REGISTER,
    NS_MUC_REQUEST,
    NS_MUC_STABLE_ID,
    NS_MUC_USER,
    NS_OCCUPANT_ID,
    NS_VCARD,
    NS_VCARD_UPDATE,
    ROLE_RANK,
    ROLES,
    Ctx,
    Status,
    avatar_hashes,
)
from xmppd_modules.mod_muc.config import (
    Limits,
    RoomConfig,
    apply_form,
    config_form,
    feature_vars,
    form_values,
    info_form,
)
from xmppd_modules.mod_muc.hooks import (
    GROUPCHAT_MESSAGE,
    OCCUPANT_JOINED,
    OCCUPANT_LEFT,
    OCCUPANT_ROLE_CHANGED,
    ROOM_CONFIGURED,
    ROOM_CREATED,
    ROOM_DESTROYED,
    GroupchatContext,
    OccupantEvent,
    RoomEvent,
)

if TYPE_CHECKING:
    from xmppd_modules.mod_muc.archive import RoomArchive
    from xmppd_modules.mod_muc.store import RoomStore

_X_MUC: Final = f"{{{NS_MUC}}}x"
_X_USER: Final = f"{{{NS_MUC_USER}}}x"
_OCCUPANT_ID: Final = f"{{{NS_OCCUPANT_ID}}}occupant-id"
_DATA_FORM: Final = f"{{{ns.DATA_FORMS}}}x"
_PING: Final = f"{{{ns.PING}}}ping"
_STANZA_ID: Final = f"{{{NS_SID}}}stanza-id"
_MAM_QUERY: Final = f"{{{NS_MAM}}}query"
NS_RETRACT: Final = "urn:xmpp:message-retract:1"
NS_MODERATE: Final = "urn:xmpp:message-moderate:1"
_RETRACT: Final = f"{{{NS_RETRACT}}}retract"
_MODERATE: Final = f"{{{NS_MODERATE}}}moderate"
_MAM_PAGE: Final = 50
_MAM_MAX_PAGE: Final = 250
_STRIP_FROM_PRESENCE: Final = frozenset({_X_MUC, _X_USER, _OCCUPANT_ID})
_FATAL_ERRORS: Final = frozenset(
    {
        "gone",
        "item-not-found",
        "recipient-unavailable",
        "redirect",
        "remote-server-not-found",
        "remote-server-timeout",
        "service-unavailable",
    }
)
"""Error conditions that mean an occupant's session is gone (a ghost to remove)."""


class RoomHost(Protocol):
    """What a room needs from the service it lives in."""

    @property
    def ctx(self) -> Ctx: ...

    @property
    def store(self) -> RoomStore: ...

    @property
    def archive(self) -> RoomArchive: ...

    @property
    def limits(self) -> Limits: ...

    def forget(self, room: Room) -> None:
        """The room is gone (destroyed, or a temporary room that emptied)."""

    async def redeliver(self, stanza: Element, to: JID, from_: JID) -> None:
        """Hand a stanza that reached a room after it was gone back to the service."""


@dataclass(slots=True)
class Occupant:
    """Someone in the room under ``nick``: one account, possibly several of its sessions
    (``presences``: full JID -> the last presence that session sent, stripped)."""

    nick: str
    bare: JID
    role: str
    occupant_id: str
    presences: dict[JID, Element]
    latest: JID
    tokens: float
    refilled: float

    @property
    def presence(self) -> Element:
        return self.presences[self.latest]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    stanza: Element
    """The message as broadcast, without ``to``."""
    at: float
    size: int


@dataclass(frozen=True, slots=True)
class _ForwardedIq:
    """An IQ the room forwarded to an occupant (§7.7 private IQ): where its answer goes."""

    asker: JID
    """The asking occupant's real full JID."""
    asked_id: str | None
    target: JID
    """The real JID the IQ went to (the answer must come from it)."""
    target_nick: str


_MAX_FORWARDED: Final = 1000
"""IQs forwarded and not answered yet that a room remembers (the oldest are forgotten)."""
_ROOMUSER_NODE: Final = "x-roomuser-item"


@dataclass(slots=True)
class _Queued:
    stanza: Element
    to: JID
    from_: JID


@dataclass(slots=True)
class Room:
    """A room's state. Create it through the service (:class:`~.service.MucService`)."""

    host: RoomHost
    jid: JID
    config: RoomConfig
    salt: str
    affiliations: dict[JID, str] = field(default_factory=dict)
    reasons: dict[JID, str] = field(default_factory=dict)
    nicks: dict[JID, str] = field(default_factory=dict)
    """Registered nicknames (§7.10), by bare JID."""
    occupants: dict[str, Occupant] = field(default_factory=dict)
    by_jid: dict[JID, str] = field(default_factory=dict)
    history: deque[HistoryEntry] = field(default_factory=deque)
    subject: str = ""
    subject_by: str = ""
    locked: bool = False
    fresh: bool = False
    """Created by the join being handled: its self-presence carries 201."""
    gone: bool = False
    avatar: tuple[str, ...] = ()
    """SHA-1 hashes of the avatar images in the room's vCard (XEP-0486), hex."""
    _vcard: bytes | None = None
    """A temporary room's vCard (a persistent room's is read from storage)."""
    _forwarded: dict[str, _ForwardedIq] = field(default_factory=dict)
    _queue: deque[_Queued] = field(default_factory=deque)
    _busy: bool = False
    last_used: float = field(default_factory=time.monotonic)
    """When the room last took a stanza (``time.monotonic``): idle rooms are unloaded."""

    # ------------------------------------------------------------------ the interface

    async def handle(self, stanza: Element, to: JID, from_: JID) -> None:
        """Take a stanza addressed to the room or one of its occupants. Stanzas are
        processed one at a time, in order; a stanza that arrives while the room is busy
        (from another session, or caused by the room's own sending) waits its turn."""
        mine = _Queued(stanza, to, from_)
        self._queue.append(mine)
        self.last_used = time.monotonic()
        if not self._busy:
            await self._work(mine)

    async def _work(self, mine: _Queued | None) -> None:
        """Process the queue until it is empty, in this task: the caller's own stanza
        (``mine``) inline. A stanza another session queued meanwhile was acknowledged to
        its sender already, and this task may be cancelled (its session closing): it
        runs in a task of its own, which a cancellation here leaves to finish, and the
        queue goes on behind it in a task of the server (:meth:`_resume_after`)."""
        self._busy = True
        handed_on = False
        try:
            while self._queue:
                item = self._queue.popleft()
                if mine is None or item is mine:
                    await self._process(item.stanza, item.to, item.from_)
                    continue
                step = asyncio.ensure_future(self._process(item.stanza, item.to, item.from_))
                try:
                    await asyncio.shield(step)
                except asyncio.CancelledError:
                    if not step.done():
                        handed_on = True
                        self.ctx.spawn(self._resume_after(step), name=f"muc room {self.jid}")
                    raise
        finally:
            if not handed_on:
                self._busy = False
                if self._queue:
                    # Cancelled or failed with stanzas waiting: a task of the server goes on.
                    self._busy = True
                    self.ctx.spawn(self._resume_after(None), name=f"muc room {self.jid}")

    async def _resume_after(self, step: asyncio.Future[None] | None) -> None:
        """Let ``step`` finish (the room stays busy: nothing overtakes it), then go on
        with the queue."""
        if step is not None:
            try:
                await step
            except Exception:
                self.ctx.log.exception("%s: a queued stanza failed", self.jid)
        await self._work(None)

    @property
    def ctx(self) -> Ctx:
        return self.host.ctx

    @property
    def name(self) -> str:
        return self.jid.local

    @property
    def is_empty(self) -> bool:
        return not self.occupants

    def may_unload(self, idle_for: float, now: float) -> bool:
        """Whether the room can leave memory now: persistent (its state is stored),
        nobody in it, nothing queued or being handled, no history that lives in memory
        only, and no stanza for ``idle_for`` seconds."""
        return (
            self.config.persistent
            and not self.occupants
            and not self._busy
            and not self._queue
            and not self._forwarded
            and (self.archived or not self.history)
            and now - self.last_used >= idle_for
        )

    @property
    def archived(self) -> bool:
        """Groupchat messages go to the room's archive (XEP-0313): a persistent room
        whose owners left archiving on."""
        return self.config.persistent and self.config.archive

    def affiliation(self, jid: JID) -> str:
        return self.affiliations.get(jid.bare, "none")

    def owners(self) -> list[JID]:
        return [j for j, a in self.affiliations.items() if a == "owner"]

    # ------------------------------------------------------------------ dispatch

    async def _process(self, stanza: Element, to: JID, from_: JID) -> None:
        if self.gone:
            await self.host.redeliver(stanza, to, from_)
            return
        try:
            if stanza.tag == "presence":
                await self._on_presence(stanza, to, from_)
            elif stanza.tag == "message":
                await self._on_message(stanza, to, from_)
            elif stanza.tag == "iq":
                await self._on_iq(stanza, to, from_)
        except StanzaError as err:
            await self._bounce(stanza, err)
        except Exception:
            self.ctx.log.exception("room %s crashed on a %s", self.jid, stanza.tag)
            await self._bounce(stanza, StanzaError("internal-server-error"))
        if not self.gone and self.is_empty and not self.config.persistent:
            await self._vanish()

    async def _bounce(self, stanza: Element, err: StanzaError) -> None:
        reply = error_reply(stanza, err)
        if (
            reply is not None
            and stanza.tag == "presence"
            and find_child(stanza, NS_MUC, "x") is not None
        ):
            # A refused join carries the MUC <x/> back, as the examples of §7.2.6-7.2.11
            # show; clients (slixmpp's xep_0045) match join errors by it.
            reply.insert(0, payload(NS_MUC, "x"))
        if reply is not None and reply.get("to"):
            await self.ctx.send(reply)

    async def _vanish(self) -> None:
        """A temporary room whose last occupant left (or whose creation failed)."""
        self.gone = True
        self.host.forget(self)
        if not self.fresh:
            await self.ctx.run(ROOM_DESTROYED, RoomEvent(self.jid, None))

    # ------------------------------------------------------------------ presence

    async def _on_presence(self, stanza: Element, to: JID, from_: JID) -> None:
        ptype = stanza.get("type")
        current = self.by_jid.get(from_)
        occupant = self.occupants.get(current) if current is not None else None
        if ptype == "error":
            if occupant is not None:
                await self._remove(occupant, from_, codes=(Status.TECHNICAL,), why="error")
            return
        if ptype == "unavailable":
            if occupant is not None:
                await self._remove(occupant, from_, status=stanza, why="leave")
            return
        if ptype is not None:
            return  # subscriptions and probes mean nothing to a room
        nick = to.resource
        if not nick:
            raise errors.NICK_MISSING()
        if occupant is None:
            await self._join(stanza, nick, from_)
        elif occupant.nick == nick:
            occupant.presences[from_] = _stripped(stanza)
            occupant.latest = from_
            if find_child(stanza, NS_MUC, "x") is not None:
                # A join from a session that is already in: it lost track (a reconnect,
                # a failed self-ping), so it gets the room's state again.
                await self._send_state(occupant, from_, stanza, codes=())
            await self._broadcast_presence(occupant, exclude_session=None)
        else:
            await self._change_nick(occupant, from_, nick, stanza)

    def _check_nick(self, nick: str) -> None:
        if not nick.strip() or len(nick) > self.ctx.options.max_nick_length:
            raise errors.NICK_INVALID()

    def _nick_owner(self, nick: str) -> JID | None:
        for jid, registered in self.nicks.items():
            if registered == nick:
                return jid
        return None

    def _default_role(self, affiliation: str) -> str:
        if affiliation in ("owner", "admin"):
            return "moderator"
        if self.config.moderated and affiliation != "member":
            return "visitor"
        return "participant"

    def _occupant_id(self, bare: JID) -> str:
        digest = hashlib.sha256(f"{self.salt}\0{bare}".encode()).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def _max_users(self) -> int:
        service = self.ctx.options.max_occupants
        return min(self.config.max_users, service) if self.config.max_users else service

    async def _join(self, stanza: Element, nick: str, from_: JID) -> None:
        self._check_nick(nick)
        bare = from_.bare
        affiliation = self.affiliation(bare)
        privileged = affiliation in ("owner", "admin")
        if self.locked and affiliation != "owner":
            raise errors.ROOM_LOCKED()
        if affiliation == "outcast":
            raise errors.BANNED()
        if self.config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
            raise errors.MEMBERS_ONLY()
        existing = self.occupants.get(nick)
        if existing is not None and existing.bare != bare:
            raise errors.NICK_CONFLICT()
        registered = self._nick_owner(nick)
        if registered is not None and registered != bare:
            raise errors.NICK_RESERVED()
        x = find_child(stanza, NS_MUC, "x")
        if self.config.password and not privileged:
            given = find_child(x, NS_MUC, "password") if x is not None else None
            if given is None or (given.text or "") != self.config.password:
                raise errors.BAD_PASSWORD()
        if existing is None and len(self.occupants) >= self._max_users() and not privileged:
            raise errors.ROOM_FULL()
        now = time.monotonic()
        if existing is not None:
            # Another session of the same account joins under the same nickname.
            existing.presences[from_] = _stripped(stanza)
            existing.latest = from_
            self.by_jid[from_] = nick
            await self._send_state(existing, from_, stanza, codes=())
            return
        occupant = Occupant(
            nick=nick,
            bare=bare,
            role=self._default_role(affiliation),
            occupant_id=self._occupant_id(bare),
            presences={from_: _stripped(stanza)},
            latest=from_,
            tokens=float(self.ctx.options.message_burst),
            refilled=now,
        )
        self.occupants[nick] = occupant
        self.by_jid[from_] = nick
        codes: list[str] = []
        if self.fresh:
            codes.append(Status.CREATED)
        await self._broadcast_presence(occupant, exclude_session=from_, self_too=False)
        await self._send_state(occupant, from_, stanza, codes=codes)
        if self.fresh:
            self.fresh = False
            await self.ctx.run(ROOM_CREATED, RoomEvent(self.jid, bare))
        await self.ctx.run(
            OCCUPANT_JOINED,
            OccupantEvent(self.jid, nick, from_, occupant.role, affiliation, "join"),
        )

    async def _send_state(
        self, occupant: Occupant, session: JID, join: Element, *, codes: Sequence[str]
    ) -> None:
        """What a joining session gets (§7.2.3-7.2.16): the other occupants' presence,
        its own presence last among them with 110, then history, then the subject."""
        see_jids = self._sees_jids(occupant)
        for other in list(self.occupants.values()):
            if other is occupant:
                continue
            await self._send(self._presence(other, with_jid=see_jids), session)
        own = [Status.SELF]
        if self.config.non_anonymous:
            own.append(Status.NON_ANONYMOUS)
        if self.archived:
            own.append(Status.LOGGING)  # §7.2.13
        own.extend(codes)
        mine = self._presence(occupant, with_jid=True, codes=own)
        if (pid := join.get("id")) is not None:
            mine.set("id", pid)
        await self._send(mine, session)
        for entry in await self._history_for(find_child(join, NS_MUC, "x")):
            await self._send(self._delayed(entry), session)
        await self._send(self._subject_message(), session)
        if self.avatar:
            await self._send(self._avatar_presence(), session)

    def _sees_jids(self, occupant: Occupant) -> bool:
        return self.config.non_anonymous or occupant.role == "moderator"

    def _presence(
        self,
        occupant: Occupant,
        *,
        with_jid: bool,
        codes: Iterable[str] = (),
        unavailable: bool = False,
        status: Element | None = None,
        new_nick: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
        destroy: Element | None = None,
        role: str | None = None,
        affiliation: str | None = None,
    ) -> Element:
        """The presence of ``occupant`` as the room sends it (no ``to`` yet)."""
        if unavailable:
            stanza = element("presence", {"type": "unavailable"})
            if status is not None:
                for text in status.findall("status"):
                    stanza.append(copy(text))
        else:
            stanza = copy(occupant.presence)
        stanza.set("from", f"{self.jid}/{occupant.nick}")
        x = child(stanza, "x", namespace=NS_MUC_USER)
        attrs = {
            "affiliation": affiliation or self.affiliation(occupant.bare),
            "role": role or occupant.role,
        }
        if with_jid:
            attrs["jid"] = str(occupant.latest)
        if new_nick is not None:
            attrs["nick"] = new_nick
        item = child(x, "item", attrs)
        if actor is not None:
            child(item, "actor", {"nick": actor})
        if reason:
            child(item, "reason", text=reason)
        if destroy is not None:
            x.append(destroy)
        for code in codes:
            child(x, "status", {"code": code})
        child(stanza, "occupant-id", {"id": occupant.occupant_id}, namespace=NS_OCCUPANT_ID)
        return stanza

    async def _send(self, stanza: Element, to: JID) -> None:
        stanza.set("to", str(to))
        await self.ctx.send(stanza)

    async def _to_all(self, template: Element, *, skip: Occupant | None = None) -> None:
        """Send a copy of ``template`` to every session of every occupant, serialised
        once for the room (``ctx.send_many``: each copy is still routed and hooked on
        its own; only the bytes are shared)."""
        recipients = [
            session
            for occupant in list(self.occupants.values())
            if occupant is not skip
            for session in list(occupant.presences)
        ]
        await self.ctx.send_many(template, recipients)

    async def _broadcast_presence(
        self,
        occupant: Occupant,
        *,
        exclude_session: JID | None,
        self_too: bool = True,
        codes: Sequence[str] = (),
        **kw: object,
    ) -> None:
        """``occupant``'s presence to everyone: to the others (with its real JID for
        those who may see it), then to its own sessions with 110."""
        seeing: list[JID] = []
        blind: list[JID] = []
        for other in list(self.occupants.values()):
            if other is not occupant:
                (seeing if self._sees_jids(other) else blind).extend(other.presences)
        if seeing:
            revealing = self._presence(occupant, with_jid=True, codes=codes, **kw)  # type: ignore[arg-type]
            await self.ctx.send_many(revealing, seeing)
        if blind:
            plain = self._presence(occupant, with_jid=False, codes=codes, **kw)  # type: ignore[arg-type]
            await self.ctx.send_many(plain, blind)
        if not self_too:
            return
        own = self._presence(occupant, with_jid=True, codes=(Status.SELF, *codes), **kw)  # type: ignore[arg-type]
        for session in list(occupant.presences):
            if session != exclude_session:
                await self._send(copy(own), session)

    async def _change_nick(
        self, occupant: Occupant, session: JID, nick: str, stanza: Element
    ) -> None:
        """§7.6: unavailable with 303 and the new nickname, then available under it."""
        self._check_nick(nick)
        if nick in self.occupants:
            raise errors.NICK_CONFLICT()
        registered = self._nick_owner(nick)
        if registered is not None and registered != occupant.bare:
            raise errors.NICK_RESERVED()
        await self._broadcast_presence(
            occupant,
            exclude_session=None,
            unavailable=True,
            new_nick=nick,
            codes=(Status.NEW_NICK,),
        )
        del self.occupants[occupant.nick]
        occupant.nick = nick
        occupant.presences[session] = _stripped(stanza)
        occupant.latest = session
        self.occupants[nick] = occupant
        for full in occupant.presences:
            self.by_jid[full] = nick
        await self._broadcast_presence(occupant, exclude_session=None)

    async def _remove(
        self,
        occupant: Occupant,
        session: JID | None,
        *,
        codes: Sequence[str] = (),
        status: Element | None = None,
        actor: str | None = None,
        reason: str | None = None,
        destroy: Element | None = None,
        why: str,
    ) -> None:
        """One session of ``occupant`` leaves (``session``), or all of them (``None``:
        kicked, banned, destroyed). Everyone gets the unavailable presence."""
        sessions = [session] if session is not None else list(occupant.presences)
        if session is not None and len(occupant.presences) > 1:
            # One of several sessions under this nickname: only that session is told.
            leaving = self._presence(
                occupant, with_jid=True, unavailable=True, status=status, codes=(Status.SELF,)
            )
            del occupant.presences[session]
            self.by_jid.pop(session, None)
            occupant.latest = next(iter(occupant.presences))
            await self._send(leaving, session)
            return
        role = "none"
        affiliation = self.affiliation(occupant.bare)
        kw: dict[str, object] = {
            "unavailable": True,
            "status": status,
            "actor": actor,
            "reason": reason,
            "destroy": destroy,
            "role": role,
        }
        # Others first, then the occupant itself: it is no longer in the room after.
        del self.occupants[occupant.nick]
        for full in sessions:
            self.by_jid.pop(full, None)
        for other in list(self.occupants.values()):
            template = self._presence(occupant, with_jid=self._sees_jids(other), codes=codes, **kw)  # type: ignore[arg-type]
            for full in list(other.presences):
                await self._send(template if len(other.presences) == 1 else copy(template), full)
        own = self._presence(occupant, with_jid=True, codes=(Status.SELF, *codes), **kw)  # type: ignore[arg-type]
        for full in sessions:
            await self._send(copy(own), full)
        occupant.role = "none"
        await self.ctx.run(
            OCCUPANT_LEFT,
            OccupantEvent(self.jid, occupant.nick, occupant.latest, "none", affiliation, why),
        )

    # ------------------------------------------------------------------ messages

    async def _on_message(self, stanza: Element, to: JID, from_: JID) -> None:
        mtype = stanza.get("type", "normal")
        current = self.by_jid.get(from_)
        occupant = self.occupants.get(current) if current is not None else None
        if mtype == "error":
            if occupant is not None and _error_condition(stanza) in _FATAL_ERRORS:
                await self._remove(occupant, None, codes=(Status.TECHNICAL,), why="error")
            return
        if to.resource:
            await self._private(stanza, to.resource, occupant, mtype)
            return
        if mtype == "groupchat":
            if occupant is None:
                raise errors.NOT_OCCUPANT()
            await self._groupchat(stanza, occupant, from_)
            return
        if addressed_elsewhere(stanza, self.jid):
            # A XEP-0249 direct invitation an occupant sent to someone (the service
            # shows it to the room on its way, see the module's user_send_packet fold).
            await self._direct_invite(stanza, occupant, from_)
            return
        x_user = find_child(stanza, NS_MUC_USER, "x")
        if x_user is not None and x_user.find(f"{{{NS_MUC_USER}}}invite") is not None:
            await self._invite(x_user, occupant, from_)
            return
        if (
            x_user is not None
            and (decline := find_child(x_user, NS_MUC_USER, "decline")) is not None
        ):
            await self._decline(decline, from_)
            return
        form = find_child(stanza, ns.DATA_FORMS, "x")
        if form is not None and form_values(form)[0] == NS_MUC_REQUEST:
            if occupant is None:
                raise errors.NOT_OCCUPANT()
            await self._voice_form(stanza, form, occupant)
            return
        if occupant is None:
            raise errors.NOT_OCCUPANT()
        raise errors.BAD_REQUEST("this message type is not handled by the room")

    # ------------------------------------------------------------------ invitations (§7.8)

    def _may_invite(self, occupant: Occupant) -> bool:
        return (
            self.config.allow_invites
            or occupant.role == "moderator"
            or AFFILIATION_RANK[self.affiliation(occupant.bare)] >= AFFILIATION_RANK["admin"]
        )

    async def _admit_invitee(self, invitee: JID, occupant: Occupant) -> None:
        """A members-only room makes an invited account a member (§7.8.1 allows it), so
        that the invitation can be accepted."""
        if self.config.members_only and self.affiliation(invitee) == "none":
            self._check_room_for(invitee.bare)
            await self._set_affiliation(invitee.bare, "member", "", actor_nick=occupant.nick)

    async def _invite(self, x_user: Element, occupant: Occupant | None, from_: JID) -> None:
        """§7.8.1: the room passes each invitation on, from itself, naming the inviter."""
        if occupant is None:
            raise errors.NOT_OCCUPANT()
        if not self._may_invite(occupant):
            raise errors.INVITE_DENIED()
        invitees: list[tuple[JID, Element]] = []
        for invite in x_user.findall(f"{{{NS_MUC_USER}}}invite"):
            try:
                invitees.append((JID.parse(invite.get("to", "")), invite))
            except InvalidJID:
                raise StanzaError("jid-malformed", "an invitation needs a valid 'to'") from None
        for invitee, _ in invitees:
            if self.affiliation(invitee) == "outcast":
                raise errors.INVITE_BANNED()
        for invitee, invite in invitees:
            await self._admit_invitee(invitee, occupant)
            message = element("message", {"from": str(self.jid), "to": str(invitee)})
            x = child(message, "x", namespace=NS_MUC_USER)
            out = child(x, "invite", {"from": str(from_)})
            if (reason := find_child(invite, NS_MUC_USER, "reason")) is not None:
                child(out, "reason", text=reason.text or "")
            if self.config.password:
                child(x, "password", text=self.config.password)
            await self.ctx.send(message)

    async def _decline(self, decline: Element, from_: JID) -> None:
        """§7.8.2: the invitee's decline goes on to the inviter, from the room."""
        try:
            inviter = JID.parse(decline.get("to", ""))
        except InvalidJID:
            raise StanzaError("jid-malformed", "a decline needs a valid 'to'") from None
        message = element("message", {"from": str(self.jid), "to": str(inviter)})
        x = child(message, "x", namespace=NS_MUC_USER)
        out = child(x, "decline", {"from": str(from_.bare)})
        if (reason := find_child(decline, NS_MUC_USER, "reason")) is not None:
            child(out, "reason", text=reason.text or "")
        await self.ctx.send(message)

    async def _direct_invite(self, stanza: Element, occupant: Occupant | None, from_: JID) -> None:
        """XEP-0249: an occupant invited someone directly. The message itself goes to
        the invitee untouched; a members-only room that lets this occupant invite makes
        the invitee a member. Never an error: the invitation is not the room's."""
        if occupant is None or not self._may_invite(occupant):
            return
        try:
            invitee = JID.parse(stanza.get("to", "")).bare
        except InvalidJID:
            return
        if invitee.domain != self.jid.domain:
            await self._admit_invitee(invitee, occupant)

    # ------------------------------------------------------------------ voice (§7.13, §8.6)

    async def _voice_form(self, stanza: Element, form: Element, occupant: Occupant) -> None:
        _, values = form_values(form)
        if occupant.role == "moderator" and "muc#request_allow" in values:
            await self._voice_approval(values, occupant)
            return
        if not self.config.allow_voice_requests:
            raise errors.VOICE_REQUESTS_OFF()
        if occupant.role != "visitor":
            return  # already has voice: nothing to ask
        self._check_rate_and_size(stanza, occupant)
        request = element("message", {"from": str(self.jid)})
        x = child(request, "x", {"type": "form"}, namespace=ns.DATA_FORMS)
        child(x, "title", text="Voice request")
        child(
            x,
            "instructions",
            text="To approve this request for voice, select the checkbox and submit.",
        )
        for var, ftype, label, value in (
            ("FORM_TYPE", "hidden", "", NS_MUC_REQUEST),
            ("muc#role", "list-single", "Requested role", "participant"),
            ("muc#jid", "jid-single", "User ID", str(occupant.latest)),
            ("muc#roomnick", "text-single", "Room nickname", occupant.nick),
            ("muc#request_allow", "boolean", "Grant voice to this person?", "false"),
        ):
            attrs = {"var": var, "type": ftype}
            if label:
                attrs["label"] = label
            child(child(x, "field", attrs), "value", text=value)
        for moderator in list(self.occupants.values()):
            if moderator.role == "moderator":
                for session in list(moderator.presences):
                    await self._send(copy(request), session)

    async def _voice_approval(self, values: dict[str, list[str]], moderator: Occupant) -> None:
        """§8.6: a moderator submitted the request form; ``muc#request_allow`` true grants
        voice to the occupant it names (by nickname)."""
        allow = (values.get("muc#request_allow") or [""])[0].strip()
        if allow not in ("1", "true"):
            return
        nick = (values.get("muc#roomnick") or [""])[0]
        target = self.occupants.get(nick)
        if target is None:
            raise errors.NO_SUCH_OCCUPANT()
        if target.role == "visitor":
            await self._set_role(target, "participant", "", moderator.nick)

    def _check_rate_and_size(self, stanza: Element, occupant: Occupant) -> None:
        opts = self.ctx.options
        if len(serialize(stanza)) > opts.max_message_size:
            raise errors.TOO_LARGE()
        now = time.monotonic()
        occupant.tokens = min(
            float(opts.message_burst),
            occupant.tokens + (now - occupant.refilled) * opts.messages_per_second,
        )
        occupant.refilled = now
        if occupant.tokens < 1.0:
            raise errors.RATE_LIMITED()
        occupant.tokens -= 1.0

    async def _groupchat(self, stanza: Element, occupant: Occupant, from_: JID) -> None:
        if ROLE_RANK[occupant.role] < ROLE_RANK["participant"]:
            raise errors.NO_VOICE()
        self._check_rate_and_size(stanza, occupant)
        subject = find_child(stanza, None, "subject")
        is_subject = subject is not None and find_child(stanza, None, "body") is None
        if is_subject and not (occupant.role == "moderator" or self.config.change_subject):
            raise errors.SUBJECT_DENIED()
        folded = await self.ctx.fold_hook(
            GROUPCHAT_MESSAGE, stanza, GroupchatContext(self.jid, occupant.nick, from_)
        )
        if isinstance(folded, Drop):
            return
        if (retract := find_child(folded, NS_RETRACT, "retract")) is not None:
            await self._retract_own(retract, occupant)
        template = copy(folded)
        for el in template.findall(_OCCUPANT_ID):
            template.remove(el)
        room = str(self.jid)
        for el in template.findall(_STANZA_ID):
            if el.get("by") == room:  # only the room may say what its ids are
                template.remove(el)
        if "to" in template.attrib:
            del template.attrib["to"]
        template.set("from", f"{self.jid}/{occupant.nick}")
        template.set("type", "groupchat")
        child(template, "occupant-id", {"id": occupant.occupant_id}, namespace=NS_OCCUPANT_ID)
        archive = self.host.archive
        reserved = archive.reserve()
        child(template, "stanza-id", {"by": room, "id": str(reserved[0])}, namespace=NS_SID)
        if is_subject:
            assert subject is not None
            self.subject = subject.text or ""
            self.subject_by = occupant.nick
            if self.config.persistent:
                await self.host.store.save_subject(self.name, self.subject, self.subject_by)
        elif self.archived:
            await archive.store(
                self.name,
                reserved,
                occupant.nick,
                str(occupant.bare),
                occupant.occupant_id,
                serialize(template).decode("utf-8"),
            )
        else:
            self._remember(template)
        await self._to_all(template)

    def _remember(self, template: Element) -> None:
        keep = min(self.config.history_length, self.ctx.options.max_history)
        if keep <= 0:
            self.history.clear()
            return
        self.history.append(HistoryEntry(template, time.time(), len(serialize(template))))
        while len(self.history) > keep:
            self.history.popleft()

    async def _recent(self) -> list[HistoryEntry]:
        """The messages a joining occupant may get: from the archive when the room has
        one (so history survives a restart), else those kept in memory."""
        if not self.archived:
            return list(self.history)
        keep = min(self.config.history_length, self.ctx.options.max_history)
        rows = await self.host.archive.latest(self.name, keep)
        return [
            HistoryEntry(parse(row.stanza.encode("utf-8")), row.stamp / 1e6, len(row.stanza))
            for row in rows
        ]

    async def _history_for(self, x: Element | None) -> list[HistoryEntry]:
        """The history a joining occupant asked for (§7.2.15): the newest messages
        within every limit it gave (maxstanzas, maxchars, seconds, since)."""
        entries = await self._recent()
        request = find_child(x, NS_MUC, "history") if x is not None else None
        if request is None:
            return entries
        try:
            if (value := request.get("maxstanzas")) is not None:
                count = max(0, int(value))
                entries = entries[len(entries) - count :] if count else []
            if (value := request.get("seconds")) is not None:
                cutoff = time.time() - max(0, int(value))
                entries = [e for e in entries if e.at >= cutoff]
            if (value := request.get("since")) is not None:
                since = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                entries = [e for e in entries if e.at >= since]
            if (value := request.get("maxchars")) is not None:
                budget = max(0, int(value))
                chosen: list[HistoryEntry] = []
                for entry in reversed(entries):
                    if entry.size > budget:
                        break
                    budget -= entry.size
                    chosen.append(entry)
                entries = chosen[::-1]
        except ValueError:
            return entries  # a malformed limit is ignored, as if not given
        return entries

    def _delayed(self, entry: HistoryEntry) -> Element:
        stanza = copy(entry.stanza)
        stamp = datetime.fromtimestamp(entry.at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        child(stanza, "delay", {"from": str(self.jid), "stamp": stamp}, namespace=ns.DELAY)
        return stanza

    def _subject_message(self) -> Element:
        sender = f"{self.jid}/{self.subject_by}" if self.subject_by else str(self.jid)
        message = element("message", {"type": "groupchat", "from": sender})
        child(message, "subject", text=self.subject or None)
        return message

    async def _private(
        self, stanza: Element, nick: str, occupant: Occupant | None, mtype: str
    ) -> None:
        """§7.5: a private message to one occupant, as the room's policy allows."""
        if occupant is None:
            raise errors.NOT_OCCUPANT()
        if mtype == "groupchat":
            raise errors.GROUPCHAT_TO_OCCUPANT()
        target = self.occupants.get(nick)
        if target is None:
            raise errors.NO_SUCH_OCCUPANT()
        policy = self.config.allow_pm
        allowed = (
            policy == "anyone"
            or (policy == "participants" and ROLE_RANK[occupant.role] >= ROLE_RANK["participant"])
            or (policy == "moderators" and occupant.role == "moderator")
        )
        if not allowed:
            raise errors.PM_DENIED()
        self._check_rate_and_size(stanza, occupant)
        template = copy(stanza)
        for el in template.findall(_OCCUPANT_ID):
            template.remove(el)
        template.set("from", f"{self.jid}/{occupant.nick}")
        if find_child(template, NS_MUC_USER, "x") is None:
            child(template, "x", namespace=NS_MUC_USER)
        child(template, "occupant-id", {"id": occupant.occupant_id}, namespace=NS_OCCUPANT_ID)
        for session in list(target.presences):
            await self._send(copy(template), session)

    # ------------------------------------------------------------------ IQ

    async def _on_iq(self, stanza: Element, to: JID, from_: JID) -> None:
        itype = stanza.get("type")
        if itype not in ("get", "set"):
            if to.resource:
                await self._forward_answer(stanza, to, from_)
            return
        query = stanza[0] if len(stanza) == 1 and isinstance(stanza[0].tag, str) else None
        if query is None:
            raise errors.BAD_REQUEST("an IQ carries one payload")
        if to.resource:
            try:
                reply = await self._iq_to_occupant(stanza, query, to.resource, from_)
            except _Forwarded:
                return
        else:
            reply = await self._iq_to_room(stanza, query, itype, from_)
        reply.set("from", str(to))
        await self.ctx.send(reply)

    async def _iq_to_occupant(
        self, stanza: Element, query: Element, nick: str, from_: JID
    ) -> Element:
        mine = self.by_jid.get(from_)
        if mine is None:
            raise errors.NOT_OCCUPANT()
        if query.tag == _PING and mine == nick:
            return iq_result(stanza)  # XEP-0410: the client is still in the room
        target = self.occupants.get(nick)
        if target is None:
            raise errors.NO_SUCH_OCCUPANT()
        await self._forward_iq(stanza, query, mine, target, from_)
        raise _Forwarded()

    async def _forward_iq(
        self, stanza: Element, query: Element, mine: str, target: Occupant, from_: JID
    ) -> None:
        """§7.7 private IQ: an occupant's IQ to another goes to that occupant's real JID,
        from the asker's occupant JID, under a new id; the answer comes back the same
        way (:meth:`_forward_answer`). A vCard request goes to the account (its server
        answers it, §17.3 of XEP-0045 and XEP-0054)."""
        vcard = query.tag == f"{{{NS_VCARD}}}vCard" and stanza.get("type") == "get"
        real = target.bare if vcard else target.latest
        forwarded = copy(stanza)
        forwarded_id = new_id()
        forwarded.set("id", forwarded_id)
        forwarded.set("from", f"{self.jid}/{mine}")
        forwarded.set("to", str(real))
        self._forwarded[forwarded_id] = _ForwardedIq(from_, stanza.get("id"), real, target.nick)
        while len(self._forwarded) > _MAX_FORWARDED:
            del self._forwarded[next(iter(self._forwarded))]
        await self.ctx.send(forwarded)

    async def _forward_answer(self, stanza: Element, to: JID, from_: JID) -> None:
        pending = self._forwarded.get(stanza.get("id", ""))
        if pending is None or pending.target != from_:
            return
        del self._forwarded[stanza.get("id", "")]
        answer = copy(stanza)
        if pending.asked_id is None:
            del answer.attrib["id"]
        else:
            answer.set("id", pending.asked_id)
        answer.set("from", f"{self.jid}/{pending.target_nick}")
        answer.set("to", str(pending.asker))
        await self.ctx.send(answer)

    async def _iq_to_room(self, stanza: Element, query: Element, itype: str, from_: JID) -> Element:
        tag = query.tag
        if tag == f"{{{ns.DISCO_INFO}}}query" and itype == "get":
            return iq_result(stanza, self._disco_info(query, from_))
        if tag == f"{{{ns.DISCO_ITEMS}}}query" and itype == "get":
            return iq_result(stanza, self._disco_items(query, from_))
        if tag == f"{{{ns.REGISTER}}}query":
            return await self._register(stanza, query, itype, from_)
        if tag == _MODERATE and itype == "set":
            return await self._moderate(stanza, query, from_)
        if tag == _MAM_QUERY and self.archived:
            return await self._mam(stanza, query, itype, from_)
        if tag == f"{{{NS_MUC_OWNER}}}query":
            return await self._owner(stanza, query, itype, from_)
        if tag == f"{{{NS_MUC_ADMIN}}}query":
            return await self._admin(stanza, query, itype, from_)
        if tag == f"{{{NS_VCARD}}}vCard":
            return await self._vcard_iq(stanza, query, itype, from_)
        raise StanzaError("service-unavailable")

    # ------------------------------------------------------------------ avatar (XEP-0486)

    async def _vcard_iq(self, stanza: Element, query: Element, itype: str, from_: JID) -> Element:
        """The room's vcard-temp: anyone but an outcast reads it; owners set it (an
        empty ``<vCard/>`` removes it). A change is announced with status 104 and, for
        the clients that look for it there, a presence of the room's bare JID with the
        avatar hash (``vcard-temp:x:update``)."""
        if self.affiliation(from_) == "outcast":
            raise errors.BANNED()
        if itype == "get":
            data = await self._stored_vcard()
            return iq_result(stanza, parse(data) if data else payload(NS_VCARD, "vCard"))
        if self.affiliation(from_) != "owner":
            raise StanzaError("forbidden", "Only owners are allowed to set avatars.")
        data = None if len(query) == 0 else serialize(query)
        limit = self.host.ctx.options.max_vcard_size
        if data is not None and len(data) > limit:
            raise StanzaError("not-acceptable", f"the room's vCard may be {limit} bytes at most")
        if self.config.persistent:
            await self.host.store.save_vcard(self.name, None if data is None else data.decode())
        else:
            self._vcard = data
        self.avatar = avatar_hashes(query)
        notice = element("message", {"type": "groupchat", "from": str(self.jid)})
        child(child(notice, "x", namespace=NS_MUC_USER), "status", {"code": Status.CONFIG_CHANGED})
        await self._to_all(notice)
        await self._to_all(self._avatar_presence())
        return iq_result(stanza)

    async def _stored_vcard(self) -> bytes | None:
        if not self.config.persistent:
            return self._vcard
        text = await self.host.store.load_vcard(self.name)
        return None if text is None else text.encode()

    def _avatar_presence(self) -> Element:
        """The room's bare-JID presence with its avatar hash (an empty ``<photo/>``: no
        avatar), as vCard-based avatars (XEP-0153) announce one."""
        presence = element("presence", {"from": str(self.jid)})
        update = child(presence, "x", namespace=NS_VCARD_UPDATE)
        child(update, "photo", text=self.avatar[0] if self.avatar else None)
        return presence

    def _disco_items(self, query: Element, from_: JID) -> Element:
        """§6.5: the occupants (as occupant JIDs) of a non-anonymous room, to its
        occupants, or to anyone when the room is also open; an empty list otherwise, as
        the XEP allows (a semi-anonymous room does not list who is in it)."""
        if query.get("node") is not None:
            raise StanzaError("item-not-found")
        result = payload(ns.DISCO_ITEMS, "query")
        inside = from_ in self.by_jid
        if self.config.non_anonymous and (inside or not self.config.members_only):
            for nick in sorted(self.occupants):
                child(result, "item", {"jid": f"{self.jid}/{nick}", "name": nick})
        return result

    def _disco_info(self, query: Element, from_: JID) -> Element:
        node = query.get("node")
        if node == _ROOMUSER_NODE:
            # §7.11: the asker's registered nickname, if any.
            result = payload(ns.DISCO_INFO, "query", {"node": node})
            if (nick := self.nicks.get(from_.bare)) is not None:
                child(result, "identity", {"category": "conference", "type": "text", "name": nick})
            return result
        if node is not None:
            raise StanzaError("item-not-found")
        result = payload(ns.DISCO_INFO, "query")
        child(
            result,
            "identity",
            {"category": "conference", "type": "text", "name": self.config.name or self.name},
        )
        features = [
            ns.DISCO_INFO,
            ns.REGISTER,
            NS_MUC,
            NS_MUC_STABLE_ID,
            NS_OCCUPANT_ID,
            NS_SID,
            *feature_vars(self.config, self.locked),
        ]
        features += [NS_RETRACT, NS_MODERATE, NS_VCARD]
        if self.archived:
            features.append(NS_MAM)
        for var in features:
            child(result, "feature", {"var": var})
        result.append(info_form(self.config, len(self.occupants), self.subject, self.avatar))
        return result

    # ------------------------------------------------------------------ archive (XEP-0313)

    def _may_read_archive(self, from_: JID) -> None:
        """Anyone may read the archive of an open room (as anyone may enter it and get
        its history); a members-only room's archive is for its members; a password-
        protected room's for its occupants (who gave the password) and those who enter
        without it (admins, owners); outcasts never."""
        affiliation = self.affiliation(from_)
        if affiliation == "outcast":
            raise errors.BANNED()
        rank = AFFILIATION_RANK[affiliation]
        if self.config.members_only and rank < AFFILIATION_RANK["member"]:
            raise errors.ARCHIVE_MEMBERS_ONLY()
        if self.config.password and rank < AFFILIATION_RANK["admin"] and from_ not in self.by_jid:
            raise errors.ARCHIVE_PASSWORD()

    async def _mam(self, stanza: Element, query: Element, itype: str, from_: JID) -> Element:
        self._may_read_archive(from_)
        if itype == "get":
            result = payload(NS_MAM, "query")
            form = child(result, "x", {"type": "form"}, namespace=ns.DATA_FORMS)
            hidden = child(form, "field", {"type": "hidden", "var": "FORM_TYPE"})
            child(hidden, "value", text=NS_MAM)
            for var in ("start", "end", "before-id", "after-id"):
                child(form, "field", {"type": "text-single", "var": var})
            return iq_result(stanza, result)
        filters = _mam_filters(find_child(query, ns.DATA_FORMS, "x"))
        paging = parse_rsm(query, _MAM_PAGE, _MAM_MAX_PAGE)
        archive = self.host.archive
        refs = [
            i
            for i in (filters.after_id, filters.before_id, paging.after, paging.before)
            if i is not None
        ]
        if not await archive.exists(self.name, refs):
            raise StanzaError("item-not-found", "no such archive id")
        page = await archive.query(self.name, filters, paging)
        queryid = query.get("queryid")
        rows = page.rows[::-1] if find_child(query, NS_MAM, "flip-page") is not None else page.rows
        for row in rows:
            stored = serialize(in_client_namespace(parse(row.stanza.encode("utf-8"))))
            await self.ctx.send(
                result_message(
                    str(from_), str(self.jid), queryid, row.id, row.stamp, stored.decode("utf-8")
                )
            )
        return iq_result(
            stanza,
            fin(
                page.complete,
                queryid,
                [row.id for row in page.rows],
                count=page.count,
                index=page.index,
            ),
        )

    # ------------------------------------------------------------------ retraction (XEP-0424/0425)

    async def _find_message(self, stanza_id: str) -> tuple[str, str, str] | None:
        """The sender (bare JID), nickname and occupant id of the message with this
        room stanza id: from the archive, or from the history kept in memory."""
        if self.archived:
            if not stanza_id.isdigit() or len(stanza_id) > 19:
                return None
            row = await self.host.archive.get(self.name, int(stanza_id))
            if row is None or row.retracted:
                return None
            return row.sender, row.nick, row.occupant_id
        for entry in self.history:
            if _room_stanza_id(entry.stanza, self.jid) == stanza_id:
                nick = entry.stanza.get("from", "").partition("/")[2]
                found = entry.stanza.find(_OCCUPANT_ID)
                return "", nick, found.get("id", "") if found is not None else ""
        return None

    async def _tombstone(self, stanza_id: str, nick: str, retracted: Element) -> None:
        """The message is gone for later joiners and MAM: its archive row becomes a
        tombstone (XEP-0425 §5: ``<retracted/>`` in place of the content), or it leaves
        the history kept in memory."""
        if self.archived:
            tomb = element("message", {"type": "groupchat", "from": f"{self.jid}/{nick}"})
            tomb.append(retracted)
            child(tomb, "stanza-id", {"by": str(self.jid), "id": stanza_id}, namespace=NS_SID)
            await self.host.archive.tombstone(
                self.name, int(stanza_id), serialize(tomb).decode("utf-8")
            )
            return
        for entry in list(self.history):
            if _room_stanza_id(entry.stanza, self.jid) == stanza_id:
                self.history.remove(entry)

    async def _retract_own(self, retract: Element, occupant: Occupant) -> None:
        """XEP-0424: an occupant retracts one of its own messages (the retraction is
        then sent to everyone like any groupchat message). Someone else's: ``forbidden``."""
        target = retract.get("id", "")
        found = await self._find_message(target)
        if found is None:
            return  # not ours to know (too old, or not kept): pass the retraction on
        sender, nick, occupant_id = found
        if occupant_id != occupant.occupant_id and sender != str(occupant.bare):
            raise errors.NOT_YOUR_MESSAGE()
        retracted = payload(NS_RETRACT, "retracted", {"stamp": _now_stamp()})
        await self._tombstone(target, nick, retracted)

    async def _moderate(self, stanza: Element, query: Element, from_: JID) -> Element:
        """XEP-0425: a moderator retracts an occupant's message. Everyone gets the
        retraction from the room, naming the moderator; the message becomes a
        tombstone in the archive."""
        mine = self.by_jid.get(from_)
        moderator = self.occupants.get(mine) if mine is not None else None
        if moderator is None or moderator.role != "moderator":
            raise errors.NOT_MODERATOR()
        if find_child(query, NS_RETRACT, "retract") is None:
            raise errors.BAD_REQUEST("expected <retract/>")
        target = query.get("id", "")
        found = await self._find_message(target)
        if found is None:
            raise errors.NO_SUCH_MESSAGE()
        _, nick, _ = found
        reason_el = find_child(query, NS_MODERATE, "reason")
        reason = (reason_el.text or "") if reason_el is not None else ""
        by = f"{self.jid}/{moderator.nick}"

        def moderated(parent: Element) -> None:
            mod = child(parent, "moderated", {"by": by}, namespace=NS_MODERATE)
            child(mod, "occupant-id", {"id": moderator.occupant_id}, namespace=NS_OCCUPANT_ID)
            if reason:
                child(parent, "reason", text=reason)

        retracted = payload(NS_RETRACT, "retracted", {"stamp": _now_stamp()})
        moderated(retracted)
        await self._tombstone(target, nick, retracted)
        notice = element("message", {"type": "groupchat", "from": str(self.jid), "id": new_id()})
        moderated(child(notice, "retract", {"id": target}, namespace=NS_RETRACT))
        reserved = self.host.archive.reserve()
        child(notice, "stanza-id", {"by": str(self.jid), "id": str(reserved[0])}, namespace=NS_SID)
        if self.archived:  # a client syncing from the archive learns of it too
            await self.host.archive.store(
                self.name, reserved, "", "", "", serialize(notice).decode("utf-8")
            )
        await self._to_all(notice)
        return iq_result(stanza)

    # ------------------------------------------------------------------ registration (§7.10)

    async def _register(self, stanza: Element, query: Element, itype: str, from_: JID) -> Element:
        """§7.10: register a nickname with the room. Registering makes an account with
        no affiliation a member; a registered nickname is reserved for its owner (others
        get ``conflict`` entering or changing to it)."""
        bare = from_.bare
        affiliation = self.affiliation(bare)
        if affiliation == "outcast":
            raise errors.BANNED()
        if self.config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
            raise errors.MEMBERS_ONLY()
        if itype == "get":
            result = payload(ns.REGISTER, "query")
            if (nick := self.nicks.get(bare)) is not None:
                child(result, "registered")
                child(result, "username", text=nick)
                return iq_result(stanza, result)
            child(result, "instructions", text="Choose a nickname to register with this room.")
            form = child(result, "x", {"type": "form"}, namespace=ns.DATA_FORMS)
            child(form, "title", text="Nickname registration")
            hidden = child(form, "field", {"var": "FORM_TYPE", "type": "hidden"})
            child(hidden, "value", text=NS_MUC_REGISTER)
            nick_field = child(
                form,
                "field",
                {"var": "muc#register_roomnick", "type": "text-single", "label": "Nickname"},
            )
            child(nick_field, "required")
            return iq_result(stanza, result)
        if find_child(query, ns.REGISTER, "remove") is not None:
            if self.nicks.pop(bare, None) is not None and self.config.persistent:
                await self.host.store.set_nick(self.name, bare, None)
            return iq_result(stanza)
        submitted = find_child(query, ns.DATA_FORMS, "x")
        if submitted is None:
            raise errors.BAD_REQUEST("expected a data form or <remove/>")
        if submitted.get("type") == "cancel":
            return iq_result(stanza)
        form_type, values = form_values(submitted)
        if form_type != NS_MUC_REGISTER:
            raise errors.BAD_REQUEST(f"FORM_TYPE must be {NS_MUC_REGISTER}")
        nick = (values.get("muc#register_roomnick") or [""])[0]
        self._check_nick(nick)
        owner = self._nick_owner(nick)
        in_use = self.occupants.get(nick)
        if (owner is not None and owner != bare) or (in_use is not None and in_use.bare != bare):
            raise errors.NICK_CONFLICT()
        if bare not in self.nicks:
            self._check_room_for(bare, nick=True)
        self.nicks[bare] = nick
        if self.config.persistent:
            await self.host.store.set_nick(self.name, bare, nick)
        if affiliation == "none":
            await self._set_affiliation(bare, "member", "", actor_nick=None)
        return iq_result(stanza)

    # ------------------------------------------------------------------ owner (§10)

    async def _owner(self, stanza: Element, query: Element, itype: str, from_: JID) -> Element:
        if self.affiliation(from_) != "owner":
            raise errors.NOT_OWNER()
        limits = self.host.limits
        if itype == "get":
            result = payload(NS_MUC_OWNER, "query")
            result.append(
                config_form(
                    self.config,
                    sorted(str(j) for j in self.owners()),
                    sorted(str(j) for j, a in self.affiliations.items() if a == "admin"),
                    limits,
                )
            )
            return iq_result(stanza, result)
        destroy = find_child(query, NS_MUC_OWNER, "destroy")
        if destroy is not None:
            await self.destroy(from_, destroy)
            return iq_result(stanza)
        form = find_child(query, ns.DATA_FORMS, "x")
        if form is None:
            raise errors.BAD_REQUEST("expected a data form or <destroy/>")
        ftype = form.get("type")
        if ftype == "cancel":
            if self.locked:
                await self.destroy(from_, None)  # §10.1.3: a cancelled new room is gone
            return iq_result(stanza)
        if ftype != "submit":
            raise errors.BAD_FORM("the form must be of type submit or cancel")
        new, lists = apply_form(self.config, form, limits)
        await self._reconfigure(new, lists, from_)
        return iq_result(stanza)

    async def _reconfigure(self, new: RoomConfig, lists: dict[str, list[str]], actor: JID) -> None:
        old = self.config
        wanted: dict[JID, str] = {}
        for var, affiliation in (
            ("muc#roomconfig_roomadmins", "admin"),
            ("muc#roomconfig_roomowners", "owner"),
        ):
            for text in lists.get(var, ()):
                try:
                    wanted[JID.parse(text).bare] = affiliation
                except InvalidJID:
                    raise errors.FORM_REFUSED(f"{var}: {text!r} is not a JID") from None
        if "muc#roomconfig_roomowners" in lists and not any(a == "owner" for a in wanted.values()):
            raise errors.FORM_REFUSED("a room needs an owner")
        # Owners and admins not in the submitted lists lose that affiliation.
        for var, affiliation in (
            ("muc#roomconfig_roomowners", "owner"),
            ("muc#roomconfig_roomadmins", "admin"),
        ):
            if var in lists:
                for jid, current in list(self.affiliations.items()):
                    if current == affiliation and wanted.get(jid) != affiliation:
                        wanted.setdefault(jid, "none")
        self.config = new
        was_locked = self.locked
        self.locked = False
        for jid, affiliation in wanted.items():
            if self.affiliations.get(jid, "none") != affiliation:
                await self._set_affiliation(jid, affiliation, "", actor_nick=None, store=False)
        if new.persistent:
            await self.save()
            if not old.persistent and self._vcard is not None:
                await self.host.store.save_vcard(self.name, self._vcard.decode())
                self._vcard = None
        elif old.persistent:
            stored = await self.host.store.load_vcard(self.name)  # kept in memory from now on
            self._vcard = None if stored is None else stored.encode()
            await self.host.store.delete(self.name)
            # A temporary room keeps no archive, and once it vanishes its name is free:
            # whoever creates a room of that name must not find this one's messages.
            await self.host.archive.delete_room(self.name)
        codes = [Status.CONFIG_CHANGED]
        was_archived = old.persistent and old.archive
        if self.archived != was_archived:
            codes.append(Status.LOGGING if self.archived else Status.NOT_LOGGING)
        if new.non_anonymous != old.non_anonymous:
            codes.append(
                Status.NOW_NON_ANONYMOUS if new.non_anonymous else Status.NOW_SEMI_ANONYMOUS
            )
        if not was_locked:
            notice = element("message", {"type": "groupchat", "from": str(self.jid)})
            x = child(notice, "x", namespace=NS_MUC_USER)
            for code in codes:
                child(x, "status", {"code": code})
            await self._to_all(notice)
        if new.members_only and not old.members_only:
            for occupant in list(self.occupants.values()):
                if AFFILIATION_RANK[self.affiliation(occupant.bare)] < AFFILIATION_RANK["member"]:
                    await self._remove(
                        occupant, None, codes=(Status.MEMBERS_ONLY,), why="members-only"
                    )
        await self.ctx.run(ROOM_CONFIGURED, RoomEvent(self.jid, actor.bare))

    async def save(self) -> None:
        """Write the whole room (it is persistent)."""
        await self.host.store.save(
            self.name,
            self.config.to_json(),
            self.subject,
            self.subject_by,
            self.salt,
            {j: (a, self.reasons.get(j, "")) for j, a in self.affiliations.items()},
            dict(self.nicks),
        )

    async def destroy(self, actor: JID | None, request: Element | None) -> None:
        """§10.9: every occupant is told (with the alternate venue and reason, if any)
        and removed; the room and its stored state are gone."""
        notice = payload(NS_MUC_USER, "destroy")
        if request is not None:
            if (venue := request.get("jid")) is not None:
                notice.set("jid", venue)
            if (reason := find_child(request, NS_MUC_OWNER, "reason")) is not None:
                child(notice, "reason", text=reason.text or "")
            if (password := find_child(request, NS_MUC_OWNER, "password")) is not None:
                child(notice, "password", text=password.text or "")
        for occupant in list(self.occupants.values()):
            await self._remove(occupant, None, destroy=copy(notice), why="destroyed", codes=())
        self.gone = True
        self.host.forget(self)
        if self.config.persistent:
            await self.host.store.delete(self.name)
            await self.host.archive.delete_room(self.name)
        await self.ctx.run(ROOM_DESTROYED, RoomEvent(self.jid, actor.bare if actor else None))

    async def shutdown(self) -> None:
        """The service stops: occupants are told with 332 (§15.6)."""
        for occupant in list(self.occupants.values()):
            await self._remove(occupant, None, codes=(Status.SHUTDOWN,), why="shutdown")

    # ------------------------------------------------------------------ admin (§8-9)

    async def _admin(self, stanza: Element, query: Element, itype: str, from_: JID) -> Element:
        items = query.findall(f"{{{NS_MUC_ADMIN}}}item")
        if not items:
            raise errors.BAD_REQUEST("expected <item/>")
        actor_aff = self.affiliation(from_)
        mine = self.by_jid.get(from_)
        actor = self.occupants.get(mine) if mine is not None else None
        actor_role = actor.role if actor is not None else "none"
        if itype == "get":
            return iq_result(stanza, self._admin_list(items[0], actor_aff, actor_role))
        roles: list[tuple[Occupant, str, str]] = []
        affiliations: list[tuple[JID, str, str]] = []
        for item in items:
            reason_el = find_child(item, NS_MUC_ADMIN, "reason")
            reason = (reason_el.text or "") if reason_el is not None else ""
            if (role := item.get("role")) is not None and item.get("nick") is not None:
                if role not in ROLES:
                    raise errors.BAD_REQUEST(f"unknown role {role!r}")
                occupant = self.occupants.get(item.get("nick", ""))
                if occupant is None:
                    raise errors.NO_SUCH_OCCUPANT()
                self._may_set_role(actor_aff, actor_role, occupant, role)
                roles.append((occupant, role, reason))
            elif (affiliation := item.get("affiliation")) is not None and item.get("jid"):
                if affiliation not in AFFILIATIONS:
                    raise errors.BAD_REQUEST(f"unknown affiliation {affiliation!r}")
                try:
                    jid = JID.parse(item.get("jid", "")).bare
                except InvalidJID:
                    raise StanzaError("jid-malformed") from None
                self._may_set_affiliation(actor_aff, jid, affiliation)
                affiliations.append((jid, affiliation, reason))
            else:
                raise errors.BAD_REQUEST("an item needs nick and role, or jid and affiliation")
        owners = set(self.owners())
        for jid, affiliation, _ in affiliations:
            if affiliation == "owner":
                owners.add(jid)
            else:
                owners.discard(jid)
        if not owners:
            raise StanzaError("conflict", "a room keeps at least one owner")
        added = {j for j, a, _ in affiliations if a != "none" and j not in self.affiliations}
        if len(self.affiliations) + len(added) > self.ctx.options.max_affiliations:
            raise errors.ROOM_LISTS_FULL()
        actor_nick = actor.nick if actor is not None else None
        for jid, affiliation, reason in affiliations:
            await self._set_affiliation(jid, affiliation, reason, actor_nick=actor_nick)
        for occupant, role, reason in roles:
            if self.occupants.get(occupant.nick) is occupant:
                await self._set_role(occupant, role, reason, actor_nick)
        return iq_result(stanza)

    def _admin_list(self, item: Element, actor_aff: str, actor_role: str) -> Element:
        result = payload(NS_MUC_ADMIN, "query")
        if (affiliation := item.get("affiliation")) is not None:
            if affiliation not in AFFILIATIONS or affiliation == "none":
                raise errors.BAD_REQUEST(f"no list of affiliation {affiliation!r}")
            if AFFILIATION_RANK[actor_aff] < AFFILIATION_RANK["admin"] and not (
                affiliation == "member" and actor_aff == "member" and self.config.members_only
            ):
                raise StanzaError("forbidden", "only admins may read this list")
            for jid, current in sorted(self.affiliations.items(), key=lambda kv: str(kv[0])):
                if current == affiliation:
                    attrs = {"affiliation": current, "jid": str(jid)}
                    if (nick := self.nicks.get(jid)) is not None:
                        attrs["nick"] = nick
                    entry = child(result, "item", attrs)
                    if self.reasons.get(jid):
                        child(entry, "reason", text=self.reasons[jid])
            return result
        role = item.get("role")
        if role not in ("moderator", "participant", "visitor"):
            raise errors.BAD_REQUEST("expected a role or an affiliation")
        if actor_role != "moderator":
            raise StanzaError("forbidden", "only moderators may read this list")
        for occupant in self.occupants.values():
            if occupant.role == role:
                child(
                    result,
                    "item",
                    {
                        "affiliation": self.affiliation(occupant.bare),
                        "role": occupant.role,
                        "nick": occupant.nick,
                        "jid": str(occupant.latest),
                    },
                )
        return result

    def _may_set_role(self, actor_aff: str, actor_role: str, target: Occupant, role: str) -> None:
        """§8.2-8.4 and §9.6-9.7: who may kick, grant or revoke voice and moderator."""
        if actor_role != "moderator":
            raise StanzaError("forbidden", "only moderators may change roles")
        target_aff = self.affiliation(target.bare)
        # Granting or revoking moderator status is for admins and owners.
        if (role == "moderator" or target.role == "moderator") and (
            AFFILIATION_RANK[actor_aff] < AFFILIATION_RANK["admin"]
        ):
            raise StanzaError("forbidden", "only admins may grant or revoke moderator status")
        if role != "moderator" and target_aff in ("owner", "admin"):
            raise StanzaError("not-allowed", "an admin or owner keeps moderator status")

    def _may_set_affiliation(self, actor_aff: str, jid: JID, affiliation: str) -> None:
        """§9 and §10: admins manage members and outcasts, owners everything."""
        if AFFILIATION_RANK[actor_aff] < AFFILIATION_RANK["admin"]:
            raise StanzaError("forbidden", "only admins may change affiliations")
        current = self.affiliations.get(jid, "none")
        if actor_aff != "owner" and (
            affiliation in ("owner", "admin") or current in ("owner", "admin")
        ):
            raise StanzaError("not-allowed", "only owners may change owners and admins")

    async def _set_role(
        self, occupant: Occupant, role: str, reason: str, actor_nick: str | None
    ) -> None:
        if role == "none":
            await self._remove(
                occupant, None, codes=(Status.KICKED,), actor=actor_nick, reason=reason, why="kick"
            )
            return
        if occupant.role == role:
            return
        occupant.role = role
        await self._broadcast_presence(
            occupant, exclude_session=None, actor=actor_nick, reason=reason or None
        )
        await self.ctx.run(
            OCCUPANT_ROLE_CHANGED,
            OccupantEvent(
                self.jid,
                occupant.nick,
                occupant.latest,
                role,
                self.affiliation(occupant.bare),
                "role",
            ),
        )

    def _check_room_for(self, jid: JID, *, nick: bool = False) -> None:
        """Refuse a new account on the room's lists (or a new registered nickname, with
        ``nick``) when they hold ``max_affiliations`` already."""
        limit = self.ctx.options.max_affiliations
        if nick and len(self.nicks) >= limit:
            raise errors.ROOM_LISTS_FULL()
        if jid not in self.affiliations and len(self.affiliations) >= limit:
            raise errors.ROOM_LISTS_FULL()

    async def _set_affiliation(
        self, jid: JID, affiliation: str, reason: str, *, actor_nick: str | None, store: bool = True
    ) -> None:
        """Record the affiliation and apply it to the account's occupant, if in the room:
        banned (301), removed from a members-only room (321), or a new role."""
        if affiliation == "none":
            self.affiliations.pop(jid, None)
            self.reasons.pop(jid, None)
        else:
            self.affiliations[jid] = affiliation
            if reason:
                self.reasons[jid] = reason
            else:
                self.reasons.pop(jid, None)
        if store and self.config.persistent:
            await self.host.store.set_affiliation(self.name, jid, affiliation, reason)
        occupant = next((o for o in self.occupants.values() if o.bare == jid), None)
        if occupant is None:
            return
        if affiliation == "outcast":
            await self._remove(
                occupant, None, codes=(Status.BANNED,), actor=actor_nick, reason=reason, why="ban"
            )
            return
        if self.config.members_only and AFFILIATION_RANK[affiliation] < AFFILIATION_RANK["member"]:
            await self._remove(
                occupant,
                None,
                codes=(Status.AFFILIATION_CHANGED,),
                actor=actor_nick,
                reason=reason,
                why="affiliation",
            )
            return
        occupant.role = self._default_role(affiliation)
        await self._broadcast_presence(
            occupant, exclude_session=None, actor=actor_nick, reason=reason or None
        )
        await self.ctx.run(
            OCCUPANT_ROLE_CHANGED,
            OccupantEvent(
                self.jid, occupant.nick, occupant.latest, occupant.role, affiliation, "affiliation"
            ),
        )


class _Forwarded(Exception):
    """The IQ was forwarded to an occupant: the answer comes later, from it."""


def addressed_elsewhere(stanza: Element, room: JID) -> bool:
    """A XEP-0249 invitation on its way to someone else (its ``to`` is not the room)."""
    if find_child(stanza, NS_CONFERENCE, "x") is None:
        return False
    try:
        return JID.parse(stanza.get("to", "")).bare != room
    except InvalidJID:
        return False


def _room_stanza_id(stanza: Element, room: JID) -> str | None:
    by = str(room)
    for el in stanza.iterfind(_STANZA_ID):
        if el.get("by") == by:
            return el.get("id")
    return None


def _now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mam_filters(form: Element | None) -> Filters:
    """The XEP-0313 query form of a room archive: ``start``, ``end``, ``before-id``,
    ``after-id``; any other field is ``feature-not-implemented``."""
    f = Filters()
    for var, values in query_fields(form):
        if not f.read(var, values[0] if values else ""):
            raise unknown_field(var)
    return f


def _stripped(presence: Element) -> Element:
    """A client's presence as the room keeps it: without addresses and MUC payloads."""
    kept = element("presence")
    for el in presence:
        if isinstance(el.tag, str) and el.tag not in _STRIP_FROM_PRESENCE:
            kept.append(copy(el))
    return kept


def _error_condition(stanza: Element) -> str | None:
    err = find_child(stanza, None, "error")
    if err is None:
        return None
    for el in err:
        if (
            isinstance(el.tag, str)
            and el.tag.startswith(f"{{{ns.STANZA_ERRORS}}}")
            and not el.tag.endswith("}text")
        ):
            return el.tag.split("}", 1)[1]
    return None


def new_salt() -> str:
    return secrets.token_hex(16)
