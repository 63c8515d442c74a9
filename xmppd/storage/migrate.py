"""Schema migrations: Alembic revisions shipped in ``xmppd/migrations``.

Every table of the core and of the modules and hook files shipped with xmppd is
created and changed by a revision, never by ``metadata.create_all``. Start-up
(:meth:`xmppd.storage.database.Database.start`) upgrades the database to the newest
revision when ``storage.auto_upgrade`` is on, or when the database is empty; else it
refuses to start on a database whose schema is older than the code
(:class:`SchemaOutOfDate`), and ``xmppd db upgrade`` does it.

Databases made before migrations existed (no ``alembic_version`` table) upgrade like
an empty one: the first revision creates only the tables that are missing.

Alembic runs synchronously on one connection, inside the caller's transaction: on
SQLite the inline engine's, on PostgreSQL the async engine's through ``run_sync``
(where a transaction-scoped advisory lock keeps two servers starting at once from
migrating together).
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from xmppd.packages import HOOKS_PACKAGE, MODULES_PACKAGE
from xmppd.storage.schema import METADATA

MIGRATIONS: Final = Path(__file__).resolve().parent.parent / "migrations"
"""The Alembic script directory (``env.py``, ``versions/``)."""

VERSION_TABLE: Final = "alembic_version"
_LOCK_KEY: Final = 0x786D_7070_6400  # "xmppd": pg_advisory_xact_lock key of migrations

RUNTIME_TABLE_PREFIXES: Final = ("mod_mam__archive_fts",)
"""Tables a module creates itself at run time, outside the models (mod_mam's SQLite
FTS5 index and its shadow tables): not compared, never dropped."""


class SchemaOutOfDate(Exception):
    """The database's schema is older (or newer) than this release's; the message says
    what to do."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands: its revision (``None``: none recorded), the newest
    revision of this release, and whether it has any table at all."""

    current: str | None
    head: str
    empty: bool

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def alembic_config(connection: Connection | None = None, *, autogenerate: bool = False) -> Config:
    """An Alembic configuration for the shipped scripts (no ``alembic.ini``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    config.attributes["autogenerate"] = autogenerate
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def state(connection: Connection) -> SchemaState:
    """The schema state of the database behind ``connection``."""
    names = sa.inspect(connection).get_table_names()
    current = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(current=current, head=head_revision(), empty=not names)


def upgrade(connection: Connection, target: str = "head") -> None:
    """Run the revisions up to ``target`` in ``connection``'s transaction."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    command.upgrade(alembic_config(connection), target)


def import_shipped_tables() -> sa.MetaData:
    """Import every module and hook file shipped with xmppd (their tables join
    :data:`~xmppd.storage.schema.METADATA`); the complete metadata."""
    for package_name, prefix in ((MODULES_PACKAGE, "mod_"), (HOOKS_PACKAGE, "")):
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith(prefix) and not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")
    return METADATA


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Autogenerate filter: leave out what modules create at run time and Alembic's
    own table."""
    if type_ == "table" and name is not None:
        return name != VERSION_TABLE and not name.startswith(RUNTIME_TABLE_PREFIXES)
    return True


def drift(connection: Connection) -> list[Any]:
    """Differences between the database and the models (empty: none), as Alembic's
    autogenerate sees them."""
    metadata = import_shipped_tables()
    context = MigrationContext.configure(
        connection,
        opts={"include_object": include_object, "compare_type": True},
    )
    with warnings.catch_warnings():
        # SQLite cannot reflect expression indexes; the only one (mod_mam's full-text
        # index) exists on PostgreSQL only, where it is compared.
        warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression")
        return list(compare_metadata(context, metadata))


def missing_tables(connection: Connection) -> list[sa.Table]:
    """Tables of loaded modules that no revision created (a module from outside the
    repository, ``server.module_paths``)."""
    present = set(sa.inspect(connection).get_table_names())
    return [t for t in METADATA.sorted_tables if t.name not in present]


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this release's revisions."""
    script = ScriptDirectory.from_config(alembic_config())
    return any(rev.revision == revision for rev in script.walk_revisions())


def new_revision(message: str, url: str) -> None:
    """Write a new revision with what the models changed since the newest one, as
    Alembic's autogenerate sees it against the database at ``url`` (a synchronous
    SQLAlchemy URL, upgraded first). For developers: review and edit the file it writes.

    ``python -m xmppd.storage.migrate "what changed" [sqlite:///scratch.sqlite3]``"""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            upgrade(conn)
        with engine.begin() as conn:
            command.revision(alembic_config(conn, autogenerate=True), message, autogenerate=True)
    finally:
        engine.dispose()


if __name__ == "__main__":
    import sys

    new_revision(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "sqlite://")
