"""The PostgreSQL side: writing rows of one table.

Two ways in, chosen by the caller: COPY straight into the table (a snapshot
into an empty table), or COPY into a per-session staging table followed by
``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE`` (everything else). Small
batches skip the staging table and upsert with a pipelined ``executemany``.

A row that PostgreSQL refuses (SQLSTATE classes 22 and 23) must not sink its
neighbours: :func:`write_isolating` retries around it inside savepoints, using
the line number COPY reports when it can and bisecting when it cannot, and
returns the culprits so the caller can dead-letter them.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# psycopg's own COPY row formatter (C when psycopg[binary] is installed); not a
# documented name, so the lock file pins the psycopg version it was read from.
from psycopg._copy_base import format_row_text
from psycopg.abc import Transformer
from psycopg.adapt import Dumper
from psycopg.pq import Format

from replicator.coerce import JSON_KINDS, Kind
from replicator.identifiers import pg_ident
from replicator.target.connection import Connection, Cursor, first_line, is_row_error

Row = tuple[object, ...]

# COPY into an empty table goes in PostgreSQL's binary format when every column is
# of one of these kinds: the converters give exactly the Python type psycopg's
# binary dumper for the type takes (int, float, bool, str, naive datetime for
# timestamp and UTC-aware for timestamptz, date, bytes, JSON as text), and
# neither side has text to format or parse (timestamps above all). Other kinds
# make the table go as text: numeric, time, uuid, arrays, enums, domains, ...,
# and real, whose float4 rounding from a double differs from PostgreSQL's
# rounding of the double's text at exact midpoints (even to infinity at the top).
# character(n) is sent with text's dumper: binary COPY data names no type, and
# the server's bpchar input pads and checks the length as from text.
BINARY_COPY_TYPES: dict[Kind, str] = {
    Kind.SMALLINT: "int2",
    Kind.INTEGER: "int4",
    Kind.BIGINT: "int8",
    Kind.DOUBLE: "float8",
    Kind.BOOLEAN: "bool",
    Kind.TEXT: "text",
    Kind.VARCHAR: "varchar",
    Kind.CHAR: "text",  # psycopg has no binary dumper for bpchar
    Kind.TIMESTAMP: "timestamp",
    Kind.TIMESTAMPTZ: "timestamptz",
    Kind.DATE: "date",
    Kind.BYTEA: "bytea",
    Kind.JSON: "json",
    Kind.JSONB: "jsonb",
}


class _JsonText:
    """Never instantiated: the Python type the two dumpers below are registered
    under, so that they are found only by type name (Copy.set_types)."""


class _JsonTextBinaryDumper(Dumper):
    """JSON text (as the converters give it) in json's binary format: the text."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return str(obj).encode()


class _JsonbTextBinaryDumper(_JsonTextBinaryDumper):
    """JSON text in jsonb's binary format: version 1, then the text. (psycopg's own
    jsonb dumper would encode a str as a JSON string.)"""

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + str(obj).encode()


_JSON_DUMPERS: dict[tuple[str, int], type[Dumper]] = {}


def _json_dumpers(cur: Cursor) -> list[type[Dumper]]:
    """The json and jsonb text dumpers, bound to this server's type OIDs."""
    found = []
    for name, base in (("json", _JsonTextBinaryDumper), ("jsonb", _JsonbTextBinaryDumper)):
        info = cur.adapters.types.get(name)
        assert info is not None  # built-in types
        dumper = _JSON_DUMPERS.get((name, info.oid))
        if dumper is None:
            dumper = type(f"{base.__name__}_{info.oid}", (base,), {"oid": info.oid})
            _JSON_DUMPERS[(name, info.oid)] = dumper
        found.append(dumper)
    return found


# Below this many rows an upsert goes straight in with executemany (pipelined);
# above it, COPY into the staging table and merge in one statement.
STAGE_THRESHOLD = 256


@dataclass(frozen=True, slots=True)
class RowFailure:
    index: int  # position in the rows handed to write_isolating
    error: str
    sqlstate: str | None
    column: str | None


_LINE = re.compile(r"line (\d+)")


