"""Throw-away PostgreSQL databases for the archive scenarios (PostgreSQL is a system service
shared with others: the bench only ever creates and drops databases named ``xmppd_bench_*``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bench.common import cpu_seconds

#: Maintenance database the bench connects to in order to create and drop its own.
ADMIN_DSN = os.environ.get("XMPPD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
HOST = "127.0.0.1"
PORT = 5432
USER = "postgres"

T = TypeVar("T")


class PostgresUnavailable(RuntimeError):
    """asyncpg is missing or the server does not answer."""


def _dsn(database: str) -> str:
    return f"{ADMIN_DSN.rsplit('/', 1)[0]}/{database}"


def _run(action: Callable[[Any], Awaitable[T]], database: str | None = None) -> T:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - asyncpg is an xmppd dependency
        raise PostgresUnavailable("asyncpg is not installed") from exc

    async def go() -> T:
        try:
            conn = await asyncpg.connect(ADMIN_DSN if database is None else _dsn(database))
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise PostgresUnavailable(f"PostgreSQL not reachable at {ADMIN_DSN}: {exc}") from exc
        try:
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def new_name(tag: str) -> str:
    return f"xmppd_bench_{tag}_{uuid.uuid4().hex[:8]}"


def create_database(name: str) -> None:
    _run(lambda c: c.execute(f'CREATE DATABASE "{name}"'))


def drop_database(name: str) -> None:
    _run(lambda c: c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_script(database: str, path: Path) -> None:
    """Execute an SQL file (several statements, no parameters) in ``database``."""
    script = path.read_text()
    _run(lambda c: c.execute(script), database)


def count_rows(database: str, table: str) -> int:
    async def count(conn: Any) -> int:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))

    return _run(count, database)


def url(database: str, driver: str = "postgresql+asyncpg") -> str:
    """SQLAlchemy URL of ``database`` (as xmppd's ``[storage] url`` takes it)."""
    return f"{driver}://{USER}@{HOST}:{PORT}/{database}"


def backend_pids(database: str) -> list[int]:
    """PostgreSQL backend processes serving ``database`` (their process title names it)."""
    pids = []
    needle = f" {database} ".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read()
        except OSError:
            continue
        if title.startswith(b"postgres:") and needle in title:
            pids.append(int(entry))
    return pids


class BackendCpu:
    """CPU time the PostgreSQL backends of one database used over an interval.

    PostgreSQL is a shared system service, not pinned to the server core: its share is
    reported next to the server's own CPU, not added to it.
    """

    def __init__(self, database: str | None) -> None:
        self.database = database
        self.start = self._sample()

    def _sample(self) -> dict[int, float]:
        if self.database is None:
            return {}
        return {pid: cpu_seconds(pid) for pid in backend_pids(self.database)}

    def seconds(self) -> float | None:
        if self.database is None:
            return None
        now = self._sample()
        return sum(t - self.start.get(pid, 0.0) for pid, t in now.items())
