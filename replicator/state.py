"""The replicator's own state schema in PostgreSQL, created and upgraded by Alembic.

The version table lives inside the state schema (``replicator.alembic_version``
by default), so the application's ``public.alembic_version`` is never read or
written. Migrations take an advisory lock, so two ``init`` runs at once are
harmless, and running ``init`` again is a no-op.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy.pool import NullPool

from replicator.errors import TargetError
from replicator.identifiers import pg_ident

# Any constant works; it only has to be the same for every replicator process.
_MIGRATION_LOCK = 0x5E91_1CA7


def migrations_dir() -> Path:
    """The migrations folder: packaged in the wheel, or the repository's own."""
    packaged = resources.files("replicator") / "_migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parent.parent / "migrations"
    if repo.is_dir():
        return repo
    raise TargetError("the replicator's migrations are missing from this installation")


def _alembic_config(schema: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["state_schema"] = schema
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config("replicator")).get_current_head()
    assert head is not None
    return head


def current_revision(conn: psycopg.Connection[Any], schema: str) -> str | None:
    """The state schema's revision, or None when ``init`` has not run."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT to_regclass(format('%%I.alembic_version', %s::text)) IS NOT NULL", (schema,)
        )
        row = cur.fetchone()
        if not row or not row[0]:
            return None
        cur.execute(
            sql.SQL("SELECT version_num FROM {}").format(pg_ident(schema, "alembic_version"))
        )
        found = cur.fetchone()
    return str(found[0]) if found else None


def migrate(dsn: str, schema: str) -> tuple[str | None, str]:
    """Create or upgrade the state schema; returns (revision before, revision after)."""
    engine = sa.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=NullPool
    )
    # Alembic logs each step at INFO through stdlib logging; keep it quiet unless asked.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            quoted = pg_ident(schema).as_string(None)
            connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
            raw = connection.connection.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            before = current_revision(raw, schema)
            cfg = _alembic_config(schema)
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
            after = current_revision(raw, schema)
    finally:
        engine.dispose()
    assert after is not None
    return before, after


def migration_schema() -> str:
    """The state schema a running migration targets (for migrations/versions/*)."""
    from alembic import op

    schema = op.get_context().version_table_schema
    assert schema, "the state schema is passed by replicator.state.migrate"
    return str(schema)
