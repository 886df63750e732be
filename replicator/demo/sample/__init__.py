"""Reference-application databases to replicate, and an application to write to them.

Why this exists: the demo, the test suite and the benchmarks all need a SQLite
file that looks like the reference app's ``var/app.db`` (11 tables, both
timestamp styles, JSON as text, astral-plane text, self-references), some cells
the stricter PostgreSQL target has to refuse, and an app that keeps writing
while replication runs. Everything is deterministic by seed, so a failing test
can be rerun on the same bytes.

Two promises the tests build on:

* every bad cell is listed in :class:`SampleReport` and every row that holds
  one holds exactly one, never in a key column, and never in a row that has
  children; so "rows in PostgreSQL + dead letters == rows in SQLite" must hold
  exactly, table by table;
* :func:`run_writer` counts what it commits, and adds exactly one to some
  tweet's ``like_count`` per transaction, so "sum(like_count) rose by
  ``increments``" catches a change applied twice or lost.

``python -m replicator.demo.sample generate|write`` runs either half in its own
process (``--help`` for the flags).

The modules, in the order data flows: ``schema`` (the SQL, tables, columns),
``pgschema`` (what the target accepts), ``timestamps``, ``vocabulary`` and
``content`` (seeded values), ``badcells`` (what is planted), ``build`` (a whole
database and its report), ``writer`` (the live app), ``cli``.
"""

from replicator.demo.sample.badcells import BadCell, BadKind
from replicator.demo.sample.build import SampleReport, generate_reference_db
from replicator.demo.sample.cli import main
from replicator.demo.sample.schema import (
    REFERENCE_PG_SCHEMA,
    REFERENCE_SQLITE_SCHEMA,
    REFERENCE_TABLES,
    SQLITE_ALEMBIC_VERSION,
)
from replicator.demo.sample.writer import TableChanges, WriterStats, run_writer

__all__ = [
    "REFERENCE_PG_SCHEMA",
    "REFERENCE_SQLITE_SCHEMA",
    "REFERENCE_TABLES",
    "SQLITE_ALEMBIC_VERSION",
    "BadCell",
    "BadKind",
    "SampleReport",
    "TableChanges",
    "WriterStats",
    "generate_reference_db",
    "main",
    "run_writer",
]
