"""Converters into the numeric types: smallint, integer, bigint, numeric, real,
double precision, and boolean (which takes 0/1 as well as words)."""

from __future__ import annotations

import math
import struct
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from replicator.coerce.common import _WS, Converter, _show, _unsupported
from replicator.coerce.types import Kind, PgType
from replicator.errors import CoercionError


def _decimal_from_text(s: str) -> Decimal | None:
    """Decimal for stripped ASCII numeric text, specials included; None if not numeric."""
    if not s.isascii() or "_" in s:
        return None
    try:
        return Decimal(s)
    except (InvalidOperation, ValueError):
        return None


# --------------------------------------------------------------------------- integers

_INT_RANGES = {
    Kind.SMALLINT: (-(2**15), 2**15 - 1),
    Kind.INTEGER: (-(2**31), 2**31 - 1),
    Kind.BIGINT: (-(2**63), 2**63 - 1),
}


def _out_of_range(v: object, name: str, lo: int, hi: int) -> CoercionError:
    return CoercionError(f"{_show(v)} is out of range for {name} ({lo}..{hi})")


def _int_slow(v: object, name: str, lo: int, hi: int) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        if lo <= v <= hi:
            return int(v)
        raise _out_of_range(v, name, lo, hi)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CoercionError(f"{_show(v)} is not an integer, which {name} requires")
        if not v.is_integer():
            raise CoercionError(f"{_show(v)} is not a whole number, which {name} requires")
        if lo <= v <= hi:
            return int(v)
        raise _out_of_range(v, name, lo, hi)
    if isinstance(v, str):
        s = v.strip(_WS)
        if s.isascii():
            body = s[1:] if s[:1] in ("+", "-") else s
            if body.isdigit():
                if len(body) > 19 and len(body.lstrip("0")) > 19:
                    raise _out_of_range(v, name, lo, hi)
                i = int(s)
                if lo <= i <= hi:
                    return i
                raise _out_of_range(v, name, lo, hi)
            d = _decimal_from_text(s)
            if d is not None and d.is_finite():
                if not lo <= d <= hi:
                    raise _out_of_range(v, name, lo, hi)
                if d != d.to_integral_value():
                    raise CoercionError(f"{_show(v)} is not a whole number, which {name} requires")
                return int(d)
        raise CoercionError(f"{_show(v)} is not an integer, which {name} requires")
    raise _unsupported(v, name)


def _integer_converter(t: PgType) -> Converter:
    lo, hi = _INT_RANGES[t.kind]
    name = t.name

    def convert(v: object) -> object:
        if type(v) is int:
            if lo <= v <= hi:
                return v
            raise _out_of_range(v, name, lo, hi)
        if v is None:
            return None
        return _int_slow(v, name, lo, hi)

    return convert


# --------------------------------------------------------------------------- numeric

