"""Converters into timestamp, timestamp with time zone, date and time: ISO-8601
text, or unix-epoch numbers when the column's :class:`ColumnRule` asks for them."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from replicator.coerce.common import _WS, Converter, _show, _unsupported
from replicator.coerce.types import ColumnRule, Kind, PgType
from replicator.errors import CoercionError

_DIGITS = "0123456789"
_EPOCH_UNITS = {"s": 6, "ms": 3, "us": 0}  # power of ten to microseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)

_dt_fromiso = datetime.fromisoformat
_date_fromiso = date.fromisoformat
_time_fromiso = time.fromisoformat


def _not_timestamp(v: object, what: str) -> CoercionError:
    return CoercionError(f"{_show(v)} is not an ISO-8601 {what}")


def _fraction_problem(frac: str) -> str | None:
    """Why a run of fractional-second digits cannot be kept exactly, if it cannot."""
    k = len(frac) - len(frac.lstrip(_DIGITS))
    if k > 9:
        return "has more than 9 fractional digits"
    if k > 6 and frac[6:k].strip("0"):
        return "is more precise than the microseconds PostgreSQL keeps"
    return None


_DATE_TIME_SEPS = frozenset("Tt ")


def _shape_ok(s: str) -> bool:
    """The layout checks that fromisoformat does not make (it accepts far more)."""
    n = len(s)
    if n < 10 or s[4] != "-" or s[7] != "-":
        return False  # basic (20250101) or week (2025-W01-1) dates
    if n == 10:
        return True
    # a date, then T/t/space, then HH:MM; no fractional minutes ('08:00.5')
    return n >= 16 and s[10] in _DATE_TIME_SEPS and s[13] == ":" and (n == 16 or s[16] not in ".,")


def _parse_timestamp(v: str, what: str = "timestamp") -> datetime:
    """Naive or aware datetime from ISO-8601 text; CoercionError if it is not one."""
    try:
        dt = _dt_fromiso(v)
    except ValueError:
        return _parse_timestamp_slow(v, what)
    n = len(v)
    # _shape_ok() inlined for the usual case: this runs once per value.
    if n >= 16 and v[4] == "-" and v[7] == "-" and v[13] == ":" and v[10] in _DATE_TIME_SEPS:
        if n == 16 or v[16] not in ".,":
            if n > 26 and v[19] in ".,":
                problem = _fraction_problem(v[20:])
                if problem is not None:
                    raise CoercionError(f"{_show(v)} {problem}")
            return dt
    elif n == 10 and v[4] == "-" and v[7] == "-":
        return dt
    raise _not_timestamp(v, what)


def _parse_timestamp_slow(v: str, what: str) -> datetime:
    """Second try, for text fromisoformat refused: surrounding blanks, 'z', long fractions."""
    s = v.strip(_WS)
    if s[-1:] == "z":
        s = s[:-1] + "Z"
    if not _shape_ok(s):
        raise _not_timestamp(v, what)
    if len(s) > 26 and s[19] in ".,":
        # Some Python versions refuse more than 6 fractional digits: check them and
        # drop the zeros past microseconds ourselves.
        frac = s[20:]
        problem = _fraction_problem(frac)
        if problem is not None:
            raise CoercionError(f"{_show(v)} {problem}")
        k = len(frac) - len(frac.lstrip(_DIGITS))
        s = s[:26] + s[20 + k :]
    try:
        return _dt_fromiso(s)
    except ValueError:
        raise _not_timestamp(v, what) from None


def _utc(dt: datetime, v: object, name: str) -> datetime:
    """Aware UTC datetime for an aware or naive (taken as UTC) one.

    Arithmetic against the epoch rather than ``astimezone``/``replace``: on
    CPython 3.11 it is several times faster, and it is exact.
    """
    tz = dt.tzinfo
    if tz is UTC:
        return dt
    if tz is None:
        return _EPOCH + (dt - _EPOCH_NAIVE)
    try:
        return _EPOCH + (dt - _EPOCH)
    except OverflowError:
        raise CoercionError(f"{_show(v)} is outside the range of {name} once in UTC") from None


def _naive_utc(dt: datetime, v: object, name: str) -> datetime:
    """Naive UTC wall time for an aware datetime (see :func:`_utc`)."""
    try:
        return _EPOCH_NAIVE + (dt - _EPOCH)
    except OverflowError:
        raise CoercionError(f"{_show(v)} is outside the range of {name} once in UTC") from None


def _from_epoch(v: object, unit: str | None, name: str) -> datetime:
    """Aware UTC datetime for a unix-epoch number, exactly, or CoercionError."""
    if unit is None or isinstance(v, bool) or not isinstance(v, int | float):
        if isinstance(v, int | float) and not isinstance(v, bool):
            raise CoercionError(
                f"{_show(v)} is a number, but {name} takes ISO-8601 text "
                "(set epoch for this column to read numbers as unix time)"
            )
        if isinstance(v, bytes | bytearray | memoryview):
            raise CoercionError(f"{_show(v)} cannot be converted to {name}")
        raise _unsupported(v, name)
    power = _EPOCH_UNITS[unit]
    if isinstance(v, int):
        micros = int(v) * 10**power
    else:
        if not math.isfinite(v):
            raise CoercionError(f"{_show(v)} is not a point in time for {name}")
        d = Decimal(repr(v)).scaleb(power)
        if d != d.to_integral_value():
            raise CoercionError(
                f"{_show(v)} {unit} since the epoch is more precise than the "
                f"microseconds {name} keeps"
            )
        micros = int(d)
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise CoercionError(
            f"{_show(v)} {unit} since the epoch is outside the range of {name}"
        ) from None


def _precision_check(dt: datetime | time, v: object, name: str, modulus: int) -> None:
    if dt.microsecond % modulus:
        raise CoercionError(f"{_show(v)} has more fractional digits than {name} keeps")


def _timestamp_converter(t: PgType, rule: ColumnRule) -> Converter:
    name = t.name
    unit = rule.epoch
    aware = t.kind is Kind.TIMESTAMPTZ
    modulus = 10 ** (6 - t.precision) if t.precision is not None and t.precision < 6 else 1

    def slow(v: object) -> datetime:
        if isinstance(v, str):
            dt = _utc(_parse_timestamp(str(v)), v, name)
        else:
            dt = _from_epoch(v, unit, name)
        if modulus != 1:
            _precision_check(dt, v, name, modulus)
        return dt if aware else _naive_utc(dt, v, name)

    if modulus != 1:

        def convert_precise(v: object) -> object:
            if v is None:
                return None
            return slow(v)

        return convert_precise

    if aware:

        def convert_tz(v: object) -> object:
            if type(v) is str:
                dt = _parse_timestamp(v)
                if dt.tzinfo is UTC:
                    return dt
                return _utc(dt, v, name)
            if v is None:
                return None
            return slow(v)

        return convert_tz

    def convert(v: object) -> object:
        if type(v) is str:
            dt = _parse_timestamp(v)
            if dt.tzinfo is None:
                return dt
            return _naive_utc(dt, v, name)
        if v is None:
            return None
        return slow(v)

    return convert


def _date_converter(t: PgType, rule: ColumnRule) -> Converter:
    name = t.name
    unit = rule.epoch

    def slow(v: object) -> date:
        if isinstance(v, str):
            s = str(v).strip(_WS)
            if len(s) == 10 and s[4] == "-" and s[7] == "-":
                try:
                    return _date_fromiso(s)
                except ValueError:
                    raise CoercionError(f"{_show(v)} is not an ISO-8601 date") from None
            dt = _utc(_parse_timestamp(s, "date"), v, name)
        else:
            dt = _from_epoch(v, unit, name)
        if dt.hour or dt.minute or dt.second or dt.microsecond:
            raise CoercionError(
                f"{_show(v)} is not a date: it is {dt.time().isoformat()} UTC, not midnight"
            )
        return dt.date()

    def convert(v: object) -> object:
        if type(v) is str and len(v) == 10 and v[4] == "-" and v[7] == "-":
            try:
                return _date_fromiso(v)
            except ValueError:
                pass
        if v is None:
            return None
        return slow(v)

    return convert


def _time_shape_ok(s: str) -> bool:
    """HH:MM, HH:MM:SS or HH:MM:SS.f (1 to 9 digits, '.' or ','); nothing else."""
    n = len(s)
    if n < 5 or s[2] != ":":
        return False
    if n == 5:
        return True
    if n < 8 or s[5] != ":":
        return False
    if n == 8:
        return True
    frac = s[9:]
    return s[8] in ".," and 0 < len(frac) <= 9 and frac.isascii() and frac.isdigit()


def _time_converter(t: PgType) -> Converter:
    name = t.name
    modulus = 10 ** (6 - t.precision) if t.precision is not None and t.precision < 6 else 1

    def parse(v: object) -> time:
        if not isinstance(v, str):
            if isinstance(v, bytes | bytearray | memoryview | bool | int | float):
                raise CoercionError(f"{_show(v)} is not a time of day, which {name} requires")
            raise _unsupported(v, name)
        s = str(v).strip(_WS)
        if _time_shape_ok(s):
            try:
                tm = _time_fromiso(s)
            except ValueError:
                pass
            else:
                if len(s) > 15 and s[15:].strip("0"):
                    raise CoercionError(
                        f"{_show(v)} is more precise than the microseconds PostgreSQL keeps"
                    )
                if modulus != 1:
                    _precision_check(tm, v, name, modulus)
                return tm
        raise CoercionError(f"{_show(v)} is not an ISO-8601 time of day (HH:MM[:SS[.ffffff]])")

    def convert(v: object) -> object:
        if v is None:
            return None
        return parse(v)

    return convert
