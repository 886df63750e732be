"""Value coercion by target PostgreSQL column type.

SQLite stores whatever a row was given; PostgreSQL is strict. Every value on
its way to the target goes through a *converter* built once per column by
:func:`converter_for` from the column's :class:`PgType`. The converter returns
a Python value that psycopg 3 dumps correctly in a text-format ``COPY`` into
that column, or raises :class:`~replicator.errors.CoercionError` with a short
sentence naming the problem and the type. The caller turns that into a
dead-letter record; nothing is ever truncated, rounded or guessed at silently.

Converters sit in the hot path of a bulk copy of millions of rows, so each one
starts with the common case (an exact ``type(v) is ...`` check and a return,
or one C-level call such as ``datetime.fromisoformat``) and leaves the rare
cases to helper functions. No regular expression runs on a hot path.

Inputs are what :mod:`sqlite3` returns: ``None``, ``int`` (int64), ``float``
(SQLite has no NaN), ``str`` (possibly holding lone surrogates U+DC80..U+DCFF:
the reader decodes invalid UTF-8 with ``errors="surrogateescape"``) and
``bytes``. Anything else is refused with a :class:`CoercionError`.

Rules, by target type (``None`` is always ``None``):

smallint / integer / bigint -> ``int``
    ints in range; bools; floats only when integral; numeric text (ASCII,
    stripped, optional sign; ``'42.0'`` and ``'1e3'`` only when integral).
    Out of range is refused with the range named.
numeric(p,s) / numeric -> ``Decimal``
    ints; floats through their shortest ``repr`` (19.99 stays 19.99); numeric
    text. A constrained numeric refuses more decimal places than ``s`` (after
    dropping trailing zeros), more integer digits than ``p - s``, and NaN or
    infinity. Plain numeric takes NaN and +-Infinity (PostgreSQL 14+) and
    refuses only what PostgreSQL cannot store (more than 131072 integer
    digits or 16383 decimal places).
real / double precision -> ``float``
    floats (inf allowed); ints only when exactly representable (2**53 for
    double, 2**24-ish for real); numeric text, including ``nan``/``inf``;
    text that overflows or underflows to zero is refused. ``real`` refuses
    values PostgreSQL would overflow to infinity or underflow to zero; other
    floats are rounded to float4 by PostgreSQL, which is what the column is.
boolean -> ``bool``
    0/1, 0.0/1.0, bools, text true/false/t/f/yes/no/y/n/on/off/1/0 (any case,
    stripped). Nothing else.
text / character varying(n) / character(n) -> ``str``
    str that is valid UTF-8 (no lone surrogates) and has no NUL; ints as
    ``str``; floats as ``repr``; blobs when they are valid UTF-8 without
    NUL. With a length, more characters (code points, as PostgreSQL counts
    them in a UTF8 database) than ``n`` is refused, even trailing spaces.
timestamp [without time zone] -> naive ``datetime`` (UTC wall time)
timestamp with time zone -> aware ``datetime`` in UTC
    ISO-8601 text: ``YYYY-MM-DD`` (midnight), or that followed by ``T``,
    ``t`` or a space and ``HH:MM[:SS[.f]]`` with up to 9 fractional digits
    (``,`` also accepted), then optionally ``Z`` or an offset ``+HH:MM``,
    ``+HHMM`` or ``+HH``. Offsets are converted to UTC; text without one is
    taken as UTC. Fractional digits beyond microseconds must be zeros: they
    are refused otherwise, never rounded. With ``timestamp(p)``, digits
    beyond ``p`` must be zeros too. Numbers are refused unless the column's
    :class:`ColumnRule` gives an ``epoch`` unit (then they are unix time,
    exact to the microsecond or refused). ``infinity``, ``now`` and the like
    are refused.
date -> ``date``
    ``YYYY-MM-DD``, or a timestamp (same rules) that is exactly midnight once
    in UTC; epoch numbers likewise with ``epoch``.
time [without time zone] -> ``time``
    ``HH:MM[:SS[.f]]``; offsets and ``24:00`` are refused.
json / jsonb -> ``str`` (the original text, not re-serialised)
    text that :func:`json.loads` accepts, without NaN/Infinity and valid
    UTF-8; for jsonb also without ``\\u0000`` or unpaired surrogate escapes
    (a walk over the decoded strings, only when the text holds ``\\u0000``,
    ``\\ud`` or ``\\uD``). Ints and finite floats become JSON numbers; blobs
    are decoded as UTF-8 first.
bytea -> ``bytes``
    blobs; text as its UTF-8 bytes with ``surrogateescape``, so text read
    from invalid UTF-8 gets its exact original bytes back. Numbers refused.
uuid -> ``str`` (canonical, lower case)
    text of 32 hex digits with optional braces and hyphens (not leading,
    trailing or doubled); 16-byte blobs.
anything else (arrays, enums, domains, intervals, ...) -> ``str``
    text passes through (PostgreSQL parses it: errors are caught at write
    time), ints and floats as text; blobs refused.

Backstops, where a value this module accepts can still be refused by
PostgreSQL and is then dead-lettered by the sink: the "anything else" types;
jsonb numbers beyond numeric's range (exponents past about +-16000, which
Python's parser reads as 0.0 or inf); constraints (CHECK, domains, keys).

See ``docs/type-mapping.md`` for the same rules as a table and for the
mapping used when the replicator creates a target table itself
(:meth:`PgType.from_sqlite_decl`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from typing import Literal

from replicator.errors import CoercionError, ConfigError

__all__ = [
    "ColumnRule",
    "Converter",
    "Kind",
    "PgType",
    "converter_for",
    "encode_raw",
]

Converter = Callable[[object], object]


class Kind(StrEnum):
    """The families of target types a converter knows; values are format_type() names."""

    SMALLINT = "smallint"
    INTEGER = "integer"
    BIGINT = "bigint"
    NUMERIC = "numeric"
    REAL = "real"
    DOUBLE = "double precision"
    BOOLEAN = "boolean"
    TEXT = "text"
    VARCHAR = "character varying"
    CHAR = "character"
    TIMESTAMP = "timestamp without time zone"
    TIMESTAMPTZ = "timestamp with time zone"
    DATE = "date"
    TIME = "time without time zone"
    JSON = "json"
    JSONB = "jsonb"
    BYTEA = "bytea"
    UUID = "uuid"
    OTHER = "other"


JSON_KINDS = frozenset({Kind.JSON, Kind.JSONB})

# --------------------------------------------------------------------------- types

# PostgreSQL's own limits for type modifiers.
_MAX_NUMERIC_PRECISION = 1000
_MAX_NUMERIC_SCALE = 1000
_MAX_CHAR_LENGTH = 10_485_760
_MAX_TIME_PRECISION = 6

_PG_NAMES: dict[str, Kind] = {
    "smallint": Kind.SMALLINT,
    "int2": Kind.SMALLINT,
    "smallserial": Kind.SMALLINT,
    "serial2": Kind.SMALLINT,
    "integer": Kind.INTEGER,
    "int": Kind.INTEGER,
    "int4": Kind.INTEGER,
    "serial": Kind.INTEGER,
    "serial4": Kind.INTEGER,
    "bigint": Kind.BIGINT,
    "int8": Kind.BIGINT,
    "bigserial": Kind.BIGINT,
    "serial8": Kind.BIGINT,
    "numeric": Kind.NUMERIC,
    "decimal": Kind.NUMERIC,
    "real": Kind.REAL,
    "float4": Kind.REAL,
    "double precision": Kind.DOUBLE,
    "float8": Kind.DOUBLE,
    "float": Kind.DOUBLE,  # float(p) is resolved below
    "boolean": Kind.BOOLEAN,
    "bool": Kind.BOOLEAN,
    "text": Kind.TEXT,
    "character varying": Kind.VARCHAR,
    "char varying": Kind.VARCHAR,
    "varchar": Kind.VARCHAR,
    "character": Kind.CHAR,
    "char": Kind.CHAR,
    "bpchar": Kind.CHAR,
    "timestamp": Kind.TIMESTAMP,
    "timestamptz": Kind.TIMESTAMPTZ,
    "date": Kind.DATE,
    "time": Kind.TIME,
    "json": Kind.JSON,
    "jsonb": Kind.JSONB,
    "bytea": Kind.BYTEA,
    "uuid": Kind.UUID,
}

# "base(args) suffix": 'timestamp(3) without time zone', 'numeric(10,2)', 'varchar(5)'.
_PG_TYPE_RE = re.compile(
    r"(?P<base>[a-z][a-z0-9 ]*?)\s*"
    r"(?:\(\s*(?P<a>[+-]?\d+)\s*(?:,\s*(?P<b>[+-]?\d+)\s*)?\))?\s*"
    r"(?P<tz>with time zone|without time zone)?"
)
_SQLITE_DECL_RE = re.compile(
    r"(?P<base>[^(]*?)\s*(?:\(\s*(?P<a>[+-]?\d+)\s*(?:,\s*(?P<b>[+-]?\d+)\s*)?\))?"
)

_PLACEHOLDER_NAMES = frozenset({"user-defined", "array"})


def _canonical_name(
    kind: Kind, length: int | None, precision: int | None, scale: int | None
) -> str:
    """The text PostgreSQL's format_type() prints for this type."""
    if kind is Kind.NUMERIC and precision is not None:
        return f"numeric({precision},{scale or 0})"
    if kind in (Kind.VARCHAR, Kind.CHAR):
        if length is None:
            return "character varying" if kind is Kind.VARCHAR else "bpchar"
        return f"{kind.value}({length})"
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.TIME) and precision is not None:
        head, _, tail = kind.value.partition(" ")
        return f"{head}({precision}) {tail}"
    return kind.value