@dataclass(frozen=True, slots=True)
class TableShape:
    """What the writer needs to know of a target table."""

    schema: str
    name: str
    columns: tuple[str, ...]  # target column names, in the order of a row's values
    kinds: tuple[Kind, ...]  # their types' kinds, in the same order
    key: tuple[str, ...]  # the key's target columns
    newer_column: str | None = None  # conflict = "newer_wins": never write an older version


class TableWriter:
    """Prepared statements for one table; stateless across transactions."""

    def __init__(self, shape: TableShape) -> None:
        self.shape = shape
        cols = sql.SQL(", ").join(pg_ident(c) for c in shape.columns)
        table = pg_ident(shape.schema, shape.name)
        digest = hashlib.sha1(
            f"{shape.schema}.{shape.name}".encode(), usedforsecurity=False
        ).hexdigest()[:16]
        self.stage = pg_ident(f"replicator_stage_{digest}")
        self.copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)
        kinds = shape.kinds
        self.binary_types: list[str] | None = None
        if all(k in BINARY_COPY_TYPES for k in kinds):
            self.binary_types = [BINARY_COPY_TYPES[k] for k in kinds]
            self.copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, cols)
        self.json = any(k in JSON_KINDS for k in kinds)
        self.text_copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)
        self.stage_copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(self.stage, cols)
        self.create_stage_sql = sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA"
        ).format(self.stage, cols, table)
        key = sql.SQL(", ").join(pg_ident(k) for k in shape.key)
        non_key = [c for c in shape.columns if c not in shape.key]
        if non_key:
            action = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(pg_ident(c), pg_ident(c)) for c in non_key
                )
            )
            if shape.newer_column is not None:
                # Dual-write safety: never overwrite a row with an older version of it.
                version = pg_ident(shape.newer_column)
                action = action + sql.SQL(
                    " WHERE t.{v} IS NULL OR EXCLUDED.{v} IS NULL OR EXCLUDED.{v} >= t.{v}"
                ).format(v=version)
        else:
            action = sql.Composed([sql.SQL("DO NOTHING")])
        self.merge_sql = sql.SQL(
            "INSERT INTO {} AS t ({}) SELECT {} FROM {} ON CONFLICT ({}) {}"
        ).format(table, cols, cols, self.stage, key, action)
        placeholders = sql.SQL(", ").join(sql.Placeholder() for _ in shape.columns)
        self.upsert_sql = sql.SQL(
            "INSERT INTO {} AS t ({}) VALUES ({}) ON CONFLICT ({}) {}"
        ).format(table, cols, placeholders, key, action)
        self.delete_sql = sql.SQL("DELETE FROM {} WHERE ({}) = ({})").format(
            table, key, sql.SQL(", ").join(sql.Placeholder() for _ in shape.key)
        )

    def column_names(self) -> list[str]:
        return list(self.shape.columns)

    def copy(self, cur: Cursor, rows: Sequence[Row]) -> None:
        """COPY rows straight into the table (it must not hold their keys), in the
        binary format when every column's type allows (BINARY_COPY_TYPES)."""
        if self.binary_types is None:
            _copy(cur, self.copy_sql, rows)
            return
        if self.json:
            for dumper in _json_dumpers(cur):
                # this cursor's own map: only its COPY finds these, by type OID
                cur.adapters.register_dumper(_JsonText, dumper)
        _copy(cur, self.copy_sql, rows, self.binary_types)

    def copy_text(self, cur: Cursor, payload: bytes) -> None:
        """COPY rows already in COPY's text format (UTF-8) straight into the table."""
        with cur.copy(self.text_copy_sql) as copy:
            copy.write(payload)

    def upsert(self, cur: Cursor, rows: Sequence[Row], *, payload: bytes | None = None) -> None:
        """Insert or update rows by key: staging + merge when large, else pipelined.

        ``payload``, when given, is ``rows`` already formatted as COPY text
        (:func:`copy_payload`), sent as it is."""
        if len(rows) < STAGE_THRESHOLD:
            cur.executemany(self.upsert_sql, rows)
            return
        # Every time, not once per connection: the batch's savepoint (or
        # transaction) may roll back after the table was created in it, and
        # then the table is gone again. IF NOT EXISTS makes this one catalog look-up.
        cur.execute(self.create_stage_sql)
        cur.execute(sql.SQL("TRUNCATE {}").format(self.stage))
        if payload is None:
            _copy(cur, self.stage_copy_sql, rows)
        else:
            with cur.copy(self.stage_copy_sql) as copy:
                copy.write(payload)
        cur.execute(self.merge_sql)

    def delete(self, cur: Cursor, keys: Sequence[Row]) -> None:
        if keys:
            cur.executemany(self.delete_sql, keys)


