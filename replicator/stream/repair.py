"""Re-copying single rows by key from the source through the normal write path.

Used by ``verify --repair`` (rows that differ) and ``dead-letters retry``
(rows that failed once and may have been fixed since). For each key the
current source row is read in a short transaction: a row that exists is
converted and upserted, a row that no longer exists is deleted. Rows that
still cannot be written come back as failures with their reason.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from replicator.identifiers import pg_ident, sqlite_ident
from replicator.plan.rows import Refused, convert_key, convert_row
from replicator.plan.tables import TablePlan
from replicator.source.reader import fetch_one
from replicator.source.sqlite import ROWID, read_transaction
from replicator.target.connection import Connection, first_line, is_row_error
from replicator.target.writer import TableWriter

Key = tuple[Any, ...]


def _key_part(value: object) -> tuple[str, object]:
    """(placeholder, parameter) for one part of a source key. Text that is not
    UTF-8 comes from the reader with lone surrogates, which SQLite cannot bind:
    its original bytes are bound and cast back to the text they are stored as."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "CAST(? AS TEXT)", value.encode("utf-8", "surrogateescape")
    return "?", value


def source_row_by_key(
    source: sqlite3.Connection, plan: TablePlan, key: Sequence[Any]
) -> tuple[Any, ...] | None:
    """The source row of ``key`` (raw values, as the reader gives them), or None."""
    parts = [_key_part(v) for v in key]
    where = " AND ".join(
        f"{ROWID if k == ROWID else sqlite_ident(k)} = {holder}"
        for k, (holder, _) in zip(plan.key, parts, strict=True)
    )
    select = f"SELECT {plan.source_select_list()} FROM {sqlite_ident(plan.source.name)}"
    # Called by the apply too, maybe while the caller holds a read transaction.
    reading = nullcontext(source) if source.in_transaction else read_transaction(source)
    with reading:
        row = fetch_one(source, f"{select} WHERE {where}", tuple(p for _, p in parts))
    return None if row is None else tuple(row)


def target_by_key_sql(plan: TablePlan) -> sql.Composed:
    return sql.SQL("SELECT {} FROM {} WHERE ({}) = ({})").format(
        plan.target_column_list(),
        plan.table,
        sql.SQL(", ").join(pg_ident(k) for k in plan.target_key),
        sql.SQL(", ").join(sql.Placeholder() for _ in plan.target_key),
    )


@dataclass(frozen=True, slots=True)
class Rewritten:
    key: Key
    action: str  # "upserted" | "deleted" | "failed"
    error: str | None = None
    column: str | None = None


def rewrite_keys(
    source: sqlite3.Connection, conn: Connection, plan: TablePlan, keys: Sequence[Key]
) -> list[Rewritten]:
    """Make the target's rows for ``keys`` equal to the source's, one savepoint each."""
    writer = TableWriter(plan.shape)
    out: list[Rewritten] = []
    with conn.transaction():
        for key in keys:
            raw = source_row_by_key(source, plan, key)
            # The row to upsert, or (the source has none) the key to delete.
            converted = convert_key(plan, key) if raw is None else convert_row(plan, raw)
            if isinstance(converted, Refused):
                column = converted.column if raw is not None else None
                out.append(Rewritten(tuple(key), "failed", converted.reason, column))
                continue
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if raw is None:
                        writer.delete(cur, [converted])
                    else:
                        writer.upsert(cur, [converted])
            except Exception as exc:
                if not is_row_error(exc):
                    raise
                diag = getattr(exc, "diag", None)
                out.append(
                    Rewritten(
                        tuple(key),
                        "failed",
                        first_line(exc),
                        diag.column_name if diag is not None else None,
                    )
                )
                continue
            out.append(Rewritten(tuple(key), "deleted" if raw is None else "upserted"))
    return out
