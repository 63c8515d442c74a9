"""Bulk writes into xmppd's database (accounts, rosters, archive), straight through SQLAlchemy.

xmppd itself creates the schema and one seed account (``xmppd import-users``); the bench
then copies the seed's credential rows to every other account (same password, so the same
SCRAM keys) and writes roster items and archive entries in a few large transactions.
Tables are reflected from the database, so only the columns named here are assumed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

ACCOUNT_TABLES = ("xmppd_accounts", "xmppd_scram")
ROSTER_TABLE = "mod_roster__items"
ARCHIVE_TABLE = "mod_mam__archive"
BATCH = 5000


async def _tables(conn: AsyncConnection, names: Sequence[str]) -> dict[str, sa.Table]:
    metadata = sa.MetaData()
    await conn.run_sync(lambda sync: metadata.reflect(sync, only=list(names)))
    return {name: metadata.tables[name] for name in names}


async def _insert(conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), BATCH):
        await conn.execute(table.insert(), rows[i : i + BATCH])


def _run(url: str, work: Any) -> Any:
    async def go() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def copy_accounts(
    url: str, host: str, seed: str, users: Sequence[str], rosters: Mapping[str, Sequence[str]]
) -> None:
    """Give every user of ``users`` (but ``seed``) the seed account's rows, and write the
    roster items of ``rosters`` (subscription ``both``)."""

    async def work(conn: AsyncConnection) -> None:
        tables = await _tables(conn, [*ACCOUNT_TABLES, ROSTER_TABLE])
        for name in ACCOUNT_TABLES:
            table = tables[name]
            query = table.select().where(table.c.host == host, table.c.username == seed)
            seed_rows = [dict(r._mapping) for r in (await conn.execute(query)).all()]
            if not seed_rows:
                raise RuntimeError(f"xmppd import-users wrote no {name} row for {seed}")
            rows = [{**r, "username": u} for u in users if u != seed for r in seed_rows]
            await _insert(conn, table, rows)
        items = [
            {
                "host": host,
                "username": user,
                "contact": f"{contact}@{host}",
                "name": "",
                "subscription": "both",
                "ask": False,
                "approved": False,
                "groups": "[]",
            }
            for user, contacts in rosters.items()
            for contact in contacts
        ]
        await _insert(conn, tables[ROSTER_TABLE], items)

    _run(url, work)


#: Words of the generated archive bodies; MARKER appears in about 1 message of 200.
VOCABULARY = [f"w{n:04d}" for n in range(2000)]
MARKER = "xylophone"


def archive_stanza(sender: str, recipient: str, body: str, number: int) -> str:
    """A chat message as xmppd stores it (``jabber:client`` declared on the element)."""
    return (
        f'<message xmlns="jabber:client" from="{sender}/b" to="{recipient}" type="chat" '
        f'id="m{number}"><body>{body}</body></message>'
    )


def fill_archive(
    url: str, host: str, user: str, peers: Sequence[str], count: int, seed: int = 7
) -> list[int]:
    """Write ``count`` archived chat messages of ``user`` with ``peers`` (in turn; with each
    peer alternately sent and received), one minute apart and ending now; returns their
    ids, oldest first (xmppd's id scheme: milliseconds << 20 | 20 more bits).  Rows are
    made and inserted :data:`BATCH` at a time, in one transaction."""
    rnd = random.Random(seed)
    first_us = time.time_ns() // 1000 - count * 60_000_000
    me = f"{user}@{host}"
    ids: list[int] = []

    def row(n: int) -> dict[str, Any]:
        stamp = first_us + n * 60_000_000
        archive_id = ((stamp // 1000) << 20) | (n & 0xFFFFF)
        ids.append(archive_id)
        words = rnd.choices(VOCABULARY, k=rnd.randint(3, 12))
        if rnd.random() < 0.005:
            words.insert(rnd.randrange(len(words) + 1), MARKER)
        body = " ".join(words)
        peer = f"{peers[n % len(peers)]}@{host}"
        outgoing = (n // len(peers)) % 2 == 0
        sender, recipient = (me, peer) if outgoing else (peer, me)
        return {
            "host": host,
            "username": user,
            "id": archive_id,
            "stamp": stamp,
            "peer": peer,
            "resource": "" if outgoing else "b",
            "outgoing": outgoing,
            "stanza": archive_stanza(sender, recipient, body, n),
            "body": body,
        }

    async def work(conn: AsyncConnection) -> None:
        table = (await _tables(conn, [ARCHIVE_TABLE]))[ARCHIVE_TABLE]
        for start in range(0, count, BATCH):
            rows = [row(n) for n in range(start, min(count, start + BATCH))]
            await conn.execute(table.insert(), rows)

    _run(url, work)
    if url.startswith("postgresql"):
        # The planner statistics autovacuum would have gathered on a real archive by now.
        _run(url, lambda conn: conn.execute(sa.text(f'ANALYZE "{ARCHIVE_TABLE}"')))
    else:
        # mod_mam's writer indexes what it inserts for full-text search (FTS5); rows put
        # in behind its back are indexed by a rebuild, as they would have been one by one.
        fts = f"{ARCHIVE_TABLE}_fts"
        _run(
            url, lambda conn: conn.execute(sa.text(f"INSERT INTO {fts}({fts}) VALUES ('rebuild')"))
        )
    return ids


def count_rows(url: str, table: str = ARCHIVE_TABLE) -> int:
    async def work(conn: AsyncConnection) -> int:
        return int((await conn.execute(sa.text(f'SELECT count(*) FROM "{table}"'))).scalar_one())

    return int(_run(url, work))
