"""One active replicator per state schema: a session-level advisory lock.

The lock's key is derived from the state schema's name, so two replicators
pointed at the same target state can never both stream; the holder is found
through ``pg_locks`` to name it in errors and in ``replicator status``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Callable

import psycopg

from replicator.config import Config
from replicator.errors import LockHeldError
from replicator.target.connection import Connection, with_keepalives

# pg_locks splits a bigint advisory key into classid (high 32 bits) and objid (low).
_HOLDER_SQL = (
    "SELECT a.application_name, a.client_addr::text, a.backend_start "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = ((%s::bigint >> 32) & 4294967295)::oid "
    "AND l.objid = (%s::bigint & 4294967295)::oid AND l.objsubid = 1"
)


def pair_id(config: Config) -> str:
    """Who a health endpoint answers for: the source file and the state schema.

    ``replicator status`` trusts a /healthz answer only when it carries its own
    pair's id, so another replicator on the same port is never taken for ours.
    """
    source = os.path.realpath(config.require_source())
    return hashlib.sha256(f"{source}\n{config.target.state_schema}".encode()).hexdigest()[:16]


def lock_key(state_schema: str) -> int:
    """A signed 64-bit advisory-lock key, the same for every replicator of a state schema."""
    digest = hashlib.sha256(f"replicator:{state_schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_holder(conn: Connection, state_schema: str) -> str | None:
    """The application name of the session holding the schema's lock, if any."""
    key = lock_key(state_schema)
    row = conn.execute(_HOLDER_SQL, (key, key)).fetchone()
    return str(row[0]) if row else None


class PairLock:
    """Held on a connection of its own for as long as the daemon runs."""

    def __init__(self, dsn: str, state_schema: str, connect_timeout: int) -> None:
        self.dsn = dsn
        self.schema = state_schema
        self.key = lock_key(state_schema)
        self.connect_timeout = connect_timeout
        self.conn: Connection | None = None
        self.identity = f"replicator {socket.gethostname()} pid {os.getpid()}"

    def acquire(
        self, stop: threading.Event, *, standby: bool, waiting: Callable[[str], None]
    ) -> bool:
        """Take the lock (True), or raise :class:`LockHeldError` naming its holder. With
        ``standby``, wait for it instead (``waiting(holder)`` every two seconds). False
        when ``stop`` is set before the lock is ours."""
        while not stop.is_set():
            if self.try_acquire():
                return True
            holder = self.holder()
            if not standby:
                self.release()
                raise LockHeldError(
                    f"another replicator is already running for state schema {self.schema!r}: "
                    f"{holder} (use --standby to wait and take over when it stops)"
                )
            waiting(holder)
            stop.wait(2.0)
        return False

    def try_acquire(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                with_keepalives(self.dsn),
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name=self.identity,
            )
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        return bool(row and row[0])

    def holder(self) -> str:
        assert self.conn is not None
        row = self.conn.execute(_HOLDER_SQL, (self.key, self.key)).fetchone()
        if not row:
            return "another replicator (it has just released the lock)"
        name, addr, since = row
        where = f" from {addr}" if addr else ""
        return f"{name}{where}, connected since {since:%Y-%m-%d %H:%M:%S %Z}"

    def alive(self) -> bool:
        if self.conn is None or self.conn.closed:
            return False
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def release(self) -> None:
        if self.conn is not None and not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self.conn.close()
        self.conn = None
