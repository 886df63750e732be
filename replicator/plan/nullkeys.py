"""Rows whose primary key holds NULL: SQLite keeps them, PostgreSQL cannot.

SQLite lets a non-INTEGER PRIMARY KEY of an ordinary (rowid) table hold NULL,
in any number of rows (a bug it keeps for compatibility), and a column the
target's primary key is on may be nullable in SQLite. PostgreSQL's primary key
never holds NULL, and such rows are not even reachable by key (``code = ?``
is never true for NULL), so they cannot be copied. They are never skipped
silently either: each is a dead letter naming the table, the key column that
holds NULL and the row's rowid (its identity in SQLite), with the whole row.

The letters of a table are kept equal to the rows the source has, the way a
reconciliation would: :func:`sync_null_keys` records a letter for each such
row without one and resolves the letters of rows that are gone or have a key
now. The snapshot runs it per table, the stream whenever a change of such a
row comes by (its key in the change log is NULL too), so both see the same.
Giving the row a key in SQLite (``UPDATE t SET code = ... WHERE rowid = ...``)
is the fix: the stream copies it and resolves its letter.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.coerce import json_safe
from replicator.identifiers import sqlite_ident
from replicator.plan.rows import row_image
from replicator.plan.tables import TablePlan
from replicator.source.reader import RawRow, fetch, read_rows
from replicator.source.sqlite import ROWID
from replicator.state import deadletter
from replicator.state.deadletter import DeadLetter

NOT_NULL_VIOLATION = "23502"  # what PostgreSQL would say, had the row been sent


def nullable_key(plan: TablePlan) -> tuple[str, ...]:
    """The key columns SQLite lets hold NULL: not the rowid (nor its INTEGER PRIMARY
    KEY alias), not declared NOT NULL, not the key of a WITHOUT ROWID table."""
    table = plan.source
    return tuple(
        k
        for k in plan.key
        if k not in (ROWID, table.rowid_alias)
        and not table.column(k).not_null
        and not (table.without_rowid and k in table.primary_key)
    )


def _identity(plan: TablePlan) -> list[str]:
    """What tells such a row apart in SQLite: its rowid (the primary key of a
    WITHOUT ROWID table)."""
    if plan.source.without_rowid:
        return [sqlite_ident(c) for c in plan.source.primary_key]
    return [ROWID]


def _where(columns: Sequence[str]) -> str:
    return " OR ".join(f"{sqlite_ident(c)} IS NULL" for c in columns)


def null_key_rows(source: sqlite3.Connection, plan: TablePlan) -> list[tuple[list[object], RawRow]]:
    """(identity, raw row) of every row whose key holds NULL; in the caller's read
    transaction when it holds one, else in one of its own."""
    nullable = nullable_key(plan)
    if not nullable:
        return []
    ident = _identity(plan)
    query = (
        f"SELECT {', '.join(ident)}, {plan.source_select_list()} "
        f"FROM {sqlite_ident(plan.source.name)} WHERE {_where(nullable)} "
        f"ORDER BY {', '.join(ident)}"
    )
    read = fetch if source.in_transaction else read_rows
    n = len(ident)
    return [([json_safe(v) for v in r[:n]], tuple(r[n:])) for r in read(source, query)]


def count_null_keys(source: sqlite3.Connection, plan: TablePlan) -> int:
    """How many rows of the table have NULL in a key column (caller's transaction)."""
    nullable = nullable_key(plan)
    if not nullable:
        return 0
    query = f"SELECT count(*) FROM {sqlite_ident(plan.source.name)} WHERE {_where(nullable)}"
    row = source.execute(query).fetchone()
    return int(row[0]) if row else 0


def null_key_letter(
    plan: TablePlan, identity: Sequence[object], raw: RawRow, stage: str
) -> DeadLetter:
    """The dead letter of one row whose key holds NULL."""
    key = tuple(raw[i] for i in plan.key_positions)
    column = next(k for k, v in zip(plan.key, key, strict=True) if v is None)
    names = "rowid" if not plan.source.without_rowid else "primary key"
    where = f"{names} {', '.join(json.dumps(v) for v in identity)}"
    return DeadLetter(
        table=plan.source.name,
        key=key,
        column=column,
        raw_value=None,
        error=(
            f"NULL in key column {column!r} ({where}): SQLite allows NULL in a "
            "non-INTEGER PRIMARY KEY, PostgreSQL's primary key cannot hold it; give the "
            "row a key in SQLite and the stream copies it"
        ),
        sqlstate=NOT_NULL_VIOLATION,
        stage=stage,
        change={"source_row": list(identity), "image": row_image(plan, raw)},
    )


@dataclass(frozen=True, slots=True)
class NullKeySync:
    rows: int  # rows of the table whose key holds NULL, now
    recorded: int  # letters recorded for rows that had none
    resolved: int  # letters of rows gone, or with a key now


def sync_null_keys(
    source: sqlite3.Connection,
    cur: psycopg.Cursor[Any],
    schema: str,
    plan: TablePlan,
    stage: str,
) -> NullKeySync:
    """Make the open NULL-key dead letters of ``plan``'s table match the source's
    rows, in the caller's PostgreSQL transaction."""
    rows = null_key_rows(source, plan)
    letters = deadletter.open_source_rows(cur, schema, plan.source.name)
    found = {json.dumps(identity): (identity, raw) for identity, raw in rows}
    new = [null_key_letter(plan, i, r, stage) for k, (i, r) in found.items() if k not in letters]
    gone = [letter_id for k, letter_id in letters.items() if k not in found]
    recorded = deadletter.record(cur, schema, new)
    resolved = 0
    if gone:
        resolved = deadletter.mark(cur, schema, gone, "the row has a key now, or is gone")
    return NullKeySync(len(rows), recorded, resolved)
