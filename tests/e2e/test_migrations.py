"""Schema migrations (Alembic): a database made by the release before migrations
existed upgrades with every row kept, on SQLite and PostgreSQL; the revisions and the
models agree (autogenerate finds nothing to do); start-up upgrades or refuses as
``storage.auto_upgrade`` says.

The old databases are tests/fixtures/migrations/old-07c0b2f.*, made by the code of
commit 07c0b2f through real client streams (make_fixture.py there says how).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

from tests.support.e2e import PASSWORD
from tests.support.server import DEFAULT_TEST_MODULES, postgres_database, running_server
from tests.support.xmlclient import XmlClient, tag
from xmppd.storage import migrate
from xmppd.storage.database import Database

FIXTURES = Path(__file__).parents[1] / "fixtures" / "migrations"
OLD_SQLITE = FIXTURES / "old-07c0b2f.sqlite3"
OLD_POSTGRESQL = FIXTURES / "old-07c0b2f.postgresql.sql"
OLD_COUNTS: dict[str, int] = json.loads((FIXTURES / "old-07c0b2f.counts.json").read_text())
NEW_TABLES = {"xmppd_api_tokens", "mod_push__registrations", "mod_http_upload__files"}
"""Tables the old release did not create there (a later table; modules not loaded)."""


def write_config(tmp: Path, url: str, extra: str = "") -> Path:
    path = tmp / "xmppd.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp / "data"}"\n[storage]\nurl = "{url}"\n{extra}')
    return path


def xmppd(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xmppd", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def sqlite_counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '%_fts%'"
            )
        ]
        return {n: conn.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
    finally:
        conn.close()


async def pg_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        names = [
            r[0]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        return {n: await conn.fetchval(f'SELECT count(*) FROM public."{n}"') for n in names}
    finally:
        await conn.close()


async def schema_work(url: str, fn: Any) -> Any:
    db = Database(url, pool_size=1)
    try:
        return await db.run_schema_work(fn)
    finally:
        await db.close()


def test_old_sqlite_database_upgrades_with_every_row(tmp_path: Path) -> None:
    db = tmp_path / "xmppd.sqlite3"
    shutil.copyfile(OLD_SQLITE, db)
    url = f"sqlite+aiosqlite:///{db}"
    config = write_config(tmp_path, url)
    before = xmppd(config, "db", "current")
    assert before.returncode == 3
    assert before.stdout.startswith("none: made before migrations")
    assert sqlite_counts(db) == OLD_COUNTS

    done = xmppd(config, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"upgraded from none to {migrate.head_revision()}"
    assert done.stderr == ""  # a CLI command prints its result, nothing else

    after = sqlite_counts(db)
    assert {t: after[t] for t in OLD_COUNTS} == OLD_COUNTS
    assert sum(OLD_COUNTS.values()) > 60 and all(
        OLD_COUNTS[t] > 0 for t in ("mod_mam__archive", "mod_muc__rooms", "mod_pubsub__items")
    )
    assert {t: after.get(t) for t in NEW_TABLES} == dict.fromkeys(NEW_TABLES, 0)
    assert after["alembic_version"] == 1

    now = xmppd(config, "db", "current")
    assert (now.returncode, now.stdout.strip()) == (0, f"{migrate.head_revision()} (current)")
    assert asyncio.run(schema_work(url, migrate.drift)) == []
    again = xmppd(config, "db", "upgrade")
    assert again.returncode == 0 and again.stdout.startswith("already at")
    assert sqlite_counts(db) == after


async def test_upgraded_old_database_serves_its_data(tmp_path: Path) -> None:
    """A server of this release started on the old database (auto_upgrade, the
    default) upgrades it and serves what it holds: logins, rosters, offline messages,
    the persistent room."""
    shutil.copyfile(OLD_SQLITE, tmp_path / "xmppd.sqlite3")
    modules = {**DEFAULT_TEST_MODULES, "offline": {}, "mam": {}, "pep": {}, "vcard": {}}
    with running_server(tmp_path, modules=modules) as server:
        alice = await XmlClient.login(server, "alice@localhost", PASSWORD, resource="new")
        carol = await XmlClient.login(server, "carol@localhost", PASSWORD, resource="new")
        try:
            roster = await alice.iq("get", "<query xmlns='jabber:iq:roster'/>", to=None)
            items = {
                i.get("jid"): i.get("subscription") for i in roster.iter("{jabber:iq:roster}item")
            }
            assert items == {"bob@localhost": "to", "carol@localhost": "none"}
            carol.send("<presence/>")
            offline = await carol.expect(lambda el: el.findtext(tag("body")) is not None)
            assert offline.findtext(tag("body")) == "while you were out"
            info = await alice.iq(
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#items'/>",
                to="conference.localhost",
            )
            names = {
                i.get("name") for i in info.iter("{http://jabber.org/protocol/disco#items}item")
            }
            assert "Old room" in names
        finally:
            await alice.close()
            await carol.close()
    assert "upgrading the database schema from none to" in server.log_text()


def test_old_postgresql_database_upgrades_with_every_row(tmp_path: Path) -> None:
    with postgres_database() as url:

        async def load() -> None:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                await conn.execute(OLD_POSTGRESQL.read_text())
            finally:
                await conn.close()

        asyncio.run(load())
        before = asyncio.run(pg_counts(url))
        assert set(before) == set(OLD_COUNTS)
        assert sum(before.values()) > 60 and before["mod_mam__archive"] > 0
        config = write_config(tmp_path, url)
        done = xmppd(config, "db", "upgrade")
        assert done.returncode == 0, done.stderr
        after = asyncio.run(pg_counts(url))
        assert {t: after[t] for t in before} == before
        assert {t: after.get(t) for t in NEW_TABLES} == dict.fromkeys(NEW_TABLES, 0)
        assert asyncio.run(schema_work(url, migrate.drift)) == []
        now = xmppd(config, "db", "current")
        assert now.returncode == 0, now.stdout


def test_fresh_databases_match_the_models(tmp_path: Path) -> None:
    """Autogenerate finds no drift between the revisions and the models, on an empty
    SQLite database and an empty PostgreSQL one upgraded to the newest revision."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}"
    asyncio.run(schema_work(url, migrate.upgrade))
    assert asyncio.run(schema_work(url, migrate.drift)) == []
    with postgres_database() as pg:
        asyncio.run(schema_work(pg, migrate.upgrade))
        assert asyncio.run(schema_work(pg, migrate.drift)) == []


