"""The database: one engine, table creation, and dialect-neutral helpers.

Two ways of running queries behind one interface:

* PostgreSQL (asyncpg): SQLAlchemy's async engine; queries suspend the caller.
* SQLite: SQLAlchemy's *synchronous* engine, run inline on the event loop, as Prosody
  runs its SQL storage. SQLite is a library in this process: a point query takes a
  few microseconds, while the thread hand-off of the async driver (aiosqlite) costs
  hundreds of microseconds of CPU and, with several threads fighting for the GIL,
  made logins several times slower (measured: docs/benchmarks.md). The price is that
  a slow query blocks the loop, so long scans must use :meth:`Database.run_in_thread`.

Methods are ``async`` either way, so callers need not know which one they have. A
:meth:`Database.transaction` block must await only its own ``execute`` calls: on
SQLite those do not yield to the loop, which is what keeps the block atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from xmppd.metrics import LatencyHistogram
from xmppd.storage import migrate
from xmppd.storage.prepared import SqlitePlans
from xmppd.storage.schema import METADATA, schema_versions

log = logging.getLogger(__name__)

T = TypeVar("T")
_SQLITE_ASYNC = "sqlite+aiosqlite://"


class Transaction(Protocol):
    """A connection inside a transaction (``async with db.transaction() as tx``)."""

    async def execute(self, stmt: sa.Executable, params: Any = None) -> CursorResult[Any]: ...

    async def lock(self, name: str) -> None:
        """Hold ``name`` until the transaction ends: transactions that lock the same
        name run one after another, in every process sharing the database. For a read
        that decides a write (a sum checked against a quota, then a row added), so two
        requests at once cannot both pass the check."""
        ...


_ADVISORY_LOCK: Final = sa.text("SELECT pg_advisory_xact_lock(:key)")


def lock_key(name: str) -> int:
    """``name`` as a PostgreSQL advisory lock key (a signed 64-bit integer)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"xmppd-lk").digest()
    return int.from_bytes(digest, "big", signed=True)


class _TimedTransaction:
    """What :meth:`Database.transaction` yields: statements run through ``run`` (the
    connection's own ``execute``, awaitable), each timed into ``latency``. ``shared``:
    other processes use the database too (PostgreSQL), so :meth:`lock` takes an advisory
    lock; SQLite serves one process, whose transaction blocks never yield to the loop,
    so they already run one at a time."""

    __slots__ = ("_latency", "_run", "_shared")

    def __init__(
        self,
        run: Callable[[sa.Executable, Any], Awaitable[CursorResult[Any]]],
        latency: LatencyHistogram,
        *,
        shared: bool,
    ) -> None:
        self._run = run
        self._latency = latency
        self._shared = shared

    async def lock(self, name: str) -> None:
        if self._shared:
            await self.execute(_ADVISORY_LOCK, {"key": lock_key(name)})

    async def execute(self, stmt: sa.Executable, params: Any = None) -> CursorResult[Any]:
        started = time.perf_counter()
        try:
            return await self._run(stmt, params)
        finally:
            self._latency.observe(time.perf_counter() - started)


QUERY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
    1.0,
)
"""SQLite point queries take microseconds; PostgreSQL round trips a millisecond or so."""

_DATA_ERRORS: Final = (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError)
"""Errors about the statement or its data: the connection stays usable."""


