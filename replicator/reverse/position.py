"""The reverse position, kept in the SQLite file itself.

Consumed changes are deleted from PostgreSQL's change table after the SQLite
transaction that applied them commits. A process killed between the two would
apply them again on restart, so that transaction also writes which changes it
consumed (and the rows SQLite refused in it). On restart, before reading
anything new, those changes are deleted in PostgreSQL (and the refused rows
recorded as dead letters) unless that was done already: exactly-once effect,
whatever moment the process died at.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from replicator.identifiers import sqlite_ident

POSITION = "_replicator_reverse_position"

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {sqlite_ident(POSITION)} (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq    INTEGER NOT NULL,
    consumed    TEXT NOT NULL,
    letters     TEXT NOT NULL,
    batches     INTEGER NOT NULL,
    changes     INTEGER NOT NULL,
    applied_at  REAL NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class ReversePosition:
    """The last batch committed to SQLite: the changes it consumed, the rows it
    could not write (dead letters to record), and running totals."""

    last_seq: int = 0
    consumed: tuple[int, ...] = ()
    letters: tuple[dict[str, Any], ...] = field(default=())
    batches: int = 0
    changes: int = 0
    applied_at: float | None = None

    @property
    def is_zero(self) -> bool:
        return self.batches == 0

    def __str__(self) -> str:
        return str(self.last_seq)


def ensure(conn: sqlite3.Connection) -> None:
    """Create the position table (in the caller's write transaction, or on its own)."""
    conn.execute(_CREATE)


def load(conn: sqlite3.Connection) -> ReversePosition:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (POSITION,)
    ).fetchone()
    if exists is None:
        return ReversePosition()
    row = conn.execute(
        f"SELECT last_seq, consumed, letters, batches, changes, applied_at "
        f"FROM {sqlite_ident(POSITION)} WHERE id = 1"
    ).fetchone()
    if row is None:
        return ReversePosition()
    return ReversePosition(
        int(row[0]),
        tuple(int(s) for s in json.loads(row[1])),
        tuple(json.loads(row[2])),
        int(row[3]),
        int(row[4]),
        float(row[5]),
    )


def save(
    conn: sqlite3.Connection,
    before: ReversePosition,
    consumed: list[int],
    letters: list[dict[str, Any]],
) -> ReversePosition:
    """Record a batch, inside the write transaction that applied it."""
    after = ReversePosition(
        max([before.last_seq, *consumed]),
        tuple(consumed),
        tuple(letters),
        before.batches + 1,
        before.changes + len(consumed),
        time.time(),
    )
    conn.execute(
        f"INSERT INTO {sqlite_ident(POSITION)} "
        "(id, last_seq, consumed, letters, batches, changes, applied_at) "
        "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "last_seq = excluded.last_seq, consumed = excluded.consumed, "
        "letters = excluded.letters, batches = excluded.batches, "
        "changes = excluded.changes, applied_at = excluded.applied_at",
        (
            after.last_seq,
            json.dumps(list(consumed)),
            json.dumps(letters, default=str),
            after.batches,
            after.changes,
            after.applied_at,
        ),
    )
    return after


def drop(conn: sqlite3.Connection) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {sqlite_ident(POSITION)}")
