"""The dead-letter table: rows that could not be written, with the reason.

A row that cannot be written is never dropped: it is recorded here with its
table, key, the column at fault when known, the raw value safely encoded, the
error and when. A later successful write of the same key resolves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from replicator.coerce import encode_raw, json_key
from replicator.identifiers import pg_ident


@dataclass(frozen=True, slots=True)
class DeadLetter:
    table: str
    key: tuple[object, ...]
    column: str | None
    raw_value: object
    error: str
    sqlstate: str | None
    stage: str  # "snapshot" | "stream"
    change: Mapping[str, Any] | None = None
    position: int | None = None

    def describe(self) -> str:
        where = f"{self.table} key {json.dumps(json_key(self.key), ensure_ascii=False)}"
        if self.column:
            where += f" column {self.column}"
        return f"{where}: {self.error}"


def record(
    cur: psycopg.Cursor[Any],
    schema: str,
    letters: Iterable[DeadLetter],
    direction: str = "forward",
) -> int:
    """Store refused rows; ``direction = 'reverse'`` for rows SQLite refused (their key is
    the source key)."""
    rows = [
        (
            d.table,
            Jsonb(json_key(d.key)),
            d.column,
            Jsonb(encode_raw(d.raw_value)) if d.column is not None else None,
            d.error,
            d.sqlstate,
            d.stage,
            Jsonb(d.change) if d.change is not None else None,
            d.position,
            direction,
        )
        for d in letters
    ]
    if not rows:
        return 0
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} (table_name, key, column_name, raw_value, error, sqlstate, stage,"
            " change, position, direction) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(pg_ident(schema, "dead_letters")),
        rows,
    )
    return len(rows)


def resolve_keys(
    cur: psycopg.Cursor[Any],
    schema: str,
    table: str,
    keys: Sequence[Sequence[object]],
    how: str,
    direction: str = "forward",
) -> int:
    """Mark open dead letters of these keys resolved (a later write healed them), of one
    direction: a forward letter is healed by a forward write, a reverse one by a reverse."""
    if not keys:
        return 0
    cur.execute(
        sql.SQL(
            "UPDATE {} SET resolved_at = now(), resolution = %s WHERE resolved_at IS NULL"
            " AND direction = %s AND table_name = %s AND key = ANY(%s::jsonb[])"
        ).format(pg_ident(schema, "dead_letters")),
        (how, direction, table, [Jsonb(json_key(k)) for k in keys]),
    )
    return cur.rowcount


FOREIGN_KEY_VIOLATION = "23503"  # a child row written before its parent


def count_waiting(cur: psycopg.Cursor[Any], schema: str) -> int:
    """Open dead letters of rows refused for a missing parent (they heal when it comes)."""
    cur.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE resolved_at IS NULL AND sqlstate = %s").format(
            pg_ident(schema, "dead_letters")
        ),
        (FOREIGN_KEY_VIOLATION,),
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def count_open(
    cur: psycopg.Cursor[Any], schema: str, direction: str | None = None
) -> dict[str, int]:
    """Open dead letters per table (of one direction when given)."""
    cur.execute(
        sql.SQL(
            "SELECT table_name, count(*) FROM {} WHERE resolved_at IS NULL"
            " AND direction = coalesce(%s, direction) GROUP BY table_name"
        ).format(pg_ident(schema, "dead_letters")),
        (direction,),
    )
    return {str(r[0]): int(r[1]) for r in cur.fetchall()}


@dataclass(frozen=True, slots=True)
class StoredLetter:
    id: int
    table: str
    key: list[Any]
    column: str | None
    raw_value: Any
    error: str
    sqlstate: str | None
    stage: str
    change: Any
    position: int | None
    created_at: Any
    resolved_at: Any
    resolution: str | None
    direction: str = "forward"  # or "reverse": a row SQLite refused (PostgreSQL -> SQLite)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredLetter:
        return cls(*row)


_COLUMNS = (
    "id, table_name, key, column_name, raw_value, error, sqlstate, stage, change, position,"
    " created_at, resolved_at, resolution, direction"
)


def fetch(
    cur: psycopg.Cursor[Any],
    schema: str,
    *,
    ids: Sequence[int] = (),
    table: str | None = None,
    include_resolved: bool = False,
    limit: int | None = None,
    sqlstate: str | None = None,
    tables: Sequence[str] = (),
    direction: str | None = None,
) -> list[StoredLetter]:
    where = [sql.SQL("true")]
    params: list[Any] = []
    if direction:
        where.append(sql.SQL("direction = %s"))
        params.append(direction)
    if sqlstate:
        where.append(sql.SQL("sqlstate = %s"))
        params.append(sqlstate)
    if tables:
        where.append(sql.SQL("table_name = ANY(%s)"))
        params.append(list(tables))
    if ids:
        where.append(sql.SQL("id = ANY(%s)"))
        params.append(list(ids))
    if table:
        where.append(sql.SQL("table_name = %s"))
        params.append(table)
    if not include_resolved and not ids:
        where.append(sql.SQL("resolved_at IS NULL"))
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id").format(
        sql.SQL(_COLUMNS), pg_ident(schema, "dead_letters"), sql.SQL(" AND ").join(where)
    )
    if limit:
        query = query + sql.SQL(" LIMIT {}").format(sql.Literal(limit))
    cur.execute(query, params)
    return [StoredLetter.from_row(r) for r in cur.fetchall()]


def mark(cur: psycopg.Cursor[Any], schema: str, ids: Sequence[int], resolution: str) -> int:
    cur.execute(
        sql.SQL(
            "UPDATE {} SET resolved_at = now(), resolution = %s "
            "WHERE id = ANY(%s) AND resolved_at IS NULL"
        ).format(pg_ident(schema, "dead_letters")),
        (resolution, list(ids)),
    )
    return cur.rowcount


def update_error(
    cur: psycopg.Cursor[Any], schema: str, ids: Sequence[int], error: str, column: str | None
) -> None:
    cur.execute(
        sql.SQL(
            "UPDATE {} SET error = %s, column_name = coalesce(%s, column_name) WHERE id = ANY(%s)"
        ).format(pg_ident(schema, "dead_letters")),
        (error, column, list(ids)),
    )


def open_keys(
    cur: psycopg.Cursor[Any],
    schema: str,
    tables: Sequence[str] | None = None,
    *,
    except_sqlstate: str | None = None,
) -> list[tuple[str, Any]]:
    """(table, stored key as JSON) of every open dead letter of the forward direction,
    of ``tables`` when given, but for those of ``except_sqlstate``. A reverse letter
    (a row SQLite refused) does not hold a row from PostgreSQL."""
    where = [sql.SQL("resolved_at IS NULL AND direction = 'forward'")]
    params: list[Any] = []
    if tables is not None:
        where.append(sql.SQL("table_name = ANY(%s)"))
        params.append(list(tables))
    if except_sqlstate is not None:
        where.append(sql.SQL("sqlstate IS DISTINCT FROM %s"))
        params.append(except_sqlstate)
    cur.execute(
        sql.SQL("SELECT table_name, key FROM {} WHERE {}").format(
            pg_ident(schema, "dead_letters"), sql.SQL(" AND ").join(where)
        ),
        params,
    )
    return [(str(r[0]), r[1]) for r in cur.fetchall()]


def open_source_rows(cur: psycopg.Cursor[Any], schema: str, table: str) -> dict[str, int]:
    """The open dead letters of ``table`` that name a source row by its identity
    (``change.source_row``: rows whose key holds NULL), as identity JSON text -> id."""
    cur.execute(
        sql.SQL(
            "SELECT id, change -> 'source_row' FROM {} WHERE resolved_at IS NULL"
            " AND table_name = %s AND change ? 'source_row' ORDER BY id"
        ).format(pg_ident(schema, "dead_letters")),
        (table,),
    )
    return {json.dumps(r[1]): int(r[0]) for r in cur.fetchall()}
