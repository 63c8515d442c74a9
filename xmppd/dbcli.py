"""``xmppd db upgrade|current``: the database schema from the command line.

These work on the database directly, with no server started (no module is loaded, no
listener opened); ``upgrade`` may run while a server of the previous release is
stopped, before the new one starts with ``storage.auto_upgrade = false``.
"""

from __future__ import annotations

import asyncio
import sys

import sqlalchemy as sa

from xmppd.config import ServerConfig
from xmppd.storage import migrate
from xmppd.storage.database import Database


def _describe(schema: migrate.SchemaState) -> str:
    if schema.is_current:
        return f"{schema.head} (current)"
    if schema.empty:
        return f"none: empty database (this release: {schema.head})"
    if schema.current is None:
        return f"none: made before migrations (this release: {schema.head})"
    if not migrate.is_known(schema.current):
        return f"{schema.current}: unknown to this release, made by a newer one ({schema.head})"
    return f"{schema.current}: behind this release ({schema.head}); run `xmppd db upgrade`"


async def _run(config: ServerConfig, action: str) -> int:
    config.server.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.storage_url(), pool_size=1)
    try:
        schema = await db.run_schema_work(migrate.state)
        if action == "current":
            print(_describe(schema))
            return 0 if schema.is_current else 3
        if schema.current is not None and not migrate.is_known(schema.current):
            print(f"cannot upgrade: {_describe(schema)}", file=sys.stderr)
            return 1
        if schema.is_current:
            print(f"already at {schema.head}")
            return 0
        await db.run_schema_work(migrate.upgrade)
        print(f"upgraded from {schema.current or 'none'} to {schema.head}")
        return 0
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 1
    finally:
        await db.close()


def db_command(config: ServerConfig, action: str) -> int:
    """Run ``xmppd db <action>``; the exit status (``current``: 3 when behind)."""
    return asyncio.run(_run(config, action))
