"""``tx.lock(name)`` on PostgreSQL: two transactions locking one name run one after the
other (the second waits until the first commits), other names do not wait; the lock
ends with the transaction. On SQLite it is a no-op inside a block that never yields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.server import postgres_database
from xmppd.storage.database import Database, lock_key


@pytest.fixture
async def pg() -> AsyncIterator[Database]:
    with postgres_database() as url:
        database = Database(url)
        try:
            yield database
        finally:
            await database.close()


async def _hold(db: Database, name: str, events: list[str], tag: str, seconds: float) -> None:
    async with db.transaction() as tx:
        await tx.lock(name)
        events.append(f"{tag} in")
        await asyncio.sleep(seconds)
        events.append(f"{tag} out")


@pytest.mark.parametrize(
    ("second", "order"),
    [
        # One name: the second transaction waits until the first commits.
        ("quota\0a", ["first in", "first out", "second in", "second out"]),
        # Another name does not wait.
        ("quota\0b", ["first in", "second in", "second out", "first out"]),
    ],
)
async def test_a_name_is_held_by_one_transaction_at_a_time(
    pg: Database, second: str, order: list[str]
) -> None:
    events: list[str] = []
    first = asyncio.create_task(_hold(pg, "quota\0a", events, "first", 0.5))
    await asyncio.sleep(0.2)
    await _hold(pg, second, events, "second", 0)
    await first
    assert events == order


async def test_sqlite_lock_is_free(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/lock.sqlite3")
    try:
        async with db.transaction() as tx:
            await tx.lock("anything")
            await tx.lock("anything")  # not a lock that could deadlock its holder
    finally:
        await db.close()


def test_lock_keys_are_signed_64_bit_and_differ_by_name() -> None:
    keys = {lock_key(f"upload-quota\0localhost\0user{i}@localhost") for i in range(1000)}
    assert len(keys) == 1000
    assert all(-(2**63) <= k < 2**63 for k in keys)
