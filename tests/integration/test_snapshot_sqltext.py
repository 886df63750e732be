"""The snapshot's COPY text made by SQLite (snapshot.sql_conversion) against the
conversion in Python: the same target values and the same dead letters, awkward
value by awkward value, for every kind SQLite converts."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import open_dead_letters

from replicator.config import Config, load_config
from replicator.plan.copytext import CopyText, row_text_sql
from replicator.plan.tables import build_plans
from replicator.snapshot import ProgressDisplay, Snapshotter, chunks
from replicator.source.reader import ChunkReader
from replicator.target.writer import TableWriter

SOURCE = """
CREATE TABLE kinds (
    id INTEGER PRIMARY KEY,
    at_zone TIMESTAMP,
    at_utc TIMESTAMP,
    day DATE,
    doc JSON,
    plain_json JSON,
    flag BOOLEAN,
    ratio DOUBLE,
    big BIGINT,
    mid INTEGER,
    small SMALLINT,
    body TEXT,
    code VARCHAR(8),
    raw BLOB
);
"""

TARGET = """
CREATE TABLE {schema}.kinds (
    id bigint PRIMARY KEY,
    at_zone timestamptz,
    at_utc timestamp,
    day date,
    doc jsonb,
    plain_json json,
    flag boolean,
    ratio double precision,
    big bigint,
    mid integer,
    small smallint CHECK (small IS NULL OR small <> 13),
    body text,
    code varchar(8),
    raw bytea
);
"""

# A row of plain values; each awkward value below replaces one of them in a row of its own.
PLAIN: dict[str, object] = {
    "at_zone": "2024-05-06 07:08:09",
    "at_utc": "2024-05-06 07:08:09",
    "day": "2024-05-06",
    "doc": '{"a": [1, 2]}',
    "plain_json": '{"a": 1}',
    "flag": 1,
    "ratio": 2.5,
    "big": 7,
    "mid": 7,
    "small": 7,
    "body": "plain",
    "code": "abc",
    "raw": b"\x01\x02",
}

STAMPS: list[object] = [
    "2024-01-02 03:04:05",
    "2024-01-02T03:04:05",
    "2024-01-02t03:04:05",
    "2024-01-02 03:04",
    "2024-01-02",
    "2024-01-02 03:04:05.123",
    "2024-01-02T03:04:05.123456",
    "2024-01-02T03:04:05.1234567",
    "2024-01-02T03:04:05.123456000",
    "2024-01-02T03:04:05.123456789",
    "2024-01-02T03:04:05,123456",
    "2024-01-02T03:04:05+02:00",
    "2024-01-02 03:04:05.5-07:30",
    "2024-01-02T03:04:05.123456+05:45",
    "2024-01-02T03:04:05.123Z",
    "2024-01-02T03:04:05Z",
    "2024-01-02T03:04:05z",
    "2024-01-02T03:04:05+0200",
    "2024-01-02T03:04:05+02",
    "2024-01-02 03:04:05-00:00",
    "2024-01-02 03:04:05+14:00",
    "2024-01-02 03:04:05+15:59",
    "2024-01-02 03:04:05+16:00",
    "2024-01-02 03:04:05+23:59",
    "2024-01-02 03:04:05+24:00",
    "2024-01-02 24:00:00",
    "2024-01-02 23:59:60",
    "2024-01-02 03:60:00",
    "2024-02-29 12:00:00",
    "2023-02-29 12:00:00",
    "2024-02-30 01:00:00",
    "2024-04-31T01:00:00.000001+00:00",
    "2024-13-01 00:00:00",
    "2024-00-10 00:00:00",
    "2024-01-00 00:00:00",
    "0000-01-01 00:00:00",
    "0001-01-01 00:00:00",
    "0001-01-01 00:30:00+01:00",
    "0999-05-05 05:05:05",
    "1000-01-01 00:00:00+00:00",
    "8999-12-31T23:59:59.999999+15:59",
    "9998-12-31 23:00:00-01:00",
    "9999-12-31 23:59:59",
    "9999-12-31 23:30:00-01:00",
    " 2024-01-02 03:04:05",
    "2024-01-02 03:04:05 ",
    "20240102T030405",
    "2024-W01-1",
    "now",
    "infinity",
    "",
    1700000000,
    1.5,
    b"2024-01-02 03:04:05",
]

DATES: list[object] = [
    "2024-02-29",
    "2023-02-29",
    "2024-04-31",
    "0000-01-01",
    "0001-01-01",
    "9999-12-31",
    "2024-01-02 00:00:00",
    "2024-01-02T00:00:00Z",
    "2024-01-02 01:00:00",
    "2024-1-2",
    20240102,
    b"2024-01-02",
]

JSONS: list[object] = [
    '{"a": 1e2}',
    '{"a": 1, "a": 2}',
    "[1.0, -0, 1E400, 1e-400]",
    '{"s": "\\u0000"}',
    '{"s": "\\ud800"}',
    '{"s": "\\ud83d\\ude00"}',
    '{"s": "\\u00e9 caf\u00e9"}',
    '{"a": 1}\x00junk',
    '{"t": "tab\\there", "n": "new\\nline", "b": "back\\\\slash"}',
    '"\\\\N"',
    "NaN",
    '{"a": NaN}',
    "[Infinity]",
    "not json",
    "",
    '  {"a" : [ 1 , 2 ] }  \n',
    '{"x": "\x1c\x1e\x1f"}',
    42,
    1.5,
    b"{}",
    b"\xff{}",
]

BOOLS: list[object] = [
    0,
    1,
    2,
    -1,
    "t",
    "f",
    "yes",
    "no",
    "TRUE",
    "on",
    "1",
    1.0,
    0.0,
    0.5,
    "maybe",
    b"\x01",
]

DOUBLES: list[object] = [
    1.5,
    -0.0,
    0.0,
    5e-324,
    2.2250738585072014e-308,
    1e-300,
    1.0000000000000002e-300,
    9.999999999999999e-301,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    1e100,
    9.9e99,
    9.900000000000001e99,
    0.1,
    1 / 3,
    123456.78901234567,
    2**53,
    2**53 + 1,
    -(2**53),
    2**63 - 1,
    "NaN",
    "inf",
    "-Infinity",
    "1e400",
    "1e-400",
    " 2.5 ",
    "abc",
    b"\x00",
    float("inf"),
]

INTS: list[object] = [1, -1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 32768, -32769, 13]
INTS += [1.0, 1.5, "42", " 42 ", "1e3", "x", b"\x01"]

TEXTS: list[object] = [
    "",
    "tab\there",
    "new\nline",
    "cr\rhere",
    "back\\slash",
    "\\N",
    "\\.",
    "caf\u00e9 \u2603 \U0001f600",
    "nul\x00inside",
    "marks \x1c \x1e \x1f",
    42,
    1.5,
    b"hello",
    b"\xff",
    b"nul\x00",
]

CODES: list[object] = ["12345678", "123456789", "\u00e9" * 8, "\u00e9" * 9, "a\tb"]
BLOBS: list[object] = [b"", b"\x00\xff\\", "text", "caf\u00e9", 42, 1.5]

# Text that is not UTF-8: written by SQL (CAST of a blob), as an application in C might.
NOT_UTF8 = {"body": "CAST(x'66ff6f' AS TEXT)", "doc": "CAST(x'7b7dff' AS TEXT)"}

AWKWARD: dict[str, list[object]] = {
    "at_zone": STAMPS,
    "at_utc": STAMPS,
    "day": DATES,
    "doc": JSONS,
    "plain_json": JSONS,
    "flag": BOOLS,
    "ratio": DOUBLES,
    "big": INTS,
    "mid": INTS,
    "small": INTS,
    "body": TEXTS,
    "code": CODES,
    "raw": BLOBS,
}


def make_source(path: Path) -> int:
    """The awkward rows, one awkward value each, between plain rows; returns the rows."""
    conn = sqlite3.connect(path)
    conn.executescript(SOURCE)
    names = list(PLAIN)
    marks = ", ".join("?" * (len(names) + 1))
    rows = 0

    def plain_row() -> None:
        nonlocal rows
        rows += 1
        conn.execute(f"INSERT INTO kinds VALUES ({marks})", (rows, *PLAIN.values()))

    for column, values in AWKWARD.items():
        for value in values:
            plain_row()
            rows += 1
            row = dict(PLAIN, **{column: value})
            conn.execute(f"INSERT INTO kinds VALUES ({marks})", (rows, *row.values()))
    for column, expr in NOT_UTF8.items():
        rows += 1
        conn.execute(f"INSERT INTO kinds VALUES ({marks})", (rows, *PLAIN.values()))
        conn.execute(f"UPDATE kinds SET {column} = {expr} WHERE id = ?", (rows,))
    rows += 1
    conn.execute(f"INSERT INTO kinds (id) VALUES ({rows})")  # every value NULL
    conn.commit()
    conn.close()
    return rows


def config_for(source: Path, dsn: str, schema: str, **snapshot: Any) -> Config:
    return load_config(
        None,
        env={},
        overrides={
            "source.path": str(source),
            "target.url": dsn,
            "target.schema": schema,
            "target.state_schema": f"state_{schema}",
            **{f"snapshot.{k}": v for k, v in snapshot.items()},
        },
    )


def target_rows(dsn: str, schema: str) -> list[tuple[object, ...]]:
    """Every row of the target table, each value as PostgreSQL prints it (exact for
    double precision, bytea in hex, jsonb normalised), and each double's bits."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        cols = conn.execute(
            "SELECT string_agg(format('%%I::text', attname), ', ' ORDER BY attnum) "
            "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
            (f"{schema}.kinds",),
        ).fetchone()
        assert cols is not None
        return conn.execute(
            f"SELECT {cols[0]}, float8send(ratio) FROM {schema}.kinds ORDER BY id"
        ).fetchall()


