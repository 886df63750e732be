"""What the daemon remembers of the source's schema across restarts.

``source_shapes`` holds each replicated table's shape (columns, types, key)
as it was planned; ``paused_tables`` the tables whose changes are held back,
paused until the next start or being re-synced, and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql
from psycopg.types.json import Jsonb

from replicator.identifiers import pg_ident
from replicator.target.connection import Connection, Cursor

HoldState = Literal["paused", "resync"]


@dataclass(frozen=True, slots=True)
class Hold:
    """A table whose changes are not applied, and why."""

    table: str
    state: HoldState  # "paused": until the next start; "resync": being compared and repaired
    reason: str
    position: int  # paused: the stream position then; resync: log entries up to here skipped


def load_shapes(conn: Connection, schema: str) -> dict[str, Any]:
    """Table -> its recorded shape (JSON, as :func:`save_shapes` was given it)."""
    rows = conn.execute(
        sql.SQL("SELECT table_name, shape FROM {}").format(pg_ident(schema, "source_shapes"))
    ).fetchall()
    return {str(r[0]): r[1] for r in rows}


def load_holds(conn: Connection, schema: str) -> dict[str, Hold]:
    rows = conn.execute(
        sql.SQL("SELECT table_name, state, reason, position FROM {}").format(
            pg_ident(schema, "paused_tables")
        )
    ).fetchall()
    return {
        str(r[0]): Hold(str(r[0]), "resync" if r[1] == "resync" else "paused", str(r[2]), int(r[3]))
        for r in rows
    }


def save_shapes(cur: Cursor, schema: str, shapes: Mapping[str, Any]) -> None:
    """Replace the stored shapes with these (table -> JSON), in the caller's transaction."""
    table = pg_ident(schema, "source_shapes")
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE NOT (table_name = ANY(%s))").format(table),
        (list(shapes),),
    )
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} AS s (table_name, shape) VALUES (%s, %s) ON CONFLICT (table_name)"
            " DO UPDATE SET shape = EXCLUDED.shape, recorded_at = now()"
            " WHERE s.shape IS DISTINCT FROM EXCLUDED.shape"
        ).format(table),
        [(name, Jsonb(shape)) for name, shape in sorted(shapes.items())],
    )


def save_holds(cur: Cursor, schema: str, holds: Mapping[str, Hold]) -> None:
    """Replace the stored holds with these, in the caller's transaction (a hold that
    keeps its state keeps its ``since``)."""
    table = pg_ident(schema, "paused_tables")
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE NOT (table_name = ANY(%s))").format(table),
        (list(holds),),
    )
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} AS p (table_name, state, reason, position)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (table_name) DO UPDATE SET"
            " state = EXCLUDED.state, reason = EXCLUDED.reason, position = EXCLUDED.position,"
            " since = CASE WHEN p.state = EXCLUDED.state THEN p.since ELSE now() END"
        ).format(table),
        [(h.table, h.state, h.reason, h.position) for _n, h in sorted(holds.items())],
    )
