"""Per-user key/value storage for modules whose data needs no queries (vCard, private XML)."""

from __future__ import annotations

import sqlalchemy as sa

from xmppd.storage.database import Database
from xmppd.storage.schema import keyval


class KeyValueStore:
    """Values (text) per (host, user, key) in a named store."""

    def __init__(self, db: Database, host: str, store: str) -> None:
        self._db = db
        self._host = host
        self._store = store

    def _where(self, username: str) -> sa.ColumnElement[bool]:
        return sa.and_(
            keyval.c.host == self._host,
            keyval.c.username == username,
            keyval.c.store == self._store,
        )

    async def get(self, username: str, key: str = "") -> str | None:
        return await self._db.fetch_value(  # type: ignore[no-any-return]
            sa.select(keyval.c.value).where(self._where(username), keyval.c.key == key)
        )

    async def set(self, username: str, value: str, key: str = "") -> None:
        await self._db.upsert(
            keyval,
            {
                "host": self._host,
                "username": username,
                "store": self._store,
                "key": key,
                "value": value,
            },
            ("host", "username", "store", "key"),
        )

    async def delete(self, username: str, key: str | None = None) -> None:
        cond = self._where(username)
        if key is not None:
            cond = sa.and_(cond, keyval.c.key == key)
        await self._db.execute(sa.delete(keyval).where(cond))

    async def keys(self, username: str) -> list[str]:
        rows = await self._db.fetch_all(sa.select(keyval.c.key).where(self._where(username)))
        return [r[0] for r in rows]
