"""The snapshot's COPY into an empty table in PostgreSQL's binary format: every kind it
is used for round-trips exactly, a refused row is still found by its line, and a
table with a column of another kind goes as text."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import psycopg
from harness import snapshot_config, sqlite_from_script
from oracle import assert_replicated, open_dead_letters

from replicator.plan.tables import TablePlan, build_plans
from replicator.snapshot import ProgressDisplay, Snapshotter
from replicator.target.writer import TableWriter

ROWS = [
    (
        1,
        "plain",
        "caf\u00e9 \u2603",
        3,
        2.5,
        1,
        "2024-01-02T03:04:05.123456Z",
        "2024-01-02 03:04:05+02:00",
        "2024-02-29",
        b"\x00\xffbytes",
        '{"a": [1, 2.5, "x", null, true], "b": {"c": "\\u00e9"}}',
        "[1, 2]",
    ),
    (2, "", "", -32768, -1e300, 0, "1970-01-01", "1999-12-31T23:59:59", None, b"", "42", '"s"'),
    (3, None, None, None, None, None, None, None, None, None, None, None),
]

SOURCE = """
CREATE TABLE kinds (
    id INTEGER PRIMARY KEY,
    code VARCHAR(8),
    body TEXT,
    small SMALLINT,
    ratio DOUBLE,
    flag BOOLEAN,
    at_utc TIMESTAMP,
    at_zone DATETIME,
    day DATE,
    raw BLOB,
    doc JSON,
    plain_json TEXT
);
"""


def make(tmp_path: Path, pg_dsn: str, target: str | None = None) -> Path:
    path = tmp_path / "kinds.db"
    src = sqlite3.connect(path)
    src.executescript(SOURCE)
    src.executemany(f"INSERT INTO kinds VALUES ({', '.join('?' * 12)})", ROWS)
    src.commit()
    src.close()
    if target is not None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(target)
    return path


TARGET = """
CREATE TABLE kinds (
    id bigint PRIMARY KEY,
    code varchar(8),
    body text,
    small smallint CHECK (small IS NULL OR small > -30000),
    ratio double precision,
    flag boolean,
    at_utc timestamp,
    at_zone timestamptz,
    day date,
    raw bytea,
    doc jsonb,
    plain_json json
)
"""


def test_every_binary_kind_round_trips_and_a_refused_row_is_found_by_its_line(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make(tmp_path, pg_dsn, TARGET)
    config = snapshot_config(source, pg_dsn, create_tables=False)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        (plan,) = build_plans(sqlite3.connect(source), conn, config)
    assert TableWriter(plan.shape).binary_types is not None  # this table goes binary

    summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()

    # row 2's smallint breaks the target's CHECK: PostgreSQL names its COPY line
    letters = open_dead_letters(pg_dsn)
    assert [(d["key"], d["error"].split(" (")[0]) for d in letters] == [
        ([2], 'new row for relation "kinds" violates check constraint "kinds_small_check"')
    ]
    assert summary.tables[0].rows_written == 2
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        got = conn.execute(
            "SELECT id, code, body, small, ratio, flag, at_utc::text, at_zone, day::text,"
            " raw, doc, plain_json::text FROM kinds ORDER BY id"
        ).fetchall()
    assert got[0][:6] == (1, "plain", "caf\u00e9 \u2603", 3, 2.5, True)
    assert got[0][6] == "2024-01-02 03:04:05.123456"
    assert got[0][7].isoformat() == "2024-01-02T01:04:05+00:00"
    assert got[0][8] == "2024-02-29"
    assert got[0][9] == b"\x00\xffbytes"
    assert got[0][10] == {"a": [1, 2.5, "x", None, True], "b": {"c": "\u00e9"}}
    assert got[0][11] == "[1, 2]"  # json keeps its text as written
    assert got[1][0] == 3 and all(v is None for v in got[1][1:])


def test_created_tables_go_binary_and_equal_the_source(tmp_path: Path, pg_dsn: str) -> None:
    source = make(tmp_path, pg_dsn)
    summary = Snapshotter(
        snapshot_config(source, pg_dsn), display=ProgressDisplay(io.StringIO())
    ).run()
    assert summary.dead_letters == 0
    assert_replicated(source, pg_dsn)


def snapshot_one(
    tmp_path: Path, pg_dsn: str, script: str, target: str | None = None
) -> tuple[Path, TablePlan]:
    """A one-table SQLite file from ``script``, its target table ``target`` (None: the
    replicator creates it), snapshotted; returns the file and the table's plan."""
    path = sqlite_from_script(tmp_path / "one.db", script)
    if target is not None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(target)
    config = snapshot_config(path, pg_dsn, create_tables=target is None)
    Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
    src = sqlite3.connect(path)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            (plan,) = build_plans(src, conn, config)
    finally:
        src.close()
    return path, plan


def test_character_n_goes_binary_padded_as_from_text(tmp_path: Path, pg_dsn: str) -> None:
    _, plan = snapshot_one(
        tmp_path,
        pg_dsn,
        "CREATE TABLE codes (id INTEGER PRIMARY KEY, c CHAR(5));"
        "INSERT INTO codes VALUES (1, 'ab'), (2, 'abcde'), (3, 'abcdef'), (4, NULL);",
        "CREATE TABLE codes (id bigint PRIMARY KEY, c character(5))",
    )
    assert TableWriter(plan.shape).binary_types == ["int8", "text"]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT id, c, octet_length(c::bytea) FROM codes ORDER BY id")
        assert rows.fetchall() == [(1, "ab   ", 5), (2, "abcde", 5), (4, None, None)]
    assert [d["key"] for d in open_dead_letters(pg_dsn)] == [[3]]  # too long: refused


def test_a_real_column_goes_as_text_and_rounds_as_postgresql_does(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A double exactly halfway between two float4 values: PostgreSQL's rounding of
    its text, as every other path that writes the column gives it."""
    halfway = 1.0000000596046448  # 1 + 2**-24
    _, plan = snapshot_one(
        tmp_path,
        pg_dsn,
        "CREATE TABLE reals (id INTEGER PRIMARY KEY, v REAL);"
        f"INSERT INTO reals VALUES (1, {halfway!r}), (2, 0.1);",
        "CREATE TABLE reals (id bigint PRIMARY KEY, v real)",
    )
    assert TableWriter(plan.shape).binary_types is None
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        got = conn.execute("SELECT v::text FROM reals ORDER BY id").fetchall()
        want = conn.execute("SELECT %s::text::real::text", (repr(halfway),)).fetchone()
    assert got == [want, ("0.1",)]


def test_a_table_with_a_numeric_column_goes_as_text(tmp_path: Path, pg_dsn: str) -> None:
    path, plan = snapshot_one(
        tmp_path,
        pg_dsn,
        "CREATE TABLE money (id INTEGER PRIMARY KEY, amount NUMERIC(10, 2), at DATETIME);"
        "INSERT INTO money VALUES (1, '12.34', '2024-01-02 03:04:05'), (2, 0.1, NULL);",
    )
    assert TableWriter(plan.shape).binary_types is None
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT amount::text FROM money ORDER BY id").fetchall()
    assert rows == [("12.34",), ("0.10",)]
    assert_replicated(path, pg_dsn)
