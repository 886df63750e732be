"""The SQLite expressions of replicator.coerce.copysql, on SQLite itself: a double's text
reads back as that very double, and a value left to Python is NULL."""

from __future__ import annotations

import math
import random
import sqlite3
import struct

from replicator.coerce import Kind, PgType
from replicator.coerce.copysql import MARK_NULL, MARK_VALUE, copy_text_expr


def _values(conn: sqlite3.Connection, kind: Kind, values: list[object]) -> list[object]:
    conn.execute("DROP TABLE IF EXISTS t")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(v,) for v in values])
    expr = copy_text_expr(PgType.of(kind), "v", signed_zero=True)
    assert expr is not None
    return [r[0] for r in conn.execute(f"SELECT {expr} FROM t ORDER BY n")]


def test_a_doubles_text_reads_back_as_the_same_double() -> None:
    rng = random.Random(16)
    values: list[float] = []
    while len(values) < 200_000:
        bits = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        for v in (bits, rng.random() * 1000, rng.uniform(-1, 1) * 10 ** rng.randint(-300, 99)):
            if math.isfinite(v):
                values.append(v)
    values += [5e-324, 1e-300, 9.9e99, 1e100, 1.7976931348623157e308, 0.1, 1 / 3, 0.0, -0.0]
    conn = sqlite3.connect(":memory:")
    got = _values(conn, Kind.DOUBLE, list(values))
    sent = 0
    for v, text in zip(values, got, strict=True):
        if text is None:  # left to Python: outside 1e-300 .. 1e100
            assert not 1e-300 <= abs(v) < 9.9e99 or v == 0, v
            continue
        assert text.startswith(MARK_VALUE)
        back = float(text[1:])  # as PostgreSQL's strtod() reads it: correctly rounded
        assert back == v and str(back)[0] == str(v)[0], (v, text)
        sent += 1
    assert sent > len(values) // 2


def test_values_python_must_judge_are_left_to_it() -> None:
    conn = sqlite3.connect(":memory:")
    assert _values(conn, Kind.BOOLEAN, [None, 0, 1, 2, "t", 1.0, b"\x01"]) == [
        MARK_NULL,
        MARK_VALUE + "f",
        MARK_VALUE + "t",
        None,
        None,
        None,
        None,
    ]
    assert _values(conn, Kind.SMALLINT, [32767, 32768, "1", 1.0]) == [
        MARK_VALUE + "32767",
        None,
        None,
        None,
    ]
    stamps = [
        "2024-01-02 03:04:05",
        "2024-01-02T03:04:05.123456+02:00",
        "2024-01-02 24:00:00",
        "2024-01-02 23:59:60",
        "0001-01-01 00:00:00",
        "9999-12-31 23:00:00-01:00",
        "2024-01-02T03:04:05.1234567",
        "2024-01-02t03:04:05",
        "2024-01-02",
        1700000000,
    ]
    assert _values(conn, Kind.TIMESTAMPTZ, list(stamps)) == [
        MARK_VALUE + "2024-01-02 03:04:05+00",
        MARK_VALUE + "2024-01-02T03:04:05.123456+02:00",
        None,
        None,
        None,
        None,
        None,
        None,
        MARK_VALUE + "2024-01-02 00:00:00+00",
        None,
    ]
    # without time zone, an offset other than zero is the converter's to apply
    assert _values(conn, Kind.TIMESTAMP, ["2024-01-02T03:04:05+02:00", "2024-01-02T03:04:05Z"]) == [
        None,
        MARK_VALUE + "2024-01-02T03:04:05Z",
    ]
    assert _values(conn, Kind.JSONB, ['{"a": 1}', "nope", 42, b"{}"]) == [
        MARK_VALUE + '{"a": 1}',
        None,
        None,
        None,
    ]
    assert copy_text_expr(PgType.of(Kind.REAL), "v") is None
    assert copy_text_expr(PgType.of(Kind.TIMESTAMP, precision=3), "v") is None
