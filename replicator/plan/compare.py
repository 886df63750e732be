"""One comparable form of a row, whichever database it came from.

Verification, reconciliation and query parity compare source and target rows
after the same normalisation: a source value goes through its column's
converter (the plan's; for a query's result, the converter of the PostgreSQL
result column's type), then both sides through :func:`canonical`. Keys are
compared as JSON text, the form dead letters keep them in.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any
from uuid import UUID

from psycopg import sql

from replicator.coerce import JSON_KINDS, Converter, Kind, json_safe
from replicator.errors import CoercionError
from replicator.identifiers import pg_ident
from replicator.plan.tables import TablePlan

Key = tuple[Any, ...]


def canonical(kind: Kind, value: Any) -> Any:
    """One comparable form of a value, whichever side it came from."""
    if value is None:
        return None
    if kind in JSON_KINDS:
        if isinstance(value, str | bytes):
            value = json.loads(value, parse_float=_json_number)
        return json.dumps(
            _whole_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    if kind == Kind.REAL and isinstance(value, float):
        return struct.unpack("f", struct.pack("f", value))[0]
    if kind == Kind.CHAR and isinstance(value, str):
        return value.rstrip(" ")
    if kind == Kind.UUID:
        return str(UUID(str(value)))
    if isinstance(value, Decimal):
        return value.normalize() if value.is_finite() else value
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _json_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: jsonb keeps its exact decimal
    value and prints a whole one as an integer (1.5e+16 as 15000000000000000)."""
    exact = Decimal(text)
    return int(exact) if exact == exact.to_integral_value() else float(text)


def _whole_numbers(value: Any) -> Any:
    """Whole floats as ints, all the way down: 2.0 and 2 are one JSON number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    return value


def _text(value: Any) -> str:
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, bytes):
        return "x" + value.hex()
    return repr(value)


def row_digest(rows: Iterable[tuple[Any, ...]]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for row in rows:
        h.update("\x1f".join(_text(v) for v in row).encode("utf-8", "surrogatepass"))
        h.update(b"\x1e")
    return h.hexdigest()


def target_key_order(plan: TablePlan) -> list[sql.Composable]:
    """The target's key columns as SQLite orders the source keys (text in the "C"
    collation, byte order as SQLite's BINARY)."""
    text_kinds = (Kind.TEXT, Kind.VARCHAR, Kind.CHAR)
    keys: list[sql.Composable] = []
    for name in plan.target_key:
        col = next(c for c in plan.columns if c.target == name)
        ident = pg_ident(name)
        keys.append(
            sql.SQL('{} COLLATE "C"').format(ident) if col.type.kind in text_kinds else ident
        )
    return keys


def target_chunk_queries(plan: TablePlan) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
    """Target rows of one key range, in :func:`target_key_order`: (first chunk, a middle
    chunk, the tail)."""
    keys = target_key_order(plan)
    key_list = sql.SQL(", ").join(keys)
    marks = sql.SQL(", ").join(sql.Placeholder() for _ in keys)
    base = sql.SQL("SELECT {} FROM {}").format(plan.target_column_list(), plan.table)
    after = sql.SQL("({}) > ({})").format(key_list, marks)
    upto = sql.SQL("({}) <= ({})").format(key_list, marks)
    order = sql.SQL(" ORDER BY {}").format(key_list)
    between = base + sql.SQL(" WHERE ") + after + sql.SQL(" AND ") + upto + order
    first = base + sql.SQL(" WHERE ") + upto + order
    tail = base + sql.SQL(" WHERE ") + after + order
    return first, between, tail


def source_row_map(
    plan: TablePlan, raw_rows: Sequence[tuple[Any, ...]], kinds: Sequence[Kind]
) -> dict[str, tuple[Key, tuple[Any, ...]]]:
    """Source rows by key text: (source key, canonical values through the stream's converters)."""
    out: dict[str, tuple[Key, tuple[Any, ...]]] = {}
    keypos = plan.key_positions
    for raw in raw_rows:
        values: list[Any] = []
        for col, kind, v in zip(plan.columns, kinds, raw, strict=True):
            try:
                values.append(canonical(kind, col.convert(v)))
            except CoercionError:
                values.append((*_UNCONVERTIBLE, repr(v)))
        key = [raw[i] if _unconvertible(values[i]) else values[i] for i in keypos]
        out[key_text(key)] = (tuple(raw[i] for i in keypos), tuple(values))
    return out


