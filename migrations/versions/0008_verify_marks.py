"""Verify marks: how far each table was last verified, for an incremental verify.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from replicator.state.migrations import migration_schema

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # Per table, the last verify that compared it: the source's change-log head read
    # before its rows were (every later change is in the log after `position`), the
    # table's shape then, and whether it came out identical. `replicator verify
    # --changed` compares only the rows changed since, and the daemon keeps those
    # log entries (up to `stream.verify_keep_seconds`) instead of pruning them.
    op.create_table(
        "verify_marks",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("shape", sa.Text, nullable=False),
        sa.Column("identical", sa.Boolean, nullable=False),
        sa.Column("source_rows", sa.BigInteger, nullable=False),
        sa.Column(
            "verified_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )


def downgrade() -> None:
    op.drop_table("verify_marks", schema=migration_schema())
