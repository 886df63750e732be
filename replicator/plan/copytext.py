"""A table's rows as COPY text straight out of SQLite, for the snapshot's copy into an
empty table (``snapshot.sql_conversion``).

:func:`row_text_sql` joins the columns' SQLite expressions
(:func:`replicator.coerce.copysql.copy_text_expr`) into one expression per row:
each value behind its mark, NULL as a whole when a value must be converted in
Python. :meth:`CopyText.copy_bytes` turns a chunk of such rows, joined by SQLite, into
the bytes COPY reads, or says why it cannot (then the chunk is converted in
Python: what the converters decide is the rule, this is only a faster way to
the same values).
"""

from __future__ import annotations

import sqlite3

from replicator.coerce import Kind
from replicator.coerce.copysql import (
    MARK_NULL,
    MARK_VALUE,
    ROW_NULL,
    ROW_VALUE,
    copy_text_expr,
)
from replicator.identifiers import sqlite_ident
from replicator.plan.tables import TablePlan
from replicator.source.sqlite import ROWID

_NULL = MARK_NULL.encode()
_VALUE = MARK_VALUE.encode()
_ROW_NULL = ROW_NULL.encode()
_ROW_VALUE = ROW_VALUE.encode()
# A value's mark becomes a tab, the first column's a newline (the first row's is cut).
_MARKS_TO_TEXT = bytes.maketrans(_VALUE + _ROW_VALUE, b"\t\n")
# The characters COPY's text format escapes, with their escapes (the backslash first).
_ESCAPES = ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r"))
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
    for i, col in enumerate(plan.columns):
        ref = ROWID if col.source == ROWID else sqlite_ident(col.source)
        expr = copy_text_expr(
            col.type,
            ref,
            json_valid=json_valid,
            signed_zero=signed_zero,
            rowid_alias=col.source in (ROWID, plan.source.rowid_alias),
            first=i == 0,
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

    def copy_bytes(self, joined: bytes, rows: int) -> bytes | None:
        """``joined`` (``rows`` rows of marked text, as SQLite joined them) as the bytes of
        a COPY in text format; None when Python must convert the chunk: a value holds one
        of the marks, a NUL, text that is not UTF-8, or (jsonb) an escape jsonb may
        refuse. (Each step a single pass in C over the chunk, skipped when it has
        nothing to do.)"""
        if joined.count(_ROW_VALUE) + joined.count(_ROW_NULL) != rows:
            return None
        if joined.count(_VALUE) + joined.count(_NULL) != rows * (self.width - 1):
            return None  # (values can only add marks: equal counts mean none holds one)
        if b"\x00" in joined:
            return None
        if not joined.isascii():
            try:
                joined.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if self.jsonb and b"\\" in joined and any(e in joined for e in _JSONB_ESCAPES):
            return None
        for char, escaped in _ESCAPES:
            if char in joined:
                joined = joined.replace(char, escaped)
        text = joined.translate(_MARKS_TO_TEXT)
        if _NULL in text:
            text = text.replace(_NULL, b"\t\\N")
        if _ROW_NULL in text:
            text = text.replace(_ROW_NULL, b"\n\\N")
        return text[1:] + b"\n"  # (the first row's newline)
