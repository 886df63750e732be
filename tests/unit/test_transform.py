"""Value coercion by target type: one table per rule, each row an input and what must happen."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from replicator.coerce import ColumnRule, Kind, PgType, converter_for, encode_raw
from replicator.errors import CoercionError, ConfigError

INF = float("inf")
NAN = float("nan")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
TS = "timestamp without time zone"
TSZ = "timestamp with time zone"


def convert(type_text: str, value: object, rule: ColumnRule | None = None) -> object:
    return converter_for(PgType.parse(type_text), rule or ColumnRule())(value)


def same(got: object, want: object) -> bool:
    """Equal, of exactly the same Python type, and (datetimes) with the same tzinfo."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, Decimal) and want.is_nan():
        return isinstance(got, Decimal) and got.is_nan()
    if isinstance(want, datetime | time):
        assert isinstance(got, datetime | time)
        return got == want and got.tzinfo == want.tzinfo
    return got == want


# --------------------------------------------------------------------------- accepted

ACCEPTED: list[tuple[str, object, object]] = [
    # integers
    ("smallint", 32767, 32767),
    ("smallint", -32768, -32768),
    ("integer", 2**31 - 1, 2**31 - 1),
    ("bigint", I64_MAX, I64_MAX),
    ("bigint", I64_MIN, I64_MIN),
    ("integer", True, 1),
    ("integer", False, 0),
    ("integer", 42.0, 42),
    ("integer", -0.0, 0),
    ("bigint", 2.0**62, 2**62),
    ("integer", "42", 42),
    ("integer", " -42\n", -42),
    ("integer", "+7", 7),
    ("integer", "007", 7),
    ("integer", "42.0", 42),
    ("integer", "42.000", 42),
    ("integer", "1e3", 1000),
    ("bigint", "-9223372036854775808", I64_MIN),
    ("bigint", "0" * 30 + "5", 5),
    # numeric
    ("numeric(10,2)", 19.99, Decimal("19.99")),
    ("numeric(10,2)", 1, Decimal(1)),
    ("numeric(10,2)", -99999999.99, Decimal("-99999999.99")),
    ("numeric(10,2)", "1.500", Decimal("1.500")),
    ("numeric(10,2)", " 12.5 ", Decimal("12.5")),
    ("numeric(10,2)", 0.0, Decimal("0.0")),
    ("numeric(10,2)", "0E-30", Decimal("0E-30")),
    ("numeric(10,2)", True, Decimal(1)),
    ("numeric(10,0)", 12345.0, Decimal("12345.0")),
    ("numeric(5,-2)", 12300, Decimal(12300)),
    ("numeric(2,5)", "0.00099", Decimal("0.00099")),
    ("numeric(4,1)", 1e2, Decimal("100.0")),
    ("numeric(3,1)", 99.9, Decimal("99.9")),
    ("numeric", 0.1, Decimal("0.1")),
    ("numeric", 1e300, Decimal("1e+300")),
    ("numeric", 5e-324, Decimal("5e-324")),
    ("numeric", I64_MAX, Decimal(I64_MAX)),
    (
        "numeric",
        "123456789012345678901234567890.123",
        Decimal("123456789012345678901234567890.123"),
    ),
    ("numeric", INF, Decimal("Infinity")),
    ("numeric", -INF, Decimal("-Infinity")),
    ("numeric", "NaN", Decimal("NaN")),
    ("numeric", "-Infinity", Decimal("-Infinity")),
    ("numeric", "1e-16383", Decimal("1e-16383")),
    # floats
    ("double precision", 0.1, 0.1),
    ("double precision", INF, INF),
    ("double precision", -INF, -INF),
    ("double precision", 5e-324, 5e-324),
    ("double precision", 2**53, float(2**53)),
    ("double precision", -(2**63), -(2.0**63)),
    ("double precision", True, 1.0),
    ("double precision", "0.1", 0.1),
    ("double precision", " -1.5e3 ", -1500.0),
    ("double precision", "Infinity", INF),
    ("double precision", "-inf", -INF),
    ("double precision", "NaN", NAN),
    ("double precision", "1e-320", 1e-320),
    ("double precision", "0.000", 0.0),
    ("real", 0.1, 0.1),
    ("real", 3.4028234663852886e38, 3.4028234663852886e38),
    ("real", 1e-45, 1e-45),
    ("real", 1e-40, 1e-40),
    ("real", INF, INF),
    ("real", 2**24, 16777216.0),
    ("real", 2**40, float(2**40)),
    ("real", "3.4e38", 3.4e38),
    # boolean
    ("boolean", 1, True),
    ("boolean", 0, False),
    ("boolean", 1.0, True),
    ("boolean", -0.0, False),
    ("boolean", True, True),
    *[("boolean", w, True) for w in ("true", "t", "yes", "y", "on", "1", " TRUE ", "Yes")],
    *[("boolean", w, False) for w in ("false", "f", "no", "n", "off", "0", "OFF\n", "No")],
    # text
    ("text", "plain", "plain"),
    ("text", "", ""),
    ("text", "caf\u00e9 \U0001f600 \u4e2d", "caf\u00e9 \U0001f600 \u4e2d"),
    ("text", 42, "42"),
    ("text", -(2**63), "-9223372036854775808"),
    ("text", 0.1, "0.1"),
    ("text", 1e16, "1e+16"),
    ("text", INF, "inf"),
    ("text", True, "true"),
    ("text", b"bytes that are UTF-8 \xc3\xa9", "bytes that are UTF-8 \u00e9"),
    ("character varying(32)", "x" * 32, "x" * 32),
    ("character varying(3)", "\U0001f600\U0001f600\U0001f600", "\U0001f600\U0001f600\U0001f600"),
    ("character varying(3)", 123, "123"),
    ("character varying", "y" * 10_000, "y" * 10_000),
    ("character(3)", "ab", "ab"),
    ("character(3)", "abc", "abc"),
    # other: passed through for PostgreSQL to parse
    ("integer[]", "{1,2,3}", "{1,2,3}"),
    ("USER-DEFINED", "happy", "happy"),
    ("interval", "1 day", "1 day"),
    ("interval", 5, "5"),
    ("inet", "10.0.0.1", "10.0.0.1"),
    # timestamp without time zone: UTC wall time
    (TS, "2025-11-12T08:15:30Z", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12 08:15:30", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12t08:15:30z", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12 08:15", datetime(2025, 11, 12, 8, 15)),
    (TS, "2025-11-12", datetime(2025, 11, 12)),
    (TS, " 2025-11-12 08:15:30\n", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12T10:15:30+02:00", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12T10:15:30+0200", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12T10:15:30+02", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12T03:15:30-05:00", datetime(2025, 11, 12, 8, 15, 30)),
    (TS, "2025-11-12T00:15:30+05:45", datetime(2025, 11, 11, 18, 30, 30)),
    (TS, "2025-11-12T08:15:30.5", datetime(2025, 11, 12, 8, 15, 30, 500000)),
    (TS, "2025-11-12T08:15:30,25", datetime(2025, 11, 12, 8, 15, 30, 250000)),
    (TS, "2025-11-12T08:15:30.123Z", datetime(2025, 11, 12, 8, 15, 30, 123000)),
    (
        TS,
        "2025-11-12T08:15:30.123456Z",
        datetime(2025, 11, 12, 8, 15, 30, 123456),
    ),
    (
        TS,
        "2025-11-12T08:15:30.123456000",
        datetime(2025, 11, 12, 8, 15, 30, 123456),
    ),
    (
        TS,
        "2025-11-12 08:15:30.100000000+01:00",
        datetime(2025, 11, 12, 7, 15, 30, 100000),
    ),
    (TS, "0001-01-01T00:00:00", datetime(1, 1, 1)),
    (TS, "9999-12-31T23:59:59.999999Z", datetime.max),
    (
        "timestamp(0) without time zone",
        "2025-11-12T08:15:30.000Z",
        datetime(2025, 11, 12, 8, 15, 30),
    ),
    (
        "timestamp(3) without time zone",
        "2025-11-12T08:15:30.123Z",
        datetime(2025, 11, 12, 8, 15, 30, 123000),
    ),
    # timestamp with time zone: aware, in UTC
    (TSZ, "2025-11-12T08:15:30Z", datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC)),
    (TSZ, "2025-11-12 08:15:30", datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC)),
    (TSZ, "2025-11-12T10:15:30+02:00", datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC)),
    (TSZ, "2025-11-12", datetime(2025, 11, 12, tzinfo=UTC)),
    (TSZ, "2025-11-12T08:15:30.000001-00:00", datetime(2025, 11, 12, 8, 15, 30, 1, tzinfo=UTC)),
    # date
    ("date", "2025-11-12", date(2025, 11, 12)),
    ("date", " 2025-11-12 ", date(2025, 11, 12)),
    ("date", "2025-11-12T00:00:00", date(2025, 11, 12)),
    ("date", "2025-11-12 00:00:00.000Z", date(2025, 11, 12)),
    ("date", "2025-11-12T02:00:00+02:00", date(2025, 11, 12)),
    # time
    ("time without time zone", "08:15", time(8, 15)),
    ("time without time zone", "08:15:30", time(8, 15, 30)),
    ("time without time zone", "23:59:59.999999", time(23, 59, 59, 999999)),
    ("time without time zone", "08:15:30.5", time(8, 15, 30, 500000)),
    ("time without time zone", " 08:15:30 ", time(8, 15, 30)),
    ("time without time zone", "08:15:30.123456000", time(8, 15, 30, 123456)),
    ("time(0) without time zone", "08:15:30", time(8, 15, 30)),
    # json / jsonb: the original text
    ("jsonb", '{"a": [1, 2.5, "x", null, true]}', '{"a": [1, 2.5, "x", null, true]}'),
    ("jsonb", ' {"b":1} ', ' {"b":1} '),
    ("jsonb", '"caf\u00e9"', '"caf\u00e9"'),
    ("jsonb", '"\\u00e9 \\ud83d\\ude00"', '"\\u00e9 \\ud83d\\ude00"'),
    ("jsonb", '"\\\\u0000 is an escaped backslash"', '"\\\\u0000 is an escaped backslash"'),
    ("jsonb", '{"a": 1, "a": 2}', '{"a": 1, "a": 2}'),
    ("jsonb", "1e400", "1e400"),
    ("jsonb", 42, "42"),
    ("jsonb", 0.1, "0.1"),
    ("jsonb", 1e16, "1e+16"),
    ("jsonb", True, "true"),
    ("jsonb", b'{"k": "v"}', '{"k": "v"}'),
    ("json", '"\\u0000"', '"\\u0000"'),
    ("json", '"\\ud800"', '"\\ud800"'),
    ("json", "[1,2]", "[1,2]"),
    # bytea
    ("bytea", b"\x00\xff", b"\x00\xff"),
    ("bytea", b"", b""),
    ("bytea", "caf\u00e9", b"caf\xc3\xa9"),
    ("bytea", "bad \udcff\udcfe", b"bad \xff\xfe"),
    ("bytea", bytearray(b"ab"), b"ab"),
    # uuid
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("uuid", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("uuid", "a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("uuid", "a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("uuid", " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("uuid", bytes(range(16)), "00010203-0405-0607-0809-0a0b0c0d0e0f"),
]


@pytest.mark.parametrize(("type_text", "value", "expected"), ACCEPTED)
def test_accepted(type_text: str, value: object, expected: object) -> None:
    got = convert(type_text, value)
    assert same(got, expected), f"{type_text} {value!r}: got {got!r}, want {expected!r}"


@pytest.mark.parametrize("kind", list(Kind))
def test_none_is_none_for_every_type(kind: Kind) -> None:
    t = PgType(kind, kind.value)
    assert converter_for(t)(None) is None


def test_common_values_come_back_as_the_same_object() -> None:
    """The hot path returns its input unchanged, without copying."""
    s = "a reasonably long piece of text " * 4
    assert convert("text", s) is s
    assert convert("character varying(200)", s) is s
    j = '{"a": 1}'
    assert convert("jsonb", j) is j
    f = 0.25
    assert convert("double precision", f) is f
    b = b"\x00\x01"
    assert convert("bytea", b) is b


# --------------------------------------------------------------------------- epoch rule

EPOCH_S = ColumnRule(epoch="s")
EPOCH_MS = ColumnRule(epoch="ms")
EPOCH_US = ColumnRule(epoch="us")

EPOCH_ACCEPTED: list[tuple[str, ColumnRule, object, object]] = [
    (TSZ, EPOCH_S, 0, datetime(1970, 1, 1, tzinfo=UTC)),
    (TSZ, EPOCH_S, 1700000000, datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
    (TSZ, EPOCH_S, -1, datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)),
    (
        TSZ,
        EPOCH_S,
        1700000000.123456,
        datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC),
    ),
    (TSZ, EPOCH_S, 1.5, datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)),
    (
        TSZ,
        EPOCH_MS,
        1700000000123,
        datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
    ),
    (
        TSZ,
        EPOCH_US,
        1700000000123456,
        datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC),
    ),
    (TS, EPOCH_S, 1700000000, datetime(2023, 11, 14, 22, 13, 20)),
    ("date", EPOCH_S, 1699920000, date(2023, 11, 14)),
    ("date", EPOCH_MS, 1699920000000.0, date(2023, 11, 14)),
    # text still parses as ISO-8601 under an epoch rule
    (TSZ, EPOCH_S, "2025-11-12T08:15:30Z", datetime(2025, 11, 12, 8, 15, 30, tzinfo=UTC)),
]


