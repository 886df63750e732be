"""Verify's fast path must never be looser than its exact comparison.

Each chunk's digest is computed by SQLite (and Python) on one side and by
PostgreSQL on the other (replicator/plan/digest.py); only a chunk whose digests
differ is compared row by row. So a text form that hides a difference (a
float's last digit, a microsecond, jsonb's "1" vs 1, trailing spaces, NULL vs
'' vs 'NULL', a value holding the field separator) would make verify say
IDENTICAL for rows that are not.

Every pair below is one row, written straight into each database (SQLite the
source value, PostgreSQL the target's), compared with one row per chunk: a pair
that ``canonical()`` calls different must be named different (which it can only
be if its chunk's digests differed), and a pair it calls equal must not be named
in the end, whatever the digests said. Each table must have gone the digest way,
or the test would prove nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import snapshot_config

from replicator.plan.digest import MAX_SQL_FIELDS
from replicator.proof.verify import Verifier

DIFF, SAME = True, False

# kind: (SQLite declaration, PostgreSQL type, [(source value, target text, differ)])
PAIRS: dict[str, tuple[str, str, list[tuple[Any, Any, bool]]]] = {
    "double": (
        "REAL",
        "double precision",
        [
            (0.1, "0.10000000000000002", DIFF),  # the last digit
            (1.0000000000000002, "1", DIFF),
            (123.456, "123.45600000000002", DIFF),
            (1e-7, "1.0000000000000001e-07", DIFF),
            (5.0, "5", SAME),
            (7, "7", SAME),  # an integer in a REAL column
            (None, "0", DIFF),
            (0.1, "0.1", SAME),
            (1e300, "1e+300", SAME),
            (-0.0, "0", SAME),
        ],
    ),
    "timestamptz": (
        "TIMESTAMP",
        "timestamptz",
        [
            ("2024-01-01 12:00:00.123456", "2024-01-01 12:00:00.123457+00", DIFF),
            ("2024-01-01 12:00:00", "2024-01-01 12:00:00.000001+00", DIFF),
            ("2024-01-01T12:00:00.5+00:00", "2024-01-01 12:00:00.4+00", DIFF),
            ("2024-01-01", "2024-01-01 00:00:00.000001+00", DIFF),
            ("0001-01-01 00:00:00", "0001-01-01 00:00:00.000001+00", DIFF),
            ("2024-01-01 12:00:00+02:00", "2024-01-01 12:00:00+00", DIFF),
            ("2024-01-01 12:00", "2024-01-01 12:00:01+00", DIFF),
            ("2024-02-30 00:00:00", "2024-03-01 00:00:00+00", DIFF),  # no such day
            ("2024-01-01 12:00:00.5", "2024-01-01 12:00:00.5+00", SAME),
            ("2024-01-01T12:00:00Z", "2024-01-01 12:00:00+00", SAME),
            ("2024-01-01 14:00:00+02:00", "2024-01-01 12:00:00+00", SAME),
            ("2024-01-01T14:00:00.123456+02:00", "2024-01-01 12:00:00.123457+00", DIFF),
            ("2024-01-01T12:00:59.9999-05:00", "2024-01-01 17:00:59.9999+00", SAME),
            ("2024-01-01T12:00:59.9999-05:00", "2024-01-01 17:01:00.9999+00", DIFF),
            ("2024-02-30T10:00:00+02:00", "2024-03-01 08:00:00+00", DIFF),  # no such day
            ("2024-01-01T24:00:00+02:00", "2024-01-01 22:00:00+00", DIFF),  # no such hour
            ("2024-01-01T10:00:60+02:00", "2024-01-01 08:01:00+00", DIFF),  # no leap second
            ("0000-12-31T23:00:00-02:00", "0001-01-01 01:00:00+00", DIFF),  # no year 0
            ("2024-01-01", "2024-01-01 00:00:00+00", SAME),
            (None, "2024-01-01 00:00:00+00", DIFF),
            (b"2024-01-01 12:00:00", "2024-01-01 12:00:00+00", DIFF),  # a blob is no date
            (1704110400, "2024-01-01 12:00:00+00", DIFF),  # epoch: refused without a rule
        ],
    ),
    "timestamp": (
        "DATETIME",
        "timestamp",
        [
            ("2024-01-01 12:00:00.123456", "2024-01-01 12:00:00.123455", DIFF),
            ("2024-01-01 12:00:00.1", "2024-01-01 12:00:00.01", DIFF),
            ("2024-01-01 12:00:00.100", "2024-01-01 12:00:00.1", SAME),
        ],
    ),
    "jsonb": (
        "JSON",
        "jsonb",
        [
            ("1", '"1"', DIFF),
            ('{"a":1}', '{"a":"1"}', DIFF),
            ('{"a":1.5}', '{"a":1.50000000000001}', DIFF),
            ("[1,2]", "[2,1]", DIFF),
            ('{"ab":1,"b":2}', '{"ab":2,"b":1}', DIFF),
            ('{"a":{"b":1}}', '{"a":{"b":2}}', DIFF),
            ('"a, b"', '"a,b"', DIFF),
            ('"x\\n"', '"x\\\\n"', DIFF),
            ('{"n":9007199254740993.0}', '{"n":9007199254740992.0}', DIFF),
            ("null", "{}", DIFF),
            ("true", "1", DIFF),
            ('{"a":1,"b":2}', '{"b":2,"a":1}', SAME),
            ("1.0", "1", SAME),
            ("1e3", "1000", SAME),
            ('{"a": [1, 2.0]}', '{"a":[1,2]}', SAME),
            ("0.10000000000000000001", "0.1", SAME),
            ('{"c": 6.3e-05}', '{"c": 0.000063}', SAME),
            ("[1e-7]", "[0.00000011]", DIFF),
            ('{"é":1,"z":2,"aa":3}', '{"aa":3,"z":2,"é":1}', SAME),
            (None, "null", DIFF),
        ],
    ),
    "text": (
        "TEXT",
        "text",
        [
            ("abc ", "abc", DIFF),
            ("", None, DIFF),
            ("NULL", None, DIFF),
            ("~", None, DIFF),
            ("", " ", DIFF),
            ("a,b", "a", DIFF),
            ("3:abc", "abc", DIFF),
            ("é", "e", DIFF),
            (7, "7", SAME),  # an integer in a TEXT column: the exact path converts it
            (b"abc", "abc", SAME),  # a blob of UTF-8 text, likewise
            ("same", "same", SAME),
        ],
    ),
    "char": (
        "CHAR(5)",
        "char(5)",
        [
            ("ab", "ab", SAME),  # padded in PostgreSQL, equal under canonical()
            ("ab c", "ab", DIFF),
            ("abcde  ", "abcde", DIFF),  # too long for char(5): the converter refuses it
            (" ab", "ab", DIFF),
        ],
    ),
    "varchar": (
        "VARCHAR(3)",
        "varchar(3)",
        [("abcd", "abc", DIFF), ("ab", "ab", SAME)],
    ),
    "boolean": (
        "BOOLEAN",
        "boolean",
        [(1, "false", DIFF), (2, "true", DIFF), ("yes", "true", SAME), (0, "false", SAME)],
    ),
    "integer": (
        "INTEGER",
        "bigint",
        [(1, "2", DIFF), ("1", "1", SAME), (1.0, "1", SAME), (None, "0", DIFF)],
    ),
    "bytea": (
        "BLOB",
        "bytea",
        [
            (b"\x00", "\\x0000", DIFF),
            (b"", None, DIFF),
            (b"ab", "\\x616263", DIFF),
            ("ab", "\\x6162", SAME),
            (b"\x01\x02", "\\x0102", SAME),
        ],
    ),
    "date": (
        "DATE",
        "date",
        [("2024-01-01", "2024-01-02", DIFF), ("2024-01-01", "2024-01-01", SAME)],
    ),
    "uuid": (
        "UUID",
        "uuid",
        [
            (
                "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                SAME,
            ),
            (
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12",
                DIFF,
            ),
        ],
    ),
}


def _verdict(path: Path, dsn: str) -> Any:
    report = Verifier(snapshot_config(path, dsn), chunk_rows=1, settle_timeout=0).run()
    [verdict] = report.tables
    return verdict


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_the_digest_path_names_every_pair_canonical_calls_different(
    kind: str, tmp_path: Path, pg_dsn: str
) -> None:
    decl, pg_type, pairs = PAIRS[kind]
    path = tmp_path / "src.db"
    src = sqlite3.connect(path)
    src.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v {decl})")
    src.executemany("INSERT INTO t VALUES (?, ?)", [(i, s) for i, (s, _t, _d) in enumerate(pairs)])
    src.commit()
    src.close()
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(f"CREATE TABLE t (id bigint PRIMARY KEY, v {pg_type})")
        for i, (_s, t, _d) in enumerate(pairs):
            pg.execute(f"INSERT INTO t VALUES (%s, %s::{pg_type})", (i, t))

    verdict = _verdict(path, pg_dsn)

    assert verdict.method == "digest", kind
    named = {ex["key"][0] for ex in verdict.examples}
    expected = {i for i, (_s, _t, differ) in enumerate(pairs) if differ}
    assert named == expected, (
        f"{kind}: named {sorted(named)}, expected {sorted(expected)}: "
        + "; ".join(f"{i}: {pairs[i][0]!r} vs {pairs[i][1]!r}" for i in sorted(named ^ expected))
    )
    assert verdict.different == len(expected)


# Two text columns side by side: a value holding the field separator, a length
# prefix or the NULL mark must not let the boundary between fields move.
SEPARATORS: list[tuple[tuple[Any, Any], tuple[Any, Any], bool]] = [
    (("a,", "b"), ("a", ",b"), DIFF),
    (("1:a", ""), ("", "1:a"), DIFF),
    (("~,", None), (None, "~,"), DIFF),
    (("2:ab,", "x"), ("2", "ab,x"), DIFF),
    (("", ""), (None, None), DIFF),
    (("a", "b"), ("a", "b"), SAME),
]


def test_values_holding_the_separators_cannot_shift_a_field(tmp_path: Path, pg_dsn: str) -> None:
    path = tmp_path / "src.db"
    src = sqlite3.connect(path)
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, w TEXT)")
    src.executemany(
        "INSERT INTO t VALUES (?, ?, ?)", [(i, *s) for i, (s, _t, _d) in enumerate(SEPARATORS)]
    )
    src.commit()
    src.close()
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text, w text)")
        for i, (_s, t, _d) in enumerate(SEPARATORS):
            pg.execute("INSERT INTO t VALUES (%s, %s, %s)", (i, *t))

    verdict = _verdict(path, pg_dsn)

    assert verdict.method == "digest"
    named = {ex["key"][0] for ex in verdict.examples}
    assert named == {i for i, (_s, _t, differ) in enumerate(SEPARATORS) if differ}


def test_a_table_with_a_kind_without_a_text_form_is_compared_the_exact_way(
    tmp_path: Path, pg_dsn: str
) -> None:
    """numeric has no text form here (its scale and canonical()'s normalize() differ):
    the whole table goes the exact way, and a difference is still found."""
    path = tmp_path / "src.db"
    src = sqlite3.connect(path)
    src.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v NUMERIC)")
    src.executemany("INSERT INTO t VALUES (?, ?)", [(1, 1.5), (2, 2)])
    src.commit()
    src.close()
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("CREATE TABLE t (id bigint PRIMARY KEY, v numeric)")
        pg.execute("INSERT INTO t VALUES (1, 1.50), (2, 3)")

    verdict = _verdict(path, pg_dsn)

    assert verdict.method == "exact"
    assert [ex["key"] for ex in verdict.examples] == [[2]]


def test_a_table_too_wide_for_one_sqlite_expression_is_compared_the_exact_way(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Past MAX_SQL_FIELDS columns the row text could pass SQLite's expression depth
    (at 800 it does: "Expression tree is too large")."""
    width = max(800, MAX_SQL_FIELDS + 20)
    cols = [f"c{i}" for i in range(width)]
    path = tmp_path / "src.db"
    src = sqlite3.connect(path)
    src.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {', '.join(f'{c} TEXT' for c in cols)})")
    marks = ", ".join("?" * (width + 1))
    src.executemany(f"INSERT INTO t VALUES ({marks})", [(i, *["x"] * width) for i in (1, 2)])
    src.commit()
    src.close()
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        columns = ", ".join(f"{c} text" for c in cols)
        pg.execute(f"CREATE TABLE t (id bigint PRIMARY KEY, {columns})")
        values = ", ".join(["'x'"] * width)
        pg.execute(f"INSERT INTO t VALUES (1, {values})")
        pg.execute(f"INSERT INTO t VALUES (2, {values.replace(chr(39) + 'x', chr(39) + 'y', 1)})")

    verdict = _verdict(path, pg_dsn)

    assert verdict.method == "exact"
    assert [ex["key"] for ex in verdict.examples] == [[2]]