@dataclass(frozen=True, slots=True)
class PgType:
    """A target column type, as far as value conversion cares.

    ``precision`` is numeric's precision, or the fractional-second precision
    of ``timestamp(p)`` / ``time(p)``.
    """

    kind: Kind
    name: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None

    @classmethod
    def of(
        cls,
        kind: Kind,
        *,
        length: int | None = None,
        precision: int | None = None,
        scale: int | None = None,
    ) -> PgType:
        """A known type with its format_type() name filled in."""
        if kind is Kind.OTHER:
            raise ValueError("PgType.of() needs a known kind; use PgType.parse() for others")
        if kind is Kind.NUMERIC and precision is not None and scale is None:
            scale = 0
        return cls(kind, _canonical_name(kind, length, precision, scale), length, precision, scale)

    @classmethod
    def parse(cls, format_type: str) -> PgType:
        """Read the text PostgreSQL's ``format_type()`` prints (or the usual aliases).

        Arrays (``integer[]``, ``_int4``, ``ARRAY``), ``USER-DEFINED``, time with
        time zone and every type not listed in :class:`Kind` become OTHER, with
        the text kept as the name. Modifiers PostgreSQL would reject
        (``varchar(0)``, ``numeric(2000)``) raise :class:`ValueError`.
        """
        text = format_type.strip()
        low = " ".join(text.lower().split())
        if low.startswith("pg_catalog."):
            low = low[len("pg_catalog.") :]
        if low.endswith("]") or low.startswith("_") or low in _PLACEHOLDER_NAMES:
            return cls(Kind.OTHER, text)
        m = _PG_TYPE_RE.fullmatch(low)
        if m is None:
            return cls(Kind.OTHER, text)
        base, a, b, tz = m["base"], m["a"], m["b"], m["tz"]
        kind = _PG_NAMES.get(base)
        if kind is None:
            return cls(Kind.OTHER, text)
        first = int(a) if a is not None else None
        second = int(b) if b is not None else None
        if tz is not None:
            if kind is Kind.TIMESTAMP:
                kind = Kind.TIMESTAMPTZ if tz == "with time zone" else Kind.TIMESTAMP
            elif kind is not Kind.TIME or tz == "with time zone":
                return cls(Kind.OTHER, text)  # timetz, or nonsense such as 'text with time zone'
        if second is not None and kind is not Kind.NUMERIC:
            raise ValueError(f"type {text!r} has two modifiers; only numeric takes two")
        if kind is Kind.NUMERIC:
            if first is None:
                return cls.of(Kind.NUMERIC)
            scale = second if second is not None else 0
            if not 1 <= first <= _MAX_NUMERIC_PRECISION:
                raise ValueError(f"numeric precision {first} must be between 1 and 1000")
            if not -_MAX_NUMERIC_SCALE <= scale <= _MAX_NUMERIC_SCALE:
                raise ValueError(f"numeric scale {scale} must be between -1000 and 1000")
            return cls.of(Kind.NUMERIC, precision=first, scale=scale)
        if base == "float":
            if first is None:
                return cls.of(Kind.DOUBLE)
            if not 1 <= first <= 53:
                raise ValueError(f"float precision {first} must be between 1 and 53")
            return cls.of(Kind.REAL if first <= 24 else Kind.DOUBLE)
        if kind in (Kind.VARCHAR, Kind.CHAR):
            if first is None and base in ("character", "char"):
                first = 1  # SQL: CHARACTER without a length means CHARACTER(1)
            if first is not None and not 1 <= first <= _MAX_CHAR_LENGTH:
                raise ValueError(f"length {first} for {base} must be between 1 and 10485760")
            return cls.of(kind, length=first)
        if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.TIME):
            if first is not None and not 0 <= first <= _MAX_TIME_PRECISION:
                raise ValueError(f"precision {first} for {base} must be between 0 and 6")
            return cls.of(kind, precision=first)
        if first is not None:
            raise ValueError(f"type {text!r} takes no modifier")
        return cls.of(kind)

    @classmethod
    def from_sqlite_decl(cls, decl: str) -> PgType:
        """The target type used when the replicator creates the table itself.

        Known declarations first (see ``docs/type-mapping.md``), then SQLite's
        own column-affinity rules. Never raises: odd modifiers fall back to the
        unconstrained type.
        """
        norm = " ".join(decl.upper().split())
        m = _SQLITE_DECL_RE.fullmatch(norm)
        base, a, b = (m["base"], m["a"], m["b"]) if m else (norm, None, None)
        first = int(a) if a is not None else None
        second = int(b) if b is not None else None
        if base in ("BOOLEAN", "BOOL"):
            return cls.of(Kind.BOOLEAN)
        if base in ("DATE", "DATETIME", "TIMESTAMP", "TIMESTAMPTZ") or base.startswith(
            "TIMESTAMP WITH"
        ):
            return cls.of(Kind.TIMESTAMPTZ)
        if base == "TIME":
            return cls.of(Kind.TIME)
        if base in ("JSON", "JSONB"):
            return cls.of(Kind.JSONB)
        if base == "UUID":
            return cls.of(Kind.UUID)
        if base in ("NUMERIC", "DECIMAL"):
            if first is None:
                return cls.of(Kind.NUMERIC)
            scale = second if second is not None else 0
            if 1 <= first <= _MAX_NUMERIC_PRECISION and 0 <= scale <= first:
                return cls.of(Kind.NUMERIC, precision=first, scale=scale)
            return cls.of(Kind.NUMERIC)
        if "INT" in base:
            return cls.of(Kind.BIGINT)
        if "CHAR" in base or "CLOB" in base or "TEXT" in base:
            if (
                "CHAR" in base
                and first is not None
                and second is None
                and 1 <= first <= _MAX_CHAR_LENGTH
            ):
                return cls.of(Kind.VARCHAR, length=first)
            return cls.of(Kind.TEXT)
        if "BLOB" in base:
            return cls.of(Kind.BYTEA)
        if not base:
            return cls.of(Kind.TEXT)  # no declared type: holds anything; text keeps most
        if "REAL" in base or "FLOA" in base or "DOUB" in base:
            return cls.of(Kind.DOUBLE)
        return cls.of(Kind.NUMERIC)

    def ddl(self) -> str:
        """Type text for ``CREATE TABLE``: 'varchar(32)', 'numeric(10,2)', 'timestamptz'."""
        kind = self.kind
        if kind is Kind.OTHER:
            if self.name.strip().lower() in _PLACEHOLDER_NAMES:
                raise ValueError(f"{self.name!r} is a placeholder, not a type for CREATE TABLE")
            return self.name
        if kind is Kind.NUMERIC:
            return (
                "numeric" if self.precision is None else f"numeric({self.precision},{self.scale})"
            )
        if kind in (Kind.VARCHAR, Kind.CHAR):
            short = "varchar" if kind is Kind.VARCHAR else "char"
            if self.length is None:
                return "varchar" if kind is Kind.VARCHAR else "bpchar"
            return f"{short}({self.length})"
        if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.TIME):
            short = {Kind.TIMESTAMP: "timestamp", Kind.TIMESTAMPTZ: "timestamptz"}.get(kind, "time")
            return short if self.precision is None else f"{short}({self.precision})"
        return kind.value


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """Per-column options from the user's configuration."""

    epoch: Literal["s", "ms", "us"] | None = None
    """Numbers in a timestamp/date column are unix epoch in this unit; None: refused."""


