"""Alembic migrations of the database schema (see xmppd.storage.migrate)."""
