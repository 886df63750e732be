"""The oracle: does the target hold exactly the source's rows?

Import as ``from oracle import ...`` (``tests/`` is on ``sys.path``).

This is the yardstick the replicator is measured against, so it shares no code
with it: nothing here imports ``replicator`` (not the ``replicator.coerce``
converters, not ``replicator.plan``, not ``replicator.proof.verify``), nor the
:mod:`harness` that drives the product. It reads the SQLite file with
``sqlite3`` and the target with ``psycopg``, and normalises every value by
itself, so a conversion bug in the replicator cannot hide by being applied to
both sides.

What :func:`compare` compares: every replicated table (the source's tables
except ``sqlite_*``, ``_replicator_*`` and ``alembic_version``, unless told
which), row for row by the target's primary key (``_replicator_rowid`` is the
source's ``rowid``), and in each row every source column that the target has
too. Rows missing from the target, rows only in the target and differing values
are each reported with their key.

How it normalises, on its own: each source value is read as a value of its
target column's type (from the PostgreSQL catalog): integers from int, integral
float or integer text; double precision from numbers or numeric text, real the
same rounded to float4; numeric as the Decimal of the text (or of a float's
repr); boolean from 0/1 or true/false text; text from text, numbers or UTF-8
bytes; timestamps from ISO-8601 text as naive UTC (no offset means UTC, finer
than microseconds is unreadable); a date from a midnight timestamp; json and
jsonb parsed (floats as Decimal); bytea from bytes or UTF-8 text; uuid
lower-cased; any other type as read. Target values: timestamptz as naive UTC,
JSON parsed from its ``::text``, real as float4, ``character(n)`` without its
padding, uuid as text. A source value that cannot be read as its type is
:class:`Unreadable` and equals nothing. NaN equals NaN; NULL equals only NULL.

What it takes from the product and so does not judge: the target's column types
and primary key (the type mapping itself is not checked, only whether the values
agree under it), and which rows are open dead letters (from the state schema's
``dead_letters``: those keys are left out on both sides and counted in
:attr:`Comparison.skipped`). Source columns the target lacks, target-only
columns and hidden or generated source columns are not compared.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

STATE_SCHEMA = "replicator"
EXCLUDED_PREFIXES = ("sqlite_", "_replicator_")
EXCLUDED_TABLES = frozenset({"alembic_version"})
ROWID_COLUMN = "_replicator_rowid"


def _sqlite(path: Path) -> sqlite3.Connection:
    """A source connection on which text that is not valid UTF-8 is kept
    (surrogate-escaped) for the comparison, not refused."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="surrogateescape")
    return conn


# --------------------------------------------------------------------------
# Reading a value as its target type, on either side.


class Unreadable:
    """A source value the comparison cannot read as its target type: never equal."""

    def __init__(self, value: object, why: str) -> None:
        self.value = value
        self.why = why

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.why}: {self.value!r}>"


_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_timestamp(text: str) -> datetime | Unreadable:
    """ISO-8601 text as a naive UTC datetime (text without an offset is UTC)."""
    match = _TS.fullmatch(text.strip())
    if not match:
        return Unreadable(text, "not a timestamp")
    year, month, day, hour, minute, second, frac, offset = match.groups()
    digits = (frac or "").ljust(6, "0")
    if digits[6:].strip("0"):
        return Unreadable(text, "finer than microseconds")
    try:
        value = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(digits[:6]),
        )
    except ValueError:
        return Unreadable(text, "no such date or time")
    if offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        body = offset[1:].replace(":", "")
        delta = timedelta(hours=int(body[:2]), minutes=int(body[2:] or 0))
        try:
            value = value.replace(tzinfo=timezone(sign * delta)).astimezone(UTC)
        except OverflowError:  # e.g. 9999-12-31T23:59-01:00: past year 9999 in UTC
            return Unreadable(text, "outside years 1..9999 in UTC")
        value = value.replace(tzinfo=None)
    return value


