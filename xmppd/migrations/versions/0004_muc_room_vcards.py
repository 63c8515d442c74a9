"""Room vCards (``mod_muc__vcards``): a room's vcard-temp, where owners publish its
avatar (XEP-0486, MUC Avatars).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mod_muc__vcards",
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("room", sa.String(length=1023), nullable=False),
        sa.Column("vcard", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("host", "room"),
    )


def downgrade() -> None:
    op.drop_table("mod_muc__vcards")