@pytest.mark.parametrize(("type_text", "rule", "value", "expected"), EPOCH_ACCEPTED)
def test_epoch_accepted(type_text: str, rule: ColumnRule, value: object, expected: object) -> None:
    got = convert(type_text, value, rule)
    assert same(got, expected), f"{type_text} {value!r}: got {got!r}, want {expected!r}"


EPOCH_REFUSED: list[tuple[str, ColumnRule, object, str]] = [
    (TSZ, EPOCH_S, 1.0000001, "more precise than the microseconds"),
    (TSZ, EPOCH_US, 1.5, "more precise than the microseconds"),
    (TSZ, EPOCH_S, 10**20, "outside the range"),
    (TSZ, EPOCH_S, INF, "not a point in time"),
    (TSZ, EPOCH_S, "1700000000", "not an ISO-8601 timestamp"),
    (TSZ, EPOCH_S, True, "cannot be converted"),
    (TSZ, EPOCH_S, b"\x01", "cannot be converted"),
    ("date", EPOCH_S, 1700000000, "not midnight"),
]


@pytest.mark.parametrize(("type_text", "rule", "value", "message"), EPOCH_REFUSED)
def test_epoch_refused(type_text: str, rule: ColumnRule, value: object, message: str) -> None:
    with pytest.raises(CoercionError, match=None) as info:
        convert(type_text, value, rule)
    assert message in info.value.reason


