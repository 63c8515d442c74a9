"""XEP-0484 token rotation on a real SQLite database: the two-slot scheme keeps the
older token valid until the newer one is used, then retires it; rotation is due when
half of a token's life is gone. The HT client side is computed from the draft's
formulas, independently of the server code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from xmppd.auth.fast import FastTokens, HashedTokenMechanism, Token
from xmppd.auth.sasl import Failure, Success, TlsChannel
from xmppd.storage.database import Database

HOST = "example.org"
CLIENT = "0d6ad5c9-5d9e-4a3e-8a8e-0c8f5c4d7f11"
NONE = "HT-SHA-256-NONE"


@pytest.fixture
async def tokens(tmp_path: Path) -> AsyncIterator[FastTokens]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'fast.sqlite3'}")
    await db.start()
    yield FastTokens(db, b"k" * 32, lifetime=3600)
    await db.close()


async def login(tokens: FastTokens, token: str, *, client: str = CLIENT) -> Token | None:
    mech = HashedTokenMechanism(
        NONE, domain=HOST, tokens=tokens, client_id=client, tls=TlsChannel({})
    )
    proof = hmac.digest(token.encode(), b"Initiator", hashlib.sha256)
    step = await mech.step(b"alice\0" + proof)
    if isinstance(step, Failure):
        return None
    assert isinstance(step, Success) and step.username == "alice"
    assert step.data == hmac.digest(token.encode(), b"Responder", hashlib.sha256)
    return mech.token


async def test_older_token_lives_until_the_newer_one_is_used(tokens: FastTokens) -> None:
    first = await tokens.issue(HOST, "alice", CLIENT, NONE)
    assert await login(tokens, first.token) is not None  # now in the 'current' slot
    second = await tokens.issue(HOST, "alice", CLIENT, NONE)
    assert second.token != first.token
    # The client may never have received the second token: the first still works.
    assert await login(tokens, first.token) is not None
    assert await login(tokens, second.token) is not None
    # Using the newer token retires the older one (XEP-0484 §4.5).
    assert await login(tokens, first.token) is None
    assert await login(tokens, second.token) is not None


async def test_tokens_are_per_installation_and_revocable(tokens: FastTokens) -> None:
    issued = await tokens.issue(HOST, "alice", CLIENT, NONE)
    other = "7c1f4a52-2b43-4f4e-9f55-3a7b2a1c9e20"
    assert await login(tokens, issued.token, client=other) is None
    await tokens.invalidate(HOST, "alice", CLIENT)
    assert await login(tokens, issued.token) is None
    again = await tokens.issue(HOST, "alice", CLIENT, NONE)
    await tokens.revoke_user(HOST, "alice")
    assert await login(tokens, again.token) is None


async def test_rotation_is_due_after_half_the_lifetime(tokens: FastTokens) -> None:
    issued = await tokens.issue(HOST, "alice", CLIENT, NONE)
    assert not tokens.due_for_rotation(issued)
    tokens.lifetime = 10 * 3600  # the configured life grew: an hour left is under half
    assert tokens.due_for_rotation(issued)


async def test_expired_tokens_do_not_authenticate(tokens: FastTokens) -> None:
    tokens.lifetime = -1.0  # issued already expired
    issued = await tokens.issue(HOST, "alice", CLIENT, NONE)
    assert await login(tokens, issued.token) is None


async def test_first_uses_at_once_each_retire_their_clients_older_token(
    tokens: FastTokens,
) -> None:
    """Tokens used at the same moment are moved to ``current`` in one transaction;
    each client's older token is retired, no one else's."""
    clients = [f"c{i}" for i in range(6)]
    older = {c: await tokens.issue(HOST, "alice", c, NONE) for c in clients}
    assert all([await login(tokens, t.token, client=c) for c, t in older.items()])
    newer = {c: await tokens.issue(HOST, "alice", c, NONE) for c in clients}
    used = clients[:4]
    logins = await asyncio.gather(*(login(tokens, newer[c].token, client=c) for c in used))
    assert all(t is not None for t in logins)
    for c in used:
        assert await login(tokens, older[c].token, client=c) is None
        assert await login(tokens, newer[c].token, client=c) is not None
    for c in clients[4:]:  # never used their newer token: the older one still works
        assert await login(tokens, older[c].token, client=c) is not None
