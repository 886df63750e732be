"""The reference app's schema: its SQL text on both sides, its tables, its columns.

The SQL ships inside the package (``replicator/data/reference_app``) so the
demo works from an installed wheel; the generator and the writer derive their
INSERT statements from the SQLite text, so a column added there needs no
second edit here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Final

from replicator.identifiers import sqlite_ident


def _package_sql(name: str) -> str:
    return (resources.files("replicator") / "data" / "reference_app" / name).read_text(
        encoding="utf-8"
    )


REFERENCE_SQLITE_SCHEMA: Final[str] = _package_sql("sqlite_schema.sql")
"""The source schema (run with ``executescript``; it switches the file to WAL)."""

REFERENCE_PG_SCHEMA: Final[str] = _package_sql("postgres_schema.sql")
"""The target schema, as the app's own migrations create it in PostgreSQL."""

REFERENCE_TABLES: Final[tuple[str, ...]] = (
    "alembic_version",
    "tweets",
    "artifacts",
    "artifact_classifications",
    "artifact_scores",
    "discovery_labels",
    "experiments",
    "experiment_runs",
    "snapshots",
    "beta_users",
    "cursors",
)
"""All tables of the reference app, parents before children."""

SQLITE_ALEMBIC_VERSION: Final[str] = "20251101_0009"
"""The SQLite-era migration head; the target has its own (20251112_0010)."""

TABLE_RE: Final = re.compile(r"CREATE TABLE (\w+) \((.*?)\n\);", re.DOTALL)
"""One ``CREATE TABLE`` statement of either schema: (table name, column lines)."""


_SQLITE_COLUMN_RE = re.compile(r"\s+([a-z_][a-z0-9_]*)\s")


def _column_order(schema: str) -> dict[str, tuple[str, ...]]:
    """Each table's columns in declaration order (lowercase names; keywords are upper)."""
    return {
        table: tuple(m[1] for line in body.splitlines() if (m := _SQLITE_COLUMN_RE.match(line)))
        for table, body in TABLE_RE.findall(schema)
    }


INSERT_COLUMNS: Final = _column_order(REFERENCE_SQLITE_SCHEMA)
"""Every generated row is a full row, in the source schema's column order."""


def insert_sql(table: str, columns: Sequence[str] | None = None) -> str:
    """An INSERT of ``columns`` (default: all, in schema order) with ``?`` placeholders."""
    names = INSERT_COLUMNS[table] if columns is None else columns
    return (
        f"INSERT INTO {sqlite_ident(table)} ({', '.join(sqlite_ident(n) for n in names)}) "
        f"VALUES ({', '.join('?' for _ in names)})"
    )
