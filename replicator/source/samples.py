"""Sample values of a column, to learn the form the application writes it in.

The reverse direction writes rows back in each column's own representation
(replicator/coerce/reverse.py detects it from these samples). The newest rows
are read first (highest rowid), since an application that changed its format
over time writes today's one.
"""

from __future__ import annotations

import sqlite3

from replicator.identifiers import sqlite_ident
from replicator.source.sqlite import SourceTable


def column_samples(
    conn: sqlite3.Connection, table: SourceTable, column: str, limit: int = 64
) -> list[object]:
    """Up to ``limit`` non-NULL values of ``column``, newest rows first where the
    table has a rowid. Text that is not UTF-8 comes back with lone surrogates."""
    order = "" if table.without_rowid else " ORDER BY rowid DESC"
    query = (
        f"SELECT {sqlite_ident(column)} FROM {sqlite_ident(table.name)} "
        f"WHERE {sqlite_ident(column)} IS NOT NULL{order} LIMIT ?"
    )
    saved = conn.text_factory
    conn.text_factory = lambda b: b.decode("utf-8", errors="surrogateescape")
    try:
        return [r[0] for r in conn.execute(query, (limit,)).fetchall()]
    finally:
        conn.text_factory = saved
