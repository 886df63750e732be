"""Helpers for the streaming tests: the daemon as a process or a thread, waiting
for it to catch up, and a typed comparison of source and target.

Import as ``from harness import ...`` (``tests/`` is on ``sys.path``).

The comparison normalises values on its own (it does not call
``replicator.coerce``), so a coercion bug in the replicator cannot hide
itself by being applied to both sides.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import Config, load_config
from replicator.stream.daemon import Daemon

REPLICATOR = Path(sys.executable).with_name("replicator")
CHANGELOG = "_replicator_changelog"
STATE_SCHEMA = "replicator"
EXCLUDED_PREFIXES = ("sqlite_", "_replicator_")
EXCLUDED_TABLES = frozenset({"alembic_version"})
ROWID_COLUMN = "_replicator_rowid"


# --------------------------------------------------------------------------
# Positions: where the source log ends, where the target has got to.


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.text_factory = lambda raw: raw.decode("utf-8", errors="surrogateescape")
    return conn


def source_head(path: Path) -> int | None:
    """The change log's last handed-out ``seq`` (None before triggers exist)."""
    conn = _sqlite(path)
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (CHANGELOG,))
        found = row.fetchone()
    except sqlite3.OperationalError as exc:  # no sqlite_sequence yet
        if "no such table" in str(exc):
            return None
        raise
    finally:
        conn.close()
    return int(found[0]) if found else None


def changelog_rows(path: Path) -> list[int]:
    """The seqs still in the change log (what pruning has not removed)."""
    conn = _sqlite(path)
    try:
        return [int(r[0]) for r in conn.execute(f'SELECT seq FROM "{CHANGELOG}" ORDER BY seq')]
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class Position:
    seq: int
    snapshot_seq: int
    changes_applied: int


