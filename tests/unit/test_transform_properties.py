"""Properties of the converters over arbitrary SQLite values (hypothesis)."""

from __future__ import annotations

import json
import math
import struct
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from replicator.coerce import ColumnRule, Kind, PgType, converter_for, encode_raw
from replicator.errors import CoercionError

I64_MIN, I64_MAX = -(2**63), 2**63 - 1

# --------------------------------------------------------------------------- strategies

# Characters as the SQLite reader can hand them over: anything, with the astral
# planes, NUL and lone surrogates (from invalid UTF-8) much likelier than chance.
chars = st.one_of(
    st.characters(),
    st.integers(0x10000, 0x10FFFF).map(chr),
    st.integers(0xDC80, 0xDCFF).map(chr),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.just("\x00"),
)
any_text = st.text(chars)
reader_text = st.binary().map(lambda b: b.decode("utf-8", "surrogateescape"))
sqlite_ints = st.integers(I64_MIN, I64_MAX)
sqlite_floats = st.floats(allow_nan=False)  # SQLite has no NaN; inf is allowed

offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
datetimes = st.datetimes(
    min_value=datetime(2, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.one_of(st.none(), st.just(UTC), offsets),
)


def iso(dt: datetime, sep: str = "T", digits: int = 6, zone: str = "colon") -> str:
    """ISO-8601 text in one of the accepted styles (the caller rounds ``dt`` to ``digits``)."""
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}{sep}{dt.hour:02d}:{dt.minute:02d}"
    text += f":{dt.second:02d}"
    if digits:
        text += "." + f"{dt.microsecond:06d}"[:digits].ljust(digits, "0")
    off = dt.utcoffset()
    if off is None:
        return text
    minutes = int(off.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    if zone == "Z" and minutes == 0:
        return text + "Z"
    if zone == "hours" and mm == 0:
        return text + f"{sign}{hh:02d}"
    if zone == "compact":
        return text + f"{sign}{hh:02d}{mm:02d}"
    return text + f"{sign}{hh:02d}:{mm:02d}"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)

# Text that looks like what each type expects, so the interesting paths get exercised.
targeted_text = st.one_of(
    sqlite_ints.map(str),
    sqlite_floats.map(repr),
    st.decimals(allow_nan=True).map(str),
    st.builds(iso, datetimes, st.sampled_from("T t"), st.integers(0, 9)),
    st.dates().map(date.isoformat),
    st.times().map(time.isoformat),
    st.sampled_from(["true", "False", " yes ", "off", "t", "maybe", "NaN", "Infinity", "-inf"]),
    st.uuids().map(str),
    st.builds(json.dumps, json_values, ensure_ascii=st.booleans()),
)

sqlite_values = st.one_of(
    st.none(),
    sqlite_ints,
    sqlite_floats,
    any_text,
    reader_text,
    targeted_text,
    st.binary(),
)

TYPE_TEXTS = [
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "numeric(10,2)",
    "numeric(5,-2)",
    "real",
    "double precision",
    "boolean",
    "text",
    "character varying(5)",
    "character(3)",
    "timestamp without time zone",
    "timestamp(3) without time zone",
    "timestamp with time zone",
    "date",
    "time without time zone",
    "time(0) without time zone",
    "json",
    "jsonb",
    "bytea",
    "uuid",
    "integer[]",
    "USER-DEFINED",
]
EPOCH_RULES = [ColumnRule(), ColumnRule(epoch="s"), ColumnRule(epoch="ms"), ColumnRule(epoch="us")]

OUTPUT_TYPES: dict[Kind, type] = {
    Kind.SMALLINT: int,
    Kind.INTEGER: int,
    Kind.BIGINT: int,
    Kind.NUMERIC: Decimal,
    Kind.REAL: float,
    Kind.DOUBLE: float,
    Kind.BOOLEAN: bool,
    Kind.TEXT: str,
    Kind.VARCHAR: str,
    Kind.CHAR: str,
    Kind.TIMESTAMP: datetime,
    Kind.TIMESTAMPTZ: datetime,
    Kind.DATE: date,
    Kind.TIME: time,
    Kind.JSON: str,
    Kind.JSONB: str,
    Kind.BYTEA: bytes,
    Kind.UUID: str,
    Kind.OTHER: str,
}


def check_output(t: PgType, out: object) -> None:
    assert type(out) is OUTPUT_TYPES[t.kind], (t.name, out)
    if isinstance(out, datetime):
        assert out.tzinfo is (UTC if t.kind is Kind.TIMESTAMPTZ else None)
    if isinstance(out, time):
        assert out.tzinfo is None
    if isinstance(out, str):
        out.encode("utf-8")  # valid UTF-8: psycopg can send it
        assert "\x00" not in out
        if t.length is not None:
            assert len(out) <= t.length
    bits = {Kind.SMALLINT: 15, Kind.INTEGER: 31, Kind.BIGINT: 63}.get(t.kind)
    if bits is not None:
        assert isinstance(out, int)
        assert -(2**bits) <= out < 2**bits