@pytest.mark.parametrize("type_text", ["integer", "text", "time without time zone", "jsonb"])
def test_epoch_rule_only_for_timestamps_and_dates(type_text: str) -> None:
    with pytest.raises(ConfigError, match="epoch applies to timestamp and date columns only"):
        converter_for(PgType.parse(type_text), EPOCH_S)


def test_epoch_rule_with_unknown_unit() -> None:
    rule = ColumnRule(epoch="h")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="epoch must be"):
        converter_for(PgType.parse("timestamp with time zone"), rule)


# --------------------------------------------------------------------------- refused

REFUSED: list[tuple[str, object, str]] = [
    # the examples the rules were written with, word for word
    ("character varying(32)", "x" * 41, "41 characters do not fit character varying(32)"),
    (TS, "yesterday", "'yesterday' is not an ISO-8601 timestamp"),
    ("boolean", 2, "2 is not a boolean (0/1, true/false, yes/no, on/off)"),
    # integers
    ("smallint", 32768, "32768 is out of range for smallint (-32768..32767)"),
    ("integer", -(2**31) - 1, "out of range for integer (-2147483648..2147483647)"),
    ("bigint", "9223372036854775808", "out of range for bigint"),
    ("bigint", "9" * 5000, "out of range for bigint"),
    ("bigint", 1e19, "1e+19 is out of range for bigint"),
    ("integer", 1.5, "1.5 is not a whole number, which integer requires"),
    ("integer", INF, "inf is not an integer"),
    ("integer", NAN, "nan is not an integer"),
    ("integer", "42.5", "'42.5' is not a whole number"),
    ("integer", "1e100", "out of range for integer"),
    ("integer", "abc", "'abc' is not an integer, which integer requires"),
    ("integer", "", "is not an integer"),
    ("integer", "-", "is not an integer"),
    ("integer", "1_000", "is not an integer"),
    ("integer", "0x1A", "is not an integer"),
    ("integer", "\u0661\u0662", "is not an integer"),  # Arabic-Indic digits
    ("integer", "Infinity", "is not an integer"),
    ("integer", b"\x01", "a 1-byte blob cannot be converted to integer"),
    ("integer", Decimal(1), "cannot be converted to integer"),
    # numeric
    ("numeric(10,2)", 0.1 + 0.2, "has 17 decimal places, more than the 2 of numeric(10,2)"),
    ("numeric(10,2)", "19.999", "has 3 decimal places"),
    ("numeric(10,2)", 123456789.0, "has 9 digits before the decimal point, more than the 8"),
    ("numeric(10,2)", I64_MAX, "digits before the decimal point"),
    ("numeric(10,2)", INF, "inf cannot be stored in numeric(10,2), which holds finite values"),
    ("numeric(10,2)", "NaN", "cannot be stored in numeric(10,2)"),
    ("numeric(10,2)", "ten", "'ten' is not a number, which numeric(10,2) requires"),
    ("numeric(10,2)", "1_0", "is not a number"),
    ("numeric(10,2)", "sNaN", "is not a number"),
    ("numeric(10,2)", b"1", "cannot be converted to numeric(10,2)"),
    ("numeric(10,0)", 0.5, "0.5 is not a whole number, which numeric(10,0) requires"),
    ("numeric(5,-2)", 150, "150 is not a multiple of 100, as numeric(5,-2) requires"),
    ("numeric(5,-2)", 10**7, "has 8 digits before the decimal point, more than the 7"),
    ("numeric(2,5)", "0.001", "too large for numeric(2,5)"),
    ("numeric", "1e-16384", "beyond the range PostgreSQL's numeric can store"),
    ("numeric", "0e-20000", "beyond the range"),
    ("numeric", "1e131072", "beyond the range"),
    ("numeric", "-nan", "is not a number"),
    # floats
    ("double precision", 2**53 + 1, "cannot be represented exactly in double precision"),
    ("double precision", I64_MAX, "cannot be represented exactly"),
    ("double precision", "1e400", "'1e400' is out of range for double precision"),
    ("double precision", "-1e400", "out of range"),
    ("double precision", "1e-400", "too close to zero for double precision"),
    ("double precision", "1,5", "'1,5' is not a number, which double precision requires"),
    ("double precision", "1_5", "is not a number"),
    ("double precision", "", "is not a number"),
    ("double precision", b"\x00" * 8, "cannot be converted to double precision"),
    ("real", 2**24 + 1, "16777217 cannot be represented exactly in real"),
    ("real", 1e39, "1e+39 is out of range for real"),
    ("real", 3.4028236e38, "out of range for real"),
    ("real", 1e-50, "1e-50 is too close to zero for real"),
    ("real", 7e-46, "too close to zero for real"),
    ("real", "1e39", "out of range for real"),
    # boolean
    ("boolean", -1, "-1 is not a boolean"),
    ("boolean", 0.5, "0.5 is not a boolean"),
    ("boolean", "maybe", "'maybe' is not a boolean (0/1, true/false, yes/no, on/off)"),
    ("boolean", "tru", "is not a boolean"),
    ("boolean", "", "is not a boolean"),
    ("boolean", b"\x01", "a 1-byte blob is not a boolean"),
    # text
    ("text", "a\x00b", "'a\\x00b' contains a NUL character, which text cannot hold"),
    ("text", "caf\u00e9\x00", "contains a NUL character"),
    ("text", "bad \udcff", "'bad \\udcff' is not valid UTF-8, which text requires"),
    ("text", "\ud83d", "is not valid UTF-8"),
    ("text", b"\xff\xfe", "a 2-byte blob is not valid UTF-8 text, which text requires"),
    ("text", b"a\x00", "a 2-byte blob contains a NUL byte, which text cannot hold"),
    ("text", object(), "a object value cannot be converted to text"),
    ("character varying(3)", "abcd", "4 characters do not fit character varying(3)"),
    ("character varying(3)", 1234, "4 characters do not fit character varying(3)"),
    ("character varying(3)", 0.125, "5 characters do not fit character varying(3)"),
    ("character varying(3)", b"abcd", "4 characters do not fit character varying(3)"),
    ("character(2)", "abc", "3 characters do not fit character(2)"),
    ("character(2)", "ab ", "3 characters do not fit character(2)"),
    ("character(2)", "\udcff", "not valid UTF-8"),
    ("USER-DEFINED", b"happy", "a 5-byte blob cannot be converted to USER-DEFINED"),
    ("integer[]", "\x00", "contains a NUL character"),
    # timestamps
    (TS, "now", "is not an ISO-8601 timestamp"),
    (TS, "infinity", "is not an ISO-8601 timestamp"),
    (TS, "", "is not an ISO-8601 timestamp"),
    (TS, "20251112", "is not an ISO-8601 timestamp"),
    (TS, "20251112T081530Z", "is not an ISO-8601 timestamp"),
    (TS, "2025-W46-3", "is not an ISO-8601 timestamp"),
    (TS, "2025W463", "is not an ISO-8601 timestamp"),
    (TS, "2025-11-12x08:15:30", "is not an ISO-8601 timestamp"),
    (TS, "2025-11-12T08", "is not an ISO-8601 timestamp"),
    (TS, "2025-11-12T0815", "is not an ISO-8601 timestamp"),
    (TS, "2025-11-12T08:15.5", "is not an ISO-8601 timestamp"),
    (TS, "2025-11-12T24:00:00", "is not an ISO-8601 timestamp"),
    (TS, "2025-02-30", "is not an ISO-8601 timestamp"),
    (TS, "2025-1-2", "is not an ISO-8601 timestamp"),
    (TS, "12/11/2025", "is not an ISO-8601 timestamp"),
    (TS, "0000-01-01", "is not an ISO-8601 timestamp"),
    (
        TS,
        "2025-11-12T08:15:30.1234567Z",
        "is more precise than the microseconds PostgreSQL keeps",
    ),
    (TS, "2025-11-12T08:15:30.123456789", "more precise than"),
    (TS, "2025-11-12T08:15:30.0000000000", "more than 9 fractional"),
    (TS, " 2025-11-12T08:15:30.1234567 ", "more precise than"),
    (TS, "9999-12-31T23:00:00-05:00", "outside the range"),
    (TSZ, "0001-01-01T00:30:00+01:00", "outside the range"),
    (TS, 1700000000, "is a number, but timestamp without time zone"),
    (TSZ, 1.5, "set epoch for this column"),
    (TSZ, b"2025-11-12", "cannot be converted"),
    ("timestamp(0) without time zone", "2025-11-12T08:15:30.5", "more fractional digits than"),
    ("timestamp(3) with time zone", "2025-11-12T08:15:30.1234Z", "more fractional digits than"),
    # date
    ("date", "2025-11-12T08:15:30", "is not a date: it is 08:15:30 UTC, not midnight"),
    ("date", "2025-11-12T00:00:00+02:00", "not midnight"),
    ("date", "2025-02-30", "is not an ISO-8601 date"),
    ("date", "tomorrow", "'tomorrow' is not an ISO-8601 date"),
    ("date", "20251112", "is not an ISO-8601 date"),
    ("date", 20251112, "is a number, but date takes ISO-8601 text"),
    # time
    ("time without time zone", "24:00", "is not an ISO-8601 time of day"),
    ("time without time zone", "08:15+02:00", "is not an ISO-8601 time of day"),
    ("time without time zone", "8:15", "is not an ISO-8601 time of day"),
    ("time without time zone", "0815", "is not an ISO-8601 time of day"),
    ("time without time zone", "08", "is not an ISO-8601 time of day"),
    ("time without time zone", "08:15:30.1234567", "more precise than the microseconds"),
    ("time without time zone", 3600, "3600 is not a time of day"),
    ("time(0) without time zone", "08:15:30.5", "more fractional digits than"),
    # json / jsonb
    ("jsonb", "NaN", "'NaN' is not valid JSON (NaN and Infinity are not JSON values) for jsonb"),
    ("jsonb", "[1, -Infinity]", "is not valid JSON"),
    ("json", "Infinity", "is not valid JSON"),
    ("jsonb", "{'a': 1}", "is not valid JSON"),
    ("jsonb", "", "is not valid JSON"),
    ("jsonb", '{"a":1} x', "is not valid JSON"),
    ("jsonb", '"a\x00"', "is not valid JSON"),
    ("jsonb", '"\\u0000"', "holds \\u0000, which jsonb refuses"),
    ("jsonb", '{"k\\u0000": 1}', "holds \\u0000"),
    ("jsonb", '"\\ud800"', "holds an unpaired surrogate escape, which jsonb refuses"),
    ("jsonb", '["\\uDC00\\uD800"]', "unpaired surrogate"),
    ("jsonb", '"\udcff"', "is not valid UTF-8, which jsonb requires"),
    ("json", '"\udcff"', "is not valid UTF-8, which json requires"),
    ("jsonb", "[" * 100_000, "nested too deeply"),
    ("jsonb", INF, "inf cannot be written as JSON for jsonb"),
    ("jsonb", b"\xff", "is not valid UTF-8 JSON"),
    # bytea
    ("bytea", 42, "42 is a number, not binary data for bytea"),
    ("bytea", 1.5, "is a number"),
    ("bytea", "\ud800", "holds a surrogate that stands for no byte"),
    # uuid
    ("uuid", "not-a-uuid", "'not-a-uuid' is not a UUID, which uuid requires"),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "is not a UUID"),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g", "is not a UUID"),
    ("uuid", "0x" + "0" * 30, "is not a UUID"),
    ("uuid", "urn:uuid:a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "is not a UUID"),
    ("uuid", "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "is not a UUID"),
    ("uuid", "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11", "is not a UUID"),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd38 a11", "is not a UUID"),
    ("uuid", bytes(15), "a 15-byte blob is not a UUID (16 bytes)"),
    ("uuid", 1, "1 is a number, not a UUID"),
]


@pytest.mark.parametrize(("type_text", "value", "message"), REFUSED)
def test_refused(type_text: str, value: object, message: str) -> None:
    with pytest.raises(CoercionError) as info:
        convert(type_text, value)
    assert message in info.value.reason
    assert str(info.value) == info.value.reason


def test_reasons_are_short_and_storable() -> None:
    """Reasons quote a prefix of long values and are always valid UTF-8 without NUL."""
    with pytest.raises(CoercionError) as info:
        convert("character varying(5)", "\udcff\x00" + "x" * 100_000)
    reason = info.value.reason
    assert len(reason) < 200
    assert "100002 characters" in reason
    reason.encode("utf-8")
    assert "\x00" not in reason


# --------------------------------------------------------------------------- PgType.parse

# What PostgreSQL 15's format_type() prints for each type (and a few common spellings).
PARSE: list[tuple[str, Kind, str, int | None, int | None, int | None, str]] = [
    ("smallint", Kind.SMALLINT, "smallint", None, None, None, "smallint"),
    ("integer", Kind.INTEGER, "integer", None, None, None, "integer"),
    ("bigint", Kind.BIGINT, "bigint", None, None, None, "bigint"),
    ("numeric", Kind.NUMERIC, "numeric", None, None, None, "numeric"),
    ("numeric(10,2)", Kind.NUMERIC, "numeric(10,2)", None, 10, 2, "numeric(10,2)"),
    ("numeric(10,0)", Kind.NUMERIC, "numeric(10,0)", None, 10, 0, "numeric(10,0)"),
    ("numeric(5,-2)", Kind.NUMERIC, "numeric(5,-2)", None, 5, -2, "numeric(5,-2)"),
    ("real", Kind.REAL, "real", None, None, None, "real"),
    ("double precision", Kind.DOUBLE, "double precision", None, None, None, "double precision"),
    ("boolean", Kind.BOOLEAN, "boolean", None, None, None, "boolean"),
    ("text", Kind.TEXT, "text", None, None, None, "text"),
    ("character varying(32)", Kind.VARCHAR, "character varying(32)", 32, None, None, "varchar(32)"),
    ("character varying", Kind.VARCHAR, "character varying", None, None, None, "varchar"),
    ("character(10)", Kind.CHAR, "character(10)", 10, None, None, "char(10)"),
    ("bpchar", Kind.CHAR, "bpchar", None, None, None, "bpchar"),
    (
        "timestamp without time zone",
        Kind.TIMESTAMP,
        "timestamp without time zone",
        None,
        None,
        None,
        "timestamp",
    ),
    (
        "timestamp(3) without time zone",
        Kind.TIMESTAMP,
        "timestamp(3) without time zone",
        None,
        3,
        None,
        "timestamp(3)",
    ),
    (
        "timestamp with time zone",
        Kind.TIMESTAMPTZ,
        "timestamp with time zone",
        None,
        None,
        None,
        "timestamptz",
    ),
    (
        "timestamp(6) with time zone",
        Kind.TIMESTAMPTZ,
        "timestamp(6) with time zone",
        None,
        6,
        None,
        "timestamptz(6)",
    ),
    ("date", Kind.DATE, "date", None, None, None, "date"),
    ("time without time zone", Kind.TIME, "time without time zone", None, None, None, "time"),
    ("time(2) without time zone", Kind.TIME, "time(2) without time zone", None, 2, None, "time(2)"),
    ("json", Kind.JSON, "json", None, None, None, "json"),
    ("jsonb", Kind.JSONB, "jsonb", None, None, None, "jsonb"),
    ("bytea", Kind.BYTEA, "bytea", None, None, None, "bytea"),
    ("uuid", Kind.UUID, "uuid", None, None, None, "uuid"),
    # aliases and DDL spellings
    ("int2", Kind.SMALLINT, "smallint", None, None, None, "smallint"),
    ("int4", Kind.INTEGER, "integer", None, None, None, "integer"),
    ("INT", Kind.INTEGER, "integer", None, None, None, "integer"),
    ("int8", Kind.BIGINT, "bigint", None, None, None, "bigint"),
    ("bigserial", Kind.BIGINT, "bigint", None, None, None, "bigint"),
    ("serial", Kind.INTEGER, "integer", None, None, None, "integer"),
    ("float4", Kind.REAL, "real", None, None, None, "real"),
    ("float8", Kind.DOUBLE, "double precision", None, None, None, "double precision"),
    ("float", Kind.DOUBLE, "double precision", None, None, None, "double precision"),
    ("float(24)", Kind.REAL, "real", None, None, None, "real"),
    ("float(25)", Kind.DOUBLE, "double precision", None, None, None, "double precision"),
    ("bool", Kind.BOOLEAN, "boolean", None, None, None, "boolean"),
    ("decimal(12,4)", Kind.NUMERIC, "numeric(12,4)", None, 12, 4, "numeric(12,4)"),
    ("NUMERIC(7)", Kind.NUMERIC, "numeric(7,0)", None, 7, 0, "numeric(7,0)"),
    ("varchar(10)", Kind.VARCHAR, "character varying(10)", 10, None, None, "varchar(10)"),
    ("VARCHAR ( 10 )", Kind.VARCHAR, "character varying(10)", 10, None, None, "varchar(10)"),
    ("varchar", Kind.VARCHAR, "character varying", None, None, None, "varchar"),
    ("char(4)", Kind.CHAR, "character(4)", 4, None, None, "char(4)"),
    ("character", Kind.CHAR, "character(1)", 1, None, None, "char(1)"),
    ("timestamp", Kind.TIMESTAMP, "timestamp without time zone", None, None, None, "timestamp"),
    (
        "timestamp(0)",
        Kind.TIMESTAMP,
        "timestamp(0) without time zone",
        None,
        0,
        None,
        "timestamp(0)",
    ),
    ("timestamptz", Kind.TIMESTAMPTZ, "timestamp with time zone", None, None, None, "timestamptz"),
    (
        "  Timestamp  With  Time  Zone ",
        Kind.TIMESTAMPTZ,
        "timestamp with time zone",
        None,
        None,
        None,
        "timestamptz",
    ),
    ("time", Kind.TIME, "time without time zone", None, None, None, "time"),
    ("pg_catalog.int4", Kind.INTEGER, "integer", None, None, None, "integer"),
]


@pytest.mark.parametrize(("text", "kind", "name", "length", "precision", "scale", "ddl"), PARSE)
def test_parse(
    text: str,
    kind: Kind,
    name: str,
    length: int | None,
    precision: int | None,
    scale: int | None,
    ddl: str,
) -> None:
    t = PgType.parse(text)
    assert t == PgType(kind, name, length, precision, scale)
    assert t.ddl() == ddl
    assert PgType.parse(t.name) == t, "the canonical name parses to the same type"
    assert PgType.parse(t.ddl()) == t, "the DDL text parses to the same type"


OTHERS = [
    "integer[]",
    "text[]",
    "character varying(32)[]",
    "double precision[]",
    "_int4",
    "ARRAY",
    "USER-DEFINED",
    "interval",
    "inet",
    "money",
    '"char"',
    "name",
    "xml",
    "time with time zone",
    "timetz",
    "bit(5)",
    "bit varying(3)",
    "public.mood",
    '"MyEnum"',
    "text with time zone",
]


@pytest.mark.parametrize("text", OTHERS)
def test_parse_other(text: str) -> None:
    t = PgType.parse(text)
    assert t.kind is Kind.OTHER
    assert t.name == text


@pytest.mark.parametrize("text", ["USER-DEFINED", "ARRAY"])
def test_placeholders_have_no_ddl(text: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        PgType.parse(text).ddl()


def test_other_ddl_is_its_name() -> None:
    assert PgType.parse("integer[]").ddl() == "integer[]"


@pytest.mark.parametrize(
    "text",
    [
        "varchar(0)",
        "character(10485761)",
        "numeric(0)",
        "numeric(1001,2)",
        "numeric(10,1001)",
        "timestamp(7)",
        "time(-1)",
        "float(54)",
        "integer(4)",
        "varchar(3,2)",
    ],
)
def test_parse_refuses_impossible_modifiers(text: str) -> None:
    with pytest.raises(ValueError):
        PgType.parse(text)


def test_of_fills_in_the_name() -> None:
    assert PgType.of(Kind.VARCHAR, length=5).name == "character varying(5)"
    assert PgType.of(Kind.NUMERIC, precision=6).name == "numeric(6,0)"
    with pytest.raises(ValueError, match="known kind"):
        PgType.of(Kind.OTHER)


# --------------------------------------------------------------------------- from_sqlite_decl

SQLITE_DECLS: list[tuple[str, str, str]] = [
    # Chinook
    ("INTEGER", "bigint", "bigint"),
    ("NVARCHAR(160)", "character varying(160)", "varchar(160)"),
    ("NVARCHAR(40)", "character varying(40)", "varchar(40)"),
    ("NUMERIC(10,2)", "numeric(10,2)", "numeric(10,2)"),
    ("DATETIME", "timestamp with time zone", "timestamptz"),
    # the reference application
    ("TEXT", "text", "text"),
    ("REAL", "double precision", "double precision"),
    ("VARCHAR(32)", "character varying(32)", "varchar(32)"),
    # the documented names
    ("INT", "bigint", "bigint"),
    ("int", "bigint", "bigint"),
    ("BIGINT", "bigint", "bigint"),
    ("SMALLINT", "bigint", "bigint"),
    ("TINYINT(1)", "bigint", "bigint"),
    ("UNSIGNED BIG INT", "bigint", "bigint"),
    ("INT8", "bigint", "bigint"),
    ("DOUBLE", "double precision", "double precision"),
    ("DOUBLE PRECISION", "double precision", "double precision"),
    ("FLOAT", "double precision", "double precision"),
    ("CLOB", "text", "text"),
    ("BLOB", "bytea", "bytea"),
    ("", "text", "text"),
    ("  ", "text", "text"),
    ("NUMERIC", "numeric", "numeric"),
    ("DECIMAL(10,5)", "numeric(10,5)", "numeric(10,5)"),
    ("decimal( 12 , 3 )", "numeric(12,3)", "numeric(12,3)"),
    ("NUMERIC(7)", "numeric(7,0)", "numeric(7,0)"),
    ("DECIMAL(0)", "numeric", "numeric"),
    ("DECIMAL(5,9)", "numeric", "numeric"),
    ("BOOLEAN", "boolean", "boolean"),
    ("BOOL", "boolean", "boolean"),
    ("DATE", "timestamp with time zone", "timestamptz"),
    ("TIMESTAMP", "timestamp with time zone", "timestamptz"),
    (TSZ, "timestamp with time zone", "timestamptz"),
    ("TIME", "time without time zone", "time"),
    ("JSON", "jsonb", "jsonb"),
    ("JSONB", "jsonb", "jsonb"),
    ("VARCHAR(255)", "character varying(255)", "varchar(255)"),
    ("CHARACTER VARYING(20)", "character varying(20)", "varchar(20)"),
    ("VARYING CHARACTER(255)", "character varying(255)", "varchar(255)"),
    ("NCHAR(55)", "character varying(55)", "varchar(55)"),
    ("NATIVE CHARACTER(70)", "character varying(70)", "varchar(70)"),
    ("CHAR(3)", "character varying(3)", "varchar(3)"),
    ("CHARACTER(20)", "character varying(20)", "varchar(20)"),
    ("VARCHAR", "text", "text"),
    ("VARCHAR(MAX)", "text", "text"),
    ("VARCHAR(0)", "text", "text"),
    ("UUID", "uuid", "uuid"),
    # SQLite's affinity rules for everything else
    ("MEDIUMINT UNSIGNED", "bigint", "bigint"),
    ("POINT", "bigint", "bigint"),  # contains INT, so INTEGER affinity, as in SQLite
    ("FLOATING POINT", "bigint", "bigint"),  # likewise
    ("STRING", "numeric", "numeric"),  # no INT/CHAR/CLOB/TEXT/BLOB/REAL/FLOA/DOUB: NUMERIC
    ("LONGTEXT", "text", "text"),
    ("MEDIUMBLOB", "bytea", "bytea"),
    ("REALLY", "double precision", "double precision"),
    ("DOUBLE(10,2)", "double precision", "double precision"),
    ("MONEY", "numeric", "numeric"),
    ("DATETIME2", "numeric", "numeric"),
    ("GUID", "numeric", "numeric"),
]


@pytest.mark.parametrize(("decl", "name", "ddl"), SQLITE_DECLS)
def test_from_sqlite_decl(decl: str, name: str, ddl: str) -> None:
    t = PgType.from_sqlite_decl(decl)
    assert t.name == name
    assert t.ddl() == ddl
    assert PgType.parse(t.ddl()) == t


# --------------------------------------------------------------------------- encode_raw

ENCODED: list[tuple[object, dict[str, str]]] = [
    (None, {"type": "null", "value": ""}),
    (0, {"type": "integer", "value": "0"}),
    (I64_MIN, {"type": "integer", "value": "-9223372036854775808"}),
    (True, {"type": "integer", "value": "1"}),
    (1.5, {"type": "real", "value": "1.5"}),
    (-INF, {"type": "real", "value": "-inf"}),
    ("caf\u00e9 \U0001f600", {"type": "text", "value": "caf\u00e9 \U0001f600"}),
    ("", {"type": "text", "value": ""}),
    ("ok \udcff\udcc3", {"type": "invalid-utf8-text", "value": "6f6b20ffc3"}),
    ("\ud800", {"type": "invalid-utf8-text", "value": "eda080"}),
    ("a\x00b", {"type": "text-with-nul", "value": "610062"}),
    (b"\x00\xff", {"type": "blob", "value": "00ff"}),
    (b"", {"type": "blob", "value": ""}),
]


@pytest.mark.parametrize(("value", "expected"), ENCODED)
def test_encode_raw(value: object, expected: dict[str, str]) -> None:
    got = encode_raw(value)
    assert got == expected
    text = json.dumps(got, ensure_ascii=False)
    text.encode("utf-8")
    assert all("\x00" not in s for s in json.loads(text).values()), "jsonb refuses NUL"


def test_encode_raw_invalid_utf8_keeps_the_original_bytes() -> None:
    original = b"caf\xe9 \xff\xfe ok \xc3\xa9"
    text = original.decode("utf-8", "surrogateescape")
    assert bytes.fromhex(encode_raw(text)["value"]) == original


def test_encode_raw_refuses_what_sqlite_never_returns() -> None:
    with pytest.raises(TypeError):
        encode_raw(Decimal(1))


# --------------------------------------------------------------------------- misc


def test_kind_values_are_format_type_names() -> None:
    for kind in Kind:
        if kind is not Kind.OTHER:
            assert PgType.parse(kind.value).kind is kind


def test_timestamptz_output_is_utc_whatever_the_offset() -> None:
    got = convert(TSZ, "2025-06-01T12:00:00+05:45")
    assert isinstance(got, datetime)
    assert got.tzinfo is UTC
    assert got == datetime(2025, 6, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=45)))
