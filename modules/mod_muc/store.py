"""Storage of persistent rooms: their configuration and subject, affiliations and
registered nicknames (SQLite and PostgreSQL through SQLAlchemy Core). Temporary rooms
are never written."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Final

from xmppd.api import JID, InvalidJID
from xmppd.api.storage import Column, Float, String, Text, delete, select, update
from xmppd_modules.mod_muc.common import Ctx, module

rooms_table: Final = module.table(
    "rooms",
    Column("name", String(1023), primary_key=True),  # the room's local part
    Column("config", Text, nullable=False),  # RoomConfig as JSON
    Column("subject", Text, nullable=False, default=""),
    Column("subject_by", String(1023), nullable=False, default=""),  # nickname
    Column("salt", String(64), nullable=False),  # keeps occupant ids stable (XEP-0421)
    Column("created_at", Float, nullable=False),
    schema_version=1,
)
"""One row per persistent room of the host's MUC service."""

affiliations_table: Final = module.table(
    "affiliations",
    Column("room", String(1023), primary_key=True),
    Column("jid", String(3071), primary_key=True),  # a bare JID
    Column("affiliation", String(16), nullable=False),  # owner, admin, member, outcast
    Column("reason", Text, nullable=False, default=""),
    schema_version=1,
)

nicks_table: Final = module.table(
    "nicks",
    Column("room", String(1023), primary_key=True),
    Column("jid", String(3071), primary_key=True),  # a bare JID
    Column("nick", String(1023), nullable=False),
    schema_version=1,
)
"""Registered nicknames (XEP-0045 §7.10)."""

vcards_table: Final = module.table(
    "vcards",
    Column("room", String(1023), primary_key=True),
    Column("vcard", Text, nullable=False),  # the room's <vCard xmlns='vcard-temp'/>
)
"""Room vCards (XEP-0486: owners publish the room's avatar in it)."""

_R: Final = rooms_table.c
_A: Final = affiliations_table.c
_N: Final = nicks_table.c
_V: Final = vcards_table.c


@dataclass(slots=True)
class StoredRoom:
    config: str
    subject: str
    subject_by: str
    salt: str
    affiliations: dict[JID, tuple[str, str]] = field(default_factory=dict)
    nicks: dict[JID, str] = field(default_factory=dict)
    vcard: str | None = None
    """The room's vCard (XEP-0486 avatar), serialised."""


def _jid(text: str) -> JID | None:
    try:
        return JID.parse(text)
    except InvalidJID:
        return None


