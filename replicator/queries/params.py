"""Query parameters: example values from the file, typed the way each side stores them.

A parameter is written once in the query file but the two databases store
its type differently (SQLite keeps timestamps as text, booleans as 0/1, JSON
as text); :func:`side_values` gives each side the value it would compare
against, so one example tests both forms of the query.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation

from psycopg.types.json import Jsonb

from replicator.coerce import Kind, PgType, converter_for
from replicator.errors import CoercionError, ConfigError

__all__ = [
    "PARAM_TYPES",
    "Param",
    "build_param",
    "did_you_mean",
    "side_values",
]

PARAM_TYPES = (
    "auto",
    "text",
    "integer",
    "real",
    "numeric",
    "boolean",
    "timestamp",
    "timestamptz",
    "date",
    "json",
)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Param:
    """One named parameter and its example values, already typed for each side."""

    name: str
    type: str
    sqlite_values: tuple[object, ...]
    postgres_values: tuple[object, ...]
    shown: tuple[object, ...]  # what the report prints, as written in the file

    def __len__(self) -> int:
        return len(self.shown)


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """A hint naming the closest known word, so a typo in a query file points at its fix."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TIMESTAMP = converter_for(PgType.of(Kind.TIMESTAMP))
_DATE = converter_for(PgType.of(Kind.DATE))


def sqlite_timestamp_text(value: datetime) -> str:
    """UTC wall time as SQLite's own ``datetime()`` prints it (fraction only when set).

    The same text ``datetime(col)`` returns for a stored value in either of
    the app's styles, so a SQLite form may compare ``datetime(col) >= :since``
    as text, or ``julianday(col) >= julianday(:since)``.
    """
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text


def _as_utc_naive(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _infer_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "real"
    if isinstance(value, Decimal):
        return "numeric"
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, date):
        return "date"
    if isinstance(value, dict | list):
        return "json"
    return "text"


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def side_values(value: object, ptype: str, where: str) -> tuple[object, object]:
    """``(for SQLite, for PostgreSQL)``: one example value, as each side stores the type.

    timestamp    SQLite: UTC text ``YYYY-MM-DD HH:MM:SS[.f]``; PostgreSQL: naive UTC
                 datetime. Text is parsed by replication's own timestamp rules
                 (offsets converted to UTC, no offset means UTC), TOML datetimes
                 likewise.
    timestamptz  as timestamp, but PostgreSQL gets an aware UTC datetime.
    date         SQLite: ``YYYY-MM-DD``; PostgreSQL: date.
    boolean      SQLite: 1/0; PostgreSQL: bool.
    json         SQLite: compact JSON text; PostgreSQL: jsonb. A string is read
                 as JSON text, anything else is the document.
    numeric      SQLite: int when integral, else float; PostgreSQL: Decimal.
    """
    if value is None:
        return None, None
    if isinstance(value, time):
        raise ConfigError(f"{where}: a time of day is not supported as a parameter; use text")
    if ptype == "auto":
        ptype = _infer_type(value)
    try:
        if ptype == "text":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected text, got {value!r}")
            return value, value
        if ptype == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ConfigError(
                    f"{where}: {value} is out of range for a 64-bit integer (SQLite's "
                    "INTEGER and PostgreSQL's bigint); give it as numeric"
                )
            return value, value
        if ptype == "real":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            return float(value), float(value)
        if ptype == "numeric":
            if isinstance(value, bool):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            dec = Decimal(str(value))
            if not dec.is_finite():
                raise ConfigError(f"{where}: {value!r} is not a finite number")
            # SQLite binds 64-bit integers only; a larger one it stores as REAL.
            integral = dec == dec.to_integral_value() and _INT64_MIN <= dec <= _INT64_MAX
            lite: object = int(dec) if integral else float(dec)
            return lite, dec
        if ptype == "boolean":
            if isinstance(value, bool):
                return int(value), value
            if isinstance(value, int) and value in (0, 1):
                return value, bool(value)
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        if ptype in ("timestamp", "timestamptz"):
            if isinstance(value, datetime):
                naive = _as_utc_naive(value)
            elif isinstance(value, date):
                naive = datetime(value.year, value.month, value.day)
            elif isinstance(value, str):
                converted = _TIMESTAMP(value)
                assert isinstance(converted, datetime)
                naive = converted
            else:
                raise ConfigError(f"{where}: expected a timestamp, got {value!r}")
            pg: object = naive.replace(tzinfo=UTC) if ptype == "timestamptz" else naive
            return sqlite_timestamp_text(naive), pg
        if ptype == "date":
            if isinstance(value, datetime):
                raise ConfigError(f"{where}: expected a date, got a timestamp {value!r}")
            if isinstance(value, date):
                day = value
            elif isinstance(value, str):
                converted = _DATE(value)
                assert isinstance(converted, date)
                day = converted
            else:
                raise ConfigError(f"{where}: expected a date, got {value!r}")
            return day.isoformat(), day
        if ptype == "json":
            doc = json.loads(value) if isinstance(value, str) else _plain_json(value)
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return text, Jsonb(doc)
    except CoercionError as exc:
        raise ConfigError(f"{where}: {exc.reason}") from None
    except (ValueError, InvalidOperation) as exc:
        raise ConfigError(f"{where}: {value!r} is not valid {ptype}: {exc}") from None
    raise ConfigError(f"{where}: unknown parameter type {ptype!r}")  # pragma: no cover


