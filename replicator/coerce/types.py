"""The target column type model: what value conversion needs to know of a type.

:class:`PgType` is read from the text PostgreSQL's ``format_type()`` prints
(the names a target table reports), built from a SQLite declaration when the
replicator creates the table itself, and printed back as DDL. Every converter
is chosen by its :class:`Kind`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


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
