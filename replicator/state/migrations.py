"""The replicator's own state schema in PostgreSQL, created and upgraded by Alembic.

The version table lives inside the state schema (``replicator.alembic_version``
by default), so the application's ``public.alembic_version`` is never read or
written. Migrations take an advisory lock, so two ``init`` runs at once are
harmless, and running ``init`` again is a no-op.
"""

from __future__ import annotations

import ast
import functools
import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from replicator.errors import TargetError
from replicator.identifiers import pg_ident

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic and SQLAlchemy are imported only to migrate: every other run (the
# daemon, a snapshot) just compares revisions, and the two packages cost
# about 20 MB of memory that a long-running process would carry for nothing.

# Any constant works; it only has to be the same for every replicator process.
_MIGRATION_LOCK = 0x5E91_1CA7


def migrations_dir() -> Path:
    """The migrations folder: packaged in the wheel, or the repository's own."""
    packaged = resources.files("replicator") / "_migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[2] / "migrations"
    if repo.is_dir():
        return repo
    raise TargetError("the replicator's migrations are missing from this installation")


def _alembic_config(schema: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["state_schema"] = schema
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration, read from the files' ``revision``/``down_revision``."""
    revisions: dict[str, str | None] = {}
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        values: dict[str, Any] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    values[target.id] = ast.literal_eval(node.value)
        if "revision" in values:
            revisions[str(values["revision"])] = values.get("down_revision")
    parents = {down for down in revisions.values() if down}
    heads = [rev for rev in revisions if rev not in parents]
    if len(heads) != 1:
        raise TargetError(f"the replicator's migrations have {len(heads)} heads: {heads}")
    return heads[0]


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


def ensure_state(conn: psycopg.Connection[Any], dsn: str, schema: str) -> None:
    """Create or upgrade the state schema unless it is at the newest revision already."""
    if current_revision(conn, schema) != head_revision():
        migrate(dsn, schema)


def migrate(dsn: str, schema: str) -> tuple[str | None, str]:
    """Create or upgrade the state schema; returns (revision before, revision after)."""
    import sqlalchemy as sa
    from alembic import command
    from sqlalchemy.pool import NullPool

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
    assert schema, "the state schema is passed by replicator.state.migrations.migrate"
    return str(schema)