def letters(dsn: str, schema: str) -> list[tuple[object, ...]]:
    return sorted(
        (str(d["key"]), d["column_name"], d["error"], d["stage"])
        for d in open_dead_letters(dsn, f"state_{schema}")
    )


class TextCopies:
    """Counts the rows that went into PostgreSQL as SQLite's COPY text."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows = 0
        real = TableWriter.copy_text

        def counting(writer: TableWriter, cur: Any, payload: bytes) -> None:
            real(writer, cur, payload)
            self.rows += payload.count(b"\n")  # (escaped inside values: one per row)

        monkeypatch.setattr(TableWriter, "copy_text", counting)


@pytest.mark.parametrize(
    ("chunk_rows", "keep_text"), [(1, True), (7, True), (1000, True), (7, False)]
)
@pytest.mark.parametrize("existing", [True, False], ids=["existing", "created"])
def test_sqlite_text_and_python_give_the_same_rows_and_dead_letters(
    tmp_path: Path,
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    chunk_rows: int,
    keep_text: bool,
    existing: bool,
) -> None:
    """``keep_text``: every chunk is read as text, however many of its rows go to Python
    (here, about half: the awkward rows); otherwise a range goes on in Python once
    most of its chunks miss, as it does by default."""
    if keep_text:
        monkeypatch.setattr(chunks, "TEXT_MISSES", 1.0)
    source = tmp_path / "kinds.db"
    total = make_source(source)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for schema in ("fast", "slow"):
            conn.execute(f"CREATE SCHEMA {schema}")
            if existing:
                conn.execute(TARGET.format(schema=schema))
    copies = TextCopies(monkeypatch)
    for schema, sql_conversion in (("fast", True), ("slow", False)):
        config = config_for(
            source,
            pg_dsn,
            schema,
            sql_conversion=sql_conversion,
            chunk_rows=chunk_rows,
            create_tables=not existing,
        )
        summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
        assert summary.tables[0].rows_read == total
        if schema == "fast":
            fast_rows = copies.rows
    assert copies.rows == fast_rows  # the Python run sent no text of SQLite's
    # Most plain rows went as SQLite's text (with 1000-row chunks, each chunk holds a
    # NUL or a mark somewhere, and is converted in Python whole).
    if keep_text and chunk_rows < 1000:
        assert fast_rows > total // 2, fast_rows

    assert target_rows(pg_dsn, "fast") == target_rows(pg_dsn, "slow")
    fast_letters = letters(pg_dsn, "fast")
    assert fast_letters == letters(pg_dsn, "slow")
    assert len(fast_letters) > 80  # the awkward values did go to dead letters


def test_sqlite_gives_text_for_plain_values_and_null_for_the_rest(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Which values SQLite's expressions take, read directly: the plain row whole,
    and none of the values the converters refuse or convert otherwise."""
    source = tmp_path / "kinds.db"
    make_source(source)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA fast")
        conn.execute(TARGET.format(schema="fast"))
        config = config_for(source, pg_dsn, "fast", create_tables=False)
        src = sqlite3.connect(source)
        (plan,) = build_plans(src, conn, config)
    row_sql = row_text_sql(plan, src)
    assert row_sql is not None
    reader = ChunkReader(src, plan, check_json=True)
    page = reader.read_text(None, 1, row_sql)  # the first row: every value plain
    assert page.rows == 1 and not page.left
    text = CopyText(plan).copy_bytes(page.text, 1)
    assert text is not None and text.endswith(b"\n")
    fields = text[:-1].split(b"\t")
    ratio = fields.pop(7)
    assert float(ratio) == 2.5
    assert fields == [
        b"1",
        b"2024-05-06 07:08:09+00",
        b"2024-05-06 07:08:09",
        b"2024-05-06",
        b'{"a": [1, 2]}',
        b'{"a": 1}',
        b"t",
        b"7",
        b"7",
        b"7",
        b"plain",
        b"abc",
        b"\\\\x0102",
    ]
    # The refused values and those Python converts otherwise are left to Python.
    for value in ["2024-01-02 24:00:00", "2024-01-02 23:59:60", "0000-01-01 00:00:00"]:
        got = src.execute(f"SELECT {row_sql} FROM kinds WHERE at_zone = ?", (value,)).fetchone()
        assert got == (None,), value
    others = src.execute(
        f"SELECT count(*), count({row_sql}) FROM kinds "
        "WHERE typeof(flag) IN ('text', 'real', 'blob') OR flag NOT IN (0, 1)"
    ).fetchone()
    assert others is not None and others[0] >= 10 and others[1] == 0


def test_a_chunk_too_big_for_sqlites_text_goes_on_in_python(tmp_path: Path, pg_dsn: str) -> None:
    """SQLite's text of a chunk longer than SQLite holds ("string or blob too big")
    is no error: the range goes on in Python."""
    source = tmp_path / "kinds.db"
    total = make_source(source)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA fast")
        conn.execute(TARGET.format(schema="fast"))
        config = config_for(source, pg_dsn, "fast", create_tables=False)
        src = sqlite3.connect(source, check_same_thread=False)  # (read in a thread)
        (plan,) = build_plans(src, conn, config)
    row_sql = row_text_sql(plan, src)
    assert row_sql is not None
    src.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2000)  # a few rows' text at most
    text = chunks.TextPlan(row_sql, CopyText(plan), chunks.Rereader(source, 5000, plan))
    prefetch = chunks.Prefetcher(
        ChunkReader(src, plan, check_json=True), plan, None, 100, text=text
    )
    read = 0
    try:
        while (chunk := prefetch.get()) is not None:
            assert not isinstance(chunk, chunks.TextChunk)  # (each too big as text)
            read += len(chunk[0])
    finally:
        prefetch.close()
    assert read == total