def copy_payload(formatter: Transformer, rows: Sequence[Row]) -> bytes | None:
    """``rows`` as COPY text, formatted by psycopg's own row formatter with
    ``formatter`` (a Transformer of the connection that will send it); None when
    a value does not format (the rows are then written one by one, which tells
    which row it is)."""
    out = bytearray()
    try:
        for row in rows:
            format_row_text(row, formatter, out)
    except (UnicodeEncodeError, psycopg.DataError, OverflowError, TypeError):
        return None
    return bytes(out)


_CLIENT_ROW_ERRORS = (UnicodeEncodeError, psycopg.DataError, OverflowError, TypeError, struct.error)


def _copy(
    cur: Cursor, statement: sql.Composed, rows: Sequence[Row], types: list[str] | None = None
) -> None:
    with cur.copy(statement) as copy:
        if types is not None:
            copy.set_types(types)
        for i, row in enumerate(rows):
            try:
                copy.write_row(row)
            except _CLIENT_ROW_ERRORS as exc:
                raise ClientRowError(i, exc) from exc


class ClientRowError(psycopg.DataError):
    """A value failed to serialise on our side, at a known row of the COPY."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.index = index
        self.cause = cause


def _failure(exc: BaseException, index: int, columns: Sequence[str]) -> RowFailure:
    sqlstate = getattr(exc, "sqlstate", None)
    column: str | None = None
    diag = getattr(exc, "diag", None)
    if diag is not None:
        column = diag.column_name
        context = diag.context or ""
        if column is None:
            for name in columns:
                if f", column {name}:" in context:
                    column = name
                    break
    message = first_line(exc.cause if isinstance(exc, ClientRowError) else exc)
    if diag is not None and diag.message_detail:
        message = f"{message} ({diag.message_detail})"
    return RowFailure(index=index, error=message, sqlstate=sqlstate, column=column)


def _line_of(exc: BaseException, size: int) -> int | None:
    """The 0-based row a COPY error points at, when the server says which."""
    if isinstance(exc, ClientRowError):
        return exc.index
    diag = getattr(exc, "diag", None)
    context = (diag.context or "") if diag is not None else ""
    if not context.startswith("COPY "):
        return None
    match = _LINE.search(context.splitlines()[0])
    if not match:
        return None
    line = int(match.group(1)) - 1
    return line if 0 <= line < size else None


def write_isolating(
    conn: Connection,
    rows: Sequence[Row],
    write: Callable[[Cursor, Sequence[Row]], None],
    columns: Sequence[str],
) -> list[RowFailure]:
    """Write ``rows`` inside the caller's transaction, isolating rows PostgreSQL refuses.

    Each attempt runs in a savepoint. When it fails with a row-level error,
    the culprit is taken from COPY's line number when reported, otherwise the
    attempt is split in halves. Other errors propagate untouched.
    """
    failures: list[RowFailure] = []
    # A work list of (offset, rows) slices still to write.
    pending: list[tuple[int, Sequence[Row]]] = [(0, rows)]
    while pending:
        offset, part = pending.pop()
        if not part:
            continue
        try:
            with conn.transaction(), conn.cursor() as cur:
                write(cur, part)
        except Exception as exc:
            if not is_row_error(exc):
                raise
            if len(part) == 1:
                failures.append(_failure(exc, offset, columns))
                continue
            line = _line_of(exc, len(part))
            if line is not None:
                failures.append(_failure(exc, offset + line, columns))
                # Rows before the culprit were accepted by COPY up to it; the
                # rest still need trying. Both halves go back on the list.
                pending.append((offset + line + 1, part[line + 1 :]))
                pending.append((offset, part[:line]))
            else:
                mid = len(part) // 2
                pending.append((offset + mid, part[mid:]))
                pending.append((offset, part[:mid]))
    failures.sort(key=lambda f: f.index)
    return failures
