"""The PostgreSQL connection: keepalives, password-free errors, row-error tests."""

from __future__ import annotations

from typing import Any

import psycopg

from replicator.dsn import redact_dsn, without_secrets
from replicator.errors import ConfigError

Cursor = psycopg.Cursor[Any]
Connection = psycopg.Connection[Any]

# TCP keepalives and a user timeout: a network that drops packets without
# closing the connection must surface as a connection error within about a
# minute (and be retried), not hang the daemon on a dead socket.
KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


def with_keepalives(dsn: str) -> str:
    """``dsn`` with the keepalive settings added (settings in ``dsn`` win)."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        return dsn  # malformed: let connect() report it, redacted
    extra = {k: v for k, v in KEEPALIVES.items() if k not in given}
    return psycopg.conninfo.make_conninfo(dsn, **extra)


def connect(dsn: str, *, autocommit: bool = False, connect_timeout: int = 10) -> Connection:
    """Connect, turning every failure into one clear, password-free sentence."""
    try:
        conn = psycopg.connect(
            with_keepalives(dsn),
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name="replicator",
        )
    except psycopg.OperationalError as exc:
        reason = without_secrets(first_line(exc), dsn)
        raise ConfigError(f"cannot connect to target {redact_dsn(dsn)}: {reason}") from None
    mark_origin(conn)
    return conn


def mark_origin(conn: Connection) -> None:
    """Mark the session as the replicator's: the reverse direction's capture
    triggers (replicator/state/reverse.py) skip its writes, so what the forward
    stream applies is never sent back to SQLite. A session setting (not a startup
    option) so that connection poolers need no configuration for it."""
    conn.execute("SELECT set_config('replicator.origin', 'replicator', false)")
    if not conn.autocommit:
        conn.commit()


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def is_row_error(exc: BaseException) -> bool:
    """Errors about the data of a row, not about the connection or server."""
    if isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError):
        return True
    # Raised client-side while dumping a value (psycopg.DataError covers
    # out-of-range ints and the like; UnicodeEncodeError lone surrogates).
    return isinstance(exc, psycopg.DataError | UnicodeEncodeError | OverflowError)