def stream_position(dsn: str, state_schema: str = STATE_SCHEMA) -> Position | None:
    """The committed stream position in the target (None before there is one)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT to_regclass(format('%%I.stream_position', %s::text))", (state_schema,)
        ).fetchone()
        if not found or found[0] is None:
            return None
        row = conn.execute(
            sql.SQL("SELECT seq, snapshot_seq, changes_applied FROM {} WHERE id = 1").format(
                sql.Identifier(state_schema, "stream_position")
            )
        ).fetchone()
    return Position(int(row[0]), int(row[1]), int(row[2])) if row else None


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, every: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def wait_caught_up(
    source: Path,
    dsn: str,
    *,
    timeout: float = 60.0,
    alive: Callable[[], str | None] | None = None,
) -> Position:
    """Wait until the applied position equals the source log's head.

    ``alive`` returns why the daemon is gone (None while it runs), so a dead
    daemon fails the wait at once with its reason instead of a timeout.
    """
    deadline = time.monotonic() + timeout
    last: tuple[int | None, Position | None] = (None, None)
    while True:
        if alive is not None:
            gone = alive()
            if gone:
                raise AssertionError(f"the daemon stopped before catching up: {gone}")
        head = source_head(source)
        pos = stream_position(dsn)
        last = (head, pos)
        if head is not None and pos is not None and pos.seq == head:
            return pos
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not caught up after {timeout:.0f}s: source head {last[0]}, applied {last[1]}"
            )
        time.sleep(0.05)


# --------------------------------------------------------------------------
# `replicator run` as a process.


def daemon_env(source: Path, dsn: str, **settings: str) -> dict[str, str]:
    """The environment for a daemon process: our source and target, JSON logs.

    Any REPLICATOR_* variable of the calling environment is dropped, so the
    developer's shell cannot change what a test runs. ``settings`` are extra
    REPLICATOR_* variables (e.g. ``REPLICATOR_SNAPSHOT_CHUNK_ROWS="50"``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(
        DATABASE_PATH=str(source),
        DATABASE_URL=dsn,
        REPLICATOR_LOG_FORMAT="json",
        REPLICATOR_LOG_LEVEL="info",
        REPLICATOR_STREAM_POLL_INTERVAL="0.2",
    )
    env.update(settings)
    return env


@dataclass
class DaemonProcess:
    """One ``replicator run`` process; its stderr (JSON log lines) goes to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    source: Path
    dsn: str
    _log_file: Any = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict):
                    out.append(item)
        return out

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def gone(self) -> str | None:
        code = self.proc.poll()
        if code is None:
            return None
        return f"exit code {code}; log tail:\n{self.tail()}"

    def wait_event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if event.get("event") == name:
                    return event
            gone = self.gone()
            if gone:
                raise AssertionError(f"daemon exited before logging {name!r}: {gone}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name!r} log line after {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.02)

    def wait_streaming(self, timeout: float = 60.0) -> int:
        """Wait for the ``streaming`` log line (and the committed position it names)."""
        event = self.wait_event("streaming", timeout)
        return int(event["position"])

    @property
    def metrics_port(self) -> int:
        address = str(self.wait_event("metrics_listening", 30)["address"])
        return int(address.rsplit(":", 1)[1])

    def wait_caught_up(self, timeout: float = 60.0) -> Position:
        try:
            return wait_caught_up(self.source, self.dsn, timeout=timeout, alive=self.gone)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ndaemon pid {self.pid} log tail:\n{self.tail()}") from None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait; returns the exit code (the process is gone either way)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"daemon did not stop within {timeout:.0f}s of SIGTERM:\n{self.tail()}"
            ) from None
        finally:
            self._close()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close()

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._close()

    def _close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start_daemon(
    source: Path,
    dsn: str,
    log_path: Path,
    *,
    standby: bool = False,
    settings: Mapping[str, str] | None = None,
) -> DaemonProcess:
    """Start ``replicator run`` with DATABASE_PATH/DATABASE_URL and a free metrics port."""
    args = [str(REPLICATOR), "run", "--metrics-address", "127.0.0.1:0"]
    if standby:
        args.append("--standby")
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        args,
        env=daemon_env(source, dsn, **(settings or {})),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's Ctrl-C reaches pytest, not the daemon
    )
    return DaemonProcess(proc, log_path, source, dsn, log_file)


@contextlib.contextmanager
def daemon_process(
    source: Path, dsn: str, log_path: Path, **kwargs: Any
) -> Iterator[DaemonProcess]:
    """A daemon that is always gone after the block (SIGKILL if still running)."""
    daemon = start_daemon(source, dsn, log_path, **kwargs)
    try:
        yield daemon
    finally:
        daemon.kill()


# --------------------------------------------------------------------------
# The daemon in a thread of the test process.


def daemon_config(source: Path, dsn: str, **overrides: Any) -> Config:
    """A Config for an in-process Daemon: no metrics server, fast polling.

    ``overrides`` use the dotted names of ``load_config`` with ``__`` for the
    dot, e.g. ``snapshot__chunk_rows=50``.
    """
    values: dict[str, Any] = {
        "source.path": str(source),
        "target.url": dsn,
        "metrics.address": "",
        "stream.poll_interval": 0.1,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config(None, env={}, overrides=values)


class DaemonThread:
    """``Daemon.run`` in a thread (no signal handlers); failures are re-raised on stop."""

    def __init__(self, config: Config, *, standby: bool = False) -> None:
        self.config = config
        self.daemon = Daemon(config, standby=standby, install_signals=False)
        self.error: BaseException | None = None
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="replicator-daemon", daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = self.daemon.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> DaemonThread:
        self.thread.start()
        return self

    def gone(self) -> str | None:
        if self.thread.is_alive():
            return None
        return f"daemon thread ended: {self.error!r}" if self.error else "daemon thread ended"

    def wait_streaming(self, timeout: float = 60.0) -> int:
        def streaming() -> bool:
            gone = self.gone()
            if gone:
                raise AssertionError(gone)
            return self.daemon.health.state == "streaming"

        wait_until(streaming, timeout, "the daemon to stream")
        assert self.daemon.position is not None
        return self.daemon.position.seq

    def wait_caught_up(self, timeout: float = 60.0) -> Position:
        path = self.config.require_source()
        return wait_caught_up(path, self.config.require_target(), timeout=timeout, alive=self.gone)

    def stop(self, timeout: float = 30.0) -> None:
        self.daemon.request_stop()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"daemon thread did not stop within {timeout:.0f}s")
        if self.error is not None:
            raise AssertionError(f"the daemon failed: {self.error!r}") from self.error

    def __enter__(self) -> DaemonThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if exc_info[0] is None:
            self.stop()
        else:  # keep the test's own failure; just make sure the thread ends
            self.daemon.request_stop()
            self.thread.join(30)


# --------------------------------------------------------------------------
# The writer (python -m replicator.demo.sample write) as a process.


@dataclass
class WriterProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    _log_file: Any = field(repr=False, default=None)

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM; the writer finishes its transaction and prints its WriterStats JSON."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._close()

    def _close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait(self, timeout: float) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._close()
        if self.proc.returncode != 0:
            raise AssertionError(
                f"writer exited with {self.proc.returncode}:\n"
                + self.log_path.read_text(errors="replace")[-3000:]
            )
        stats: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return stats


def start_writer(
    path: Path, log_path: Path, *, duration: float | str = "inf", rate: float | None, seed: int
) -> WriterProcess:
    args = [sys.executable, "-m", "replicator.demo.sample", "write", str(path)]
    args += ["--duration", str(duration), "--seed", str(seed)]
    if rate is not None:
        args += ["--rate", str(rate)]
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        start_new_session=True,
    )
    return WriterProcess(proc, log_path, log_file)


# --------------------------------------------------------------------------
# Typed comparison of every replicated table.


class Unreadable:
    """A source value the comparison cannot read as its target type: never equal."""

    def __init__(self, value: object, why: str) -> None:
        self.value = value
        self.why = why

    def __eq__(self, other: object) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.why}: {self.value!r}>"


_TS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_timestamp(text: str) -> datetime | Unreadable:
    """ISO-8601 text as a naive UTC datetime (text without an offset is UTC)."""
    match = _TS.fullmatch(text.strip())
    if not match:
        return Unreadable(text, "not a timestamp")
    year, month, day, hour, minute, second, frac, offset = match.groups()
    digits = (frac or "").ljust(6, "0")
    if digits[6:].strip("0"):
        return Unreadable(text, "finer than microseconds")
    try:
        value = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int(digits[:6]),
        )
    except ValueError:
        return Unreadable(text, "no such date or time")
    if offset and offset.upper() != "Z":
        sign = -1 if offset[0] == "-" else 1
        body = offset[1:].replace(":", "")
        delta = timedelta(hours=int(body[:2]), minutes=int(body[2:] or 0))
        value = value.replace(tzinfo=timezone(sign * delta)).astimezone(UTC).replace(tzinfo=None)
    return value


def _loads_json(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def _float4(value: float) -> float:
    return float(struct.unpack("f", struct.pack("f", value))[0])


Normaliser = Callable[[object], object]


def _source_normaliser(pg_type: str) -> Normaliser:
    """How a SQLite value reads as a value of ``pg_type`` (None stays None)."""
    base = pg_type.split("(", 1)[0].strip()

    def integer(v: object) -> object:
        if type(v) is int:
            return v
        if type(v) is float and v.is_integer():
            return int(v)
        if type(v) is str and re.fullmatch(r"\s*[+-]?\d+\s*", v):
            return int(v)
        return Unreadable(v, pg_type)

    def double(v: object) -> object:
        if type(v) in (int, float):
            return float(v)  # type: ignore[arg-type]
        if type(v) is str:
            try:
                return float(v)
            except ValueError:
                pass
        return Unreadable(v, pg_type)

    def numeric(v: object) -> object:
        try:
            if type(v) is float:
                return Decimal(repr(v))
            if type(v) in (int, str):
                return Decimal(v)  # type: ignore[arg-type]
        except InvalidOperation:
            pass
        return Unreadable(v, pg_type)

    def boolean(v: object) -> object:
        if type(v) is int and v in (0, 1):
            return bool(v)
        if type(v) is str and v.strip().lower() in ("true", "false", "t", "f", "1", "0"):
            return v.strip().lower() in ("true", "t", "1")
        return Unreadable(v, pg_type)

    def text(v: object) -> object:
        if type(v) is str:
            return v
        if type(v) is int:
            return str(v)
        if type(v) is float:
            return repr(v)
        if type(v) is bytes:
            return v.decode("utf-8", errors="surrogateescape")
        return Unreadable(v, pg_type)

    def timestamp(v: object) -> object:
        return parse_timestamp(v) if type(v) is str else Unreadable(v, pg_type)

    def day(v: object) -> object:
        if type(v) is str:
            ts = parse_timestamp(v)
            if isinstance(ts, datetime) and ts == datetime(ts.year, ts.month, ts.day):
                return ts.date()
        return Unreadable(v, pg_type)

    def jsonish(v: object) -> object:
        if type(v) is bytes:
            v = v.decode("utf-8", errors="surrogateescape")
        if type(v) is str:
            try:
                return _loads_json(v)
            except ValueError:
                return Unreadable(v, "not JSON")
        if type(v) in (int, float):
            return _loads_json(json.dumps(v))
        return Unreadable(v, pg_type)

    def blob(v: object) -> object:
        if type(v) is bytes:
            return v
        if type(v) is str:
            return v.encode("utf-8", errors="surrogateescape")
        return Unreadable(v, pg_type)

    table: dict[str, Normaliser] = {
        "smallint": integer,
        "integer": integer,
        "bigint": integer,
        "double precision": double,
        "real": lambda v: _float4(x) if isinstance(x := double(v), float) else x,
        "numeric": numeric,
        "boolean": boolean,
        "text": text,
        "character varying": text,
        "character": text,
        "json": jsonish,
        "jsonb": jsonish,
        "bytea": blob,
        "date": day,
        "uuid": lambda v: str(v).lower() if isinstance(v, str) else Unreadable(v, pg_type),
    }
    if base.startswith("timestamp"):
        return timestamp
    return table.get(base, lambda v: v)


def _target_normaliser(pg_type: str) -> Normaliser:
    base = pg_type.split("(", 1)[0].strip()
    if pg_type.startswith("timestamp") and pg_type.endswith(" with time zone"):

        def aware(v: object) -> object:
            assert isinstance(v, datetime)
            return v.astimezone(UTC).replace(tzinfo=None)

        return aware
    if base in ("json", "jsonb"):
        return lambda v: _loads_json(v) if isinstance(v, str) else v
    if base == "real":
        return lambda v: _float4(v) if isinstance(v, float) else v
    if base == "character":
        return lambda v: v.rstrip(" ") if isinstance(v, str) else v
    if base == "uuid":
        return str
    return lambda v: v


@dataclass(frozen=True, slots=True)
class TargetColumn:
    name: str
    pg_type: str


def _target_columns(
    conn: psycopg.Connection[Any], schema: str, table: str
) -> tuple[list[TargetColumn], list[str]]:
    cols = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    pk = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
        "WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary ORDER BY k.ord",
        (schema, table),
    ).fetchall()
    return [TargetColumn(str(r[0]), str(r[1])) for r in cols], [str(r[0]) for r in pk]


def replicated_tables(source: Path) -> list[str]:
    """Source tables the default configuration replicates."""
    conn = _sqlite(source)
    try:
        names = [
            str(r[0]) for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        ]
    finally:
        conn.close()
    return sorted(
        n for n in names if not n.startswith(EXCLUDED_PREFIXES) and n not in EXCLUDED_TABLES
    )


def open_dead_letters(dsn: str, state_schema: str = STATE_SCHEMA) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute(
            "SELECT to_regclass(format('%%I.dead_letters', %s::text))", (state_schema,)
        ).fetchone()
        if not found or found[0] is None:
            return []
        cur = conn.execute(
            sql.SQL(
                "SELECT table_name, key, column_name, error, stage, position FROM {} "
                "WHERE resolved_at IS NULL ORDER BY id"
            ).format(sql.Identifier(state_schema, "dead_letters"))
        )
        names = [d.name for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@dataclass
class Comparison:
    """What :func:`compare` found; ``str()`` is a readable diff."""

    rows: dict[str, int] = field(default_factory=dict)  # table -> source rows compared
    skipped: dict[str, int] = field(default_factory=dict)  # table -> open dead-letter rows
    differences: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not self.differences

    def _note(self, table: str, kind: str, line: str) -> None:
        self.counts.setdefault(table, {}).setdefault(kind, 0)
        self.counts[table][kind] += 1
        self.differences.append(line)

    def __str__(self) -> str:
        if self.equal:
            total = sum(self.rows.values())
            return f"{total} rows in {len(self.rows)} tables equal"
        summary = "; ".join(
            f"{t}: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            for t, kinds in sorted(self.counts.items())
        )
        shown = self.differences[:40]
        more = len(self.differences) - len(shown)
        lines = [f"source and target differ ({summary})", *shown]
        if more:
            lines.append(f"... and {more} more")
        return "\n".join(lines)


def _key_text(key: Sequence[object]) -> str:
    return json.dumps([v if isinstance(v, int | str) else repr(v) for v in key], default=repr)


def compare(
    source: Path,
    dsn: str,
    *,
    schema: str = "public",
    state_schema: str = STATE_SCHEMA,
    tables: Sequence[str] | None = None,
) -> Comparison:
    """Compare every replicated table row for row, column for column, typed.

    Source values are read as the target column's type (ISO text -> naive UTC
    datetime, JSON text -> parsed JSON, 0/1 -> bool, numbers by value); rows
    whose key has an open dead letter are left out on both sides.
    """
    result = Comparison()
    dead: dict[str, list[list[Any]]] = {}
    for letter in open_dead_letters(dsn, state_schema):
        dead.setdefault(letter["table_name"], []).append(letter["key"])
    src = _sqlite(source)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for table in tables if tables is not None else replicated_tables(source):
                _compare_table(src, conn, schema, table, dead.get(table, []), result)
    finally:
        src.close()
    return result


def _compare_table(
    src: sqlite3.Connection,
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    dead_keys: list[list[Any]],
    result: Comparison,
) -> None:
    target_cols, pk = _target_columns(conn, schema, table)
    if not target_cols:
        result._note(table, "missing tables", f"{table}: no such table in the target")
        return
    by_name = {c.name: c for c in target_cols}
    source_cols = [
        str(r[1])
        for r in src.execute(f'PRAGMA table_xinfo("{table}")')
        if int(r[6]) == 0 and str(r[1]) in by_name
    ]
    key_source = ["rowid" if k == ROWID_COLUMN else k for k in pk]
    select_src = ", ".join(["rowid" if k == "rowid" else f'"{k}"' for k in key_source])
    select_src += "".join(f', "{c}"' for c in source_cols)
    compared = [by_name[c] for c in source_cols]
    src_norm = [_source_normaliser(c.pg_type) for c in compared]
    tgt_norm = [_target_normaliser(c.pg_type) for c in compared]
    key_src_norm = [_source_normaliser(by_name[k].pg_type) for k in pk]

    def src_key(raw: Sequence[object]) -> tuple[object, ...]:
        out = []
        for f, v in zip(key_src_norm, raw, strict=True):
            n = f(v) if v is not None else None
            out.append(n.value if isinstance(n, Unreadable) else n)
        return tuple(out)

    skip = {src_key(k) for k in dead_keys if isinstance(k, list) and len(k) == len(pk)}
    source_rows: dict[tuple[object, ...], tuple[object, ...]] = {}
    for row in src.execute(f'SELECT {select_src} FROM "{table}"'):
        key = src_key(row[: len(pk)])
        if key in skip:
            result.skipped[table] = result.skipped.get(table, 0) + 1
            continue
        values = row[len(pk) :]
        source_rows[key] = tuple(
            f(v) if v is not None else None for f, v in zip(src_norm, values, strict=True)
        )
    select_tgt = sql.SQL(", ").join(
        [sql.Identifier(k) for k in pk]
        + [
            sql.SQL("{}::text").format(sql.Identifier(c.name))
            if c.pg_type in ("json", "jsonb")
            else sql.Identifier(c.name)
            for c in compared
        ]
    )
    target_rows: dict[tuple[object, ...], tuple[object, ...]] = {}
    for row in conn.execute(
        sql.SQL("SELECT {} FROM {}").format(select_tgt, sql.Identifier(schema, table))
    ):
        key = tuple(row[: len(pk)])
        if key in skip:
            continue
        target_rows[key] = tuple(
            f(v) if v is not None else None for f, v in zip(tgt_norm, row[len(pk) :], strict=True)
        )
    result.rows[table] = len(source_rows)
    for key in sorted(source_rows.keys() - target_rows.keys(), key=repr):
        result._note(table, "missing in target", f"{table} {_key_text(key)}: missing in target")
    for key in sorted(target_rows.keys() - source_rows.keys(), key=repr):
        result._note(table, "extra in target", f"{table} {_key_text(key)}: only in target")
    for key in sorted(source_rows.keys() & target_rows.keys(), key=repr):
        s_row, t_row = source_rows[key], target_rows[key]
        for col, s, t in zip(compared, s_row, t_row, strict=True):
            if not _same(s, t):
                result._note(
                    table,
                    "values differ",
                    f"{table} {_key_text(key)} {col.name} ({col.pg_type}): "
                    f"source {s!r} != target {t!r}",
                )


def _same(a: object, b: object) -> bool:
    if isinstance(a, Unreadable) or isinstance(b, Unreadable):
        return False
    if type(a) is float and type(b) is float:
        return a == b or (math.isnan(a) and math.isnan(b))  # NaN equals NaN here
    return bool(a == b) and (a is None) == (b is None)


def assert_replicated(source: Path, dsn: str, **kwargs: Any) -> Comparison:
    """The typed comparison, failing with its diff when anything differs."""
    comparison = compare(source, dsn, **kwargs)
    assert comparison.equal, str(comparison)
    assert sum(comparison.rows.values()) > 0, "nothing was compared"
    return comparison


def like_sum(
    *, source: Path | None = None, dsn: str | None = None, without: Sequence[str] = ()
) -> int:
    """sum(tweets.like_count) on one side, leaving out the tweets ``without``
    (e.g. rows that are dead letters, so only one side holds them)."""
    if source is not None:
        conn = _sqlite(source)
        try:
            rows = conn.execute("SELECT tweet_id, like_count FROM tweets").fetchall()
        finally:
            conn.close()
    else:
        assert dsn is not None
        with psycopg.connect(dsn, autocommit=True) as pg:
            rows = pg.execute("SELECT tweet_id, like_count FROM tweets").fetchall()
    skip = set(without)
    return sum(int(n or 0) for tweet_id, n in rows if tweet_id not in skip)


def sqlite_from_script(path: Path, script: str) -> Path:
    """A SQLite file at ``path`` made by running ``script``."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
        conn.commit()
    finally:
        conn.close()
    return path


def rows_script(table: str, count: int, select: str) -> str:
    """INSERT ``count`` rows into ``table`` from ``select`` over ``i`` = 1..count."""
    return (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
        f"INSERT INTO {table} SELECT {select} FROM n;"
    )


def snapshot_config(source: Path, dsn: str, **snapshot: Any) -> Config:
    """A configuration from ``source`` to ``dsn`` with ``[snapshot]`` settings."""
    overrides: dict[str, Any] = {"source.path": str(source), "target.url": dsn}
    overrides.update({f"snapshot.{k}": v for k, v in snapshot.items()})
    return load_config(None, env={}, overrides=overrides)
