"""Where we are: snapshot progress per table, written in the same transaction as
the chunk it describes, so a crash can never separate data from position."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from replicator.deadletter import decode_key, json_key
from replicator.identifiers import pg_ident


@dataclass(frozen=True, slots=True)
class SnapshotProgress:
    table: str
    last_key: tuple[Any, ...] | None  # None: nothing copied yet
    rows_read: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    method: str = "copy"  # "copy" into an empty table, or "merge" (upsert via staging)
    rows_total: int | None = None
    done: bool = False

    def advance(
        self, last_key: tuple[Any, ...], read: int, written: int, dead: int
    ) -> SnapshotProgress:
        return replace(
            self,
            last_key=last_key,
            rows_read=self.rows_read + read,
            rows_written=self.rows_written + written,
            dead_letters=self.dead_letters + dead,
        )


def load_progress(cur: psycopg.Cursor[Any], schema: str) -> dict[str, SnapshotProgress]:
    cur.execute(
        sql.SQL(
            "SELECT table_name, last_key, rows_read, rows_written, dead_letters, method,"
            " rows_total, done FROM {}"
        ).format(pg_ident(schema, "snapshot_progress"))
    )
    out = {}
    for row in cur.fetchall():
        # json_key stores blobs, invalid UTF-8, NUL text as descriptions: undo that
        last = decode_key(row[1]) if row[1] is not None else None
        out[str(row[0])] = SnapshotProgress(
            table=str(row[0]),
            last_key=last,
            rows_read=int(row[2]),
            rows_written=int(row[3]),
            dead_letters=int(row[4]),
            method=str(row[5]),
            rows_total=int(row[6]) if row[6] is not None else None,
            done=bool(row[7]),
        )
    return out


def save_progress(cur: psycopg.Cursor[Any], schema: str, p: SnapshotProgress) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, last_key, rows_read, rows_written, dead_letters, method,"
            " rows_total, done, finished_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)"
            " ON CONFLICT (table_name) DO UPDATE SET last_key = EXCLUDED.last_key,"
            " rows_read = EXCLUDED.rows_read, rows_written = EXCLUDED.rows_written,"
            " dead_letters = EXCLUDED.dead_letters, method = EXCLUDED.method,"
            " rows_total = EXCLUDED.rows_total, done = EXCLUDED.done,"
            " finished_at = EXCLUDED.finished_at, updated_at = now()"
        ).format(pg_ident(schema, "snapshot_progress")),
        (
            p.table,
            Jsonb(json_key(p.last_key)) if p.last_key is not None else None,
            p.rows_read,
            p.rows_written,
            p.dead_letters,
            p.method,
            p.rows_total,
            p.done,
            p.done,
        ),
    )


def reset_progress(cur: psycopg.Cursor[Any], schema: str) -> None:
    cur.execute(sql.SQL("DELETE FROM {}").format(pg_ident(schema, "snapshot_progress")))


# -- cursor capture ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CursorState:
    """A cursor table's row in ``cursor_position``: where its cursor stands and
    when it was last reconciled (unix seconds)."""

    table: str
    kind: str
    column: str
    position: dict[str, Any] | None
    reconcile_started_at: float | None
    reconciled_at: float | None


def load_cursor_states(cur: psycopg.Cursor[Any], schema: str) -> dict[str, CursorState]:
    cur.execute(
        sql.SQL(
            "SELECT table_name, kind, column_name, position,"
            " extract(epoch FROM reconcile_started_at)::float8,"
            " extract(epoch FROM reconciled_at)::float8 FROM {}"
        ).format(pg_ident(schema, "cursor_position"))
    )
    return {
        str(r[0]): CursorState(str(r[0]), str(r[1]), str(r[2]), r[3], r[4], r[5])
        for r in cur.fetchall()
    }


def init_cursor(
    cur: psycopg.Cursor[Any],
    schema: str,
    table: str,
    kind: str,
    column: str,
    position: dict[str, Any],
) -> None:
    """Record a cursor's start (before the snapshot copies the table), replacing a
    position recorded for another cursor column; reconciliation history is kept."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, kind, column_name, position, snapshot_position)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET"
            " kind = EXCLUDED.kind, column_name = EXCLUDED.column_name,"
            " position = EXCLUDED.position, snapshot_position = EXCLUDED.snapshot_position"
        ).format(pg_ident(schema, "cursor_position")),
        (table, kind, column, Jsonb(position), Jsonb(position)),
    )


def save_cursor_position(
    cur: psycopg.Cursor[Any], schema: str, table: str, position: dict[str, Any], rows: int
) -> None:
    """Written in the same transaction as the rows the position covers."""
    cur.execute(
        sql.SQL(
            "UPDATE {} SET position = %s, rows_applied = rows_applied + %s, applied_at = now()"
            " WHERE table_name = %s"
        ).format(pg_ident(schema, "cursor_position")),
        (Jsonb(position), rows, table),
    )


def drop_cursor(cur: psycopg.Cursor[Any], schema: str, table: str) -> None:
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE table_name = %s").format(pg_ident(schema, "cursor_position")),
        (table,),
    )


def reconcile_started(cur: psycopg.Cursor[Any], schema: str, table: str) -> None:
    cur.execute(
        sql.SQL("UPDATE {} SET reconcile_started_at = now() WHERE table_name = %s").format(
            pg_ident(schema, "cursor_position")
        ),
        (table,),
    )


def reconcile_finished(cur: psycopg.Cursor[Any], schema: str, table: str, repaired: int) -> None:
    cur.execute(
        sql.SQL(
            "UPDATE {} SET reconciled_at = now(), reconcile_passes = reconcile_passes + 1,"
            " reconcile_repaired = reconcile_repaired + %s WHERE table_name = %s"
        ).format(pg_ident(schema, "cursor_position")),
        (repaired, table),
    )


def load_meta(cur: psycopg.Cursor[Any], schema: str, key: str) -> Any:
    """The value under ``key`` in the state schema's key/value table, or None."""
    cur.execute(
        sql.SQL("SELECT value FROM {} WHERE key = %s").format(pg_ident(schema, "meta")), (key,)
    )
    row = cur.fetchone()
    return row[0] if row else None


def save_meta(cur: psycopg.Cursor[Any], schema: str, key: str, value: object) -> None:
    """Set ``key`` in the state schema's key/value table (JSON ``value``)."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (key, value) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
        ).format(pg_ident(schema, "meta")),
        (key, Jsonb(value)),
    )
