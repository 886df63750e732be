"""The reverse direction's state in PostgreSQL: capture triggers and the change table.

After cutover the application writes to PostgreSQL; ``replicator reverse init``
puts an AFTER INSERT / UPDATE / DELETE row trigger on each replicated table.
The trigger appends (source table, op, key) to ``reverse_changes`` in the
state schema; the row's values are read from its table when the change is
applied, so the trigger stays cheap and a change never carries stale values.

The trigger function is ``SECURITY DEFINER`` (owned by the role that ran
``init``, which owns the state schema), so the application's role needs no
privilege on the state schema; creating a trigger needs only ownership of the
table (or the TRIGGER privilege). No superuser, no ``wal_level = logical``.

Writes of the replicator itself are not captured: every replicator session
sets ``replicator.origin = 'replicator'`` (``target/connection.py``) and the
trigger returns before logging when it sees it. That is what keeps dual writes
(forward and reverse daemons both running) from echoing each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from replicator.identifiers import pg_ident
from replicator.state import deadletter
from replicator.state.checkpoint import save_meta
from replicator.state.deadletter import DeadLetter

CHANGES = "reverse_changes"
FUNCTION = "capture_reverse"
TRIGGER = "_replicator_reverse"
TRUNCATE_TRIGGER = "_replicator_reverse_truncate"
ORIGIN_SETTING = "replicator.origin"
ORIGIN = "replicator"


def channel(schema: str) -> str:
    """The LISTEN channel the capture trigger notifies at each commit."""
    return f"replicator_reverse_{schema}"[:63]


def listen(conn: psycopg.Connection[Any], schema: str) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(pg_ident(channel(schema))))


def _function_sql(schema: str) -> sql.Composed:
    # TG_ARGV[0] is the source table's name, the rest the key's target columns.
    # The key is kept as the target types' JSON (to_jsonb of each column), so a
    # later cast back to the column's type finds the row by its index.
    return sql.SQL(
        """
CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
    new_key jsonb;
    old_key jsonb;
BEGIN
    IF current_setting({origin_setting}, true) = {origin} THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO {changes} (table_name, op, key) VALUES (TG_ARGV[0], 'T', '[]');
        PERFORM pg_notify({channel}, '');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        SELECT jsonb_agg(to_jsonb(NEW) -> c ORDER BY o) INTO new_key
        FROM unnest(TG_ARGV[1:]) WITH ORDINALITY AS u(c, o);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        SELECT jsonb_agg(to_jsonb(OLD) -> c ORDER BY o) INTO old_key
        FROM unnest(TG_ARGV[1:]) WITH ORDINALITY AS u(c, o);
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND old_key IS DISTINCT FROM new_key) THEN
        INSERT INTO {changes} (table_name, op, key) VALUES (TG_ARGV[0], 'D', old_key);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {changes} (table_name, op, key)
        VALUES (TG_ARGV[0], CASE TG_OP WHEN 'INSERT' THEN 'I' ELSE 'U' END, new_key);
    END IF;
    -- Delivered at commit, once per transaction however many rows it changed.
    PERFORM pg_notify({channel}, '');
    RETURN NULL;
