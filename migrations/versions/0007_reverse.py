"""Reverse direction: changes made in PostgreSQL after cutover, waiting to be
applied to the SQLite file, and which direction a dead letter belongs to.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from replicator.state.migrations import migration_schema

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # One row per captured row change (the capture triggers of `replicator reverse
    # init` write it): the source table it maps to, the op, and the row's key as
    # the target holds it. The row's values are read from the table when the
    # change is applied, so a change is only a pointer and stays small. A row is
    # deleted once its effect is committed in the SQLite file.
    op.create_table(
        "reverse_changes",
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("op", sa.Text, nullable=False),
        sa.Column("key", postgresql.JSONB, nullable=False),
        sa.Column("txid", sa.BigInteger, nullable=False, server_default=sa.text("txid_current()")),
        sa.Column(
            "captured_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("clock_timestamp()"),
        ),
        # 'T': a TRUNCATE of the table (its key is the empty array).
        sa.CheckConstraint("op IN ('I', 'U', 'D', 'T')", name="reverse_changes_op"),
        schema=schema,
    )
    # 'forward' (SQLite -> PostgreSQL, every letter before this revision) or
    # 'reverse' (PostgreSQL -> SQLite, a row SQLite refused).
    op.add_column(
        "dead_letters",
        sa.Column("direction", sa.Text, nullable=False, server_default="forward"),
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema()
    op.drop_column("dead_letters", "direction", schema=schema)
    op.drop_table("reverse_changes", schema=schema)