_PG_NUMERIC_MAX_INT_DIGITS = 131_072
_PG_NUMERIC_MAX_SCALE = 16_383
_NUMERIC_SPECIALS = frozenset({"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})


def _numeric_value(v: object, name: str, allow_special: bool) -> Decimal:
    """Decimal for anything but int/float/None (the converter's fast path)."""
    if isinstance(v, bool):
        return Decimal(int(v))
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return Decimal(repr(v))
        if allow_special:
            return Decimal(v)
        raise CoercionError(f"{_show(v)} cannot be stored in {name}, which holds finite values")
    if isinstance(v, str):
        s = v.strip(_WS)
        d = _decimal_from_text(s)
        if d is not None:
            if d.is_finite():
                return d
            if s.lower() in _NUMERIC_SPECIALS:
                if allow_special:
                    return d
                raise CoercionError(
                    f"{_show(v)} cannot be stored in {name}, which holds finite values"
                )
        raise CoercionError(f"{_show(v)} is not a number, which {name} requires")
    raise _unsupported(v, name)


def _check_pg_numeric_limits(d: Decimal, v: object, name: str) -> Decimal:
    """Plain numeric: refuse only what PostgreSQL cannot store at all."""
    if d.is_finite():
        _, digits, exp = d.as_tuple()
        assert isinstance(exp, int)
        if -exp > _PG_NUMERIC_MAX_SCALE or (
            any(digits) and len(digits) + exp > _PG_NUMERIC_MAX_INT_DIGITS
        ):
            raise CoercionError(f"{_show(v)} is beyond the range PostgreSQL's {name} can store")
    return d


def _fit_numeric(d: Decimal, v: object, name: str, precision: int, scale: int) -> Decimal:
    """``d`` if numeric(precision, scale) holds it exactly."""
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    if not any(digits):
        return d  # zero fits every numeric(p,s)
    if exp < -scale:
        n = len(digits)
        k = 0
        while digits[n - 1 - k] == 0:
            k += 1
        if exp + k < -scale:
            if scale > 0:
                places = -(exp + k)
                raise CoercionError(
                    f"{_show(v)} has {places} decimal places, more than the {scale} of {name}"
                )
            if scale == 0:
                raise CoercionError(f"{_show(v)} is not a whole number, which {name} requires")
            raise CoercionError(f"{_show(v)} is not a multiple of {10**-scale}, as {name} requires")
    int_digits = len(digits) + exp
    allowed = precision - scale
    if int_digits > allowed:
        if allowed > 0:
            raise CoercionError(
                f"{_show(v)} has {int_digits} digits before the decimal point, "
                f"more than the {allowed} of {name}"
            )
        raise CoercionError(f"{_show(v)} is too large for {name} (must be below 1e{allowed})")
    return d


def _numeric_converter(t: PgType) -> Converter:
    name = t.name
    precision, scale = t.precision, t.scale
    if precision is None:

        def convert(v: object) -> object:
            if type(v) is int:
                return Decimal(v)
            if type(v) is float:
                return Decimal(repr(v)) if math.isfinite(v) else Decimal(v)
            if v is None:
                return None
            return _check_pg_numeric_limits(_numeric_value(v, name, True), v, name)

        return convert

    p = precision
    s = scale or 0
    # Fast exits for the usual money-like case (s >= 0): plain float reprs and ints.
    int_bound = 10 ** (p - s) if s >= 0 and p >= s else 0

    def convert_constrained(v: object) -> object:
        if type(v) is float:
            r = repr(v)
            if int_bound and "e" not in r and "." in r:
                whole, _, frac = r.partition(".")
                if len(frac.rstrip("0")) <= s and len(whole.lstrip("-").lstrip("0")) <= p - s:
                    return Decimal(r)
            d = Decimal(r) if math.isfinite(v) else _numeric_value(v, name, False)
        elif type(v) is int:
            if -int_bound < v < int_bound:
                return Decimal(v)
            d = Decimal(v)
        elif v is None:
            return None
        else:
            d = _numeric_value(v, name, False)
        return _fit_numeric(d, v, name, p, s)

    return convert_constrained


# --------------------------------------------------------------------------- floats

_F32 = struct.Struct("<f")
_F32_MIN_NORMAL = 1.1754943508222875e-38
_F32_MAX = 3.4028234663852886e38
# PostgreSQL's float4in parses repr() text with strtof: magnitudes from the midpoint
# between FLT_MAX and 2**128 up overflow, and those at or below half the smallest
# subnormal (2**-150) become zero; both are errors there.
_F32_OVERFLOW = Fraction(2**128 - 2**103)
_F32_UNDERFLOW = Fraction(1, 2**150)


def _nonzero_mantissa(s: str) -> bool:
    return bool(s.lower().partition("e")[0].strip("+-.0"))


def _float_from_text(v: str, name: str) -> float:
    s = v.strip(_WS)
    if s.isascii() and "_" not in s:
        try:
            f = float(s)
        except ValueError:
            pass
        else:
            if math.isfinite(f):
                if f == 0.0 and _nonzero_mantissa(s):
                    raise CoercionError(f"{_show(v)} is too close to zero for {name}")
                return f
            if s.lower().lstrip("+-") in ("inf", "infinity", "nan"):
                return f
            raise CoercionError(f"{_show(v)} is out of range for {name}")
    raise CoercionError(f"{_show(v)} is not a number, which {name} requires")


def _real_edge(f: float, v: object, name: str) -> float:
    """``f`` unless PostgreSQL's real would overflow or underflow on it."""
    if math.isfinite(f) and f != 0.0:
        q = abs(Fraction(repr(f)))
        if q >= _F32_OVERFLOW:
            raise CoercionError(f"{_show(v)} is out of range for {name}")
        if q <= _F32_UNDERFLOW:
            raise CoercionError(f"{_show(v)} is too close to zero for {name}")
    return f


def _double_slow(v: object, name: str) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int):
        f = float(v)
        if int(f) != v:
            raise CoercionError(f"{_show(v)} cannot be represented exactly in {name}")
        return f
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return _float_from_text(v, name)
    raise _unsupported(v, name)


def _real_slow(v: object, name: str) -> float:
    if isinstance(v, int) and not isinstance(v, bool):
        f = float(v)
        if int(f) != v or _F32.unpack(_F32.pack(f))[0] != f:
            raise CoercionError(f"{_show(v)} cannot be represented exactly in {name}")
        return f
    return _real_edge(_double_slow(v, name), v, name)


def _double_converter(t: PgType) -> Converter:
    name = t.name

    def convert(v: object) -> object:
        if type(v) is float:
            return v
        if v is None:
            return None
        return _double_slow(v, name)

    return convert


def _real_converter(t: PgType) -> Converter:
    name = t.name

    def convert(v: object) -> object:
        if type(v) is float:
            a = abs(v)
            if _F32_MIN_NORMAL <= a <= _F32_MAX or a == 0.0:
                return v
            return _real_edge(v, v, name)
        if v is None:
            return None
        return _real_slow(v, name)

    return convert


# --------------------------------------------------------------------------- boolean

_BOOL_WORDS = {
    "true": True,
    "t": True,
    "yes": True,
    "y": True,
    "on": True,
    "1": True,
    "false": False,
    "f": False,
    "no": False,
    "n": False,
    "off": False,
    "0": False,
}


def _not_bool(v: object) -> CoercionError:
    return CoercionError(f"{_show(v)} is not a boolean (0/1, true/false, yes/no, on/off)")


def _bool_slow(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        if v == 1:
            return True
        if v == 0:
            return False
        raise _not_bool(v)
    if isinstance(v, str):
        b = _BOOL_WORDS.get(v.strip(_WS).lower())
        if b is not None:
            return b
    raise _not_bool(v)


def _boolean_converter(t: PgType) -> Converter:
    def convert(v: object) -> object:
        if type(v) is int:
            if v == 1:
                return True
            if v == 0:
                return False
            raise _not_bool(v)
        if v is None:
            return None
        return _bool_slow(v)

    return convert
