"""Rows the snapshot could not copy because their parent is not in SQLite either.

PostgreSQL refuses a child whose parent row is missing (23503), and the
snapshot's dead letter carries its words; usually the parent was inserted
after its table was copied, and the stream heals the row. When SQLite itself
has no such parent (the application deleted it with foreign keys off, SQLite's
default), nothing will heal it: the letter says so instead, in the words of
``replicator.stream.orphans`` ("source keeps this row; its parent ...").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from replicator.errors import SourceError
from replicator.identifiers import sqlite_ident
from replicator.plan.tables import TablePlan
from replicator.source.reader import read_rows
from replicator.source.sqlite import ForeignKey
from replicator.state import deadletter
from replicator.target.connection import Connection

FOREIGN_KEY_VIOLATION = "23503"
KEPT = "source keeps this row; its parent"


def name_source_orphans(
    source: sqlite3.Connection, conn: Connection, schema: str, plan: TablePlan
) -> int:
    """Reword the table's open foreign-key letters whose parent SQLite lacks too.
    Returns how many were reworded."""
    if not plan.source.foreign_keys:
        return 0
    with conn.cursor() as cur:
        letters = deadletter.fetch(
            cur, schema, table=plan.source.name, sqlstate=FOREIGN_KEY_VIOLATION
        )
    reworded = 0
    for letter in letters:
        if letter.error.startswith(KEPT) or not isinstance(letter.change, Mapping):
            continue
        missing = _missing_parent(source, plan.source.foreign_keys, letter.change)
        if missing is None:
            continue
        with conn.transaction(), conn.cursor() as cur:
            deadletter.update_error(
                cur,
                schema,
                [letter.id],
                f"{KEPT} is not in SQLite either ({missing}: deleted with foreign keys "
                f"off), so PostgreSQL's foreign key refuses it: {letter.error}",
                None,
            )
        reworded += 1
    return reworded


def _missing_parent(
    source: sqlite3.Connection, keys: tuple[ForeignKey, ...], image: Mapping[str, Any]
) -> str | None:
    """The first declared parent of the row ``image`` that SQLite does not have."""
    for fk in keys:
        values = [image.get(c) for c in fk.columns]
        if any(v is None or isinstance(v, (dict, list)) for v in values):
            continue  # a NULL reference needs no parent; an encoded value is not looked up
        where = " AND ".join(f"{sqlite_ident(c)} = ?" for c in fk.ref_columns)
        query = f"SELECT 1 FROM {sqlite_ident(fk.ref_table)} WHERE {where} LIMIT 1"
        try:
            found = read_rows(source, query, values)
        except SourceError:  # a parent table SQLite cannot read: no verdict on it
            continue
        if not found:
            pairs = ", ".join(f"{c} = {v!r}" for c, v in zip(fk.ref_columns, values, strict=True))
            return f"{fk.ref_table} {pairs}"
    return None
