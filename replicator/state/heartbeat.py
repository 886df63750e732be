"""The daemon's row in the state schema: who runs, since when, in what state.

The running daemon rewrites it every couple of seconds; ``replicator status``
reads its age to tell a running daemon from a stale one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql
from psycopg.types.json import Jsonb

from replicator import __version__
from replicator.identifiers import pg_ident
from replicator.target.connection import Connection


@dataclass(frozen=True, slots=True)
class DaemonRow:
    host: str
    pid: int
    started_at: datetime
    heartbeat_age: float | None  # seconds since the last heartbeat
    state: str
    last_error: str | None
    stopped_at: datetime | None


def beat(
    conn: Connection,
    schema: str,
    *,
    started_at: float,
    state: str,
    last_error: str | None,
    rates: Mapping[str, float],
) -> None:
    """This process is alive, in ``state``, applying ``rates`` (table -> changes/s)."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, host, pid, version, started_at, heartbeat_at, state,"
            " last_error, rates) VALUES (1, %s, %s, %s, to_timestamp(%s), now(), %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
            " version = EXCLUDED.version, started_at = EXCLUDED.started_at,"
            " heartbeat_at = now(), state = EXCLUDED.state, last_error = EXCLUDED.last_error,"
            " rates = EXCLUDED.rates,"
            " stopped_at = NULL"
        ).format(pg_ident(schema, "daemon")),
        (
            socket.gethostname(),
            os.getpid(),
            __version__,
            started_at,
            state,
            last_error,
            Jsonb(dict(rates)),
        ),
    )


def mark_stopped(conn: Connection, schema: str) -> None:
    """This process stops (a row another process has taken over is left alone)."""
    conn.execute(
        sql.SQL(
            "UPDATE {} SET state = 'stopped', stopped_at = now() WHERE id = 1 AND pid = %s"
        ).format(pg_ident(schema, "daemon")),
        (os.getpid(),),
    )


def load_daemon(conn: Connection, schema: str) -> DaemonRow | None:
    row = conn.execute(
        sql.SQL(
            "SELECT host, pid, started_at, extract(epoch FROM now() - heartbeat_at), state,"
            " last_error, stopped_at FROM {} WHERE id = 1"
        ).format(pg_ident(schema, "daemon"))
    ).fetchone()
    if row is None:
        return None
    host, pid, started, age, state, last_error, stopped_at = row
    return DaemonRow(
        host=str(host),
        pid=int(pid),
        started_at=started,
        heartbeat_age=float(age) if age is not None else None,
        state=str(state),
        last_error=str(last_error) if last_error else None,
        stopped_at=stopped_at,
    )


def load_rates(conn: Connection, schema: str) -> dict[str, float]:
    """Table -> changes/s over the last minute, as the daemon last wrote them."""
    row = conn.execute(
        sql.SQL("SELECT rates FROM {} WHERE id = 1").format(pg_ident(schema, "daemon"))
    ).fetchone()
    return dict(row[0] or {}) if row else {}