END
$body$"""
    ).format(
        fn=pg_ident(schema, FUNCTION),
        changes=pg_ident(schema, CHANGES),
        origin_setting=sql.Literal(ORIGIN_SETTING),
        origin=sql.Literal(ORIGIN),
        channel=sql.Literal(channel(schema)),
    )


@dataclass(frozen=True, slots=True)
class CapturedTable:
    """A replicated table as the capture trigger sees it."""

    source: str  # the SQLite table's name
    schema: str  # the target table
    name: str
    key: tuple[str, ...]  # the target's key columns


def install_capture(cur: psycopg.Cursor[Any], schema: str, tables: Sequence[CapturedTable]) -> int:
    """(Re)create the trigger function and one trigger per table, in the caller's
    transaction (so no change slips between an old trigger and a new one). A table
    captured before and not given now (no longer replicated) loses its triggers;
    see :func:`forget_uncaptured` for its waiting changes."""
    cur.execute(_function_sql(schema))
    wanted = {(t.schema, t.name) for t in tables}
    for nsp, rel in captured_tables(cur):
        if (nsp, rel) not in wanted:
            for name in (TRIGGER, TRUNCATE_TRIGGER):
                cur.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                        pg_ident(name), pg_ident(nsp, rel)
                    )
                )
    for t in tables:
        cur.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                pg_ident(TRIGGER), pg_ident(t.schema, t.name)
            )
        )
        args = sql.SQL(", ").join(sql.Literal(a) for a in (t.source, *t.key))
        cur.execute(
            sql.SQL(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} "
                "FOR EACH ROW EXECUTE FUNCTION {}({})"
            ).format(
                pg_ident(TRIGGER), pg_ident(t.schema, t.name), pg_ident(schema, FUNCTION), args
            )
        )
        cur.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                pg_ident(TRUNCATE_TRIGGER), pg_ident(t.schema, t.name)
            )
        )
        cur.execute(
            sql.SQL(
                "CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT EXECUTE FUNCTION {}({})"
            ).format(
                pg_ident(TRUNCATE_TRIGGER),
                pg_ident(t.schema, t.name),
                pg_ident(schema, FUNCTION),
                args,
            )
        )
    return len(tables)


def captured_tables(cur: psycopg.Cursor[Any]) -> list[tuple[str, str]]:
    """(schema, table) of every table carrying our capture trigger."""
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = %s ORDER BY 1, 2",
        (TRIGGER,),
    )
    return [(str(r[0]), str(r[1])) for r in cur.fetchall()]


def remove_capture(cur: psycopg.Cursor[Any], schema: str) -> int:
    """Drop every capture trigger and the function; the change table stays (its
    migration owns it) but is emptied."""
    tables = captured_tables(cur)
    for nsp, rel in tables:
        for name in (TRIGGER, TRUNCATE_TRIGGER):
            cur.execute(
                sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
                    pg_ident(name), pg_ident(nsp, rel)
                )
            )
    cur.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(pg_ident(schema, FUNCTION)))
    if _has_changes_table(cur, schema):
        cur.execute(sql.SQL("DELETE FROM {}").format(pg_ident(schema, CHANGES)))
    return len(tables)


def forget_uncaptured(cur: psycopg.Cursor[Any], schema: str, tables: Sequence[str]) -> int:
    """Delete the waiting changes of every source table not in ``tables`` (those
    ``init`` no longer captures: they have nowhere to go); returns how many."""
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE NOT table_name = ANY(%s)").format(pg_ident(schema, CHANGES)),
        (list(tables),),
    )
    return cur.rowcount


def waiting_tables(cur: psycopg.Cursor[Any], schema: str) -> list[str]:
    """The source tables that have changes waiting."""
    if not _has_changes_table(cur, schema):
        return []
    cur.execute(sql.SQL("SELECT DISTINCT table_name FROM {}").format(pg_ident(schema, CHANGES)))
    return sorted(str(r[0]) for r in cur.fetchall())


def _has_changes_table(cur: psycopg.Cursor[Any], schema: str) -> bool:
    cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))", (schema, CHANGES))
    row = cur.fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class ReverseChange:
    """One captured change: which row of which table changed (its values are read
    from the table when applied)."""

    seq: int
    table: str  # source table name
    op: str  # "I", "U", "D", or "T" (TRUNCATE: every row of the table)
    key: tuple[Any, ...]  # the key as the target's JSON values
    captured_at: datetime

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ReverseChange:
        seq, table, op, key, captured_at = row
        return cls(int(seq), str(table), str(op), tuple(key), captured_at)


def read_changes(cur: psycopg.Cursor[Any], schema: str, limit: int) -> list[ReverseChange]:
    """The oldest ``limit`` changes committed and not yet consumed, in ``seq`` order.

    ``seq`` is handed out when a row changes, not at commit, so a lower one may
    commit after a higher one was read. That is harmless here: consumed changes
    are deleted (the table holds only what is left to apply), and two changes of
    one row are always committed in ``seq`` order (the second waits on the row
    lock of the first), which is the only order the apply depends on.
    """
    cur.execute(
        sql.SQL(
            "SELECT seq, table_name, op, key, captured_at FROM {} ORDER BY seq LIMIT %s"
        ).format(pg_ident(schema, CHANGES)),
        (limit,),
    )
    return [ReverseChange.from_row(r) for r in cur.fetchall()]


def delete_changes(cur: psycopg.Cursor[Any], schema: str, seqs: Sequence[int]) -> int:
    """Forget consumed changes; deleting some already gone is harmless (idempotent)."""
    if not seqs:
        return 0
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE seq = ANY(%s)").format(pg_ident(schema, CHANGES)),
        (list(seqs),),
    )
    return cur.rowcount


def depth(cur: psycopg.Cursor[Any], schema: str) -> tuple[int, datetime | None]:
    """(changes waiting, captured_at of the oldest), or (0, None) before ``init``."""
    if not _has_changes_table(cur, schema):
        return 0, None
    cur.execute(
        sql.SQL("SELECT count(*), min(captured_at) FROM {}").format(pg_ident(schema, CHANGES))
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0]), row[1]


def capture_head(cur: psycopg.Cursor[Any], schema: str) -> int:
    """The last ``seq`` the capture trigger handed out (0 before any): it moves with
    every captured change, applied or not, committed or not (so a change deleted
    once applied still shows that PostgreSQL was written)."""
    if not _has_changes_table(cur, schema):
        return 0
    cur.execute(
        "SELECT pg_sequence_last_value(pg_get_serial_sequence(format('%%I.%%I', %s::text, "
        "%s::text), 'seq'))",
        (schema, CHANGES),
    )
    row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def depth_by_table(cur: psycopg.Cursor[Any], schema: str) -> dict[str, tuple[int, datetime]]:
    if not _has_changes_table(cur, schema):
        return {}
    cur.execute(
        sql.SQL("SELECT table_name, count(*), min(captured_at) FROM {} GROUP BY 1").format(
            pg_ident(schema, CHANGES)
        )
    )
    return {str(r[0]): (int(r[1]), r[2]) for r in cur.fetchall()}


# -- dead letters of the reverse direction -------------------------------------------


def record_letters(cur: psycopg.Cursor[Any], schema: str, letters: Iterable[DeadLetter]) -> int:
    """Rows SQLite refused, with ``direction = 'reverse'`` (the key is the source key)."""
    return deadletter.record(cur, schema, letters, direction="reverse")


def resolve_letters(
    cur: psycopg.Cursor[Any], schema: str, table: str, keys: Sequence[Sequence[object]]
) -> int:
    """Open reverse letters of these keys are healed: a later apply wrote the row."""
    return deadletter.resolve_keys(
        cur, schema, table, keys, "healed by a later change", direction="reverse"
    )


def count_open_letters(cur: psycopg.Cursor[Any], schema: str) -> int:
    return sum(deadletter.count_open(cur, schema, "reverse").values())


# -- one reverse daemon per state schema ----------------------------------------------


def lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"replicator-reverse:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def try_lock(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Take the reverse daemon's session lock; False when another process holds it."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key(schema),)).fetchone()
    return bool(row and row[0])


def lock_held(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether some session holds the reverse daemon's lock (a daemon is running)."""
    key = lock_key(schema)
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = ((%s::bigint >> 32) & 4294967295)::oid "
        "AND objid = (%s::bigint & 4294967295)::oid AND objsubid = 1",
        (key, key),
    ).fetchone()
    return bool(row and row[0])


def save_rollback(cur: psycopg.Cursor[Any], schema: str, report: object) -> None:
    """The rollback's report, recorded like the cutover's (state schema's ``meta``)."""
    save_meta(cur, schema, "rollback", json.loads(json.dumps(report, default=str)))
