"""Snapshot parts: a large table copied as several key ranges at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from replicator.state.migrations import migration_schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # One row per key range of a table the snapshot split: the range is
    # (key_from, key_to], both JSON keys, NULL meaning unbounded (the last part
    # reads up to the table's largest key when its copy starts). Each part's
    # position is committed with its own chunks; the table's row in
    # snapshot_progress holds the sums and is done once every part is. Deleting
    # the table's row (restart, a table dropped or replaced) deletes its parts.
    op.create_table(
        "snapshot_parts",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("part", sa.Integer, primary_key=True),
        sa.Column("key_from", postgresql.JSONB),
        sa.Column("key_to", postgresql.JSONB),
        sa.Column("last_key", postgresql.JSONB),
        sa.Column("rows_read", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_written", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("dead_letters", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )
    op.create_foreign_key(
        "snapshot_parts_table",
        "snapshot_parts",
        "snapshot_progress",
        ["table_name"],
        ["table_name"],
        source_schema=schema,
        referent_schema=schema,
        ondelete="CASCADE",
    )


def downgrade() -> None:
    schema = migration_schema()
    op.drop_table("snapshot_parts", schema=schema)