def _plain_json(value: object) -> object:
    """TOML values as JSON: datetimes become ISO text, floats must be finite."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_json(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("JSON has no NaN or infinity")
    return value


def _show(value: object) -> object:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return value


def _values_list(raw: object, where: str) -> list[object]:
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{where}: needs at least one example value")
        return list(raw)
    return [raw]


def build_param(name: str, raw: object, where: str) -> Param:
    """A parameter from its file form: a value, a list, or a table with ``type`` and values."""
    if not _IDENT_RE.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a valid parameter name")
    ptype = "auto"
    per_side: tuple[list[object], list[object]] | None = None
    if isinstance(raw, dict):
        known = ["type", "values", "value", "sqlite", "postgres"]
        for key in raw:
            if key not in known:
                raise ConfigError(
                    f"{where}: unknown parameter key {key!r}{did_you_mean(key, known)}"
                )
        ptype = str(raw.get("type", "auto"))
        if ptype not in PARAM_TYPES:
            raise ConfigError(
                f"{where}: type {ptype!r} is not one of {', '.join(PARAM_TYPES)}"
                f"{did_you_mean(ptype, list(PARAM_TYPES))}"
            )
        if "sqlite" in raw or "postgres" in raw:
            if not ("sqlite" in raw and "postgres" in raw) or "values" in raw or "value" in raw:
                raise ConfigError(
                    f"{where}: give either 'values' (or 'value'), or both 'sqlite' and 'postgres'"
                )
            per_side = (
                _values_list(raw["sqlite"], f"{where}.sqlite"),
                _values_list(raw["postgres"], f"{where}.postgres"),
            )
            if len(per_side[0]) != len(per_side[1]):
                raise ConfigError(f"{where}: 'sqlite' and 'postgres' need as many values")
            values = per_side[1]
        elif "values" in raw and "value" not in raw:
            values = _values_list(raw["values"], f"{where}.values")
        elif "value" in raw and "values" not in raw:
            values = [raw["value"]]
        else:
            raise ConfigError(f"{where}: give 'values' (a list) or 'value'")
    else:
        values = _values_list(raw, where)
    sqlite_values: list[object] = []
    postgres_values: list[object] = []
    for i, value in enumerate(values):
        at = f"{where}[{i}]" if len(values) > 1 else where
        if per_side is not None:
            lite, _ = side_values(per_side[0][i], ptype, at)
            _, pg = side_values(per_side[1][i], ptype, at)
        else:
            lite, pg = side_values(value, ptype, at)
        sqlite_values.append(lite)
        postgres_values.append(pg)
    shown = tuple(
        {"sqlite": _show(a), "postgres": _show(b)} if per_side else _show(b)
        for a, b in zip(per_side[0] if per_side else values, values, strict=True)
    )
    return Param(name, ptype, tuple(sqlite_values), tuple(postgres_values), shown)
