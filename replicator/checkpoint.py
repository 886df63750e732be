"""Where we are: snapshot progress per table, written in the same transaction as
the chunk it describes, so a crash can never separate data from position."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from replicator.deadletter import json_key
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
        last = tuple(row[1]) if row[1] is not None else None
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
