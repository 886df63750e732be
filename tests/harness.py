"""The test harness: driving the replicator the way its users do.

Import as ``from harness import ...`` (``tests/`` is on ``sys.path``).

Everything a test does *to* the product lives here: the daemon as a process
(``replicator run``) or as a thread of the test, the sample writer as a
process, the environment and configurations they run with, source SQLite files
built from scripts, and where the source's change log and the target's applied
position stand (and waiting for them to meet).

Whether the result is right is not decided here: that is :mod:`oracle`, which
shares no code with the product this module drives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import Config, load_config
from replicator.stream.daemon import Daemon

REPLICATOR = Path(sys.executable).with_name("replicator")
CHANGELOG = "_replicator_changelog"
STATE_SCHEMA = "replicator"


# --------------------------------------------------------------------------
# Positions: where the source log ends, where the target has got to.


def _sqlite(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=30)


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
    args = ["run", "--metrics-address", "127.0.0.1:0"]
    if standby:
        args.append("--standby")
    env = daemon_env(source, dsn, **(settings or {}))
    return spawn_daemon(args, env, source, dsn, log_path)


def spawn_daemon(
    args: Sequence[str], env: Mapping[str, str], source: Path, dsn: str, log_path: Path
) -> DaemonProcess:
    """``replicator *args`` as a process whose output (JSON log lines) goes to ``log_path``."""
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        [str(REPLICATOR), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a terminal's Ctrl-C reaches pytest, not the daemon
    )
    return DaemonProcess(proc, log_path, source, dsn, log_file)


def free_port() -> int:
    """A port nothing listens on right now (bound and closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
# Source files and configurations.


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
