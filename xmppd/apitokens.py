"""Bearer tokens of the admin REST API, stored hashed.

A token reads ``xat_<id>_<secret>``: the id finds the row, the secret (256 random
bits) is checked against its SHA-256 in constant time. Scopes are ordered:
``read-only`` < ``users`` < ``admin``; a token passes a check for its scope or a lower one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from xmppd.storage.database import Database
from xmppd.storage.schema import api_tokens

SCOPES: Final = ("read-only", "users", "admin")
PREFIX: Final = "xat_"


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    name: str
    scope: str
    created_at: float

    def allows(self, needed: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiTokens:
    """Create, list, revoke and check admin API tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str, scope: str) -> tuple[ApiToken, str]:
        """A new token and its text (shown once; only its hash is kept)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r} (one of {', '.join(SCOPES)})")
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        token = ApiToken(token_id, name, scope, time.time())
        await self._db.execute(
            sa.insert(api_tokens).values(
                token_id=token_id,
                name=name,
                scope=scope,
                secret_hash=_hash(secret),
                created_at=token.created_at,
            )
        )
        return token, f"{PREFIX}{token_id}_{secret}"

    async def list(self) -> list[ApiToken]:
        rows = await self._db.fetch_all(
            sa.select(
                api_tokens.c.token_id,
                api_tokens.c.name,
                api_tokens.c.scope,
                api_tokens.c.created_at,
            ).order_by(api_tokens.c.created_at)
        )
        return [ApiToken(r.token_id, r.name, r.scope, r.created_at) for r in rows]

    async def revoke(self, token_id: str) -> bool:
        count = await self._db.execute(
            sa.delete(api_tokens).where(api_tokens.c.token_id == token_id)
        )
        return count > 0

    async def check(self, text: str) -> ApiToken | None:
        """The token ``text`` stands for, ``None`` when it is unknown or wrong."""
        if not text.startswith(PREFIX):
            return None
        token_id, sep, secret = text[len(PREFIX) :].partition("_")
        if not sep or not token_id or not secret:
            return None
        row = await self._db.fetch_one(
            sa.select(
                api_tokens.c.name,
                api_tokens.c.scope,
                api_tokens.c.created_at,
                api_tokens.c.secret_hash,
            ).where(api_tokens.c.token_id == token_id)
        )
        if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
            return None
        return ApiToken(token_id, row.name, row.scope, row.created_at)