# A value that does not convert is compared as this pair (equal to no target
# value); in a key, the raw value stands for itself, as a dead letter stores it.
_UNCONVERTIBLE = ("unconvertible",)


def _unconvertible(value: object) -> bool:
    return isinstance(value, tuple) and value[:1] == _UNCONVERTIBLE


def source_key_text(plan: TablePlan, kinds: Sequence[Kind], raw: Sequence[Any]) -> str:
    """The key text of a source row, as :func:`source_row_map` keys it."""
    values: list[Any] = []
    for i in plan.key_positions:
        try:
            values.append(canonical(kinds[i], plan.columns[i].convert(raw[i])))
        except CoercionError:
            values.append(raw[i])
    return key_text(values)


def source_key_text_of(plan: TablePlan, kinds: Sequence[Kind], key: Sequence[Any]) -> str:
    """The key text of a source key (values in ``plan.key`` order), as
    :func:`source_row_map` keys its row."""
    raw: list[Any] = [None] * len(plan.columns)
    for i, value in zip(plan.key_positions, key, strict=True):
        raw[i] = value
    return source_key_text(plan, kinds, raw)


def target_row_map(
    plan: TablePlan, rows: Sequence[tuple[Any, ...]], kinds: Sequence[Kind]
) -> dict[str, tuple[Any, ...]]:
    """Target rows by the same key text as :func:`source_row_map`, values canonical."""
    keypos = plan.key_positions
    return {
        key_text([canonical(kinds[i], r[i]) for i in keypos]): tuple(
            canonical(k, v) for k, v in zip(kinds, r, strict=True)
        )
        for r in rows
    }


def key_text(values: Sequence[Any]) -> str:
    """The comparable text of a key (canonical values), as dead letters hold keys.
    A converted key may hold values SQLite never returns (a timestamp key's
    datetime, a numeric's Decimal): those are written as their text."""
    return json.dumps([_key_value(v) for v in values], default=str, sort_keys=True)


def _key_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bytes | bytearray):
        return json_safe(value)
    return value  # json.dumps writes it with str()


# --- the rows of an application's query (query parity) ----------------------


@dataclass(frozen=True, slots=True)
class Unconvertible:
    """A SQLite value that replication could not store in the result column's type."""

    raw: object
    reason: str


@dataclass(frozen=True, slots=True)
class ResultColumn:
    name: str
    kind: Kind
    convert: Converter


@dataclass(frozen=True, slots=True)
class Row:
    canon: tuple[Any, ...]  # compared
    raw: tuple[Any, ...]  # shown


_TEXT_KINDS = (Kind.TEXT, Kind.VARCHAR, Kind.CHAR)


def _number_text(value: float) -> str:
    """A SQLite float where PostgreSQL returns text (``json_extract`` ported to
    ``->>``, a float column cast to text): compared as PostgreSQL prints the
    number, so JSON ``1e2`` (100.0 in SQLite) equals ``'100'``, not ``'100.0'``."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def normalise_sqlite(
    columns: Sequence[ResultColumn], raw_rows: Sequence[Sequence[Any]]
) -> list[Row]:
    """SQLite values typed like the PostgreSQL result column, then made canonical."""
    out = []
    for raw in raw_rows:
        values: list[Any] = []
        for col, v in zip(columns, raw, strict=True):
            if isinstance(v, float) and col.kind in _TEXT_KINDS:
                values.append(_number_text(v))
                continue
            try:
                values.append(canonical(col.kind, col.convert(v)))
            except CoercionError as exc:
                values.append(Unconvertible(v, exc.reason))
        out.append(Row(tuple(values), tuple(raw)))
    return out


def normalise_postgres(
    columns: Sequence[ResultColumn], raw_rows: Sequence[Sequence[Any]]
) -> list[Row]:
    return [
        Row(tuple(canonical(c.kind, v) for c, v in zip(columns, raw, strict=True)), tuple(raw))
        for raw in raw_rows
    ]
