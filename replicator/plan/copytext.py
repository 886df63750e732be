"""A table's rows as COPY text straight out of SQLite, for the snapshot's copy into an
empty table (``snapshot.sql_conversion``).

:func:`row_text_sql` joins the columns' SQLite expressions
(:func:`replicator.coerce.copysql.copy_text_expr`) into one expression per row:
each value behind its mark, NULL as a whole when a value must be converted in
Python. :func:`to_copy_text` turns a chunk of such rows, joined by SQLite, into
the bytes COPY reads, or says why it cannot (then the chunk is converted in
Python: what the converters decide is the rule, this is only a faster way to
the same values).
"""

from __future__ import annotations

import sqlite3

from replicator.coerce import Kind
from replicator.coerce.copysql import MARK_NULL, MARK_VALUE, ROW_SEPARATOR, copy_text_expr
from replicator.identifiers import sqlite_ident
from replicator.plan.tables import TablePlan
from replicator.source.sqlite import ROWID

_NULL = MARK_NULL.encode()
_VALUE = MARK_VALUE.encode()
_ROW = ROW_SEPARATOR.encode()
# What jsonb refuses that json_valid() accepts (coerce.text's convert_valid checks it).
_JSONB_ESCAPES = (b"\\u0000", b"\\ud", b"\\uD")


def _has(conn: sqlite3.Connection, probe: str) -> bool:
    try:
        conn.execute(f"SELECT {probe}").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def row_text_sql(plan: TablePlan, conn: sqlite3.Connection) -> str | None:
    """The SQLite expression giving one row of ``plan`` as marked COPY text (NULL for a
    row with a value only Python may convert); None when a column's type has no such
    expression (the table is then converted in Python)."""
    json_valid = _has(conn, "json_valid('1')")
    signed_zero = _has(conn, "atan2(0.0, -1)")
    parts = []
    for col in plan.columns:
        ref = ROWID if col.source == ROWID else sqlite_ident(col.source)
        expr = copy_text_expr(
            col.type,
            ref,
            json_valid=json_valid,
            signed_zero=signed_zero,
            rowid_alias=col.source in (ROWID, plan.source.rowid_alias),
        )
        if expr is None:
            return None
        parts.append(f"({expr})")
    return " || ".join(parts)


class CopyText:
    """Turns a chunk of rows joined by SQLite into COPY text for one table."""

    def __init__(self, plan: TablePlan) -> None:
        self.width = len(plan.columns)
        self.jsonb = any(c.type.kind is Kind.JSONB for c in plan.columns)

    def convert(self, joined: bytes, rows: int) -> bytes | None:
        """``joined`` (``rows`` rows of marked text, joined by the row separator) as the
        bytes of a COPY in text format; None when Python must convert the chunk: a value
        holds one of the marks, a NUL, text that is not UTF-8, or (jsonb) an escape
        jsonb may refuse."""
        marks = joined.count(_NULL) + joined.count(_VALUE)
        if marks != rows * self.width or joined.count(_ROW) != rows - 1:
            return None
        if b"\x00" in joined:
            return None
        if not joined.isascii():
            try:
                joined.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if self.jsonb and b"\\u" in joined and any(e in joined for e in _JSONB_ESCAPES):
            return None
        text = (
            joined.replace(b"\\", b"\\\\")
            .replace(b"\t", b"\\t")
            .replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r")
            .replace(_NULL, b"\t\\N")
            .replace(_VALUE, b"\t")
            .replace(_ROW + b"\t", b"\n")
        )
        return text[1:] + b"\n"  # (the first row's first tab)