# --------------------------------------------------------------------------- helpers

_WS = " \t\n\r\f\v"
_DIGITS = "0123456789"
_EPOCH_UNITS = {"s": 6, "ms": 3, "us": 0}  # power of ten to microseconds
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def _show(v: object) -> str:
    """A short, printable, valid-UTF-8 picture of a value for a reason text."""
    if isinstance(v, bytes | bytearray | memoryview):
        return f"a {len(v)}-byte blob"
    if isinstance(v, str):
        if len(v) > 40:
            return f"{v[:32]!r}... ({len(v)} characters)"
        return repr(v)
    if isinstance(v, bool | int | float | Decimal):
        return str(v) if isinstance(v, Decimal) else repr(v)
    return f"a {type(v).__name__} value"


def _unsupported(v: object, name: str) -> CoercionError:
    return CoercionError(f"{_show(v)} cannot be converted to {name}")


def _not_utf8(v: object, name: str) -> CoercionError:
    return CoercionError(f"{_show(v)} is not valid UTF-8, which {name} requires")


def _has_nul(v: object, name: str) -> CoercionError:
    return CoercionError(f"{_show(v)} contains a NUL character, which {name} cannot hold")


def _checked_unicode(v: str, name: str) -> str:
    """``v`` if PostgreSQL text can hold it: valid UTF-8 and no NUL (non-ASCII case)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _not_utf8(v, name) from None
    if "\x00" in v:
        raise _has_nul(v, name)
    return v


def _checked_text(v: str, name: str) -> str:
    if v.isascii():
        if "\x00" in v:
            raise _has_nul(v, name)
        return v
    return _checked_unicode(v, name)


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


# --------------------------------------------------------------------------- text


def _too_long(v: str, name: str) -> CoercionError:
    return CoercionError(f"{len(v)} characters do not fit {name}")


def _text_slow(v: object, name: str, limit: int | None, *, blobs: bool) -> str:
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, int):
        s = str(int(v))
    elif isinstance(v, float):
        s = repr(float(v))
    elif isinstance(v, str):
        s = str(v)
        s = _checked_text(s, name)
    elif isinstance(v, bytes | bytearray | memoryview) and blobs:
        try:
            s = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise CoercionError(
                f"{_show(v)} is not valid UTF-8 text, which {name} requires"
            ) from None
        if "\x00" in s:
            raise CoercionError(f"{_show(v)} contains a NUL byte, which {name} cannot hold")
    elif isinstance(v, bytes | bytearray | memoryview):
        raise CoercionError(f"{_show(v)} cannot be converted to {name}; only text passes through")
    else:
        raise _unsupported(v, name)
    if limit is not None and len(s) > limit:
        raise _too_long(s, name)
    return s


def _text_converter(t: PgType) -> Converter:
    name = t.name
    limit = t.length if t.kind in (Kind.VARCHAR, Kind.CHAR) else None
    blobs = t.kind is not Kind.OTHER
    if limit is None:

        def convert(v: object) -> object:
            if type(v) is str:
                if v.isascii():
                    if "\x00" in v:
                        raise _has_nul(v, name)
                    return v
                return _checked_unicode(v, name)
            if v is None:
                return None
            return _text_slow(v, name, None, blobs=blobs)

        return convert

    n = limit

    def convert_limited(v: object) -> object:
        if type(v) is str:
            if len(v) > n:
                raise _too_long(v, name)
            if v.isascii():
                if "\x00" in v:
                    raise _has_nul(v, name)
                return v
            return _checked_unicode(v, name)
        if v is None:
            return None
        return _text_slow(v, name, n, blobs=blobs)

    return convert_limited


# --------------------------------------------------------------------------- temporal

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


# --------------------------------------------------------------------------- json

_JSON_CONSTANT_MESSAGE = "NaN and Infinity are not JSON values"


def _refuse_constant(token: str) -> object:
    raise ValueError(_JSON_CONSTANT_MESSAGE)


_json_decode = json.JSONDecoder(parse_constant=_refuse_constant).decode


def _jsonb_escape_problem(obj: object) -> str | None:
    """Why jsonb would refuse the decoded strings (NUL, unpaired surrogates), if it would."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
        elif isinstance(o, str):
            if "\x00" in o:
                return "holds \\u0000, which jsonb refuses"
            if not o.isascii():
                try:
                    o.encode("utf-8")
                except UnicodeEncodeError:
                    return "holds an unpaired surrogate escape, which jsonb refuses"
    return None


