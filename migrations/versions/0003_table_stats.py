"""Per-table apply statistics and the daemon's recent throughput, for `status`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from replicator.state.migrations import migration_schema
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # Written in the same transaction as each batch that touches the table.
    op.create_table(
        "table_stats",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("changes_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_applied_at", sa.DateTime(timezone=True)),
        sa.Column("last_position", sa.BigInteger),
        schema=schema,
    )
    # Changes per second per table over the last minute, from the heartbeat.
    op.add_column("daemon", sa.Column("rates", postgresql.JSONB), schema=schema)


def downgrade() -> None:
    schema = migration_schema()
    op.drop_column("daemon", "rates", schema=schema)
    op.drop_table("table_stats", schema=schema)
