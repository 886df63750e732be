"""The dead-letter table: rows that could not be written, with the reason.

A row that cannot be written is never dropped: it is recorded here with its
table, key, the column at fault when known, the raw value safely encoded, the
error and when. A later successful write of the same key resolves it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from replicator.identifiers import pg_ident
from replicator.transform import encode_raw


def json_safe(value: object) -> Any:
    """``value`` itself when JSON (and PostgreSQL's jsonb) holds it exactly,
    else its :func:`encode_raw` description (blobs, NUL, invalid UTF-8, inf)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and "\x00" not in value:
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return encode_raw(value)
        return value
    return encode_raw(value)


def json_key(values: Sequence[object]) -> list[Any]:
    """A primary key as JSON: plain values where JSON holds them exactly."""
    return [json_safe(v) for v in values]


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


def record(cur: psycopg.Cursor[Any], schema: str, letters: Iterable[DeadLetter]) -> int:
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
        )
        for d in letters
    ]
    if not rows:
        return 0
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} (table_name, key, column_name, raw_value, error, sqlstate, stage,"
            " change, position) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(pg_ident(schema, "dead_letters")),
        rows,
    )
    return len(rows)


def resolve_keys(
    cur: psycopg.Cursor[Any], schema: str, table: str, keys: Sequence[Sequence[object]], how: str
) -> int:
    """Mark open dead letters of these keys resolved (a later write healed them)."""
    if not keys:
        return 0
    cur.execute(
        sql.SQL(
            "UPDATE {} SET resolved_at = now(), resolution = %s "
            "WHERE resolved_at IS NULL AND table_name = %s AND key = ANY(%s::jsonb[])"
        ).format(pg_ident(schema, "dead_letters")),
        (how, table, [Jsonb(json_key(k)) for k in keys]),
    )
    return cur.rowcount


def count_open(cur: psycopg.Cursor[Any], schema: str) -> dict[str, int]:
    cur.execute(
        sql.SQL(
            "SELECT table_name, count(*) FROM {} WHERE resolved_at IS NULL GROUP BY table_name"
        ).format(pg_ident(schema, "dead_letters"))
    )
    return {str(r[0]): int(r[1]) for r in cur.fetchall()}
