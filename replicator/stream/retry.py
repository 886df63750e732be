"""Which failures are worth retrying, and how repeated failures are logged.

Transient PostgreSQL failures (connection lost, admin shutdown, too many
connections, serialization failure, deadlock, read-only during failover, disk
full) and a busy SQLite are retried by the daemon with capped, jittered
exponential backoff; everything else ends it with a clear message.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import psycopg

from replicator.errors import SourceError
from replicator.target.connection import first_line

# SQLSTATEs worth retrying, with the kind we count them under.
TRANSIENT_STATES = {
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "53300": "too_many_connections",
    "25006": "read_only",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "58030": "io_error",
}


# A connection the server refuses for who we are or what we ask for: retried a few
# times (a database being created, a password being rotated), then fatal (exit 2).
REFUSED_ATTEMPTS = 5
_REFUSALS = (
    "password authentication failed",
    "authentication failed for user",
    "no pg_hba.conf entry",
    "does not exist",  # FATAL: database "x" / role "x" does not exist
    "password is required",
    "permission denied for database",
)


def _refused(exc: BaseException) -> bool:
    text = str(exc)
    return "FATAL" in text and any(r in text for r in _REFUSALS)


def transient_kind(exc: BaseException) -> str | None:
    """The retry kind of a transient error, or None when retrying cannot help."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "sqlite_busy" if "locked" in text or "busy" in text else None
    if isinstance(exc, SourceError) and isinstance(exc.__cause__, sqlite3.OperationalError):
        # e.g. installing the triggers while the application holds the write lock
        return transient_kind(exc.__cause__)
    if not isinstance(exc, psycopg.Error):
        return None
    state = getattr(exc, "sqlstate", None)
    if state in TRANSIENT_STATES:
        return TRANSIENT_STATES[state]
    if state and state.startswith("08"):
        return "connection"
    if isinstance(exc, psycopg.OperationalError) and state is None and _refused(exc):
        return "refused"  # bad credentials, no such database or role: briefly, see AUTH_ATTEMPTS
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and state is None:
        return "connection"  # dropped connection, refused connect
    return None


class ErrorLog:
    """Rate-limited logging of repeated failures, and a 'recovered' line at the end.

    At most one ``retrying`` line per ``every`` seconds, whether the failures
    belong to one long outage or to many short ones (a flapping connection):
    an outage that began and ended between two lines gets no lines of its
    own, and is counted in the next line (``unlogged_outages`` and their
    ``unlogged_failures``). ``replicator_retries_total`` counts every retry.
    """

    def __init__(self, log: Any, every: float = 30.0) -> None:
        self.log = log
        self.every = every
        self.failures = 0  # in the current outage
        self.first_at = 0.0
        self._last_logged = float("-inf")
        self._outage_logged = False
        self._unlogged_outages = 0
        self._unlogged_failures = 0
        self.last_error = ""

    def failed(self, kind: str, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        self.failures += 1
        self.last_error = first_line(exc)
        if self.failures == 1:
            self.first_at = now
        if now - self._last_logged >= self.every:
            self._last_logged = now
            self._outage_logged = True
            earlier: dict[str, int] = {}
            if self._unlogged_outages:
                earlier = {
                    "unlogged_outages": self._unlogged_outages,
                    "unlogged_failures": self._unlogged_failures,
                }
                self._unlogged_outages = self._unlogged_failures = 0
            self.log.warning(
                "retrying",
                kind=kind,
                error=self.last_error,
                failures=self.failures,
                retry_in_s=round(delay, 2),
                **earlier,
            )

    def recovered(self) -> None:
        if self.failures:
            if self._outage_logged:
                self.log.info(
                    "recovered",
                    failures=self.failures,
                    seconds=round(time.monotonic() - self.first_at, 2),
                )
            else:
                self._unlogged_outages += 1
                self._unlogged_failures += self.failures
            self.failures = 0
            self._outage_logged = False
            self.last_error = ""
