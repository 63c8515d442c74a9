"""Core tables and the metadata every module table joins.

Every table is keyed by ``host`` first (many virtual hosts share one database)
and carries a schema version in ``Table.info``; ``xmppd_schema`` records the
version each table was created at, so later releases can migrate.
"""

from __future__ import annotations

from typing import Final

import sqlalchemy as sa

METADATA: Final = sa.MetaData()

schema_versions: Final = sa.Table(
    "xmppd_schema",
    METADATA,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

accounts: Final = sa.Table(
    "xmppd_accounts",
    METADATA,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("username", sa.String(1023), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    info={"schema_version": 1},
)

scram_credentials: Final = sa.Table(
    "xmppd_scram",
    METADATA,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("username", sa.String(1023), primary_key=True),
    sa.Column("hash_name", sa.String(16), primary_key=True),
    sa.Column("salt", sa.LargeBinary, nullable=False),
    sa.Column("iterations", sa.Integer, nullable=False),
    sa.Column("stored_key", sa.LargeBinary, nullable=False),
    sa.Column("server_key", sa.LargeBinary, nullable=False),
    info={"schema_version": 1},
)

fast_tokens: Final = sa.Table(
    "xmppd_fast_tokens",
    METADATA,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("username", sa.String(1023), primary_key=True),
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("slot", sa.String(8), primary_key=True),
    sa.Column("nonce", sa.String(64), nullable=False),
    sa.Column("mechanism", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    info={"schema_version": 1},
)
"""XEP-0484 tokens, two slots per client ("new" and "current"). The token itself is
not stored: it is derived from ``nonce`` and the server secret (xmppd.server_secret)."""

keyval: Final = sa.Table(
    "xmppd_keyval",
    METADATA,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("username", sa.String(1023), primary_key=True),
    sa.Column("store", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(1023), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    info={"schema_version": 1},
)

api_tokens: Final = sa.Table(
    "xmppd_api_tokens",
    METADATA,
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    info={"schema_version": 1},
)
"""Bearer tokens of the admin REST API (server-wide). Only the SHA-256 of the secret
part is stored; the token (``xat_<token_id>_<secret>``) is shown once, at creation."""

api_user_tokens: Final = sa.Table(
    "xmppd_api_user_tokens",
    METADATA,
    sa.Column("host", sa.String(255), primary_key=True),
    sa.Column("username", sa.String(1023), primary_key=True),
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Index("ix_xmppd_api_user_tokens_token_id", "token_id", unique=True),
    info={"schema_version": 1},
)
"""User-scoped bearer tokens of the REST API (``xut_<token_id>_<secret>``): act as one
account on the ``/api/v1/me`` endpoints. Hashed like admin tokens; deleted with the
account and when its password changes."""

server_secret: Final = sa.Table(
    "xmppd_server_secret",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("secret", sa.String(512), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    info={"schema_version": 1},
)
"""The server secret of a cluster on a shared database (xmppd.server_secret): one row
(``id`` = 1, the secret as hex), inserted by the first node to start."""
