"""What the PostgreSQL target accepts, parsed from its schema.

The writer must never touch a row holding a planted bad cell, and must tell
such a row from a clean one without a side table: so each cell is checked
against the target's own column types, read from the schema text itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from replicator.demo.sample.schema import REFERENCE_PG_SCHEMA, TABLE_RE


@dataclass(frozen=True, slots=True)
class _PgColumn:
    name: str
    kind: str  # text | varchar | int4 | int8 | float8 | timestamp | jsonb | bool
    length: int | None
    not_null: bool


_PG_TYPES: Final[Mapping[str, str]] = {
    "BIGSERIAL": "int8",
    "BIGINT": "int8",
    "INTEGER": "int4",
    "TEXT": "text",
    "VARCHAR": "varchar",
    "TIMESTAMP": "timestamp",
    "JSONB": "jsonb",
    "BOOLEAN": "bool",
    "DOUBLE PRECISION": "float8",
}
_COLUMN_RE = re.compile(r"^\s*(\w+)\s+(DOUBLE PRECISION|[A-Z]+)(?:\((\d+)\))?(.*)$")
_INT_RANGE: Final[Mapping[str, tuple[int, int]]] = {
    "int4": (-(2**31), 2**31 - 1),
    "int8": (-(2**63), 2**63 - 1),
}


def _parse_pg_schema(text: str) -> dict[str, dict[str, _PgColumn]]:
    tables: dict[str, dict[str, _PgColumn]] = {}
    for table, body in TABLE_RE.findall(text):
        columns: dict[str, _PgColumn] = {}
        for line in body.splitlines():
            match = _COLUMN_RE.match(line)
            if match is None or match[1] == "CONSTRAINT":
                continue
            rest = match[4]
            columns[match[1]] = _PgColumn(
                name=match[1],
                kind=_PG_TYPES[match[2]],
                length=int(match[3]) if match[3] else None,
                not_null="NOT NULL" in rest or "PRIMARY KEY" in rest,
            )
        tables[table] = columns
    return tables


_PG_COLUMNS: Final = _parse_pg_schema(REFERENCE_PG_SCHEMA)


def _reject_constant(token: str) -> object:
    raise ValueError(f"JSON constant {token} is not valid in jsonb")


def _pg_accepts(column: _PgColumn, value: object) -> bool:
    """Whether the target would store ``value`` in ``column`` unchanged in meaning."""
    if value is None:
        return not column.not_null
    kind = column.kind
    if kind in ("int4", "int8"):
        low, high = _INT_RANGE[kind]
        return type(value) is int and low <= value <= high
    if kind == "float8":
        return type(value) in (int, float)
    if kind == "bool":
        return type(value) is int and value in (0, 1)
    if not isinstance(value, str) or "\x00" in value:
        return False
    if kind == "varchar":
        return column.length is None or len(value) <= column.length
    if kind == "timestamp":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    if kind == "jsonb":
        if "\\u0000" in value:
            return False
        try:
            json.loads(value, parse_constant=_reject_constant)
        except ValueError:
            return False
        return True
    return True


def row_is_clean(table: str, names: Sequence[str], row: Sequence[object]) -> bool:
    columns = _PG_COLUMNS[table]
    return all(_pg_accepts(columns[n], v) for n, v in zip(names, row, strict=True))