def _loads_json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def _float4(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


Normaliser = Callable[[object], object]


def _source_normaliser(pg_type: str) -> Normaliser:
    """How a SQLite value reads as a value of ``pg_type`` (None stays None)."""
    base = pg_type.split("(", 1)[0].strip()

    def integer(v: object) -> object:
        if type(v) is int:
            return v
        if type(v) is float and v.is_integer():
            return int(v)
        if type(v) is str and re.fullmatch(r"\s*[+-]?\d+\s*", v):
            return int(v)
        return Unreadable(v, pg_type)

    def double(v: object) -> object:
        if type(v) in (int, float):
            return float(v)  # type: ignore[arg-type]
        if type(v) is str:
            try:
                return float(v)
            except ValueError:
                pass
        return Unreadable(v, pg_type)

    def numeric(v: object) -> object:
        try:
            if type(v) is float:
                return Decimal(repr(v))
            if type(v) in (int, str):
                return Decimal(v)  # type: ignore[arg-type]
        except InvalidOperation:
            pass
        return Unreadable(v, pg_type)

    def boolean(v: object) -> object:
        if type(v) is int and v in (0, 1):
            return bool(v)
        if type(v) is str and v.strip().lower() in ("true", "false", "t", "f", "1", "0"):
            return v.strip().lower() in ("true", "t", "1")
        return Unreadable(v, pg_type)

    def text(v: object) -> object:
        if type(v) is str:
            return v
        if type(v) is int:
            return str(v)
        if type(v) is float:
            return repr(v)
        if type(v) is bytes:
            return v.decode("utf-8", errors="surrogateescape")
        return Unreadable(v, pg_type)

    def timestamp(v: object) -> object:
        return parse_timestamp(v) if type(v) is str else Unreadable(v, pg_type)

    def day(v: object) -> object:
        if type(v) is str:
            ts = parse_timestamp(v)
            if isinstance(ts, datetime) and ts == datetime(ts.year, ts.month, ts.day):
                return ts.date()
        return Unreadable(v, pg_type)

    def jsonish(v: object) -> object:
        if type(v) is bytes:
            v = v.decode("utf-8", errors="surrogateescape")
        if type(v) is str:
            try:
                return _loads_json(v)
            except ValueError:
                return Unreadable(v, "not JSON")
        if type(v) in (int, float):
            return _loads_json(json.dumps(v))
        return Unreadable(v, pg_type)

    def blob(v: object) -> object:
        if type(v) is bytes:
            return v
        if type(v) is str:
            return v.encode("utf-8", errors="surrogateescape")
        return Unreadable(v, pg_type)

    table: dict[str, Normaliser] = {
        "smallint": integer,
        "integer": integer,
        "bigint": integer,
        "double precision": double,
        "real": lambda v: _float4(x) if isinstance(x := double(v), float) else x,
        "numeric": numeric,
        "boolean": boolean,
        "text": text,
        "character varying": text,
        "character": text,
        "json": jsonish,
        "jsonb": jsonish,
        "bytea": blob,
        "date": day,
        "uuid": lambda v: str(v).lower() if isinstance(v, str) else Unreadable(v, pg_type),
    }
    if base.startswith("timestamp"):
        return timestamp
    return table.get(base, lambda v: v)


def _target_normaliser(pg_type: str) -> Normaliser:
    base = pg_type.split("(", 1)[0].strip()
    if pg_type.startswith("timestamp") and pg_type.endswith(" with time zone"):

        def aware(v: object) -> object:
            assert isinstance(v, datetime)
            return v.astimezone(UTC).replace(tzinfo=None)

        return aware
    if base in ("json", "jsonb"):
        return lambda v: _loads_json(v) if isinstance(v, str) else v
    if base == "real":
        return lambda v: _float4(v) if isinstance(v, float) else v
    if base == "character":
        return lambda v: v.rstrip(" ") if isinstance(v, str) else v
    if base == "uuid":
        return str
    return lambda v: v


# --------------------------------------------------------------------------
# Reading both databases: the target's columns and keys, the tables, the dead letters.


@dataclass(frozen=True, slots=True)
class TargetColumn:
    name: str
    pg_type: str


def _target_columns(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> tuple[list[TargetColumn], list[str]]:
    cols = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    pk = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord",
        (schema, table),
    ).fetchall()
    return [TargetColumn(str(r[0]), str(r[1])) for r in cols], [str(r[0]) for r in pk]


def replicated_tables(source: Path) -> list[str]:
    """Source tables the default configuration replicates."""
    conn = _sqlite(source)
    try:
        names = [
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        ]
    finally:
        conn.close()
    return sorted(
        n for n in names if not n.startswith(EXCLUDED_PREFIXES) and n not in EXCLUDED_TABLES
    )


def open_dead_letters(dsn: str, state_schema: str = STATE_SCHEMA) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT to_regclass(format('%%I.dead_letters', %s::text))", (state_schema,)
        ).fetchone()
        if not found or found[0] is None:
            return []
        cur = conn.execute(
            sql.SQL(
                "SELECT table_name, key, column_name, error, stage, position FROM {} "
                "WHERE resolved_at IS NULL ORDER BY id"
            ).format(sql.Identifier(state_schema, "dead_letters"))
        )
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def raw_key(key: object) -> object:
    """A dead letter's key with each part that JSON could not hold as itself
    (stored as ``{"type": ..., "value": ...}``, docs/type-mapping.md) read back
    as the SQLite value it describes."""
    if not isinstance(key, list):
        return key
    out: list[object] = []
    for part in key:
        if not (isinstance(part, dict) and "type" in part):
            out.append(part)
            continue
        kind, body = part["type"], str(part.get("value", ""))
        if kind in ("invalid-utf8-text", "text-with-nul"):
            out.append(bytes.fromhex(body).decode("utf-8", errors="surrogateescape"))
        elif kind == "blob":
            out.append(bytes.fromhex(body))
        elif kind in ("integer", "real"):
            out.append(int(body) if kind == "integer" else float(body))
        else:
            out.append(None if kind == "null" else body)
    return out