def test_drift_is_seen(tmp_path: Path) -> None:
    """The drift check is not blind: a column the models lack is reported."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.sqlite3'}"
    asyncio.run(schema_work(url, migrate.upgrade))

    def add_column(conn: sa.Connection) -> None:
        conn.execute(sa.text("ALTER TABLE xmppd_accounts ADD COLUMN extra TEXT"))

    asyncio.run(schema_work(url, add_column))
    found = asyncio.run(schema_work(url, migrate.drift))
    assert [(d[0], d[3].name) for d in found] == [("remove_column", "extra")]


def test_manual_upgrade_refuses_an_old_database_and_sets_up_an_empty_one(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    shutil.copyfile(OLD_SQLITE, old)
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{old}", "auto_upgrade = false\n")
    refused = xmppd(config, "users")
    assert refused.returncode == 1
    assert "xmppd db upgrade" in refused.stderr and "made before migrations" in refused.stderr
    assert "alembic_version" not in sqlite_counts(old)
    assert xmppd(config, "db", "upgrade").returncode == 0
    listed = xmppd(config, "users")
    assert listed.returncode == 0, listed.stderr
    assert {"alice@localhost", "bob@localhost", "carol@localhost"} <= set(listed.stdout.split())

    empty = tmp_path / "empty"
    empty.mkdir()
    config = write_config(
        empty, f"sqlite+aiosqlite:///{empty / 'x.sqlite3'}", "auto_upgrade = false\n"
    )
    made = xmppd(config, "adduser", "dave@localhost", "--password", PASSWORD)
    assert made.returncode == 0, made.stderr
    assert xmppd(config, "db", "current").returncode == 0


def test_tables_of_out_of_tree_modules_are_still_created(tmp_path: Path) -> None:
    """A module from server.module_paths declares a table no revision knows: start-up
    creates it from its definition, with a warning naming it (in a separate process,
    so the suite's metadata stays as shipped)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "mod_outside.py").write_text(
        "from xmppd.api import Module\n"
        "from xmppd.api.storage import Column, String\n"
        "module = Module('outside', 'A module from elsewhere')\n"
        "notes = module.table('notes', Column('username', String(255), primary_key=True))\n"
    )
    db = tmp_path / "x.sqlite3"
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{db}")
    config.write_text(
        config.read_text().replace(
            "[server]\n", f'[server]\nmodule_paths = ["{tmp_path / "mods"}"]\n'
        )
        + "[modules]\nroster = {}\noutside = {}\n"
    )
    done = xmppd(config, "users")
    assert done.returncode == 0, done.stderr
    assert "table mod_outside__notes is not covered by a migration" in done.stderr
    assert sqlite_counts(db)["mod_outside__notes"] == 0
    assert xmppd(config, "db", "current").returncode == 0
