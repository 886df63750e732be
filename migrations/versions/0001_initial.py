"""Initial state: snapshot progress, dead letters, key/value metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from replicator.state.migrations import migration_schema
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    op.create_table(
        "snapshot_progress",
        sa.Column("table_name", sa.Text, primary_key=True),
        sa.Column("last_key", postgresql.JSONB),
        sa.Column("rows_read", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("rows_written", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("dead_letters", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("rows_total", sa.BigInteger),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("key", postgresql.JSONB, nullable=False),
        sa.Column("column_name", sa.Text),
        sa.Column("raw_value", postgresql.JSONB),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("sqlstate", sa.Text),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("change", postgresql.JSONB),
        sa.Column("position", sa.BigInteger),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolution", sa.Text),
        schema=schema,
    )
    op.create_index(
        "dead_letters_open",
        "dead_letters",
        ["table_name", "key"],
        schema=schema,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", postgresql.JSONB, nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema()
    op.drop_table("meta", schema=schema)
    op.drop_table("dead_letters", schema=schema)
    op.drop_table("snapshot_progress", schema=schema)
