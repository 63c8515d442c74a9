"""Bearer tokens of the REST API, stored hashed.

An admin token reads ``xat_<id>_<secret>``: the id finds the row, the secret (256
random bits) is checked against its SHA-256 in constant time. Its scope is one of
``read-only`` (every ``GET``), ``users`` (and changes to accounts, sessions, rosters,
messages), ``rooms`` (and changes to group-chat rooms) or ``admin`` (everything).

A user token reads ``xut_<id>_<secret>`` and acts as one account on the ``/me``
endpoints only (:class:`UserTokens`); it is issued after a password check
(``POST /api/v1/auth/token``) or by an admin for an app backend.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa

from xmppd.jid import JID
from xmppd.storage.database import Database
from xmppd.storage.schema import api_tokens, api_user_tokens

SCOPES: Final = ("read-only", "users", "rooms", "admin")
PREFIX: Final = "xat_"
USER_PREFIX: Final = "xut_"
MAX_NAME: Final = 255


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_id: str
    name: str
    scope: str
    created_at: float

    def allows(self, needed: str) -> bool:
        """``admin`` allows all; ``users``/``rooms`` their own and ``read-only``."""
        return self.scope in ("admin", needed) or needed == "read-only"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _split(text: str, prefix: str) -> tuple[str, str] | None:
    if not text.startswith(prefix) or len(text) > 200:
        return None
    token_id, sep, secret = text[len(prefix) :].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


class ApiTokens:
    """Create, list, revoke and check admin API tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str, scope: str) -> tuple[ApiToken, str]:
        """A new token and its text (shown once; only its hash is kept)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r} (one of {', '.join(SCOPES)})")
        if len(name) > MAX_NAME:
            raise ValueError(f"a token name has at most {MAX_NAME} characters")
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
        parts = _split(text, PREFIX)
        if parts is None:
            return None
        token_id, secret = parts
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


@dataclass(frozen=True, slots=True)
class UserToken:
    """A token acting as ``account`` (on the ``/me`` endpoints)."""

    token_id: str
    name: str
    account: JID
    created_at: float
    expires_at: float | None


MAX_USER_TOKENS: Final = 100
"""User tokens one account holds at most: a new one beyond replaces the oldest (each is
a row; a script that asks for a token at every run would otherwise add rows for ever).
Expired tokens are deleted when the account asks for a new one."""


class UserTokens:
    """Create, list, revoke and check user-scoped tokens (table
    ``xmppd_api_user_tokens``; the account's removal and password change delete them,
    see :class:`xmppd.auth.accounts.Accounts`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, account: JID, name: str, lifetime: float | None = None
    ) -> tuple[UserToken, str]:
        """A new token for ``account`` and its text (shown once), valid for
        ``lifetime`` seconds (``None``: until revoked)."""
        if len(name) > MAX_NAME:
            raise ValueError(f"a token name has at most {MAX_NAME} characters")
        account = account.bare
        now = time.time()
        t = api_user_tokens.c
        mine = (t.host == account.domain, t.username == account.local)
        newest = (
            sa.select(t.token_id)
            .where(*mine)
            .order_by(t.created_at.desc())
            .limit(MAX_USER_TOKENS - 1)
        )
        await self._db.execute(
            sa.delete(api_user_tokens).where(
                *mine, sa.or_(t.expires_at <= now, t.token_id.not_in(newest))
            )
        )
        token = UserToken(
            secrets.token_hex(8),
            name,
            account,
            now,
            None if lifetime is None else now + lifetime,
        )
        secret = secrets.token_urlsafe(32)
        await self._db.execute(
            sa.insert(api_user_tokens).values(
                host=account.domain,
                username=account.local,
                token_id=token.token_id,
                name=name,
                secret_hash=_hash(secret),
                created_at=token.created_at,
                expires_at=token.expires_at,
            )
        )
        return token, f"{USER_PREFIX}{token.token_id}_{secret}"

    async def list(self, account: JID) -> list[UserToken]:
        t = api_user_tokens.c
        rows = await self._db.fetch_all(
            sa.select(t.token_id, t.name, t.created_at, t.expires_at)
            .where(t.host == account.domain, t.username == account.local)
            .order_by(t.created_at)
        )
        return [
            UserToken(r.token_id, r.name, account.bare, r.created_at, r.expires_at) for r in rows
        ]

    async def revoke(self, account: JID, token_id: str) -> bool:
        t = api_user_tokens.c
        count = await self._db.execute(
            sa.delete(api_user_tokens).where(
                t.host == account.domain, t.username == account.local, t.token_id == token_id
            )
        )
        return count > 0

    async def check(self, text: str) -> UserToken | None:
        """The user token ``text`` stands for; ``None`` when unknown, wrong or expired."""
        parts = _split(text, USER_PREFIX)
        if parts is None:
            return None
        token_id, secret = parts
        t = api_user_tokens.c
        row = await self._db.fetch_one(
            sa.select(t.host, t.username, t.name, t.created_at, t.expires_at, t.secret_hash).where(
                t.token_id == token_id
            )
        )
        if row is None or not hmac.compare_digest(row.secret_hash, _hash(secret)):
            return None
        if row.expires_at is not None and row.expires_at < time.time():
            return None
        account = JID.create(row.username, row.host)
        return UserToken(token_id, row.name, account, row.created_at, row.expires_at)
