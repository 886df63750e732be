"""Identifier quoting: exactly one function per dialect.

Every table and column name that reaches SQL goes through :func:`sqlite_ident`
(SQLite side) or :func:`pg_ident` (PostgreSQL side). Names keep their case
exactly; nothing is ever interpolated unquoted.
"""

from __future__ import annotations

from psycopg import sql

PG_MAX_IDENTIFIER_BYTES = 63


def sqlite_ident(name: str) -> str:
    """Quote ``name`` for SQLite (double quotes, embedded quotes doubled)."""
    if "\x00" in name:
        raise ValueError(f"identifier {name!r} contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def pg_ident(*parts: str) -> sql.Identifier:
    """Quote a (possibly schema-qualified) name for PostgreSQL."""
    return sql.Identifier(*parts)


def pg_truncate(name: str) -> str:
    """The name PostgreSQL will actually store: at most 63 bytes of UTF-8.

    PostgreSQL truncates longer identifiers silently (NAMEDATALEN - 1), so two
    long source names can collide in the target; callers refuse that up front.
    """
    raw = name.encode("utf-8")
    if len(raw) <= PG_MAX_IDENTIFIER_BYTES:
        return name
    return raw[:PG_MAX_IDENTIFIER_BYTES].decode("utf-8", errors="ignore")


def truncation_collisions(names: list[str]) -> list[tuple[str, str]]:
    """Pairs of distinct names that become the same PostgreSQL identifier."""
    seen: dict[str, str] = {}
    clashes: list[tuple[str, str]] = []
    for name in names:
        stored = pg_truncate(name)
        other = seen.get(stored)
        if other is not None and other != name:
            clashes.append((other, name))
        else:
            seen[stored] = name
    return clashes