# --------------------------------------------------------------------------
# The comparison.


@dataclass
class Comparison:
    """What :func:`compare` found; ``str()`` is a readable diff."""

    rows: dict[str, int] = field(default_factory=dict)  # table -> source rows compared
    skipped: dict[str, int] = field(default_factory=dict)  # table -> open dead-letter rows
    differences: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not self.differences

    def _note(self, table: str, kind: str, line: str) -> None:
        self.counts.setdefault(table, {}).setdefault(kind, 0)
        self.counts[table][kind] += 1
        self.differences.append(line)

    def __str__(self) -> str:
        if self.equal:
            total = sum(self.rows.values())
            return f"{total} rows in {len(self.rows)} tables equal"
        summary = "; ".join(
            f"{t}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            for t, kinds in sorted(self.counts.items())
        )
        shown = self.differences[:40]
        more = len(self.differences) - len(shown)
        lines = [f"source and target differ ({summary})", *shown]
        if more:
            lines.append(f"... and {more} more")
        return "\n".join(lines)


def _key_text(key: Sequence[object]) -> str:
    return json.dumps([v if isinstance(v, int | str) else repr(v) for v in key], default=repr)


def compare(
    source: Path,
    dsn: str,
    *,
    schema: str = "public",
    state_schema: str = STATE_SCHEMA,
    tables: Sequence[str] | None = None,
) -> Comparison:
    """Compare every replicated table row for row, column for column, typed (as
    the module's docstring says); open dead letters are left out on both sides."""
    result = Comparison()
    dead: dict[str, list[list[Any]]] = {}
    for letter in open_dead_letters(dsn, state_schema):
        dead.setdefault(letter["table_name"], []).append(raw_key(letter["key"]))
    src = _sqlite(source)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in tables if tables is not None else replicated_tables(source):
                _compare_table(src, conn, schema, table, dead.get(table, []), result)
    finally:
        src.close()
    return result


Rows = dict[tuple[object, ...], tuple[object, ...]]  # key -> normalised values


def _compare_table(
    src: sqlite3.Connection,
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    dead_keys: list[list[Any]],
    result: Comparison,
) -> None:
    """One table into ``result``: its rows counted, its differences noted."""
    target_cols, pk = _target_columns(conn, schema, table)
    if not target_cols:
        result._note(table, "missing tables", f"{table}: no such table in the target")
        return
    by_name = {c.name: c for c in target_cols}
    compared = [by_name[c] for c in _source_columns(src, table) if c in by_name]
    source_key = _key_reader([by_name[k].pg_type for k in pk])
    skip = {source_key(k) for k in dead_keys if isinstance(k, list) and len(k) == len(pk)}
    source_rows, skipped = _source_rows(src, table, pk, compared, source_key, skip)
    if skipped:
        result.skipped[table] = result.skipped.get(table, 0) + skipped
    target_rows = _target_rows(conn, schema, table, pk, compared, skip)
    result.rows[table] = len(source_rows)
    _note_differences(table, compared, source_rows, target_rows, result)


def _source_columns(src: sqlite3.Connection, table: str) -> list[str]:
    """The source table's stored columns in order (hidden and generated ones left out)."""
    return [str(r[1]) for r in src.execute(f'PRAGMA table_xinfo("{table}")') if int(r[6]) == 0]


def _key_reader(pg_types: Sequence[str]) -> Callable[[Sequence[object]], tuple[object, ...]]:
    """Reads a source key (or a dead letter's) as the target key's types; a part
    that cannot be read so stays the raw value, to match a dead letter's."""
    normalisers = [_source_normaliser(t) for t in pg_types]

    def read(raw: Sequence[object]) -> tuple[object, ...]:
        out = []
        for f, v in zip(normalisers, raw, strict=True):
            n = f(v) if v is not None else None
            out.append(n.value if isinstance(n, Unreadable) else n)
        return tuple(out)

    return read


