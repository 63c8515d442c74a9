"""User-scoped tokens of the REST API (``xmppd_api_user_tokens``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "xmppd_api_user_tokens",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=1023), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("host", "username", "token_id"),
    )
    op.create_index(
        "ix_xmppd_api_user_tokens_token_id", "xmppd_api_user_tokens", ["token_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_xmppd_api_user_tokens_token_id", table_name="xmppd_api_user_tokens")
    op.drop_table("xmppd_api_user_tokens")