# --------------------------------------------------------------------------- properties


@given(st.sampled_from(TYPE_TEXTS), st.sampled_from(EPOCH_RULES), sqlite_values)
def test_a_documented_type_or_coercion_error_nothing_else(
    type_text: str, rule: ColumnRule, value: object
) -> None:
    t = PgType.parse(type_text)
    if t.kind not in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DATE):
        rule = ColumnRule()
    try:
        out = converter_for(t, rule)(value)
    except CoercionError as exc:
        assert exc.reason
        exc.reason.encode("utf-8")
        assert "\x00" not in exc.reason
        return
    if value is None:
        assert out is None
    else:
        check_output(t, out)


@given(
    datetimes,
    st.sampled_from(["T", " ", "t"]),
    st.integers(0, 9),
    st.sampled_from(["colon", "compact", "hours", "Z"]),
    st.booleans(),
)
def test_timestamps_round_trip(
    dt: datetime, sep: str, digits: int, zone: str, date_only: bool
) -> None:
    if digits < 6:
        step = 10 ** (6 - digits)
        dt = dt.replace(microsecond=dt.microsecond // step * step)
    if date_only:
        dt = dt.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
        text = dt.date().isoformat()
    else:
        text = iso(dt, sep, digits, zone)
    want = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    got = converter_for(PgType.parse("timestamptz"))(text)
    assert got == want
    assert isinstance(got, datetime)
    assert got.tzinfo is UTC
    naive = converter_for(PgType.parse("timestamp"))(text)
    assert naive == want.replace(tzinfo=None)


@given(datetimes, st.sampled_from(["s", "ms", "us"]))
def test_epoch_numbers_round_trip(dt: datetime, unit: str) -> None:
    dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    micros = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    power = {"s": 6, "ms": 3, "us": 0}[unit]
    rule = ColumnRule(epoch=unit)  # type: ignore[arg-type]
    convert = converter_for(PgType.parse("timestamptz"), rule)
    if micros % 10**power == 0:
        assert convert(micros // 10**power) == dt
    # A float means the microseconds its shortest repr names, or is refused.
    as_float = micros / 10**power
    exact = Decimal(repr(as_float)).scaleb(power)
    if exact == exact.to_integral_value():
        want = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(exact))
        assert convert(as_float) == want
    else:
        with pytest.raises(CoercionError, match="more precise than the microseconds"):
            convert(as_float)


@given(sqlite_ints, st.sampled_from(["", " ", "\t", "\n "]), st.booleans())
def test_integers_round_trip(i: int, ws: str, plus: bool) -> None:
    text = ws + ("+" if plus and i >= 0 else "") + str(i) + ws
    for type_text, bits in (("smallint", 15), ("integer", 31), ("bigint", 63)):
        convert = converter_for(PgType.parse(type_text))
        fits = -(2**bits) <= i < 2**bits
        for value in (i, text, f"{i}.000"):
            if fits:
                got = convert(value)
                assert got == i
                assert type(got) is int
            else:
                try:
                    convert(value)
                except CoercionError as exc:
                    assert f"out of range for {type_text}" in exc.reason
                else:
                    raise AssertionError(f"{value!r} accepted by {type_text}")
        if float(i) == i and fits:
            assert convert(float(i)) == i
    assert converter_for(PgType.parse("numeric"))(i) == Decimal(i)
    assert converter_for(PgType.parse("text"))(i) == str(i)
    assert json.loads(str(converter_for(PgType.parse("jsonb"))(i))) == i


@given(sqlite_floats)
def test_floats_round_trip_through_text(f: float) -> None:
    text = repr(f)
    double = converter_for(PgType.parse("double precision"))
    assert double(text) == f
    assert double(f) == f
    assert converter_for(PgType.parse("text"))(f) == text
    assert float(str(converter_for(PgType.parse("text"))(f))) == f
    assert converter_for(PgType.parse("numeric"))(text) == Decimal(text)
    assert converter_for(PgType.parse("numeric"))(f) == Decimal(text)
    if math.isfinite(f):
        assert json.loads(str(converter_for(PgType.parse("jsonb"))(f))) == f


@given(sqlite_floats)
def test_real_never_overflows_or_underflows_silently(f: float) -> None:
    """What real accepts, float4 holds (non-zero stays non-zero, finite stays finite)."""
    try:
        out = converter_for(PgType.parse("real"))(f)
    except CoercionError:
        assert f != 0.0 and math.isfinite(f)
        return
    assert isinstance(out, float)
    try:
        as_f32 = struct.unpack("<f", struct.pack("<f", out))[0]
    except OverflowError:
        raise AssertionError(f"{f!r} accepted but overflows float4") from None
    assert (as_f32 == 0.0) == (f == 0.0)
    assert math.isinf(as_f32) == math.isinf(f)


@given(
    st.integers(1, 40),
    st.integers(-5, 20),
    st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False),
        st.decimals(allow_nan=False, allow_infinity=False, places=3),
        sqlite_floats.map(lambda f: Decimal(repr(f)) if math.isfinite(f) else Decimal(1)),
    ),
)
def test_numeric_accepts_exactly_what_fits(precision: int, scale: int, d: Decimal) -> None:
    assume(scale <= precision)
    t = PgType.parse(f"numeric({precision},{scale})")
    big = Context(prec=100_000, Emax=10**9, Emin=-(10**9))
    quantum = Decimal(1).scaleb(-scale)
    try:
        in_scale = d.quantize(quantum, context=big) == d
    except InvalidOperation:  # more digits than even the big context holds
        in_scale = False
    fits = in_scale and abs(d) < Decimal(10) ** (precision - scale)
    try:
        got = converter_for(t)(str(d))
    except CoercionError:
        assert not fits, f"{d} refused by {t.name}"
    else:
        assert fits, f"{d} accepted by {t.name}"
        assert got == d


