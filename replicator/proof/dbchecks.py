"""Verify's whole-database checks: foreign keys that point at nothing, sequences
behind their column's largest id, and JSON stored double-encoded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import sql

from replicator.coerce import JSON_KINDS, Kind
from replicator.identifiers import pg_ident
from replicator.plan.ddl import sequence_sql, target_sequences
from replicator.plan.tables import TablePlan
from replicator.target.connection import Connection


def orphans(conn: Connection, schema: str, plans: Sequence[TablePlan]) -> list[dict[str, Any]]:
    """Rows whose foreign key points at nothing (valid or NOT VALID constraints)."""
    out = []
    names = [p.name for p in plans]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT con.conname, c.relname, pc.relname, "
            " ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)"
            "       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n"
            "       ORDER BY k.o),"
            " ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)"
            "       JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n"
            "       ORDER BY k.o)"
            " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_class pc ON pc.oid = con.confrelid"
            " WHERE con.contype = 'f' AND n.nspname = %s AND c.relname = ANY(%s)",
            (schema, names),
        )
        constraints = cur.fetchall()
        for name, child, parent, cols, pcols in constraints:
            match = sql.SQL(" AND ").join(
                sql.SQL("p.{} = c.{}").format(pg_ident(pc), pg_ident(cc))
                for cc, pc in zip(cols, pcols, strict=True)
            )
            not_null = sql.SQL(" AND ").join(
                sql.SQL("c.{} IS NOT NULL").format(pg_ident(cc)) for cc in cols
            )
            cur.execute(
                sql.SQL(
                    "SELECT count(*) FROM {} AS c WHERE {} AND NOT EXISTS "
                    "(SELECT 1 FROM {} AS p WHERE {})"
                ).format(pg_ident(schema, child), not_null, pg_ident(schema, parent), match)
            )
            row = cur.fetchone()
            if row and row[0]:
                out.append({"constraint": name, "table": child, "rows": int(row[0])})
    return out


def sequences(conn: Connection, plans: Sequence[TablePlan], repair: bool) -> list[dict[str, Any]]:
    behind = []
    for plan in plans:
        sequences = target_sequences(conn, plan)
        for column, (seq_schema, seq_name) in sequences:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "SELECT (SELECT max({col}) FROM {table}),"
                        " (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END"
                        " FROM {seq})"
                    ).format(
                        col=pg_ident(column),
                        table=plan.table,
                        seq=pg_ident(seq_schema, seq_name),
                    )
                )
                row = cur.fetchone()
            assert row is not None
            top, last = row
            if top is not None and last < top:
                behind.append(
                    {"table": plan.name, "column": column, "last_value": last, "max": top}
                )
        if repair and sequences:
            with conn.transaction(), conn.cursor() as cur:
                for stmt in sequence_sql(plan, sequences):
                    cur.execute(stmt)
    if repair:
        return [b for b in behind if not _sequence_fixed(conn, plans, b)]
    return behind


def _sequence_fixed(conn: Connection, plans: Sequence[TablePlan], item: dict[str, Any]) -> bool:
    plan = next(p for p in plans if p.name == item["table"])
    for column, (seq_schema, seq_name) in target_sequences(conn, plan):
        if column != item["column"]:
            continue
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT last_value FROM {}").format(pg_ident(seq_schema, seq_name)))
            row = cur.fetchone()
        return bool(row and row[0] >= item["max"])
    return False


def json_columns(conn: Connection, plans: Sequence[TablePlan]) -> list[dict[str, Any]]:
    """JSON columns must hold JSON documents, not JSON text wrapped in a string.

    json/jsonb values always parse (PostgreSQL validates them on input);
    the classic migration bug is double encoding: an object stored as a
    JSON *string* holding the object's text. Count those.
    """
    out = []
    for plan in plans:
        for col in plan.columns:
            if col.type.kind not in JSON_KINDS:
                continue
            cast = sql.SQL("::jsonb") if col.type.kind == Kind.JSON else sql.SQL("")
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {t} WHERE jsonb_typeof({c}{cast}) = 'string'"
                        " AND ({c}{cast} #>> '{{}}') ~ '^\\s*[\\[{{]'"
                    ).format(t=plan.table, c=pg_ident(col.target), cast=cast)
                )
                row = cur.fetchone()
            if row and row[0]:
                out.append({"table": plan.name, "column": col.target, "rows": int(row[0])})
    return out
