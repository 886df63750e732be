"""One exception root, with the exit code each kind of failure maps to.

Driver errors (sqlite3, psycopg) are translated at the boundary with
``raise ... from exc`` so that the CLI can print one clear sentence and exit
with a documented code instead of a traceback.
"""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1


class ConfigError(ReplicatorError):
    """Bad configuration: unknown key, malformed value, missing file, bad URL."""

    exit_code = 2


class SourceError(ReplicatorError):
    """The SQLite source cannot be opened, read or understood."""

    exit_code = 3


class TargetError(ReplicatorError):
    """The PostgreSQL target cannot be reached, or refuses what we need."""

    exit_code = 4


class SchemaError(ReplicatorError):
    """Source and target schemas cannot be mapped onto each other."""

    exit_code = 3


class DataError(ReplicatorError):
    """A row could not be written and ``on_error = "stop"`` made that fatal."""

    exit_code = 5


class LockHeldError(ReplicatorError):
    """Another replicator holds the lock for this source/target pair."""

    exit_code = 6


class CoercionError(ValueError):
    """One value cannot be converted to its target column type.

    Deliberately not a :class:`ReplicatorError`: it is raised per value in the
    hot path and is always caught by the caller, which turns it into a
    dead-letter record (or a :class:`DataError` with table, key and column).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
