"""Schema drift: the source shape each table was last planned with, and tables
paused (or being re-synced) after a schema change.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from replicator.state.migrations import migration_schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # What each replicated table looked like when it was last planned (stored
    # columns with their declared types, and the key): a schema change is found
    # by comparing against it, during a run and across restarts.
    op.create_table(
        "source_shapes",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("shape", postgresql.JSONB, nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )
    # A table whose changes are not applied: 'paused' until the daemon's next
    # start (a change it cannot follow), or 'resync' while it is compared and
    # repaired from the source (its log entries up to `position` are skipped).
    op.create_table(
        "paused_tables",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column(
            "since", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("state IN ('paused', 'resync')", name="paused_tables_state"),
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema()
    op.drop_table("paused_tables", schema=schema)
    op.drop_table("source_shapes", schema=schema)
