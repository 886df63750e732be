"""Streaming state: the applied position and the daemon's heartbeat.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from replicator.state.migrations import migration_schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = migration_schema()
    # One row: the last change-log position whose effect is committed here.
    # Written in the same transaction as the changes it covers.
    op.create_table(
        "stream_position",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("snapshot_seq", sa.BigInteger, nullable=False),
        sa.Column(
            "applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("changes_applied", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="stream_position_single_row"),
        schema=schema,
    )
    op.create_table(
        "daemon",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("id = 1", name="daemon_single_row"),
        schema=schema,
    )


def downgrade() -> None:
    schema = migration_schema()
    op.drop_table("daemon", schema=schema)
    op.drop_table("stream_position", schema=schema)
