"""Converted values through a real PostgreSQL: COPY them in, read them back.

The converter must never accept a value that PostgreSQL then refuses (the
documented backstops aside: types it passes through as text, jsonb numbers
beyond numeric's range), and what PostgreSQL stores must be what was meant.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from replicator.coerce import ColumnRule, Kind, PgType, converter_for
from replicator.errors import CoercionError

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[Conn]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        # Far from UTC, and not a whole hour: timestamptz must not depend on the session.
        c.execute("SET TimeZone = 'Asia/Kathmandu'")
        yield c


def copy_and_read(
    conn: Conn, ddl: str, values: Sequence[object], read_as: str = "v"
) -> list[object]:
    """COPY ``values`` into a fresh temporary column of type ``ddl``; read them back in order.

    psycopg.Error from the COPY means PostgreSQL refused a value. The values are read
    back in UTC: timestamptz at 9999-12-31 is past year 9999 in most other zones.
    """
    with conn.transaction(force_rollback=True), conn.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE TEMP TABLE t (id integer PRIMARY KEY, v {})").format(sql.SQL(ddl))
        )
        with cur.copy("COPY t (id, v) FROM STDIN") as copy:
            for i, v in enumerate(values):
                copy.write_row((i, v))
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        cur.execute(sql.SQL("SELECT {} FROM t ORDER BY id").format(sql.SQL(read_as)))
        return [row[0] for row in cur.fetchall()]


# How each kind is read back: json as its text (json keeps it verbatim), real widened
# exactly to float8, the types the converter passes through as text.
READ_AS = {
    Kind.JSON: "v::text",
    Kind.JSONB: "v::text",
    Kind.REAL: "v::float8",
    Kind.OTHER: "v::text",
}

_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")


def _f32_of_text(text: str) -> float:
    """The float4 PostgreSQL's strtof makes of ``text``: the nearest, ties to even."""
    q = Fraction(text)
    try:
        f = float(_F32.unpack(_F32.pack(float(q)))[0])
    except OverflowError:  # between FLT_MAX and the overflow threshold
        f = math.copysign(3.4028234663852886e38, q)
    bits = _U32.unpack(_F32.pack(f))[0]
    candidates: list[float] = [f]
    for b in (bits - 1, bits + 1):
        if 0 <= b < 2**32:
            c = float(_F32.unpack(_U32.pack(b))[0])
            if math.isfinite(c):
                candidates.append(c)
    return min(candidates, key=lambda c: (abs(Fraction(c) - q), _U32.unpack(_F32.pack(c))[0] & 1))


