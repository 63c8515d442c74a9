"""FAST tokens of one account are kept for its ``MAX_CLIENTS`` most recently renewed
clients at most (SQLite and PostgreSQL): every login may name a new client id, and the
table grew by a row per id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from xmppd.auth.fast import MAX_CLIENTS, FastTokens
from xmppd.storage.database import Database
from xmppd.storage.schema import fast_tokens


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await database.start()
    try:
        yield database
    finally:
        await database.close()


async def _clients(db: Database, username: str) -> set[str]:
    rows = await db.fetch_all(
        sa.select(fast_tokens.c.client_id).where(fast_tokens.c.username == username)
    )
    return {row.client_id for row in rows}


async def test_an_account_keeps_tokens_for_its_newest_clients(db: Database) -> None:
    tokens = FastTokens(db, b"s" * 32, lifetime=3600)
    for i in range(MAX_CLIENTS + 5):
        await tokens.issue("localhost", "alice", f"client-{i:03d}", "HT-SHA-256-NONE")
    await tokens.issue("localhost", "bob", "phone", "HT-SHA-256-NONE")
    kept = await _clients(db, "alice")
    assert len(kept) == MAX_CLIENTS
    assert "client-000" not in kept and f"client-{MAX_CLIENTS + 4:03d}" in kept
    assert await _clients(db, "bob") == {"phone"}  # others' tokens are not touched
    # A kept client still logs in with its token.
    token = await tokens.issue("localhost", "alice", "client-050", "HT-SHA-256-NONE")
    found = await tokens.verify(
        "localhost", "alice", "client-050", "HT-SHA-256-NONE", lambda t: t == token.token.encode()
    )
    assert found is not None
