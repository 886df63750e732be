"""Cursor capture: per-table cursor positions and reconciliation progress.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from replicator.state.migrations import migration_schema
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # One row per table captured by a cursor. `position` is written in the same
    # transaction as the rows it covers, like stream_position.seq for triggers.
    op.create_table(
        "cursor_position",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),  # 'timestamp' | 'rowid'
        sa.Column("column_name", sa.Text, nullable=False),
        # {"v": cursor value, "k": [primary key], "fp": fingerprint}; NULL: nothing yet.
        sa.Column("position", postgresql.JSONB),
        sa.Column("snapshot_position", postgresql.JSONB),
        sa.Column("rows_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("applied_at", sa.DateTime(timezone=True)),
        sa.Column("reconcile_started_at", sa.DateTime(timezone=True)),
        sa.Column("reconciled_at", sa.DateTime(timezone=True)),
        sa.Column("reconcile_passes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("reconcile_repaired", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema()
    op.drop_table("cursor_position", schema=schema)
