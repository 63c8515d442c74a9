"""Database.upsert_all_in on SQLite and PostgreSQL: new rows are inserted, existing ones
updated, several rows with one key leave the last of them, and a row alone behaves as
Database.upsert does (the statement both share)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from xmppd.storage.database import Database

_METADATA = sa.MetaData()
SEEN = sa.Table(
    "upsert_all_test",
    _METADATA,
    sa.Column("host", sa.String(100), primary_key=True),
    sa.Column("username", sa.String(100), primary_key=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("status", sa.Text, nullable=False, default=""),
)
KEYS = ("host", "username")
NAMES = sa.Table("upsert_all_names", _METADATA, sa.Column("name", sa.String(50), primary_key=True))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.run_schema_work(_METADATA.create_all)
    try:
        yield database
    finally:
        await database.close()


async def _rows(db: Database) -> dict[str, tuple[float, str]]:
    rows = await db.fetch_all(sa.select(SEEN))
    return {row.username: (row.at, row.status) for row in rows}


def _row(user: str, at: float, status: str = "") -> dict[str, object]:
    return {"host": "example.org", "username": user, "at": at, "status": status}


async def test_inserts_and_updates_in_one_statement(db: Database) -> None:
    await db.upsert(SEEN, _row("alice", 1.0, "away"), KEYS)
    async with db.transaction() as tx:
        await db.upsert_all_in(
            tx, SEEN, [_row("alice", 2.0, "gone"), _row("bob", 3.0), _row("carol", 4.0)], KEYS
        )
    assert await _rows(db) == {"alice": (2.0, "gone"), "bob": (3.0, ""), "carol": (4.0, "")}


async def test_the_last_of_several_rows_with_one_key_wins(db: Database) -> None:
    async with db.transaction() as tx:
        await db.upsert_all_in(
            tx,
            SEEN,
            [_row("alice", 1.0, "first"), _row("bob", 2.0), _row("alice", 5.0, "last")],
            KEYS,
        )
    assert await _rows(db) == {"alice": (5.0, "last"), "bob": (2.0, "")}


async def test_nothing_to_write_is_no_statement(db: Database) -> None:
    async with db.transaction() as tx:
        await db.upsert_all_in(tx, SEEN, [], KEYS)
    assert await _rows(db) == {}


async def test_a_row_with_only_key_columns_is_inserted_once(db: Database) -> None:
    async with db.transaction() as tx:
        await db.upsert_all_in(tx, NAMES, [{"name": "a"}, {"name": "a"}, {"name": "b"}], ["name"])
    await db.upsert(NAMES, {"name": "a"}, ["name"])
    names = sorted(r.name for r in await db.fetch_all(sa.select(NAMES)))
    assert names == ["a", "b"]
