"""The tables of xmppd before migrations existed (release 0.1).

Databases of that release have no ``alembic_version`` table and only the tables of the
modules they loaded (tables were created at start-up for the modules in the
configuration), so this revision creates each table and index only when it is
missing: on an empty database it creates them all, on an old one it adds what its
modules did not need then and keeps every row.

Frozen: later changes to the models go in new revisions, never here.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _create_table(name: str, *columns: Any) -> None:
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *columns)


def _create_index(name: str, table: str, columns: list[str]) -> None:
    existing = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}
    if name not in existing:
        op.create_index(name, table, columns)


def upgrade() -> None:
    _create_table(
        "mod_blocklist__items",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("jid", sa.String(length=3071), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "jid"),
    )
    _create_table(
        "mod_http_upload__files",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("slot", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=3071), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("content_type", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("host", "slot"),
    )
    _create_table(
        "mod_last__seen",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username"),
    )
    _create_table(
        "mod_mam__archive",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("stamp", sa.BigInteger(), nullable=False),
        sa.Column("peer", sa.String(length=2047), nullable=False),
        sa.Column("resource", sa.String(length=1023), nullable=False),
        sa.Column("outgoing", sa.Boolean(), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("host", "username", "id"),
    )
    _create_index("ix_mod_mam__archive_id", "mod_mam__archive", ["host", "id"])
    _create_index(
        "ix_mod_mam__archive_peer", "mod_mam__archive", ["host", "username", "peer", "id"]
    )

    _create_table(
        "mod_mam__prefs",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("default_mode", sa.String(length=8), nullable=False),
        sa.Column("always_jids", sa.Text(), nullable=False),
        sa.Column("never_jids", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username"),
    )
    _create_table(
        "mod_muc__affiliations",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("room", sa.String(length=1023), nullable=False),
        sa.Column("jid", sa.String(length=3071), nullable=False),
        sa.Column("affiliation", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "room", "jid"),
    )
    _create_table(
        "mod_muc__archive",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("room", sa.String(length=1023), nullable=False),
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("stamp", sa.BigInteger(), nullable=False),
        sa.Column("nick", sa.String(length=1023), nullable=False),
        sa.Column("sender", sa.String(length=3071), nullable=False),
        sa.Column("occupant_id", sa.String(length=64), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.Column("retracted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("host", "room", "id"),
    )
    _create_index("ix_mod_muc__archive_id", "mod_muc__archive", ["host", "id"])

    _create_table(
        "mod_muc__nicks",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("room", sa.String(length=1023), nullable=False),
        sa.Column("jid", sa.String(length=3071), nullable=False),
        sa.Column("nick", sa.String(length=1023), nullable=False),
        sa.PrimaryKeyConstraint("host", "room", "jid"),
    )
    _create_table(
        "mod_muc__rooms",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=1023), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("subject_by", sa.String(length=1023), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "name"),
    )
    _create_table(
        "mod_offline__messages",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("stamp", sa.Float(), nullable=False),
        sa.Column("sender", sa.String(length=3071), nullable=False),
        sa.Column("stanza", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "seq"),
    )
    _create_table(
        "mod_pep__caps",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("algo", sa.String(length=16), nullable=False),
        sa.Column("ver", sa.String(length=255), nullable=False),
        sa.Column("interests", sa.Text(), nullable=False),
        sa.Column("stored_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "algo", "ver"),
    )
    _create_table(
        "mod_pep__items",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("item_id", sa.String(length=1023), nullable=False),
        sa.Column("published_at", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "node", "item_id"),
    )
    _create_index(
        "ix_mod_pep__items_order", "mod_pep__items", ["host", "username", "node", "published_at"]
    )

    _create_table(
        "mod_pep__nodes",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("access_model", sa.String(length=16), nullable=False),
        sa.Column("max_items", sa.Integer(), nullable=True),
        sa.Column("persist_items", sa.Boolean(), nullable=False),
        sa.Column("send_last", sa.String(length=32), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "node"),
    )
    _create_table(
        "mod_pubsub__affiliations",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("jid", sa.String(length=1023), nullable=False),
        sa.Column("affiliation", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("host", "service", "node", "jid"),
    )
    _create_index(
        "ix_mod_pubsub__affiliations_jid", "mod_pubsub__affiliations", ["host", "service", "jid"]
    )

    _create_table(
        "mod_pubsub__items",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("service", sa.String(length=1023), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("item_id", sa.String(length=1023), nullable=False),
        sa.Column("published_at", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "service", "node", "item_id"),
    )
    _create_index(
        "ix_mod_pubsub__items_order",
        "mod_pubsub__items",
        ["host", "service", "node", "published_at"],
    )

    _create_table(
        "mod_pubsub__nodes",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("service", sa.String(length=1023), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("access_model", sa.String(length=16), nullable=False),
        sa.Column("max_items", sa.Integer(), nullable=True),
        sa.Column("persist_items", sa.Boolean(), nullable=False),
        sa.Column("send_last", sa.String(length=32), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "service", "node"),
    )
    _create_table(
        "mod_pubsub__subscriptions",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("service", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("jid", sa.String(length=3071), nullable=False),
        sa.Column("bare", sa.String(length=2047), nullable=False),
        sa.Column("subid", sa.String(length=64), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "service", "node", "jid"),
    )
    _create_index(
        "ix_mod_pubsub__subscriptions_bare",
        "mod_pubsub__subscriptions",
        ["host", "service", "bare"],
    )

    _create_table(
        "mod_push__registrations",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("service", sa.String(length=3071), nullable=False),
        sa.Column("node", sa.String(length=1023), nullable=False),
        sa.Column("resource", sa.String(length=1023), nullable=False),
        sa.Column("form", sa.Text(), nullable=False),
        sa.Column("reg_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "service", "node"),
    )
    _create_table(
        "mod_roster__items",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("contact", sa.String(length=3071), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("subscription", sa.String(length=8), nullable=False),
        sa.Column("ask", sa.Boolean(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("groups", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "contact"),
    )
    _create_table(
        "mod_roster__pending",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("contact", sa.String(length=3071), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "contact"),
    )
    _create_table(
        "mod_roster__versions",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username"),
    )
    _create_table(
        "xmppd_accounts",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username"),
    )
    _create_table(
        "xmppd_api_tokens",
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("token_id"),
    )
    _create_table(
        "xmppd_fast_tokens",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.String(length=8), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("mechanism", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "client_id", "slot"),
    )
    _create_table(
        "xmppd_keyval",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("store", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=1023), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "store", "key"),
    )
    _create_table(
        "xmppd_schema",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    _create_table(
        "xmppd_scram",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("hash_name", sa.String(length=16), nullable=False),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
        sa.Column("stored_key", sa.LargeBinary(), nullable=False),
        sa.Column("server_key", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("host", "username", "hash_name"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Full-text search of the archive (mod_mam): a GIN index of the bodies' words,
        # with the 'simple' configuration (no stemming, any language).
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_mod_mam__archive_fulltext ON mod_mam__archive "
            "USING gin (to_tsvector('simple', body))"
        )


_TABLES = [
    "mod_blocklist__items",
    "mod_http_upload__files",
    "mod_last__seen",
    "mod_mam__archive",
    "mod_mam__prefs",
    "mod_muc__affiliations",
    "mod_muc__archive",
    "mod_muc__nicks",
    "mod_muc__rooms",
    "mod_offline__messages",
    "mod_pep__caps",
    "mod_pep__items",
    "mod_pep__nodes",
    "mod_pubsub__affiliations",
    "mod_pubsub__items",
    "mod_pubsub__nodes",
    "mod_pubsub__subscriptions",
    "mod_push__registrations",
    "mod_roster__items",
    "mod_roster__pending",
    "mod_roster__versions",
    "xmppd_accounts",
    "xmppd_api_tokens",
    "xmppd_fast_tokens",
    "xmppd_keyval",
    "xmppd_schema",
    "xmppd_scram",
]


def downgrade() -> None:
    for name in reversed(_TABLES):
        op.drop_table(name)