def _json_converters(t: PgType) -> tuple[Converter, Converter]:
    """Into json or jsonb: the converter, and its twin for text known to be valid JSON."""
    name = t.name
    strict = t.kind is Kind.JSONB

    def check(v: str, shown: object) -> str:
        try:
            obj = _json_decode(v)
        except ValueError as exc:
            raise CoercionError(f"{_show(shown)} is not valid JSON ({exc}) for {name}") from None
        except RecursionError:
            raise CoercionError(f"{_show(shown)} is JSON nested too deeply for {name}") from None
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _not_utf8(shown, name) from None
        if strict and "\\u" in v and ("\\u0000" in v or "\\ud" in v or "\\uD" in v):
            problem = _jsonb_escape_problem(obj)
            if problem is not None:
                raise CoercionError(f"{_show(shown)} {problem}")
        return v

    def slow(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(int(v))
        if isinstance(v, float):
            if math.isfinite(v):
                return repr(float(v))
            raise CoercionError(f"{_show(v)} cannot be written as JSON for {name}")
        if isinstance(v, str):
            return check(str(v), v)
        if isinstance(v, bytes | bytearray | memoryview):
            try:
                text = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise CoercionError(f"{_show(v)} is not valid UTF-8 JSON for {name}") from None
            return check(text, v)
        raise _unsupported(v, name)

    def convert(v: object) -> object:
        if type(v) is str:
            return check(v, v)
        if v is None:
            return None
        return slow(v)

    def convert_valid(v: object) -> object:
        # Text SQLite's json_valid() accepted: not parsed again here. What
        # PostgreSQL refuses all the same (its rules are its own) fails that row
        # of the COPY, which is then dead-lettered with PostgreSQL's reason.
        if type(v) is not str:
            return convert(v)
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise _not_utf8(v, name) from None
        if "\x00" in v:  # SQLite's checks end at a NUL: what follows was not checked
            return check(v, v)
        if strict and "\\u" in v and ("\\u0000" in v or "\\ud" in v or "\\uD" in v):
            return check(v, v)
        return v

    return convert, convert_valid


def _json_converter(t: PgType) -> Converter:
    return _json_converters(t)[0]


def json_valid_converter(t: PgType) -> Converter | None:
    """For a json or jsonb column: the conversion of a value the source has already
    found to be valid JSON text (SQLite's ``json_valid()``, in C, a fraction of the
    cost of parsing it again in Python); None for a column of another type."""
    if t.kind not in JSON_KINDS:
        return None
    return _json_converters(t)[1]


# --------------------------------------------------------------------------- bytea, uuid


def _bytea_converter(t: PgType) -> Converter:
    name = t.name

    def slow(v: object) -> bytes:
        if isinstance(v, str):
            try:
                return str(v).encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise CoercionError(
                    f"{_show(v)} holds a surrogate that stands for no byte, so it is not {name}"
                ) from None
        if isinstance(v, bytes | bytearray | memoryview):
            return bytes(v)
        if isinstance(v, int | float):
            raise CoercionError(f"{_show(v)} is a number, not binary data for {name}")
        raise _unsupported(v, name)

    def convert(v: object) -> object:
        if type(v) is bytes:
            return v
        if v is None:
            return None
        return slow(v)

    return convert


_HEX = frozenset("0123456789abcdefABCDEF")
_fromhex = bytes.fromhex


def _uuid_text(v: str, name: str) -> str:
    s = v.strip(_WS)
    if s[:1] == "{" and s[-1:] == "}":
        s = s[1:-1]
    h = s.replace("-", "")
    if len(h) == 32 and _HEX.issuperset(h) and s[:1] != "-" and s[-1:] != "-" and "--" not in s:
        h = h.lower()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    raise CoercionError(f"{_show(v)} is not a UUID, which {name} requires")


def _uuid_converter(t: PgType) -> Converter:
    name = t.name

    def slow(v: object) -> str:
        if isinstance(v, str):
            return _uuid_text(str(v), name)
        if isinstance(v, bytes | bytearray | memoryview):
            b = bytes(v)
            if len(b) == 16:
                h = b.hex()
                return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            raise CoercionError(f"{_show(v)} is not a UUID (16 bytes), which {name} requires")
        if isinstance(v, int | float):
            raise CoercionError(f"{_show(v)} is a number, not a UUID, which {name} requires")
        raise _unsupported(v, name)

    def convert(v: object) -> object:
        if type(v) is str:
            if len(v) == 36 and v[8] == v[13] == v[18] == v[23] == "-":
                try:
                    # 16 bytes from 32 characters: exactly 32 hex digits, no blanks.
                    if len(_fromhex(v.replace("-", ""))) == 16:
                        return v.lower()
                except ValueError:
                    pass
            return _uuid_text(v, name)
        if v is None:
            return None
        return slow(v)

    return convert


# --------------------------------------------------------------------------- dispatch

_TEMPORAL_WITH_EPOCH = (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DATE)


def converter_for(t: PgType, rule: ColumnRule = ColumnRule()) -> Converter:
    """The function that turns one SQLite value into one value for a column of type ``t``.

    Raises :class:`~replicator.errors.ConfigError` when ``rule`` does not apply to
    the type (an epoch unit on a column that is not a timestamp or date).
    """
    kind = t.kind
    if rule.epoch is not None:
        if rule.epoch not in _EPOCH_UNITS:
            raise ConfigError(f"epoch must be 's', 'ms' or 'us', not {rule.epoch!r}")
        if kind not in _TEMPORAL_WITH_EPOCH:
            raise ConfigError(f"epoch applies to timestamp and date columns only, not to {t.name}")
    if kind in _INT_RANGES:
        return _integer_converter(t)
    if kind is Kind.NUMERIC:
        return _numeric_converter(t)
    if kind is Kind.DOUBLE:
        return _double_converter(t)
    if kind is Kind.REAL:
        return _real_converter(t)
    if kind is Kind.BOOLEAN:
        return _boolean_converter(t)
    if kind in (Kind.TEXT, Kind.VARCHAR, Kind.CHAR, Kind.OTHER):
        return _text_converter(t)
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return _timestamp_converter(t, rule)
    if kind is Kind.DATE:
        return _date_converter(t, rule)
    if kind is Kind.TIME:
        return _time_converter(t)
    if kind in JSON_KINDS:
        return _json_converter(t)
    if kind is Kind.BYTEA:
        return _bytea_converter(t)
    if kind is Kind.UUID:
        return _uuid_converter(t)
    raise AssertionError(f"unhandled kind {kind!r}")  # pragma: no cover


# --------------------------------------------------------------------------- dead letters


def encode_raw(value: object) -> dict[str, str]:
    """A JSON-safe, jsonb-safe description of a raw SQLite value for the dead-letter table.

    ``{"type": ..., "value": ...}`` with the value always a string:

    - ``null``: ``""``; ``integer``: decimal digits; ``real``: ``repr`` (``inf``
      and ``-inf`` included);
    - ``text``: the text itself, when it is valid UTF-8 without NUL;
    - ``invalid-utf8-text``: hex of the original bytes (text holding lone
      surrogates, re-encoded with ``surrogateescape``);
    - ``text-with-nul``: hex of the UTF-8 bytes (jsonb cannot hold ``\\u0000``);
    - ``blob``: hex of the bytes.

    Values of any other Python type raise :class:`TypeError`: SQLite returns none.
    """
    if value is None:
        return {"type": "null", "value": ""}
    if isinstance(value, bool):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, int):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, float):
        return {"type": "real", "value": repr(float(value))}
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # surrogates that stand for no byte
                raw = value.encode("utf-8", "surrogatepass")
            return {"type": "invalid-utf8-text", "value": raw.hex()}
        if "\x00" in value:
            return {"type": "text-with-nul", "value": value.encode("utf-8").hex()}
        return {"type": "text", "value": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "blob", "value": bytes(value).hex()}
    raise TypeError(f"{type(value).__name__} is not a value SQLite returns")
