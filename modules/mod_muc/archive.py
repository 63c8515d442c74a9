"""XEP-0313 on rooms: the archive of a persistent room's groupchat messages, with its
ids (also the ``<stanza-id by='room'/>`` of every message the room sends), its queries
(XEP-0059 paging, the ``start``/``end``/``before-id``/``after-id`` filters) and
tombstones for moderated or retracted messages (XEP-0425 / XEP-0424)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from xmppd.api import JID, StanzaError
from xmppd.api.storage import (
    REFUSED_FOR_DATA,
    BigInteger,
    Boolean,
    Column,
    Index,
    StorageUnavailable,
    String,
    Text,
    WriteRetry,
    delete,
    func,
    select,
    update,
)
from xmppd_modules.mam_common import Bounds, Paging, next_id, now_us
from xmppd_modules.mod_muc.common import Ctx, module

archive_table: Final = module.table(
    "archive",
    Column("room", String(1023), primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("stamp", BigInteger, nullable=False),  # microseconds since the epoch
    Column("nick", String(1023), nullable=False),  # the sender's nickname then
    Column("sender", String(3071), nullable=False),  # the sender's bare JID
    Column("occupant_id", String(64), nullable=False, default=""),  # XEP-0421
    Column("stanza", Text, nullable=False),  # <message xmlns='jabber:client' ...> as sent
    Column("retracted", Boolean, nullable=False, default=False),  # a tombstone
    schema_version=1,
)
"""One row per archived groupchat message of a persistent room."""

OUTAGE_WAIT: Final = 30.0
"""How long archiving a room's message waits for an unavailable database (retried with
back-off; the message is neither sent to the room nor acknowledged meanwhile) before
the sender gets the error resource-constraint."""

_A: Final = archive_table.c
_INDEXES: Final = (Index("ix_mod_muc__archive_id", _A.host, _A.id),)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    stamp: int
    nick: str
    sender: str
    occupant_id: str
    stanza: str
    retracted: bool


Filters = Bounds
"""A room archive filters on the time and id bounds only."""


@dataclass(slots=True)
class Page:
    rows: list[Row]
    complete: bool
    count: int
    index: int | None


_COLUMNS: Final = (
    _A.id,
    _A.stamp,
    _A.nick,
    _A.sender,
    _A.occupant_id,
    _A.stanza,
    _A.retracted,
)


def _row(r: Any) -> Row:
    return Row(
        int(r.id),
        int(r.stamp),
        r.nick,
        r.sender,
        r.occupant_id,
        r.stanza,
        bool(r.retracted),
    )


class RoomArchive:
    """The archives of one host's rooms."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.host = ctx.domain
        self._last_id = 0
        self._health = ctx.health.part("archive")
        self.retry = WriteRetry(self._health, ctx.log, "write room archives", deadline=OUTAGE_WAIT)

    async def start(self) -> None:
        """Continue the id sequence after what is stored (the clock may have gone back)."""
        last = await self.ctx.db.fetch_value(select(func.max(_A.id)).where(_A.host == self.host))
        self._last_id = int(last or 0)
        self._health.set_ready()

    def reserve(self) -> tuple[int, int]:
        """A new id (for the archive and ``stanza-id``) and the time in microseconds."""
        stamp = now_us()
        self._last_id = next_id(self._last_id, stamp)
        return self._last_id, stamp

    async def store(
        self,
        room: str,
        reserved: tuple[int, int],
        nick: str,
        sender: str,
        occupant_id: str,
        stanza: str,
    ) -> None:
        """Archive one message before it is sent to the room. While the database is
        unavailable this is retried (the id is reserved already, so a retry after a
        commit whose answer was lost finds the row and writes no second copy); after
        :data:`OUTAGE_WAIT`, ``resource-constraint`` for the sender."""
        insert = archive_table.insert().values(
            host=self.host,
            room=room,
            id=reserved[0],
            stamp=reserved[1],
            nick=nick,
            sender=sender,
            occupant_id=occupant_id,
            stanza=stanza,
            retracted=False,
        )

        async def attempt() -> None:
            try:
                await self.ctx.db.execute(insert)
            except REFUSED_FOR_DATA:
                if not self.retry.failing:
                    raise
                self.ctx.log.debug("room archive row %d was written already", reserved[0])

        try:
            await self.retry.run(attempt)
        except StorageUnavailable:
            self.ctx.log.error("room archive unavailable: refused a message in %s", room)
            raise StanzaError("resource-constraint", "the room's archive is unavailable") from None

    async def get(self, room: str, archive_id: int) -> Row | None:
        row = await self.ctx.db.fetch_one(
            select(*_COLUMNS).where(_A.host == self.host, _A.room == room, _A.id == archive_id)
        )
        return None if row is None else _row(row)

    async def tombstone(self, room: str, archive_id: int, stanza: str) -> None:
        """Replace a message by its tombstone (moderated or retracted)."""
        await self.ctx.db.execute(
            update(archive_table)
            .where(_A.host == self.host, _A.room == room, _A.id == archive_id)
            .values(stanza=stanza, retracted=True)
        )

    async def latest(self, room: str, limit: int) -> list[Row]:
        """The newest ``limit`` messages that are not tombstones, oldest first."""
        if limit <= 0:
            return []
        rows = await self.ctx.db.fetch_all(
            select(*_COLUMNS)
            .where(_A.host == self.host, _A.room == room, _A.retracted.is_(False))
            .order_by(_A.id.desc())
            .limit(limit)
        )
        return [_row(r) for r in reversed(rows)]

    async def exists(self, room: str, ids: list[int]) -> bool:
        if not ids:
            return True
        rows = await self.ctx.db.fetch_all(
            select(_A.id).where(_A.host == self.host, _A.room == room, _A.id.in_(ids))
        )
        return len(rows) == len(set(ids))

    async def query(self, room: str, f: Filters, p: Paging) -> Page:
        conds: list[Any] = [_A.host == self.host, _A.room == room]
        if f.start is not None:
            conds.append(_A.stamp >= f.start)
        if f.end is not None:
            conds.append(_A.stamp <= f.end)
        if f.after_id is not None:
            conds.append(_A.id > f.after_id)
        if f.before_id is not None:
            conds.append(_A.id < f.before_id)
        paged = list(conds)
        if p.after is not None:
            paged.append(_A.id > p.after)
        if p.before is not None:
            paged.append(_A.id < p.before)
        stmt = (
            select(*_COLUMNS)
            .where(*paged)
            .order_by(_A.id.desc() if p.backward else _A.id)
            .limit(p.max + 1)
        )
        if p.index is not None:
            stmt = stmt.offset(p.index)
        found = [_row(r) for r in await self.ctx.db.fetch_all(stmt)]
        complete = len(found) <= p.max
        rows = found[: p.max]
        if p.backward:
            rows.reverse()
        count = int(await self.ctx.db.fetch_value(select(func.count()).where(*conds)) or 0)
        index: int | None = None
        if rows:
            index = int(
                await self.ctx.db.fetch_value(
                    select(func.count()).where(*conds, _A.id < rows[0].id)
                )
                or 0
            )
        return Page(rows, complete, count, index)

    async def forget_sender(self, sender: JID) -> int:
        """An account was erased: its messages stay in the rooms' history (they belong
        to the conversation) but no longer name its JID; returns the rows changed."""
        return await self.ctx.db.execute(
            update(archive_table)
            .where(_A.host == self.host, _A.sender == str(sender))
            .values(sender="")
        )

    async def delete_room(self, room: str) -> None:
        await self.ctx.db.execute(
            delete(archive_table).where(_A.host == self.host, _A.room == room)
        )
