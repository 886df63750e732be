"""Several targets fed from one source: who reads the change log, and how far.

One SQLite file may feed several targets at once (a staging and a production
database during a migration). Each target's replicator registers in
``_replicator_consumers`` with the position its target holds durably, the
tables it captures, and when it was last seen. The triggers are shared (a
table's three triggers serve every consumer, and are installed only when they
differ from what is there), and the log is pruned only below the lowest
registered position, so no consumer ever loses a change another one has
applied. A consumer gone for good holds the log back: ``replicator status`` and
``replicator check`` name it, and ``replicator uninstall --consumer ID`` drops it.

Every function here runs inside the caller's write or read transaction, next to
the change log's own statements (replicator/source/changelog.py).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from replicator.identifiers import sqlite_ident

CONSUMERS = "_replicator_consumers"
# A replicator touches its row at least once a minute while it runs (see
# replicator/stream/tail.py); ten minutes without a touch is worth an operator's look.
STALE_AFTER = 600.0

# WITHOUT ROWID: the key is the table's own, so no sqlite_autoindex_* object of
# ours shows up among the application's schema objects.
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {sqlite_ident(CONSUMERS)} (
    consumer      TEXT PRIMARY KEY,
    target        TEXT NOT NULL,
    state_schema  TEXT NOT NULL,
    position      INTEGER NOT NULL,
    tables        TEXT NOT NULL DEFAULT '[]',
    host          TEXT,
    pid           INTEGER,
    registered_at REAL NOT NULL,
    seen_at       REAL NOT NULL
) WITHOUT ROWID
"""
_COLUMNS = "consumer, target, state_schema, position, tables, host, pid, registered_at, seen_at"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a target's replicator is to the source: an id kept in its state schema
    (so it survives restarts, host moves and password changes) and, for people,
    the target's DSN with the password masked."""

    consumer: str
    target: str  # redacted: never a password
    state_schema: str


@dataclass(frozen=True, slots=True)
class Consumer:
    consumer: str
    target: str
    state_schema: str
    position: int  # every change up to here is durable in that target
    tables: tuple[str, ...]
    host: str | None
    pid: int | None
    registered_at: float
    seen_at: float

    @property
    def label(self) -> str:
        return f"{self.target} (state schema {self.state_schema!r})"

    def seen_ago(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.seen_at)

    def stale(self, now: float | None = None) -> bool:
        return self.seen_ago(now) > STALE_AFTER


def ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(_CREATE)


def exists(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?", (CONSUMERS,)
    ).fetchone()
    return row is not None


def registered(conn: sqlite3.Connection) -> list[Consumer]:
    """Every registered consumer, slowest first (none when the table is not there)."""
    if not exists(conn):
        return []
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM {sqlite_ident(CONSUMERS)} ORDER BY position, consumer"
    ).fetchall()
    return [
        Consumer(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            int(r[3]),
            tuple(str(t) for t in json.loads(r[4] or "[]")),
            None if r[5] is None else str(r[5]),
            None if r[6] is None else int(r[6]),
            float(r[7]),
            float(r[8]),
        )
        for r in rows
    ]


def is_registered(conn: sqlite3.Connection, consumer: str) -> bool:
    if not exists(conn):
        return False
    row = conn.execute(
        f"SELECT 1 FROM {sqlite_ident(CONSUMERS)} WHERE consumer = ?", (consumer,)
    ).fetchone()
    return row is not None


def needed_tables(conn: sqlite3.Connection, *, besides: str | None) -> set[str]:
    """The tables whose triggers the consumers other than ``besides`` capture with."""
    return {t for c in registered(conn) if c.consumer != besides for t in c.tables}


def register(conn: sqlite3.Connection, who: Identity, position: int, tables: Iterable[str]) -> None:
    """Record ``who`` at ``position``, the position its target holds durably now
    (a registration from an earlier run is replaced, its first registration time kept)."""
    now = time.time()
    conn.execute(
        f"INSERT INTO {sqlite_ident(CONSUMERS)} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (consumer) DO UPDATE SET target = excluded.target, "
        "state_schema = excluded.state_schema, position = excluded.position, "
        "tables = excluded.tables, host = excluded.host, pid = excluded.pid, "
        "seen_at = excluded.seen_at",
        (
            who.consumer,
            who.target,
            who.state_schema,
            position,
            json.dumps(sorted(set(tables))),
            socket.gethostname(),
            os.getpid(),
            now,
            now,
        ),
    )


def touch(conn: sqlite3.Connection, consumer: str, position: int) -> bool:
    """Move ``consumer`` to ``position`` (durable in its target) and note it was seen.
    False when it is not registered (dropped by an operator, or the log removed)."""
    if not exists(conn):
        return False
    cur = conn.execute(
        f"UPDATE {sqlite_ident(CONSUMERS)} SET position = max(position, ?), seen_at = ? "
        "WHERE consumer = ?",
        (position, time.time(), consumer),
    )
    return cur.rowcount == 1


def floor(conn: sqlite3.Connection) -> int | None:
    """The lowest registered position: the log may be pruned up to it, not beyond."""
    if not exists(conn):
        return None
    row = conn.execute(f"SELECT min(position) FROM {sqlite_ident(CONSUMERS)}").fetchone()
    return None if row[0] is None else int(row[0])


def drop(conn: sqlite3.Connection, consumer: str) -> bool:
    """Forget ``consumer``: the log is no longer kept for it. True when it was there."""
    if not exists(conn):
        return False
    cur = conn.execute(f"DELETE FROM {sqlite_ident(CONSUMERS)} WHERE consumer = ?", (consumer,))
    return cur.rowcount == 1


def drop_table(conn: sqlite3.Connection) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {sqlite_ident(CONSUMERS)}")
