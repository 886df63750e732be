"""Type drift: the Python values the application receives, side by side.

The value comparison types SQLite's values like the PostgreSQL column first
(:mod:`replicator.queries.compare`), which is right for "is it the same
answer" and blind to what the application's code gets: sqlite3 returns
``'694'`` where psycopg returns ``694``, a JSON array as ``str`` where
psycopg returns a ``list``, ``'f'`` (truthy) where psycopg returns
``False``, a ``float`` where psycopg returns a ``Decimal`` (which
``json.dumps`` refuses). Each such column is a type drift: the query's
answer is the same, and the code that reads it may still break.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

__all__ = ["PADDED", "TypeDrift", "find_type_drift", "merge_drift", "python_type"]

# Python types psycopg and sqlite3 return, under the name a reader knows them by.
_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "bool"),  # before int: bool is an int subclass
    (int, "int"),
    (float, "float"),
    (Decimal, "Decimal"),
    (str, "str"),
    (bytes, "bytes"),
    (bytearray, "bytes"),
    (memoryview, "bytes"),
    (list, "list"),
    (dict, "dict"),
    (datetime, "datetime"),  # before date: datetime is a date subclass
    (date, "date"),
    (time, "time"),
    (timedelta, "timedelta"),
    (UUID, "UUID"),
)


def python_type(value: object) -> str:
    for kind, name in _NAMES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


@dataclass
class TypeDrift:
    """One result column whose values reach the application as other Python types."""

    column: str
    sqlite_type: str  # e.g. "str", or "float, int" when the column mixes them
    postgres_type: str
    sqlite_example: str  # one value as Python writes it (repr), e.g. "'694'"
    postgres_example: str  # e.g. "694"
    accepted: bool = False

    def types(self) -> tuple[set[str], set[str]]:
        return set(self.sqlite_type.split(", ")), set(self.postgres_type.split(", "))


def _types_and_example(
    rows: Sequence[Sequence[Any]], i: int, other: Collection[str] = ()
) -> tuple[set[str], Any]:
    types: set[str] = set()
    example: Any = None
    found = False
    for row in rows:
        v = row[i]
        if v is None:
            continue
        name = python_type(v)
        types.add(name)
        # Prefer an example of a type the other side never returns.
        if not found or (name not in other and python_type(example) in other):
            example, found = v, True
    return types, example


def _shown(value: object) -> str:
    """repr, which tells ``'694'`` from ``694`` and ``Decimal('0.1')`` from ``0.1``."""
    if isinstance(value, memoryview):
        value = bytes(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


PADDED = "str (blank-padded)"  # how a char(n) value reaches the application


def _padding_drift(
    name: str, i: int, sqlite_rows: Sequence[Sequence[Any]], postgres_rows: Sequence[Sequence[Any]]
) -> TypeDrift | None:
    """A ``char(n)`` column: psycopg returns ``'DE '`` where sqlite3 returned
    ``'DE'``. Equal for PostgreSQL (and for the comparison), not for the
    application's ``==``."""
    padded = next(
        (r[i] for r in postgres_rows if isinstance(r[i], str) and r[i] != r[i].rstrip(" ")), None
    )
    lite = [r[i] for r in sqlite_rows if isinstance(r[i], str)]
    if padded is None or not lite or any(v != v.rstrip(" ") for v in lite):
        return None
    example = next((v for v in lite if v == padded.rstrip(" ")), lite[0])
    return TypeDrift(name, "str", PADDED, _shown(example), _shown(padded))


def find_type_drift(
    names: Sequence[str],
    sqlite_rows: Sequence[Sequence[Any]],
    postgres_rows: Sequence[Sequence[Any]],
    padded: Sequence[bool] = (),
) -> list[TypeDrift]:
    """Columns whose non-NULL values are of other Python types on the two sides.

    Columns that are NULL throughout on one side show no type there and are
    not judged. ``padded`` marks the result columns PostgreSQL types
    ``char(n)``: text both sides, but blank-padded on PostgreSQL's.
    """
    out = []
    for i, name in enumerate(names):
        lite_types, _ = _types_and_example(sqlite_rows, i)
        pg_types, _ = _types_and_example(postgres_rows, i)
        if lite_types == pg_types == {"str"} and i < len(padded) and padded[i]:
            found = _padding_drift(name, i, sqlite_rows, postgres_rows)
            if found is not None:
                out.append(found)
            continue
        if not lite_types or not pg_types or lite_types == pg_types:
            continue
        _, lite_example = _types_and_example(sqlite_rows, i, pg_types)
        _, pg_example = _types_and_example(postgres_rows, i, lite_types)
        out.append(
            TypeDrift(
                column=name,
                sqlite_type=", ".join(sorted(lite_types)),
                postgres_type=", ".join(sorted(pg_types)),
                sqlite_example=_shown(lite_example),
                postgres_example=_shown(pg_example),
            )
        )
    return out


def merge_drift(
    per_case: Sequence[Sequence[TypeDrift]], accept: Collection[str]
) -> list[TypeDrift]:
    """One drift per column over all parameter sets, marked accepted per ``accept``
    (``type_drift`` for every column, ``type_drift:<column>`` for one)."""
    merged: dict[str, TypeDrift] = {}
    for drifts in per_case:
        for d in drifts:
            key = d.column.lower()
            if key not in merged:
                merged[key] = replace(d)
                continue
            m = merged[key]
            (lite, pg), (more_lite, more_pg) = m.types(), d.types()
            m.sqlite_type = ", ".join(sorted(lite | more_lite))
            m.postgres_type = ", ".join(sorted(pg | more_pg))
    for key, d in merged.items():
        d.accepted = "type_drift" in accept or f"type_drift:{key}" in accept
    return list(merged.values())
