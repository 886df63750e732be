"""Unique conflicts the change log cannot explain: rows SQLite removed silently.

``INSERT OR REPLACE`` (and ``UPDATE OR REPLACE``) deletes every row holding a
UNIQUE value the new row takes. SQLite fires delete triggers for that implicit
delete only with ``PRAGMA recursive_triggers`` on, off by default, so the log
carries the new row and never says the old one went: in the target, the old
row still holds the value and the new one hits a unique violation (23505).

When a change still fails that way after the batch was replayed in log order,
the target rows holding the value under another key are made equal to the
source as it is now (deleted when the source no longer has them, copied again
otherwise), and the change is tried once more. A key whose target value does
not read back as the same source key (a key of a converted type, a timestamp
say) is left alone: without certainty the row is gone, nothing is deleted, and
the change is dead-lettered as before. So is it on a table written to both
sides (``conflict = "newer_wins"``): there the target may hold rows of its own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from psycopg import sql

from replicator.coerce import Kind
from replicator.identifiers import pg_ident
from replicator.plan.rows import convert_key
from replicator.plan.tables import TablePlan
from replicator.stream.repair import rewrite_keys
from replicator.target.catalog import unique_index_columns
from replicator.target.connection import Connection, is_row_error

Row = tuple[object, ...]
UNIQUE_VIOLATION = "23505"
# Target key types whose values are the source's own (integers, text; rowid is one).
EXACT_KEYS = frozenset({Kind.SMALLINT, Kind.INTEGER, Kind.BIGINT, Kind.TEXT, Kind.VARCHAR})


def free_unique_value(
    conn: Connection,
    source: sqlite3.Connection,
    plan: TablePlan,
    row: Row,
    exc: BaseException,
) -> bool:
    """Rewrite from the source the target rows that hold ``row``'s value of the unique
    index ``exc`` names, under another key. True when that freed the value: ``row``
    is worth another try."""
    diag = getattr(exc, "diag", None)
    if getattr(exc, "sqlstate", None) != UNIQUE_VIOLATION or diag is None:
        return False
    if plan.newer_column is not None:
        return False  # dual-write: the target may hold rows the source never had
    if not diag.constraint_name or not diag.schema_name:
        return False
    columns = unique_index_columns(conn, diag.schema_name, diag.constraint_name)
    targets = [c.target for c in plan.columns]
    if columns is None or any(c not in targets for c in columns):
        return False
    values = tuple(row[targets.index(c)] for c in columns)
    if any(v is None for v in values):
        return False
    if any(plan.columns[i].type.kind not in EXACT_KEYS for i in plan.key_positions):
        return False  # a target key that does not read back as the source's key
    own = tuple(row[i] for i in plan.key_positions)
    holders = _holders(conn, plan, columns, values, own)
    # Each holder's target key, read back as a source key when it converts to the very
    # same target key again: then the source can be asked for it.
    keys = [k for k in holders if convert_key(plan, k) == k]
    if not keys:
        return False
    rewrite_keys(source, conn, plan, keys)
    # Freed only when no other row holds the value now: a source that still has it
    # under another key (a target UNIQUE the source lacks) is no reason to try again.
    return not _holders(conn, plan, columns, values, own)


def _holders(
    conn: Connection, plan: TablePlan, columns: Sequence[str], values: Row, own: Row
) -> list[Row]:
    """The target keys, but ``own``, of the rows holding ``values`` in ``columns``."""
    try:
        with conn.transaction():
            return [k for k in _lookup(conn, plan, columns, values) if k != own]
    except Exception as exc:
        if not is_row_error(exc):
            raise
        return []  # a value the look-up cannot compare: the row is dead-lettered


def _lookup(conn: Connection, plan: TablePlan, columns: Sequence[str], values: Row) -> list[Row]:
    query = sql.SQL("SELECT {} FROM {} WHERE ({}) = ({})").format(
        sql.SQL(", ").join(pg_ident(k) for k in plan.target_key),
        plan.table,
        sql.SQL(", ").join(pg_ident(c) for c in columns),
        sql.SQL(", ").join(sql.Placeholder() for _ in columns),
    )
    with conn.cursor() as cur:
        cur.execute(query, values)
        return [tuple(r) for r in cur.fetchall()]
