"""Accounts and their SCRAM credentials (never a plaintext password)."""

from __future__ import annotations

import time
from typing import Final

import sqlalchemy as sa

from xmppd.auth.hashing import off_the_loop
from xmppd.auth.scram import SCRAM_HASHES, ScramCredentials, derive_credentials
from xmppd.jid import JID
from xmppd.storage.database import Database
from xmppd.storage.prepared import prepared
from xmppd.storage.schema import (
    accounts,
    api_user_tokens,
    fast_tokens,
    keyval,
    scram_credentials,
)


class AccountExists(Exception):
    """The account already exists."""


class NoSuchAccount(Exception):
    """The account does not exist."""


class Accounts:
    """Create, check, re-key and delete accounts of every host."""

    def __init__(self, db: Database, *, iterations: int = 4096) -> None:
        self._db = db
        self.iterations = iterations

    async def exists(self, jid: JID) -> bool:
        row = await self._db.fetch_one(_SELECT_ACCOUNT, {"host": jid.domain, "username": jid.local})
        return row is not None

    async def _derive_all(self, password: str) -> list[ScramCredentials]:
        """Every SCRAM hash's credentials (all are offered), in a hashing thread."""
        iterations = self.iterations
        return await off_the_loop(
            lambda: [derive_credentials(password, h, iterations=iterations) for h in SCRAM_HASHES]
        )

    async def create(self, jid: JID, password: str) -> None:
        """Create ``jid``'s account. Raises :class:`AccountExists`."""
        creds = await self._derive_all(password)
        async with self._db.transaction() as conn:
            found = await conn.execute(_SELECT_ACCOUNT, {"host": jid.domain, "username": jid.local})
            if found.first() is not None:
                raise AccountExists(str(jid))
            await conn.execute(
                sa.insert(accounts).values(
                    host=jid.domain, username=jid.local, created_at=time.time()
                )
            )
            await conn.execute(
                sa.insert(scram_credentials),
                [_credential_row(jid, c) for c in creds],
            )

    async def set_password(self, jid: JID, password: str) -> None:
        """Replace ``jid``'s credentials. Raises :class:`NoSuchAccount`."""
        if not await self.exists(jid):
            raise NoSuchAccount(str(jid))
        creds = await self._derive_all(password)
        async with self._db.transaction() as conn:
            # old FAST and API user tokens die too
            for table in (scram_credentials, fast_tokens, api_user_tokens):
                await conn.execute(
                    sa.delete(table).where(
                        table.c.host == jid.domain, table.c.username == jid.local
                    )
                )
            await conn.execute(
                sa.insert(scram_credentials), [_credential_row(jid, c) for c in creds]
            )

    async def revoke_credentials(self, jid: JID) -> None:
        """Make every password fail for ``jid`` (the account row stays, so the name
        cannot be registered again until :meth:`delete`). FAST and API user tokens go too."""
        async with self._db.transaction() as conn:
            for table in (scram_credentials, fast_tokens, api_user_tokens):
                await conn.execute(
                    sa.delete(table).where(
                        table.c.host == jid.domain, table.c.username == jid.local
                    )
                )

    async def delete(self, jid: JID) -> bool:
        """Delete the account row, its credentials and its generic key/value data.

        Module data is deleted by the ``user_removed`` hook, which the server runs
        before calling this.
        """
        async with self._db.transaction() as conn:
            result = await conn.execute(
                sa.delete(accounts).where(
                    accounts.c.host == jid.domain, accounts.c.username == jid.local
                )
            )
            for table in (scram_credentials, fast_tokens, api_user_tokens, keyval):
                await conn.execute(
                    sa.delete(table).where(
                        table.c.host == jid.domain, table.c.username == jid.local
                    )
                )
            return bool(result.rowcount)

    async def page(self, domain: str, after: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` account names of ``domain`` after ``after``, in order, and
        whether more follow (one query; the database does the paging)."""
        rows = await self._db.fetch_all(
            sa.select(accounts.c.username)
            .where(accounts.c.host == domain, accounts.c.username > after)
            .order_by(accounts.c.username)
            .limit(limit + 1)
        )
        names = [r[0] for r in rows]
        return names[:limit], len(names) > limit

    async def created_at(self, jid: JID) -> float | None:
        """When ``jid``'s account was created (Unix time), ``None`` when it does not exist."""
        row = await self._db.fetch_one(
            sa.select(accounts.c.created_at).where(
                accounts.c.host == jid.domain, accounts.c.username == jid.local
            )
        )
        return None if row is None else float(row[0])

    async def list(self, domain: str, limit: int | None = None) -> list[str]:
        """Usernames of ``domain``, sorted (the first ``limit`` when given)."""
        rows = await self._db.fetch_all(
            sa.select(accounts.c.username)
            .where(accounts.c.host == domain)
            .order_by(accounts.c.username)
            .limit(limit)
        )
        return [r[0] for r in rows]

    async def count(self, domain: str) -> int:
        """How many accounts ``domain`` has."""
        value = await self._db.fetch_value(
            sa.select(sa.func.count()).select_from(accounts).where(accounts.c.host == domain)
        )
        return int(value or 0)

    async def get_scram(
        self, domain: str, username: str, hash_name: str
    ) -> ScramCredentials | None:
        row = await self._db.fetch_one(
            _SELECT_SCRAM, {"host": domain, "username": username, "hash_name": hash_name}
        )
        if row is None:
            return None
        return ScramCredentials(
            hash_name=hash_name,
            salt=bytes(row.salt),
            iterations=int(row.iterations),
            stored_key=bytes(row.stored_key),
            server_key=bytes(row.server_key),
        )

    def lookup_for(self, domain: str) -> HostCredentials:
        return HostCredentials(self, domain)


class HostCredentials:
    """The SASL credential lookup of one host."""

    __slots__ = ("_accounts", "_domain")

    def __init__(self, accounts_: Accounts, domain: str) -> None:
        self._accounts = accounts_
        self._domain = domain

    async def get_scram(self, username: str, hash_name: str) -> ScramCredentials | None:
        return await self._accounts.get_scram(self._domain, username, hash_name)


_SELECT_ACCOUNT: Final = prepared(
    sa.select(accounts.c.username).where(
        accounts.c.host == sa.bindparam("host"),
        accounts.c.username == sa.bindparam("username"),
    )
)
"""Built once: every message to an offline user asks whether the account exists (a
storm's chat to users not back yet, a spammer's to made-up names)."""

_SELECT_SCRAM: Final = prepared(
    sa.select(
        scram_credentials.c.salt,
        scram_credentials.c.iterations,
        scram_credentials.c.stored_key,
        scram_credentials.c.server_key,
    ).where(
        scram_credentials.c.host == sa.bindparam("host"),
        scram_credentials.c.username == sa.bindparam("username"),
        scram_credentials.c.hash_name == sa.bindparam("hash_name"),
    )
)
"""Built once: building a statement per login costs more than running it."""


def _credential_row(jid: JID, c: ScramCredentials) -> dict[str, object]:
    return {
        "host": jid.domain,
        "username": jid.local,
        "hash_name": c.hash_name,
        "salt": c.salt,
        "iterations": c.iterations,
        "stored_key": c.stored_key,
        "server_key": c.server_key,
    }
