"""What PostgreSQL says about a target table: columns and types, key, parents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from replicator.coerce import PgType


@dataclass(frozen=True, slots=True)
class TargetColumn:
    name: str
    type: PgType
    not_null: bool
    has_default: bool
    sequence: tuple[str, str] | None  # (schema, name) of its serial / identity sequence


@dataclass(frozen=True, slots=True)
class TargetTable:
    schema: str
    name: str
    columns: tuple[TargetColumn, ...]
    primary_key: tuple[str, ...]
    parents: tuple[str, ...]  # referenced tables (target names, same schema)

    def column(self, name: str) -> TargetColumn | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


_COLUMNS_SQL = """
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       a.attnotnull,
       a.atthasdef OR a.attidentity <> '',
       (SELECT ARRAY[sn.nspname::text, sc.relname::text]
          FROM pg_class sc JOIN pg_namespace sn ON sn.oid = sc.relnamespace
         WHERE sc.oid = pg_get_serial_sequence(
                 format('%%I.%%I', n.nspname, c.relname), a.attname)::regclass)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_PK_SQL = """
SELECT a.attname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary
ORDER BY k.ord
"""

_PARENTS_SQL = """
SELECT DISTINCT pc.relname
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class pc ON pc.oid = con.confrelid
WHERE con.contype = 'f' AND n.nspname = %s AND c.relname = %s
"""


def describe_target(conn: psycopg.Connection[Any], schema: str, name: str) -> TargetTable | None:
    with conn.cursor() as cur:
        cur.execute(_COLUMNS_SQL, (schema, name))
        rows = cur.fetchall()
        if not rows:
            return None
        columns = tuple(
            TargetColumn(
                name=str(r[0]),
                type=PgType.parse(str(r[1])),
                not_null=bool(r[2]),
                has_default=bool(r[3]),
                sequence=(str(r[4][0]), str(r[4][1])) if r[4] else None,
            )
            for r in rows
        )
        cur.execute(_PK_SQL, (schema, name))
        pk = tuple(str(r[0]) for r in cur.fetchall())
        cur.execute(_PARENTS_SQL, (schema, name))
        parents = tuple(str(r[0]) for r in cur.fetchall() if r[0] != name)
    return TargetTable(schema=schema, name=name, columns=columns, primary_key=pk, parents=parents)


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """One foreign key of a target table: its columns and the parent's they point at."""

    columns: tuple[str, ...]
    parent_schema: str
    parent: str
    parent_columns: tuple[str, ...]


_FOREIGN_KEYS_SQL = """
SELECT pn.nspname, pc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class pc ON pc.oid = con.confrelid
JOIN pg_namespace pn ON pn.oid = pc.relnamespace
WHERE con.contype = 'f' AND n.nspname = %s AND c.relname = %s
ORDER BY con.conname
"""


def foreign_keys(conn: psycopg.Connection[Any], schema: str, name: str) -> list[ForeignKey]:
    """The foreign keys PostgreSQL enforces on ``schema.name`` (the ones that refuse a row)."""
    with conn.cursor() as cur:
        cur.execute(_FOREIGN_KEYS_SQL, (schema, name))
        return [ForeignKey(tuple(r[2]), str(r[0]), str(r[1]), tuple(r[3])) for r in cur.fetchall()]


_UNIQUE_INDEX_SQL = """
SELECT a.attname
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE n.nspname = %s AND ic.relname = %s AND i.indisunique
ORDER BY k.ord
"""


def unique_index_columns(
    conn: psycopg.Connection[Any], schema: str, index: str
) -> tuple[str, ...] | None:
    """The columns of a unique index (what a 23505 names as its constraint), or None
    when it is unknown or indexes an expression."""
    with conn.cursor() as cur:
        cur.execute(_UNIQUE_INDEX_SQL, (schema, index))
        names = [r[0] for r in cur.fetchall()]
    if not names or any(n is None for n in names):
        return None
    return tuple(str(n) for n in names)


@dataclass(frozen=True, slots=True)
class TargetForeignKey:
    name: str
    child: str  # table names, in the schema asked about
    parent: str
    columns: tuple[str, ...]  # the child's
    ref_columns: tuple[str, ...]  # the parent's
    on_delete: str  # CASCADE, SET NULL, SET DEFAULT, RESTRICT or NO ACTION


_ON_DELETE = {
    "c": "CASCADE",
    "n": "SET NULL",
    "d": "SET DEFAULT",
    "r": "RESTRICT",
    "a": "NO ACTION",
}

_DELETE_ACTIONS_SQL = """
SELECT con.conname, c.relname, pc.relname,
       ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
       con.confdeltype
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class pc ON pc.oid = con.confrelid
WHERE con.contype = 'f' AND n.nspname = %s AND c.relname = ANY(%s)
ORDER BY c.relname, con.conname
"""


def delete_actions(
    conn: psycopg.Connection[Any], schema: str, tables: list[str]
) -> list[TargetForeignKey]:
    """The foreign keys of ``tables`` (in ``schema``), with what a parent's delete does."""
    with conn.cursor() as cur:
        cur.execute(_DELETE_ACTIONS_SQL, (schema, tables))
        rows = cur.fetchall()
    return [
        TargetForeignKey(
            name=str(r[0]),
            child=str(r[1]),
            parent=str(r[2]),
            columns=tuple(r[3]),
            ref_columns=tuple(r[4]),
            on_delete=_ON_DELETE.get(str(r[5]), str(r[5])),
        )
        for r in rows
    ]
