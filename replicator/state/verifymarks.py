"""How far each table was last verified (``verify_marks``): what an incremental
verify may trust, and which change-log entries the daemon keeps for it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from replicator.identifiers import pg_ident
from replicator.target.connection import Cursor


@dataclass(frozen=True, slots=True)
class VerifyMark:
    table: str
    position: int  # the change-log head read before the table's rows were
    shape: str  # the table plan's columns, types and key then
    identical: bool
    source_rows: int
    verified_at: datetime | None = None


def load_marks(cur: Cursor, schema: str) -> dict[str, VerifyMark]:
    cur.execute(
        sql.SQL(
            "SELECT table_name, position, shape, identical, source_rows, verified_at FROM {}"
        ).format(pg_ident(schema, "verify_marks"))
    )
    return {
        str(r[0]): VerifyMark(str(r[0]), int(r[1]), str(r[2]), bool(r[3]), int(r[4]), r[5])
        for r in cur.fetchall()
    }


def save_mark(cur: Cursor, schema: str, mark: VerifyMark) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (table_name, position, shape, identical, source_rows, verified_at) "
            "VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (table_name) DO UPDATE SET "
            "position = excluded.position, shape = excluded.shape, "
            "identical = excluded.identical, source_rows = excluded.source_rows, "
            "verified_at = excluded.verified_at"
        ).format(pg_ident(schema, "verify_marks")),
        (mark.table, mark.position, mark.shape, mark.identical, mark.source_rows),
    )


def keep_from(cur: Cursor, schema: str, within_seconds: float) -> int | None:
    """The lowest position of a verify mark set within the last ``within_seconds``:
    the change log is kept after it for the next incremental verify (None: no such mark)."""
    hold = log_hold(cur, schema, within_seconds)
    return None if hold is None else hold[0]


def log_hold(cur: Cursor, schema: str, within_seconds: float) -> tuple[int, datetime] | None:
    """(lowest position, earliest time) of the identical verify marks that hold the change
    log back from pruning now, for ``replicator status`` to show (None: nothing held)."""
    if within_seconds <= 0:
        return None
    cur.execute(
        sql.SQL(
            "SELECT min(position), min(verified_at) FROM {} WHERE identical "
            "AND verified_at > now() - make_interval(secs => %s)"
        ).format(pg_ident(schema, "verify_marks")),
        (within_seconds,),
    )
    row = cur.fetchone()
    return None if row is None or row[0] is None else (int(row[0]), row[1])