@given(any_text)
def test_text_is_kept_or_refused_never_altered(s: str) -> None:
    try:
        s.encode("utf-8")
        storable = "\x00" not in s
    except UnicodeEncodeError:
        storable = False
    for type_text in ("text", "character varying(10)", "USER-DEFINED"):
        t = PgType.parse(type_text)
        try:
            got = converter_for(t)(s)
        except CoercionError:
            assert not storable or (t.length is not None and len(s) > t.length)
        else:
            assert got is s


@given(st.binary())
def test_bytea_keeps_the_reader_bytes(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    convert = converter_for(PgType.parse("bytea"))
    assert convert(text) == raw
    assert convert(raw) == raw


@given(st.uuids(), st.sampled_from(["canonical", "upper", "braces", "hex", "blob"]))
def test_uuids_come_out_canonical(u: Any, style: str) -> None:
    value: object = {
        "canonical": str(u),
        "upper": str(u).upper(),
        "braces": "{" + str(u) + "}",
        "hex": u.hex,
        "blob": u.bytes,
    }[style]
    assert converter_for(PgType.parse("uuid"))(value) == str(u)


def _strings(obj: object) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        return [s for item in obj for s in _strings(item)]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in [k, *_strings(v)]]
    return []


@given(json_values, st.booleans())
def test_json_text_is_kept_or_refused_for_a_reason(value: object, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)

    def utf8(s: str) -> bool:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True

    # Judged on what PostgreSQL reads: the text, and the strings its escapes spell
    # (two lone surrogates in a row, escaped, are one valid pair once decoded).
    json_ok = utf8(text)
    decoded = _strings(json.loads(text))
    jsonb_ok = json_ok and all(utf8(s) and "\x00" not in s for s in decoded)
    for type_text, ok in (("json", json_ok), ("jsonb", jsonb_ok)):
        try:
            got = converter_for(PgType.parse(type_text))(text)
        except CoercionError:
            assert not ok, f"{text!r} refused by {type_text}"
        else:
            assert ok, f"{text!r} accepted by {type_text}"
            assert got is text


@given(sqlite_values)
def test_encode_raw_is_json_safe_and_lossless(value: object) -> None:
    enc = encode_raw(value)
    dumped = json.dumps(enc, ensure_ascii=False)
    dumped.encode("utf-8")
    assert all("\x00" not in s for s in json.loads(dumped).values()), "jsonb refuses NUL"
    kind, text = enc["type"], enc["value"]
    if value is None:
        assert kind == "null"
    elif isinstance(value, bytes):
        assert kind == "blob"
        assert bytes.fromhex(text) == value
    elif isinstance(value, int):
        assert kind == "integer"
        assert int(text) == value
    elif isinstance(value, float):
        assert kind == "real"
        assert float(text) == value
    else:
        assert isinstance(value, str)
        if kind == "text":
            assert text == value
        elif kind == "text-with-nul":
            assert bytes.fromhex(text).decode("utf-8") == value
        else:
            assert kind == "invalid-utf8-text"
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = value.encode("utf-8", "surrogatepass")
            assert bytes.fromhex(text) == raw


@given(st.binary())
def test_encode_raw_gives_back_the_bytes_the_reader_saw(raw: bytes) -> None:
    enc = encode_raw(raw.decode("utf-8", "surrogateescape"))
    if enc["type"] in ("invalid-utf8-text", "text-with-nul"):
        assert bytes.fromhex(enc["value"]) == raw
    else:
        assert enc == {"type": "text", "value": raw.decode("utf-8")}
