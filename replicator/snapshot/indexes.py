"""Secondary indexes set aside during the copy (snapshot.defer_indexes) and built after.

Inserting into a table maintains each of its indexes row by row; building an
index once the table is loaded is one sort. Before the copy into an existing,
empty table, its plain secondary indexes are dropped and their definitions kept
in the state schema in the same transaction, so a crash at any moment leaves
them either in place or recorded; they are built again as soon as the table is
copied, or, after a crash, by the next run (:func:`rebuild_deferred`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from psycopg import sql

from replicator.identifiers import pg_ident
from replicator.logs import get_logger
from replicator.plan.ddl import SCHEMA_REFUSALS, post_load_sql
from replicator.plan.tables import TablePlan
from replicator.snapshot.jobs import ChunkHook
from replicator.state import checkpoint
from replicator.target.connection import Connection

DEFERRED_INDEXES_KEY = "deferred_indexes"  # + ":schema.table" -> [[index, definition]]

# Secondary indexes: not a primary key or unique index, not behind any constraint
# (exclusion constraints included), not a partition of a partitioned index, and
# on plain columns only: an expression or a predicate could fail on a value when
# the index is built after the load, where it would have refused that one row.
_SECONDARY_INDEXES_SQL = """
SELECT i.relname, pg_get_indexdef(x.indexrelid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %s AND t.relname = %s
  AND NOT x.indisprimary AND NOT x.indisunique AND x.indisvalid
  AND x.indexprs IS NULL AND x.indpred IS NULL
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)
ORDER BY i.relname
"""


def _deferred_key(plan: TablePlan) -> str:
    return f"{DEFERRED_INDEXES_KEY}:{plan.schema}.{plan.name}"


def defer_indexes(conn: Connection, schema: str, plan: TablePlan) -> None:
    """Drop ``plan``'s plain secondary indexes, keeping their definitions in the
    state schema ``schema`` in the same transaction (added to any kept there already)."""
    key = _deferred_key(plan)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_SECONDARY_INDEXES_SQL, (plan.schema, plan.name))
        found = [[str(r[0]), str(r[1])] for r in cur.fetchall()]
        if not found:
            return
        kept = checkpoint.load_meta(cur, schema, key)
        earlier = kept["indexes"] if isinstance(kept, dict) else []
        names = {i for i, _ in found}
        indexes = [x for x in earlier if x[0] not in names] + found
        checkpoint.save_meta(
            cur,
            schema,
            key,
            {"schema": plan.schema, "table": plan.name, "indexes": indexes},
        )
        for index, _definition in found:
            cur.execute(sql.SQL("DROP INDEX {}").format(pg_ident(plan.schema, index)))
    get_logger().info("indexes_deferred", table=plan.name, indexes=sorted(names))


def build_indexes(conn: Connection, plan: TablePlan, plans: Sequence[TablePlan]) -> None:
    """The secondary and UNIQUE indexes of a table we created, built as soon as it
    is copied (on the worker that copied it, while others copy on). Foreign keys
    wait for the end of the snapshot, which runs every post-load statement again
    (each is idempotent) and reports those that fail."""
    for what, stmt in post_load_sql(plan, plans):
        if not what.startswith("index "):
            continue
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(stmt)
        except SCHEMA_REFUSALS:
            continue  # the end of the snapshot tries again and reports it


def rebuild_indexes(
    conn: Connection, schema: str, plan: TablePlan, on_chunk: ChunkHook | None
) -> None:
    """Build the indexes :func:`defer_indexes` dropped from ``plan``'s table."""
    _rebuild(conn, schema, _deferred_key(plan), on_chunk)


def rebuild_deferred(conn: Connection, schema: str, on_chunk: ChunkHook | None) -> None:
    """Build every index still recorded as deferred, whatever table it is on
    (a run killed between a table's last chunk and its rebuild, or a table
    no longer planned)."""
    with conn.cursor() as cur:
        keys = checkpoint.meta_keys(cur, schema, f"{DEFERRED_INDEXES_KEY}:")
    for key in keys:
        _rebuild(conn, schema, key, on_chunk)


def _rebuild(conn: Connection, schema: str, key: str, on_chunk: ChunkHook | None) -> None:
    with conn.cursor() as cur:
        kept = checkpoint.load_meta(cur, schema, key)
    if not isinstance(kept, dict):
        return
    where, table = str(kept["schema"]), str(kept["table"])
    started = time.monotonic()
    built = []
    for index, definition in kept["indexes"]:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NULL", (pg_ident(where, index).as_string(conn),))
            missing = cur.fetchone()
            if missing and missing[0]:
                cur.execute(definition)
                built.append(index)
        if on_chunk is not None:  # keeps a daemon's watchdog and heartbeat fed
            on_chunk(table, 0, 0, 0)
    with conn.transaction(), conn.cursor() as cur:
        checkpoint.delete_meta(cur, schema, key)
    get_logger().info(
        "indexes_rebuilt",
        table=table,
        indexes=built,
        seconds=round(time.monotonic() - started, 3),
    )