def _normalised(normalisers: Sequence[Normaliser], values: Sequence[object]) -> tuple[object, ...]:
    return tuple(f(v) if v is not None else None for f, v in zip(normalisers, values, strict=True))


def _source_rows(
    src: sqlite3.Connection,
    table: str,
    pk: Sequence[str],
    compared: Sequence[TargetColumn],
    source_key: Callable[[Sequence[object]], tuple[object, ...]],
    skip: set[tuple[object, ...]],
) -> tuple[Rows, int]:
    """The source's rows read as the target's types, and how many were dead letters."""
    key_source = ["rowid" if k == ROWID_COLUMN else k for k in pk]
    select = ", ".join(["rowid" if k == "rowid" else f'"{k}"' for k in key_source])
    select += "".join(f', "{c.name}"' for c in compared)
    normalisers = [_source_normaliser(c.pg_type) for c in compared]
    rows: Rows = {}
    skipped = 0
    for row in src.execute(f'SELECT {select} FROM "{table}"'):
        key = source_key(row[: len(pk)])
        if key in skip:
            skipped += 1
            continue
        rows[key] = _normalised(normalisers, row[len(pk) :])
    return rows, skipped


def _target_rows(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    pk: Sequence[str],
    compared: Sequence[TargetColumn],
    skip: set[tuple[object, ...]],
) -> Rows:
    """The target's rows normalised, dead letters left out (JSON is fetched as
    text so that it is parsed here, like the source's)."""
    columns = [
        sql.SQL("{}::text").format(sql.Identifier(c.name))
        if c.pg_type in ("json", "jsonb")
        else sql.Identifier(c.name)
        for c in compared
    ]
    select = sql.SQL(", ").join([sql.Identifier(k) for k in pk] + columns)
    normalisers = [_target_normaliser(c.pg_type) for c in compared]
    rows: Rows = {}
    for row in conn.execute(
        sql.SQL("SELECT {} FROM {}").format(select, sql.Identifier(schema, table))
    ):
        key = tuple(row[: len(pk)])
        if key not in skip:
            rows[key] = _normalised(normalisers, row[len(pk) :])
    return rows


def _note_differences(
    table: str,
    compared: Sequence[TargetColumn],
    source_rows: Rows,
    target_rows: Rows,
    result: Comparison,
) -> None:
    for key in sorted(source_rows.keys() - target_rows.keys(), key=repr):
        result._note(table, "missing in target", f"{table} {_key_text(key)}: missing in target")
    for key in sorted(target_rows.keys() - source_rows.keys(), key=repr):
        result._note(table, "extra in target", f"{table} {_key_text(key)}: only in target")
    for key in sorted(source_rows.keys() & target_rows.keys(), key=repr):
        s_row, t_row = source_rows[key], target_rows[key]
        for col, s, t in zip(compared, s_row, t_row, strict=True):
            if not _same(s, t):
                result._note(
                    table,
                    "values differ",
                    f"{table} {_key_text(key)} {col.name} ({col.pg_type}): "
                    f"source {s!r} != target {t!r}",
                )


def _same(a: object, b: object) -> bool:
    if isinstance(a, Unreadable) or isinstance(b, Unreadable):
        return False
    if type(a) is float and type(b) is float:
        return a == b or (math.isnan(a) and math.isnan(b))  # NaN equals NaN here
    return bool(a == b) and (a is None) == (b is None)


def assert_replicated(source: Path, dsn: str, **kwargs: Any) -> Comparison:
    """The typed comparison, failing with its diff when anything differs."""
    comparison = compare(source, dsn, **kwargs)
    assert comparison.equal, str(comparison)
    assert sum(comparison.rows.values()) > 0, "nothing was compared"
    return comparison


def like_sum(
    *, source: Path | None = None, dsn: str | None = None, without: Sequence[str] = ()
) -> int:
    """sum(tweets.like_count) on one side, leaving out the tweets ``without``
    (e.g. rows that are dead letters, so only one side holds them)."""
    if source is not None:
        conn = _sqlite(source)
        try:
            rows = conn.execute("SELECT tweet_id, like_count FROM tweets").fetchall()
        finally:
            conn.close()
    else:
        assert dsn is not None
        with psycopg.connect(dsn, autocommit=True) as pg:
            rows = pg.execute("SELECT tweet_id, like_count FROM tweets").fetchall()
    skip = set(without)
    return sum(int(n or 0) for tweet_id, n in rows if tweet_id not in skip)
