"""Comparing two result sets: the same answer, after each side's values are normalised.

Values are normalised the way replication normalises them: every SQLite
value goes through the converter of the PostgreSQL result column's type
(:func:`replicator.coerce.converter_for`) and both sides through
:func:`replicator.proof.verify.canonical`; floats and non-integral numerics are
equal within a relative tolerance, everything else exactly. An ordered result
is compared row by row, or group by group of equal order-key values; any
other as a multiset.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from typing import Any

from replicator.plan.compare import (
    ResultColumn,
    Row,
    Unconvertible,
    normalise_postgres,
    normalise_sqlite,
)

__all__ = [
    "Difference",
    "ResultColumn",
    "Row",
    "Unconvertible",
    "compare_rows",
    "normalise_postgres",
    "normalise_sqlite",
    "same_value",
]

SHOWN_ROWS = 3  # differing rows listed per side


def _exact_integer(v: Any) -> bool:
    if isinstance(v, int):
        return True
    return isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def same_value(a: Any, b: Any, tolerance: float) -> bool:
    """Equal after normalisation; floats and fractional numerics within ``tolerance``.

    Integers (and integral numerics) must be exactly equal: a count that is
    off by one is a wrong answer however large the count.
    """
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        if _exact_integer(a) and _exact_integer(b):
            return int(a) == int(b)
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        if math.isinf(fa) or math.isinf(fb):
            return fa == fb
        return math.isclose(fa, fb, rel_tol=tolerance, abs_tol=tolerance * 1e-3)
    return bool(type(a) is type(b) and a == b)


def same_row(a: Row, b: Row, tolerance: float) -> bool:
    return len(a.canon) == len(b.canon) and all(
        same_value(x, y, tolerance) for x, y in zip(a.canon, b.canon, strict=True)
    )


def _value_key(v: Any) -> tuple[Any, ...]:
    """A total order over mixed canonical values (for sorting rows into multisets)."""
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (1, int(v))
    if _is_number(v):
        f = float(v)
        return (2, 0.0 if math.isnan(f) else f, 1 if math.isnan(f) else 0)
    if isinstance(v, str):
        return (3, v)
    if isinstance(v, bytes):
        return (4, v)
    if isinstance(v, datetime):
        return (5, v.isoformat())
    if isinstance(v, date):
        return (6, v.isoformat())
    if isinstance(v, dtime):
        return (7, v.isoformat())
    return (9, repr(v))


def _row_key(row: Row) -> tuple[tuple[Any, ...], ...]:
    return tuple(_value_key(v) for v in row.canon)


# --------------------------------------------------------------------------- comparing


@dataclass
class Difference:
    summary: str
    position: int | None = None  # first differing row (0-based) of an ordered result
    sqlite_rows: list[list[Any]] = field(default_factory=list)
    postgres_rows: list[list[Any]] = field(default_factory=list)
    # Per shown row, why it differs when known ("dead-lettered: ..."); empty
    # when nothing is known about any of them.
    sqlite_notes: list[str | None] = field(default_factory=list)
    postgres_notes: list[str | None] = field(default_factory=list)


def display(v: Any) -> Any:
    """A short JSON-safe picture of a value as the application would see it."""
    if v is None or isinstance(v, bool | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v if len(v) <= 120 else v[:117] + "..."
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime | date | dtime):
        return v.isoformat(sep=" ") if isinstance(v, datetime) else v.isoformat()
    if isinstance(v, bytes | memoryview):
        raw = bytes(v)
        return f"x'{raw[:32].hex()}{'...' if len(raw) > 32 else ''}'"
    if isinstance(v, dict | list):
        text = json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return repr(v)


def _shown(rows: Sequence[Row]) -> list[list[Any]]:
    return [[display(v) for v in r.raw] for r in rows[:SHOWN_ROWS]]


def _multiset_diff(a: Sequence[Row], b: Sequence[Row], tol: float) -> tuple[list[Row], list[Row]]:
    """Rows only in ``a`` and only in ``b``, each counted with its multiplicity."""
    sa = sorted(a, key=_row_key)
    sb = sorted(b, key=_row_key)
    only_a: list[Row] = []
    only_b: list[Row] = []
    i = j = 0
    while i < len(sa) and j < len(sb):
        if same_row(sa[i], sb[j], tol):
            i += 1
            j += 1
        elif _row_key(sa[i]) < _row_key(sb[j]):
            only_a.append(sa[i])
            i += 1
        else:
            only_b.append(sb[j])
            j += 1
    only_a.extend(sa[i:])
    only_b.extend(sb[j:])
    if only_a and only_b and tol > 0:
        return _match_within_tolerance(only_a, only_b, tol)
    return only_a, only_b


def _inexact_key(row: Row) -> tuple[tuple[Any, ...], ...]:
    """The exactly compared part of a row: its values but numbers, which compare
    within the tolerance (one bucket holds every row that could match)."""
    return tuple((2,) if _is_number(v) else _value_key(v) for v in row.canon)


def _match_within_tolerance(
    only_a: list[Row], only_b: list[Row], tol: float
) -> tuple[list[Row], list[Row]]:
    """Pair the rows the exact-order merge left over that are equal within ``tol``.

    Sorting by exact values puts 0.30000000000000004 and 0.3 in different
    places, so rows that differ only there fall out of the merge unmatched;
    here they are paired greedily within rows of equal non-numeric values.
    """
    buckets: dict[tuple[tuple[Any, ...], ...], list[Row]] = {}
    for row in only_b:
        buckets.setdefault(_inexact_key(row), []).append(row)
    rest_a: list[Row] = []
    for row in only_a:
        bucket = buckets.get(_inexact_key(row), [])
        for k, other in enumerate(bucket):
            if same_row(row, other, tol):
                del bucket[k]
                break
        else:
            rest_a.append(row)
    rest_b = [r for bucket in buckets.values() for r in bucket]
    return rest_a, sorted(rest_b, key=_row_key)


def group_rows(rows: Sequence[Row], key_idx: Sequence[int], tol: float) -> list[list[Row]]:
    out: list[list[Row]] = []
    for row in rows:
        if out and all(same_value(out[-1][0].canon[k], row.canon[k], tol) for k in key_idx):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def compare_rows(
    sqlite_rows: Sequence[Row],
    postgres_rows: Sequence[Row],
    *,
    ordered: bool,
    key_idx: Sequence[int] = (),
    tolerance: float = 1e-9,
) -> Difference | None:
    """None when the results are the same answer, else what differs first."""
    if ordered and not key_idx:
        for i, (a, b) in enumerate(zip(sqlite_rows, postgres_rows, strict=False)):
            if not same_row(a, b, tolerance):
                only_a, only_b = _multiset_diff(sqlite_rows, postgres_rows, tolerance)
                what = (
                    "the same rows in a different order"
                    if not only_a and not only_b
                    else "different rows"
                )
                return Difference(
                    f"{what}, from row {i + 1} (ORDER BY is honoured)",
                    position=i,
                    sqlite_rows=_shown(sqlite_rows[i:]),
                    postgres_rows=_shown(postgres_rows[i:]),
                )
        if len(sqlite_rows) == len(postgres_rows):
            return None
        i = min(len(sqlite_rows), len(postgres_rows))
        return Difference(
            f"SQLite returned {len(sqlite_rows)} rows, PostgreSQL {len(postgres_rows)}; "
            f"the first {i} agree",
            position=i,
            sqlite_rows=_shown(sqlite_rows[i:]),
            postgres_rows=_shown(postgres_rows[i:]),
        )
    if ordered:
        ga = group_rows(sqlite_rows, key_idx, tolerance)
        gb = group_rows(postgres_rows, key_idx, tolerance)
        position = 0
        for group_a, group_b in zip(ga, gb, strict=False):
            only_a, only_b = _multiset_diff(group_a, group_b, tolerance)
            keys_equal = all(
                same_value(group_a[0].canon[k], group_b[0].canon[k], tolerance) for k in key_idx
            )
            if only_a or only_b or not keys_equal:
                return Difference(
                    f"different rows in the group of equal order keys from row {position + 1} "
                    "(rows with equal keys may come in any order)",
                    position=position,
                    sqlite_rows=_shown(only_a or group_a),
                    postgres_rows=_shown(only_b or group_b),
                )
            position += len(group_a)
        if len(ga) == len(gb):
            return None
        return Difference(
            f"SQLite returned {len(sqlite_rows)} rows, PostgreSQL {len(postgres_rows)}; "
            f"the first {position} agree",
            position=position,
            sqlite_rows=_shown(sqlite_rows[position:]),
            postgres_rows=_shown(postgres_rows[position:]),
        )
    only_a, only_b = _multiset_diff(sqlite_rows, postgres_rows, tolerance)
    if not only_a and not only_b:
        return None
    return Difference(
        f"{len(only_a)} row(s) only in SQLite, {len(only_b)} only in PostgreSQL "
        "(compared as multisets: no ORDER BY)",
        sqlite_rows=_shown(only_a),
        postgres_rows=_shown(only_b),
    )
