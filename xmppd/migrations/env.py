"""Alembic environment: run the revisions on the connection xmppd hands over.

xmppd never lets Alembic open connections itself: :func:`xmppd.storage.migrate.upgrade`
passes one (in a transaction) through ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from xmppd.storage.migrate import import_shipped_tables, include_object

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `xmppd db upgrade`, not the alembic command")
# The models are needed only to autogenerate a revision (importing every module).
autogenerate = bool(context.config.attributes.get("autogenerate"))
context.configure(
    connection=connection,
    target_metadata=import_shipped_tables() if autogenerate else None,
    include_object=include_object,
    compare_type=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
