"""The async database: engine, table creation, and dialect-neutral helpers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from xmppd.storage.schema import METADATA, schema_versions

log = logging.getLogger(__name__)


class Database:
    """One engine for the server. Modules use it through ``ctx.db``."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
            kwargs["pool_size"] = 2
            kwargs["max_overflow"] = 0
        else:
            kwargs["pool_size"] = pool_size
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    async def start(self) -> None:
        """Create missing tables (core and every imported module) and record versions."""
        async with self.engine.begin() as conn:
            await conn.run_sync(METADATA.create_all)
            for table in METADATA.sorted_tables:
                version = table.info.get("schema_version")
                if version is None:
                    continue
                await self._upsert(
                    conn, schema_versions, {"name": table.name, "version": version}, ("name",)
                )
        log.info("storage ready (%s)", self.dialect)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction, committed on success."""
        async with self.engine.begin() as conn:
            yield conn

    async def execute(self, stmt: sa.Executable) -> int:
        """Run a write statement in its own transaction; returns the affected row count."""
        async with self.engine.begin() as conn:
            result = await conn.execute(stmt)
            return int(getattr(result, "rowcount", 0) or 0)

    async def fetch_all(
        self, stmt: sa.Select[Any], params: Mapping[str, Any] | None = None
    ) -> Sequence[sa.Row[Any]]:
        """Rows of a query. On hot paths, build ``stmt`` once with ``sa.bindparam``
        placeholders and pass ``params``: building a statement costs more than running it."""
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt, params)
            return list(result.all())

    async def fetch_one(
        self, stmt: sa.Select[Any], params: Mapping[str, Any] | None = None
    ) -> sa.Row[Any] | None:
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt, params)
            row: sa.Row[Any] | None = result.first()
            return row

    async def fetch_value(
        self, stmt: sa.Select[Any], params: Mapping[str, Any] | None = None
    ) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt, params)).scalar()

    async def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str]) -> None:
        """Insert ``values`` or, when a row with the same ``keys`` exists, update it."""
        async with self.engine.begin() as conn:
            await self._upsert(conn, table, values, keys)

    async def upsert_in(
        self, conn: AsyncConnection, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str]
    ) -> None:
        """:meth:`upsert` inside a caller's transaction."""
        await self._upsert(conn, table, values, keys)

    async def _upsert(
        self, conn: AsyncConnection, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str]
    ) -> None:
        updates = {k: v for k, v in values.items() if k not in keys}
        if self.dialect == "postgresql":
            pg = postgresql.insert(table).values(**values)
            stmt: sa.Executable = (
                pg.on_conflict_do_update(index_elements=list(keys), set_=updates)
                if updates
                else pg.on_conflict_do_nothing(index_elements=list(keys))
            )
        else:
            lite = sqlite.insert(table).values(**values)
            stmt = (
                lite.on_conflict_do_update(index_elements=list(keys), set_=updates)
                if updates
                else lite.on_conflict_do_nothing(index_elements=list(keys))
            )
        await conn.execute(stmt)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