def comparable(t: PgType, value: object, *, sent: bool) -> object:
    """A form in which what was sent and what came back compare equal."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, Decimal) and value.is_nan():
        return "NaN"
    if t.kind is Kind.REAL and sent:
        assert isinstance(value, float)
        return value if math.isinf(value) else _f32_of_text(repr(value))
    if t.kind is Kind.CHAR and sent:
        assert isinstance(value, str) and t.length is not None
        return value.ljust(t.length)  # character(n) pads with blanks
    if t.kind is Kind.JSONB:
        assert isinstance(value, str)
        return json.loads(value, parse_float=Decimal, parse_int=Decimal)
    if t.kind is Kind.UUID:
        return str(value)
    return value


def assert_round_trip(conn: Conn, t: PgType, raw: Sequence[object], rule: ColumnRule) -> None:
    convert = converter_for(t, rule)
    accepted: list[tuple[object, object]] = []
    for value in raw:
        with contextlib.suppress(CoercionError):
            accepted.append((value, convert(value)))
    converted = [c for _, c in accepted]
    try:
        back = copy_and_read(conn, t.ddl(), converted, READ_AS.get(t.kind, "v"))
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL refused what the converter accepted for {t.name}: {exc}\n"
            f"values: {accepted!r}"
        )
    for (value, sent), got in zip(accepted, back, strict=True):
        if t.kind is Kind.OTHER:
            # PostgreSQL parsed the text itself: the same as a cast of that text gives.
            cast = sql.SQL("SELECT %s::{}::text").format(sql.SQL(t.ddl()))
            row = conn.execute(cast, (sent,)).fetchone()
            assert row is not None
            assert got == row[0], f"{t.name}: {value!r} -> {got!r}"
            continue
        want = comparable(t, sent, sent=True)
        seen = comparable(t, got, sent=False)
        assert seen == want, f"{t.name}: {value!r} -> sent {sent!r}, read back {got!r}"


# --------------------------------------------------------------------------- table-driven

ROUND_TRIPS: list[tuple[str, ColumnRule, list[object]]] = [
    ("smallint", ColumnRule(), [0, -32768, 32767, True, 7.0, "  -12 ", "42.000", None]),
    ("integer", ColumnRule(), [-(2**31), 2**31 - 1, "1e3", None]),
    ("bigint", ColumnRule(), [I64_MIN, I64_MAX, "9223372036854775807", 2.0**62, None]),
    (
        "numeric(10,2)",
        ColumnRule(),
        [19.99, 0.1, -99999999.99, 1, "1.500", "0E-40", 12345678.9, None],
    ),
    ("numeric(5,-2)", ColumnRule(), [12300, "-9999900", 0]),
    ("numeric(2,5)", ColumnRule(), ["0.00099", "-0.00001", 0]),
    (
        "numeric",
        ColumnRule(),
        [
            0.1,
            5e-324,
            1.7976931348623157e308,
            float("inf"),
            float("-inf"),
            "NaN",
            I64_MAX,
            "1e-16383",
            "123456789012345678901234567890.000000000000000000001",
        ],
    ),
    (
        "real",
        ColumnRule(),
        [
            0.1,
            1e-45,
            1e-40,
            1.1754943508222875e-38,
            3.4028234663852886e38,
            3.4028235e38,
            float("inf"),
            float("-inf"),
            -0.0,
            2**24,
            "NaN",
            "1.5",
            None,
        ],
    ),
    (
        "double precision",
        ColumnRule(),
        [
            0.1,
            5e-324,
            2.2250738585072014e-308,
            1.7976931348623157e308,
            float("inf"),
            -float("inf"),
            -0.0,
            2**53,
            "NaN",
            " 1e-320 ",
            None,
        ],
    ),
    ("boolean", ColumnRule(), [0, 1, 0.0, 1.0, "t", "FALSE", " yes ", "off", None]),
    (
        "text",
        ColumnRule(),
        [
            "",
            "plain",
            "caf\u00e9 \U0001f600 \u4e2d",
            "tab\there\nnewline\\backslash",
            42,
            I64_MIN,
            0.1,
            float("inf"),
            b"utf-8 \xc3\xa9",
            None,
        ],
    ),
    ("character varying(3)", ColumnRule(), ["abc", "\U0001f600\U0001f600\U0001f600", 123, ""]),
    ("character(3)", ColumnRule(), ["ab", "abc", " a", ""]),
    (
        "timestamp without time zone",
        ColumnRule(),
        [
            "2025-11-12T08:15:30Z",
            "2025-11-12 08:15:30",
            "2025-11-12T10:15:30+02:00",
            "2025-11-12T00:15:30+05:45",
            "2025-11-12",
            "0001-01-01T00:00:00",
            "9999-12-31T23:59:59.999999Z",
            "2025-11-12T08:15:30.123456789"[:26] + "000",
        ],
    ),
    (
        "timestamp with time zone",
        ColumnRule(),
        [
            "2025-11-12T08:15:30Z",
            "2025-11-12 08:15:30",
            "2025-11-12T10:15:30-0330",
            "0001-01-01",
            "9999-12-31T23:59:59.999999",
        ],
    ),
    ("timestamp with time zone", ColumnRule(epoch="ms"), [0, 1700000000123, -1, 1.5e12]),
    ("timestamp(0) without time zone", ColumnRule(), ["2025-11-12T08:15:30Z"]),
    ("date", ColumnRule(), ["2025-11-12", "0001-01-01", "9999-12-31", "2025-11-12T00:00:00Z"]),
    ("date", ColumnRule(epoch="s"), [1699920000, 0]),
    ("time without time zone", ColumnRule(), ["08:15", "23:59:59.999999", "00:00:00", None]),
    (
        "json",
        ColumnRule(),
        [
            '{"a": [1, 2.5e300, "x", null, true]}',
            '"\\u0000"',
            '"\\ud800"',
            " [1, 2] ",
            42,
            1e16,
            b'{"k": "v"}',
        ],
    ),
    (
        "jsonb",
        ColumnRule(),
        [
            '{"a": [1, 2.5e300, "x", null, true]}',
            '"caf\u00e9 \\u00e9 \\ud83d\\ude00"',
            '{"a": 1, "a": 2}',
            "1e400",
            "-0",
            "123456789012345678901234567890",
            42,
            0.1,
            True,
        ],
    ),
    ("bytea", ColumnRule(), [b"", b"\x00\xff\\", "caf\u00e9", "bad \udcff\udcfe", None]),
    (
        "uuid",
        ColumnRule(),
        [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            bytes(range(16)),
        ],
    ),
    ("integer[]", ColumnRule(), ["{1,2,3}", "{}", None]),
    ("interval", ColumnRule(), ["1 day 02:00:00", 5]),
]


@pytest.mark.parametrize(
    ("type_text", "rule", "values"),
    ROUND_TRIPS,
    ids=[f"{t}-{r.epoch}" if r.epoch else t for t, r, _ in ROUND_TRIPS],
)
def test_round_trip(conn: Conn, type_text: str, rule: ColumnRule, values: list[object]) -> None:
    t = PgType.parse(type_text)
    convert = converter_for(t, rule)
    for value in values:
        convert(value)  # every value in these tables is accepted
    assert_round_trip(conn, t, values, rule)


def test_timestamps_mean_the_same_instant_in_postgres(conn: Conn) -> None:
    """Not just accepted: read back, each is the instant the text named."""
    texts = ["2025-11-12T10:15:30+02:00", "2025-11-12T08:15:30Z", "2025-11-12 08:15:30"]
    tz = converter_for(PgType.parse("timestamptz"))
    back = copy_and_read(conn, "timestamptz", [tz(s) for s in texts])
    want = datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC)
    assert back == [want] * 3
    naive = converter_for(PgType.parse("timestamp"))
    back = copy_and_read(conn, "timestamp", [naive(s) for s in texts])
    assert back == [want.replace(tzinfo=None)] * 3


def test_what_postgres_refuses_the_converter_refuses_first(conn: Conn) -> None:
    """The cases where PostgreSQL has its own opinion; each value is refused by both."""
    cases: list[tuple[str, object]] = [
        ("jsonb", '"\\u0000"'),
        ("jsonb", '"\\ud800"'),
        ("jsonb", "NaN"),
        ("real", 1e39),
        ("real", 1e-50),
        ("numeric", "1e-16384"),
        ("numeric", "1e131072"),
        ("numeric(10,2)", "Infinity"),
        ("text", "a\x00b"),
        ("character varying(2)", "abc"),
        ("smallint", 32768),
    ]
    for type_text, value in cases:
        t = PgType.parse(type_text)
        with pytest.raises(CoercionError):
            converter_for(t)(value)
        with pytest.raises(psycopg.DataError), conn.transaction():
            conn.execute(sql.SQL("CREATE TEMP TABLE r (v {})").format(sql.SQL(t.ddl())))
            conn.execute("INSERT INTO r VALUES (%s)", (value,))


# --------------------------------------------------------------------------- types in PG

FORMAT_TYPE_COLUMNS = [
    ("smallint", Kind.SMALLINT),
    ("integer", Kind.INTEGER),
    ("bigint", Kind.BIGINT),
    ("bigserial", Kind.BIGINT),
    ("numeric", Kind.NUMERIC),
    ("numeric(10,2)", Kind.NUMERIC),
    ("numeric(7)", Kind.NUMERIC),
    ("decimal(5,-2)", Kind.NUMERIC),
    ("real", Kind.REAL),
    ("float(10)", Kind.REAL),
    ("double precision", Kind.DOUBLE),
    ("float", Kind.DOUBLE),
    ("boolean", Kind.BOOLEAN),
    ("text", Kind.TEXT),
    ("varchar(32)", Kind.VARCHAR),
    ("varchar", Kind.VARCHAR),
    ("char(10)", Kind.CHAR),
    ("character", Kind.CHAR),
    ("bpchar", Kind.CHAR),
    ("timestamp", Kind.TIMESTAMP),
    ("timestamp(3)", Kind.TIMESTAMP),
    ("timestamptz", Kind.TIMESTAMPTZ),
    ("timestamptz(0)", Kind.TIMESTAMPTZ),
    ("date", Kind.DATE),
    ("time", Kind.TIME),
    ("time(2)", Kind.TIME),
    ("timetz", Kind.OTHER),
    ("json", Kind.JSON),
    ("jsonb", Kind.JSONB),
    ("bytea", Kind.BYTEA),
    ("uuid", Kind.UUID),
    ("integer[]", Kind.OTHER),
    ("varchar(5)[]", Kind.OTHER),
    ("interval", Kind.OTHER),
    ("inet", Kind.OTHER),
    ('"char"', Kind.OTHER),
    ("mood", Kind.OTHER),
]


def test_parse_reads_format_type_and_ddl_recreates_it(conn: Conn) -> None:
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok')")
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(ddl))
            for i, (ddl, _) in enumerate(FORMAT_TYPE_COLUMNS)
        )
        conn.execute(sql.SQL("CREATE TEMP TABLE src ({})").format(columns))
        rows = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'src'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()
        printed = [str(r[0]) for r in rows]
        parsed = [PgType.parse(p) for p in printed]
        for (ddl, kind), name, t in zip(FORMAT_TYPE_COLUMNS, printed, parsed, strict=True):
            assert t.kind is kind, (ddl, name)
            if kind is not Kind.OTHER:
                assert t.name == name, (ddl, name)
        # Recreate every known type from ddl(): PostgreSQL prints the same name.
        known = [t for t in parsed if t.kind is not Kind.OTHER]
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(t.ddl()))
            for i, t in enumerate(known)
        )
        conn.execute(sql.SQL("CREATE TEMP TABLE copy ({})").format(columns))
        again = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'copy'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()
        assert [r[0] for r in again] == [t.name for t in known]


SQLITE_DECLS = [
    "INTEGER",
    "NVARCHAR(160)",
    "NUMERIC(10,2)",
    "DATETIME",
    "TEXT",
    "REAL",
    "VARCHAR(32)",
    "BLOB",
    "",
    "BOOLEAN",
    "JSON",
    "UUID",
    "TIME",
    "CHAR(3)",
    "DECIMAL(12,4)",
    "STRING",
]


def test_default_mapping_creates_the_types_it_names(conn: Conn) -> None:
    types = [PgType.from_sqlite_decl(d) for d in SQLITE_DECLS]
    with conn.transaction(force_rollback=True):
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(t.ddl()))
            for i, t in enumerate(types)
        )
        conn.execute(sql.SQL("CREATE TEMP TABLE made ({})").format(columns))
        rows = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'made'::regclass AND attnum > 0 ORDER BY attnum"
        ).fetchall()
    assert [r[0] for r in rows] == [t.name for t in types]


# --------------------------------------------------------------------------- hypothesis

chars = st.one_of(
    st.characters(),
    st.integers(0x10000, 0x10FFFF).map(chr),
    st.integers(0xDC80, 0xDCFF).map(chr),
    st.just("\x00"),
    st.sampled_from("\t\n\\ "),
)
any_text = st.text(chars, max_size=30)
offsets = st.integers(-(15 * 60), 15 * 60).map(lambda m: timezone(timedelta(minutes=m)))
datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.one_of(st.none(), st.just(UTC), offsets),
)


def _iso(dt: datetime, sep: str, digits: int) -> str:
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{sep}{dt.time().isoformat()}"
    if digits > 6 and "." in text:
        text += "0" * (digits - 6)
    off = dt.utcoffset()
    if off is not None:
        minutes = int(off.total_seconds()) // 60
        hh, mm = divmod(abs(minutes), 60)
        text += f"{'-' if minutes < 0 else '+'}{hh:02d}:{mm:02d}"
    return text


FLOAT_EDGES = [
    2.0**-150,
    math.nextafter(2.0**-150, 1.0),
    math.nextafter(2.0**-150, 0.0),
    2.0**-149,
    1.1754943508222875e-38,
    3.4028234663852886e38,
    3.4028235677973366e38,
    math.nextafter(3.4028235677973366e38, 0.0),
    math.nextafter(3.4028235677973366e38, math.inf),
    2.0**53 + 2,
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)

values = st.one_of(
    st.none(),
    st.integers(I64_MIN, I64_MAX),
    st.integers(-40000, 40000),
    st.floats(allow_nan=False),
    st.floats(allow_nan=False, width=32),
    st.sampled_from(FLOAT_EDGES),
    any_text,
    st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary(max_size=20),
    st.integers(I64_MIN, I64_MAX).map(str),
    st.floats().map(repr),
    st.decimals(places=4).map(str),
    st.decimals().map(str),
    st.builds(_iso, datetimes, st.sampled_from("T "), st.integers(0, 9)),
    st.dates().map(date.isoformat),
    st.times().map(time.isoformat),
    st.sampled_from(["t", "FALSE", " yes", "on", "2", "Infinity", "-inf", "NaN", "nan"]),
    st.uuids().map(str),
    st.uuids().map(lambda u: u.bytes),
    st.builds(json.dumps, json_values, ensure_ascii=st.booleans()),
    st.sampled_from(['"\\u0000"', '["\\ud800"]', '{"\\udc00\\ud800": 1}', '"\\ud83d\\ude00"']),
)

HYPOTHESIS_TYPES = [
    ("smallint", ColumnRule()),
    ("integer", ColumnRule()),
    ("bigint", ColumnRule()),
    ("numeric", ColumnRule()),
    ("numeric(12,4)", ColumnRule()),
    ("real", ColumnRule()),
    ("double precision", ColumnRule()),
    ("boolean", ColumnRule()),
    ("text", ColumnRule()),
    ("character varying(8)", ColumnRule()),
    ("character(4)", ColumnRule()),
    ("timestamp without time zone", ColumnRule()),
    ("timestamp with time zone", ColumnRule(epoch="ms")),
    ("date", ColumnRule()),
    ("time without time zone", ColumnRule()),
    ("json", ColumnRule()),
    ("jsonb", ColumnRule()),
    ("bytea", ColumnRule()),
    ("uuid", ColumnRule()),
]


@pytest.mark.parametrize(
    ("type_text", "rule"),
    HYPOTHESIS_TYPES,
    ids=[t for t, _ in HYPOTHESIS_TYPES],
)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=st.lists(values, max_size=25))
def test_postgres_accepts_what_the_converter_accepts(
    conn: Conn, type_text: str, rule: ColumnRule, raw: list[object]
) -> None:
    assert_round_trip(conn, PgType.parse(type_text), raw, rule)
