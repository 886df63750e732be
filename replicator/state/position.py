"""The stream position: the one value that says which changes the target holds.

Every change with ``seq <= position.seq`` has its effect committed in the
target, and the position is written in the same transaction as that effect:
whatever stops the process, a restart reads exactly the changes not yet
applied. Per-table counts (``table_stats``) ride in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from replicator.identifiers import pg_ident
from replicator.target.connection import Cursor


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where the stream stands: every change with ``seq <= seq`` is applied."""

    seq: int
    snapshot_seq: int  # the log position recorded before the snapshot started

    def __str__(self) -> str:
        return str(self.seq)

    @classmethod
    def parse(cls, text: str) -> StreamPosition:
        return cls(seq=int(text), snapshot_seq=int(text))


def load_position(cur: Cursor, schema: str) -> StreamPosition | None:
    cur.execute(
        sql.SQL("SELECT seq, snapshot_seq FROM {} WHERE id = 1").format(
            pg_ident(schema, "stream_position")
        )
    )
    row = cur.fetchone()
    return StreamPosition(int(row[0]), int(row[1])) if row else None


def init_position(cur: Cursor, schema: str, seq: int) -> StreamPosition:
    """Record the log position a snapshot starts from (kept when one is recorded)."""
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (id, seq, snapshot_seq) VALUES (1, %s, %s) ON CONFLICT (id) DO NOTHING"
        ).format(pg_ident(schema, "stream_position")),
        (seq, seq),
    )
    found = load_position(cur, schema)
    assert found is not None
    return found


def save_position(cur: Cursor, schema: str, seq: int, applied: int) -> None:
    """Advance to ``seq`` in the transaction that applied ``applied`` more changes."""
    cur.execute(
        sql.SQL(
            "UPDATE {} SET seq = %s, applied_at = now(), "
            "changes_applied = changes_applied + %s WHERE id = 1"
        ).format(pg_ident(schema, "stream_position")),
        (seq, applied),
    )


def save_table_stats(cur: Cursor, schema: str, counts: Mapping[str, int], last_seq: int) -> None:
    """Add ``counts`` (table -> changes applied) to each table's running totals."""
    if not counts:
        return
    cur.executemany(
        sql.SQL(
            "INSERT INTO {} AS s (table_name, changes_applied, last_applied_at, last_position)"
            " VALUES (%s, %s, now(), %s) ON CONFLICT (table_name) DO UPDATE SET"
            " changes_applied = s.changes_applied + EXCLUDED.changes_applied,"
            " last_applied_at = now(), last_position = EXCLUDED.last_position"
        ).format(pg_ident(schema, "table_stats")),
        [(table, count, last_seq) for table, count in sorted(counts.items())],
    )


def load_table_stats(cur: Cursor, schema: str) -> dict[str, tuple[int, datetime | None]]:
    """Table -> (changes applied, when the last one was)."""
    cur.execute(
        sql.SQL("SELECT table_name, changes_applied, last_applied_at FROM {}").format(
            pg_ident(schema, "table_stats")
        )
    )
    return {str(r[0]): (int(r[1]), r[2]) for r in cur.fetchall()}


def changes_applied(cur: Cursor, schema: str) -> int:
    """Changes applied by the stream since its position was recorded."""
    cur.execute(
        sql.SQL("SELECT changes_applied FROM {} WHERE id = 1").format(
            pg_ident(schema, "stream_position")
        )
    )
    row = cur.fetchone()
    return int(row[0]) if row else 0


def position_kept(cur: Cursor, schema: str) -> bool:
    """Whether ``schema`` holds a stream position table at all (read-only sessions
    must not create it)."""
    cur.execute(
        "SELECT to_regclass(format('%%I.stream_position', %s::text)) IS NOT NULL", (schema,)
    )
    row = cur.fetchone()
    return bool(row and row[0])