class RoomStore:
    """Rows of one host's rooms."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.host = ctx.domain

    async def load(self, name: str) -> StoredRoom | None:
        db = self.ctx.db
        row = await db.fetch_one(
            select(_R.config, _R.subject, _R.subject_by, _R.salt).where(
                _R.host == self.host, _R.name == name
            )
        )
        if row is None:
            return None
        room = StoredRoom(row.config, row.subject, row.subject_by, row.salt)
        for arow in await db.fetch_all(
            select(_A.jid, _A.affiliation, _A.reason).where(_A.host == self.host, _A.room == name)
        ):
            if (jid := _jid(arow.jid)) is not None:
                room.affiliations[jid] = (arow.affiliation, arow.reason)
        for nrow in await db.fetch_all(
            select(_N.jid, _N.nick).where(_N.host == self.host, _N.room == name)
        ):
            if (jid := _jid(nrow.jid)) is not None:
                room.nicks[jid] = nrow.nick
        room.vcard = await self.load_vcard(name)
        return room

    async def save(
        self,
        name: str,
        config: str,
        subject: str,
        subject_by: str,
        salt: str,
        affiliations: dict[JID, tuple[str, str]],
        nicks: dict[JID, str],
    ) -> None:
        """Write a whole room (when it becomes persistent, or is configured)."""
        async with self.ctx.db.transaction() as conn:
            await self.ctx.db.upsert_in(
                conn,
                rooms_table,
                {
                    "host": self.host,
                    "name": name,
                    "config": config,
                    "subject": subject,
                    "subject_by": subject_by,
                    "salt": salt,
                    "created_at": time.time(),
                },
                ("host", "name"),
            )
            await conn.execute(
                delete(affiliations_table).where(_A.host == self.host, _A.room == name)
            )
            for jid, (affiliation, reason) in affiliations.items():
                await self.ctx.db.upsert_in(
                    conn,
                    affiliations_table,
                    {
                        "host": self.host,
                        "room": name,
                        "jid": str(jid),
                        "affiliation": affiliation,
                        "reason": reason,
                    },
                    ("host", "room", "jid"),
                )
            await conn.execute(delete(nicks_table).where(_N.host == self.host, _N.room == name))
            for jid, nick in nicks.items():
                await self.ctx.db.upsert_in(
                    conn,
                    nicks_table,
                    {"host": self.host, "room": name, "jid": str(jid), "nick": nick},
                    ("host", "room", "jid"),
                )

    async def save_subject(self, name: str, subject: str, subject_by: str) -> None:
        await self.ctx.db.execute(
            update(rooms_table)
            .where(_R.host == self.host, _R.name == name)
            .values(subject=subject, subject_by=subject_by)
        )

    async def set_affiliation(self, name: str, jid: JID, affiliation: str, reason: str) -> None:
        if affiliation == "none":
            await self.ctx.db.execute(
                delete(affiliations_table).where(
                    _A.host == self.host, _A.room == name, _A.jid == str(jid)
                )
            )
            return
        await self.ctx.db.upsert(
            affiliations_table,
            {
                "host": self.host,
                "room": name,
                "jid": str(jid),
                "affiliation": affiliation,
                "reason": reason,
            },
            ("host", "room", "jid"),
        )

    async def set_nick(self, name: str, jid: JID, nick: str | None) -> None:
        if nick is None:
            await self.ctx.db.execute(
                delete(nicks_table).where(_N.host == self.host, _N.room == name, _N.jid == str(jid))
            )
            return
        await self.ctx.db.upsert(
            nicks_table,
            {"host": self.host, "room": name, "jid": str(jid), "nick": nick},
            ("host", "room", "jid"),
        )

    async def load_vcard(self, name: str) -> str | None:
        """The room's stored vCard (serialised XML), if an owner set one."""
        value = await self.ctx.db.fetch_value(
            select(_V.vcard).where(_V.host == self.host, _V.room == name)
        )
        return None if value is None else str(value)

    async def save_vcard(self, name: str, vcard: str | None) -> None:
        """Store the room's vCard; ``None`` removes it."""
        if vcard is None:
            await self.ctx.db.execute(
                delete(vcards_table).where(_V.host == self.host, _V.room == name)
            )
            return
        await self.ctx.db.upsert(
            vcards_table, {"host": self.host, "room": name, "vcard": vcard}, ("host", "room")
        )

    async def delete(self, name: str) -> None:
        async with self.ctx.db.transaction() as conn:
            for table, column in (
                (rooms_table, _R.name),
                (affiliations_table, _A.room),
                (nicks_table, _N.room),
                (vcards_table, _V.room),
            ):
                await conn.execute(delete(table).where(table.c.host == self.host, column == name))

    async def rooms(self) -> list[tuple[str, str]]:
        """Every stored room: (name, config JSON)."""
        rows = await self.ctx.db.fetch_all(select(_R.name, _R.config).where(_R.host == self.host))
        return [(row.name, row.config) for row in rows]

    async def owned(self, jid: JID) -> set[str]:
        """Stored rooms ``jid`` (bare) owns."""
        rows = await self.ctx.db.fetch_all(
            select(_A.room).where(
                _A.host == self.host, _A.jid == str(jid), _A.affiliation == "owner"
            )
        )
        return {row.room for row in rows}

    async def user_entries(
        self, jid: JID
    ) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        """``jid``'s (room, affiliation, reason) and (room, registered nickname)."""
        affs = await self.ctx.db.fetch_all(
            select(_A.room, _A.affiliation, _A.reason).where(
                _A.host == self.host, _A.jid == str(jid)
            )
        )
        nicks = await self.ctx.db.fetch_all(
            select(_N.room, _N.nick).where(_N.host == self.host, _N.jid == str(jid))
        )
        return (
            sorted((r.room, r.affiliation, r.reason) for r in affs),
            sorted((r.room, r.nick) for r in nicks),
        )

    async def forget_user(self, jid: JID) -> None:
        """An account was deleted: its affiliations and registered nicknames go."""
        async with self.ctx.db.transaction() as conn:
            await conn.execute(
                delete(affiliations_table).where(_A.host == self.host, _A.jid == str(jid))
            )
            await conn.execute(delete(nicks_table).where(_N.host == self.host, _N.jid == str(jid)))
