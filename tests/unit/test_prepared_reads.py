"""Statements marked ``prepared`` read on SQLite through the driver directly: on a real
SQLite database, every row and value they give equals what SQLAlchemy gives for the
same statement unmarked (types converted the same way both ways: booleans, dates,
bytes, constants of the statement, parameters with a bind processor), and statements
the plan cannot take (expanding ``IN``) still run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from xmppd.api.storage import prepared
from xmppd.storage.database import Database

META = sa.MetaData()
THINGS = sa.Table(
    "prepared_test_things",
    META,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("seen", sa.DateTime, nullable=True),
    sa.Column("blob", sa.LargeBinary, nullable=True),
    sa.Column("count", sa.Integer, nullable=False),
)
OTHER = sa.Table(
    "prepared_test_other",
    META,
    sa.Column("owner", sa.String(64), primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
)

WHEN = datetime(2026, 12, 6, 17, 30, 5, 123456)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'prepared.sqlite3'}")
    await database.start()
    await database.run_schema_work(META.create_all)
    rows = [
        {"owner": "a", "name": "x", "flag": True, "seen": WHEN, "blob": b"\x00\xff", "count": 3},
        {"owner": "a", "name": "y", "flag": False, "seen": None, "blob": None, "count": 0},
        {"owner": "b", "name": "z", "flag": True, "seen": WHEN, "blob": b"", "count": 7},
    ]
    for row in rows:
        await database.execute(sa.insert(THINGS).values(**row))
    await database.execute(sa.insert(OTHER).values(owner="a", total=10))
    yield database
    await database.close()


def _union() -> sa.CompoundSelect[Any]:
    t, o = THINGS.c, OTHER.c
    return sa.union_all(
        sa.select(sa.literal("i").label("kind"), t.name, t.flag, t.seen, t.blob, t.count).where(
            t.owner == sa.bindparam("owner")
        ),
        sa.select(
            sa.literal("v"),
            sa.literal("", sa.String),
            sa.literal(False, sa.Boolean),
            sa.null(),
            sa.null(),
            o.total,
        ).where(o.owner == sa.bindparam("owner")),
    )


def _by_flag() -> sa.Select[Any]:
    t = THINGS.c
    return (
        sa.select(t.owner, t.name, t.seen)
        .where(t.flag == sa.bindparam("flag"))
        .order_by(t.owner, t.name)
    )


def _as_tuples(rows: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in rows]


@pytest.mark.parametrize("owner", ["a", "b", "nobody"])
async def test_a_union_with_constants_reads_the_same(db: Database, owner: str) -> None:
    plain = await db.fetch_all(_union(), {"owner": owner})
    fast = await db.fetch_all(prepared(_union()), {"owner": owner})
    assert sorted(_as_tuples(fast), key=repr) == sorted(_as_tuples(plain), key=repr)
    if owner == "a":
        items = {row.name: row for row in fast if row.kind == "i"}
        assert items["x"].flag is True and items["y"].flag is False
        assert items["x"].seen == WHEN and items["y"].seen is None
        assert items["x"].blob == b"\x00\xff" and items["x"].count == 3
        (version,) = [row for row in fast if row.kind == "v"]
        assert version.count == 10 and version.flag is False and version.name == ""


@pytest.mark.parametrize("flag", [True, False])
async def test_a_boolean_parameter_is_converted(db: Database, flag: bool) -> None:
    plain = await db.fetch_all(_by_flag(), {"flag": flag})
    fast = await db.fetch_all(prepared(_by_flag()), {"flag": flag})
    assert _as_tuples(fast) == _as_tuples(plain)
    assert [row.name for row in fast] == (["x", "z"] if flag else ["y"])
    assert fast[0][0] == fast[0].owner


async def test_fetch_one_and_nothing_found(db: Database) -> None:
    stmt = prepared(_by_flag())
    row = await db.fetch_one(stmt, {"flag": True})
    assert row is not None and (row.owner, row.name, row.seen) == ("a", "x", WHEN)
    t = THINGS.c
    missing = prepared(sa.select(t.name).where(t.owner == sa.bindparam("owner")))
    assert await db.fetch_one(missing, {"owner": "nobody"}) is None
    assert await db.fetch_value(missing, {"owner": "b"}) == "z"


async def test_a_statement_the_plan_cannot_take_still_runs(db: Database) -> None:
    t = THINGS.c
    stmt = prepared(
        sa.select(t.name)
        .where(t.owner.in_(sa.bindparam("owners", expanding=True)))
        .order_by(t.name)
    )
    rows = await db.fetch_all(stmt, {"owners": ["a", "b"]})
    assert [row.name for row in rows] == ["x", "y", "z"]


async def test_rows_written_after_the_first_read_are_seen(db: Database) -> None:
    stmt = prepared(_by_flag())
    before = await db.fetch_all(stmt, {"flag": False})
    await db.execute(
        sa.insert(THINGS).values(
            owner="c", name="w", flag=False, seen=datetime.now(UTC), blob=None, count=1
        )
    )
    after = await db.fetch_all(stmt, {"flag": False})
    assert [r.name for r in after] == [*(r.name for r in before), "w"]