class Database:
    """The server's database. Modules use it through ``ctx.db``."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self._sync: Engine | None = None
        self._async: AsyncEngine | None = None
        if url.startswith(_SQLITE_ASYNC):
            # One connection, used only from the event-loop thread.
            self._sync = sa.create_engine(
                "sqlite://" + url[len(_SQLITE_ASYNC) :],
                poolclass=StaticPool,
                connect_args={"timeout": 30, "check_same_thread": False},
            )
            sa.event.listen(self._sync, "connect", _sqlite_pragmas)
            self.dialect = "sqlite"
            self._plans: SqlitePlans | None = SqlitePlans(
                self._sync.dialect, self._driver_connection
            )
        else:
            self._async = create_async_engine(url, pool_size=pool_size)
            self.dialect = self._async.dialect.name
            self._plans = None
        self.query_latency = LatencyHistogram(QUERY_BUCKETS)
        """Seconds each statement of :meth:`fetch_all`, :meth:`fetch_one` and
        :meth:`transaction` takes, as the server waits for it (metrics:
        xmppd_storage_query_seconds). Timed here rather than with SQLAlchemy's engine
        events: an engine with execution listeners makes every connection checkout
        build an event dispatcher, about a tenth of a login's CPU on SQLite."""

    async def start(self, *, auto_upgrade: bool = True) -> None:
        """Bring the schema to this release's (``xmppd.storage.migrate``) and record the
        tables' versions.

        The revisions run when ``auto_upgrade`` is on or the database is empty; else a
        database at an older revision raises :class:`~xmppd.storage.migrate.SchemaOutOfDate`.
        Tables of modules that no revision covers (modules from ``server.module_paths``)
        are then created from their definitions."""
        schema = await self.run_schema_work(migrate.state)
        if schema.current not in (None, schema.head) and not migrate.is_known(schema.current):
            raise migrate.SchemaOutOfDate(
                f"the database is at schema revision {schema.current}, which this "
                f"release does not know (it stops at {schema.head}): it was upgraded "
                "by a newer xmppd"
            )
        if not schema.is_current:
            if not (auto_upgrade or schema.empty):
                raise migrate.SchemaOutOfDate(
                    "the database schema is at revision "
                    f"{schema.current or 'none (made before migrations)'}, this release "
                    f"needs {schema.head}: back the database up, then run `xmppd db upgrade` "
                    "(or set storage.auto_upgrade = true)"
                )
            log.info(
                "upgrading the database schema from %s to %s",
                schema.current or "none",
                schema.head,
            )
            await self.run_schema_work(migrate.upgrade)
        created = await self.run_schema_work(_create_missing_tables)
        for name in created:
            log.warning("table %s is not covered by a migration: created from its model", name)
        async with self.transaction() as tx:
            for table in METADATA.sorted_tables:
                version = table.info.get("schema_version")
                if version is not None:
                    await self.upsert_in(
                        tx, schema_versions, {"name": table.name, "version": version}, ("name",)
                    )
        log.info("storage ready (%s)", self.dialect)

    async def run_schema_work(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` (schema inspection or migration) on one connection in a
        transaction, committed when it returns."""
        if self._sync is not None:
            with self._sync.begin() as conn:
                return fn(conn)
        assert self._async is not None
        async with self._async.begin() as aconn:
            return await aconn.run_sync(fn)

    async def checkpoints(self, every: float = 2.0) -> None:
        """SQLite only: checkpoint the WAL from a worker thread every ``every`` seconds,
        so no commit on the event loop ever waits for an fsync (runs until cancelled)."""
        if self._sync is None:
            return
        import sqlite3

        path = self._sync.url.database
        if not path or path == ":memory:":
            return

        def checkpoint() -> None:
            conn = sqlite3.connect(path, timeout=30)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.close()

        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(checkpoint)
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed: %s", exc)

    async def health_check(self) -> str | None:
        """The health check of the database (``xmppd.health``): ``SELECT 1``, on a pooled
        connection; ``None`` when it answers, else why not."""
        try:
            await self.fetch_value(sa.select(sa.literal(1)))
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            orig = getattr(exc, "orig", None) or exc.__cause__ or exc
            return f"cannot connect: {str(orig) or type(orig).__name__}"
        return None

    def _planned(self, stmt: sa.Executable, params: Mapping[str, Any] | None) -> list[Any] | None:
        """The rows of a statement marked :func:`~xmppd.storage.prepared.prepared`,
        read through SQLite's driver; ``None`` when SQLAlchemy must run it."""
        plans = self._plans
        if plans is None:
            return None
        plan = plans.plan(stmt)
        return None if plan is None else plans.fetch(plan, params)

    def _driver_connection(self) -> Any:
        """SQLite's own connection under the engine's single pooled one."""
        assert self._sync is not None
        with self._sync.connect() as conn:
            return conn.connection.driver_connection

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()
        if self._async is not None:
            await self._async.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction, committed when the block ends without an exception."""
        if self._sync is not None:
            with self._sync.begin() as conn:

                async def inline(stmt: sa.Executable, params: Any) -> CursorResult[Any]:
                    return conn.execute(stmt, params)  # SQLite: on the loop's thread

                yield _TimedTransaction(inline, self.query_latency, shared=False)
        else:
            async with self._connection() as aconn, aconn.begin():
                yield _TimedTransaction(aconn.execute, self.query_latency, shared=True)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection (PostgreSQL) that is discarded, not pooled again, when
        its work fails for another reason than the data (the server went away, or the
        work was cancelled mid-query): asyncpg leaves such a connection unusable
        ("another operation is in progress") and the pool would hand it out forever."""
        assert self._async is not None
        async with self._async.connect() as aconn:
            try:
                yield aconn
            except BaseException as exc:
                if not isinstance(exc, _DATA_ERRORS) and not aconn.invalidated:
                    with contextlib.suppress(Exception):
                        await aconn.invalidate()
                raise

    async def execute(self, stmt: sa.Executable, params: Any = None) -> int:
        """Run a write statement in its own transaction; returns the affected row count."""
        async with self.transaction() as tx:
            result = await tx.execute(stmt, params)
            return int(getattr(result, "rowcount", 0) or 0)

    async def fetch_all(
        self, stmt: sa.Select[Any] | sa.CompoundSelect[Any], params: Mapping[str, Any] | None = None
    ) -> Sequence[sa.Row[Any]]:
        """Rows of a query. On hot paths, build ``stmt`` once with ``bindparam``
        placeholders and pass ``params``: building a statement costs more than running it."""
        started = time.perf_counter()
        try:
            if self._sync is not None:
                found = self._planned(stmt, params)
                if found is not None:
                    return found
                with self._sync.connect() as conn:
                    return list(conn.execute(stmt, params).all())
            async with self._connection() as aconn:
                return list((await aconn.execute(stmt, params)).all())
        finally:
            self.query_latency.observe(time.perf_counter() - started)

    async def fetch_one(
        self, stmt: sa.Select[Any], params: Mapping[str, Any] | None = None
    ) -> sa.Row[Any] | None:
        started = time.perf_counter()
        try:
            if self._sync is not None:
                found = self._planned(stmt, params)
                if found is not None:
                    return found[0] if found else None
                with self._sync.connect() as conn:
                    row: sa.Row[Any] | None = conn.execute(stmt, params).first()
                    return row
            async with self._connection() as aconn:
                arow: sa.Row[Any] | None = (await aconn.execute(stmt, params)).first()
                return arow
        finally:
            self.query_latency.observe(time.perf_counter() - started)

    async def fetch_value(
        self, stmt: sa.Select[Any], params: Mapping[str, Any] | None = None
    ) -> Any:
        row = await self.fetch_one(stmt, params)
        return None if row is None else row[0]

    async def run_in_thread(self, fn: Callable[[Connection], T]) -> T:
        """Run a long, synchronous piece of database work off the event loop.

        On SQLite it gets its own connection in a worker thread; on PostgreSQL it runs
        through the async engine's ``run_sync``.
        """
        if self._sync is not None:
            engine = sa.create_engine(self._sync.url, connect_args={"timeout": 30})

            def work() -> T:
                try:
                    with engine.begin() as conn:
                        return fn(conn)
                finally:
                    engine.dispose()

            return await asyncio.to_thread(work)
        assert self._async is not None
        async with self._async.begin() as aconn:
            return await aconn.run_sync(fn)

    async def upsert(self, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str]) -> None:
        """Insert ``values`` or, when a row with the same ``keys`` exists, update it."""
        async with self.transaction() as tx:
            await self.upsert_in(tx, table, values, keys)

    async def upsert_in(
        self, tx: Transaction, table: sa.Table, values: Mapping[str, Any], keys: Sequence[str]
    ) -> None:
        """:meth:`upsert` inside a caller's transaction."""
        await self.upsert_all_in(tx, table, [values], keys)

    async def upsert_all_in(
        self,
        tx: Transaction,
        table: sa.Table,
        rows: Sequence[Mapping[str, Any]],
        keys: Sequence[str],
    ) -> None:
        """:meth:`upsert_in` for several rows with the same columns: one statement, run
        once per row by the driver (``executemany``). Of rows with the same ``keys``
        only the last is written."""
        if not rows:
            return
        if len(rows) > 1:
            rows = list({tuple(row[k] for k in keys): row for row in rows}.values())
        columns = list(rows[0])
        insert = (postgresql if self.dialect == "postgresql" else sqlite).insert(table)
        updates = {c: insert.excluded[c] for c in columns if c not in keys}
        stmt: sa.Executable = (
            insert.on_conflict_do_update(index_elements=list(keys), set_=updates)
            if updates
            else insert.on_conflict_do_nothing(index_elements=list(keys))
        )
        await tx.execute(stmt, list(rows) if len(rows) > 1 else rows[0])


def _create_missing_tables(conn: Connection) -> list[str]:
    missing = migrate.missing_tables(conn)
    METADATA.create_all(conn, tables=missing)
    return [t.name for t in missing]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints (the WAL copied back into the database, with fsync) would otherwise run
    # inside whichever commit crosses 1000 pages, on the event loop; `checkpoints` runs
    # them from a worker thread instead.
    cur.execute("PRAGMA wal_autocheckpoint=0")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
