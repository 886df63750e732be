"""The pieces behind "keeps working through faults": the source-file guard, the
rate-limited error log and the classification of a busy source.

The guard must catch a file that vanished, was swapped or was cut under an
open connection, and must never cry wolf while SQLite itself grows, checkpoints
and shrinks the file (a false alarm stops a healthy daemon).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replicator.errors import SourceError
from replicator.source.sqlite import SourceFileChanged, SourceGuard, open_source
from replicator.stream.retry import ErrorLog, transient_kind


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A WAL database with some pages, and an open connection to it (as the daemon has)."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 500,) for _ in range(200)])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    reader = open_source(path, readonly=True)
    reader.execute("SELECT count(*) FROM t").fetchone()
    conn.close()
    yield path, reader
    reader.close()


def lost(guard: SourceGuard) -> SourceFileChanged:
    with pytest.raises(SourceFileChanged) as caught:
        for _ in range(100):  # a suspicion becomes certain once its grace has passed
            guard.check()
            time.sleep(0.01)
    return caught.value


def test_an_untouched_file_passes(db: tuple[Path, sqlite3.Connection]) -> None:
    guard = SourceGuard(db[0])
    try:
        assert guard.check() is None
        assert guard.check() is None
    finally:
        guard.close()


def test_deleted_moved_and_replaced_files_are_told_apart(
    db: tuple[Path, sqlite3.Connection], tmp_path: Path
) -> None:
    path, _ = db
    guard = SourceGuard(path)
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    os.replace(path, tmp_path / "moved.db")
    assert lost(guard).kind == "missing"
    os.replace(other, path)  # something else at the path now
    error = lost(guard)
    assert error.kind == "replaced" and "was replaced by a different file" in str(error)
    guard.close()


def test_a_removed_wal_file_detaches_the_connection(db: tuple[Path, sqlite3.Connection]) -> None:
    path, _ = db
    guard = SourceGuard(path)
    Path(f"{path}-wal").unlink()
    error = lost(guard)
    assert error.kind == "detached" and "no longer sees the application's writes" in str(error)
    guard.close()


@pytest.mark.parametrize(
    ("cut", "kind"),
    [
        (lambda size: 0, "truncated"),
        (lambda size: 60, "truncated"),
        (lambda size: size // 3 + 517, "truncated"),  # mid-page
        (lambda size: size // 2 - (size // 2) % 4096, "truncated"),  # whole pages
    ],
)
def test_truncations_are_caught(db: tuple[Path, sqlite3.Connection], cut: Any, kind: str) -> None:
    path, _ = db
    guard = SourceGuard(path, grace=0.2)
    os.truncate(path, cut(path.stat().st_size))
    error = lost(guard)
    assert error.kind == kind and "was truncated" in str(error)
    guard.close()


def test_a_size_that_a_checkpoint_could_show_is_only_suspected_during_the_grace(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    path, _ = db
    guard = SourceGuard(path, grace=60)
    os.truncate(path, path.stat().st_size - 4096)
    reason = guard.check()
    assert reason is not None and "its header declares" in reason
    assert guard.suspicion == reason
    guard.close()


def test_an_overwritten_header_is_certain(db: tuple[Path, sqlite3.Connection]) -> None:
    path, _ = db
    guard = SourceGuard(path)
    with path.open("r+b") as fh:
        fh.write(b"not a database, not anymore\x00")
    assert lost(guard).kind == "overwritten"
    guard.close()


def test_sqlite_growing_checkpointing_and_shrinking_the_file_is_no_fault(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    """Inserts, deletes, checkpoints (which write page 1 first, then the rest)
    and VACUUM, while the guard checks all the time: never a certain fault, and
    any suspicion clears on its own."""
    path, _ = db
    guard = SourceGuard(path, grace=5.0)
    stop = threading.Event()
    failure: list[BaseException] = []

    def write() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA wal_autocheckpoint = 8")
            round_ = 0
            while not stop.is_set():
                round_ += 1
                conn.executemany(
                    "INSERT INTO t (body) VALUES (?)", [("y" * 900,) for _ in range(50)]
                )
                conn.execute("DELETE FROM t WHERE id % 3 = ?", (round_ % 3,))
                if round_ % 4 == 0:
                    conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except BaseException as exc:
            failure.append(exc)
        finally:
            conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    checks = 0
    try:
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            guard.check()
            checks += 1
    finally:
        stop.set()
        writer.join(30)
    assert not failure, failure
    assert checks > 100
    deadline = time.monotonic() + 5
    while guard.check() is not None:  # the file at rest is consistent again
        assert time.monotonic() < deadline, guard.suspicion
        time.sleep(0.05)
    guard.close()


def test_open_source_says_what_is_wrong_without_reading_the_file_itself(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database at all " * 10)
    with pytest.raises(SourceError, match="is not a SQLite database"):
        open_source(text)
    empty = tmp_path / "empty.db"
    empty.touch()
    open_source(empty, readonly=True).close()  # an empty file is an empty database


# --------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    info = warning


def test_error_log_writes_one_line_per_window_across_outages() -> None:
    log = Recorder()
    errors = ErrorLog(log, every=0.5)
    boom = ConnectionError("server closed the connection unexpectedly")
    errors.failed("connection", boom, 0.5)  # outage 1: logged, and its recovery
    errors.failed("connection", boom, 1.0)
    errors.recovered()
    for _ in range(3):  # three short outages within the window: no lines
        errors.failed("connection", boom, 0.5)
        errors.recovered()
    assert [e for e, _ in log.lines] == ["retrying", "recovered"]
    assert log.lines[1][1]["failures"] == 2
    time.sleep(0.55)
    errors.failed("connection", boom, 0.5)  # the next line counts what was left out
    event, fields = log.lines[-1]
    assert event == "retrying"
    assert fields["unlogged_outages"] == 3 and fields["unlogged_failures"] == 3
    errors.recovered()
    assert log.lines[-1][0] == "recovered"


def test_a_busy_source_is_transient_even_behind_a_source_error() -> None:
    busy = sqlite3.OperationalError("database is locked")
    assert transient_kind(busy) == "sqlite_busy"
    try:
        raise SourceError("cannot lock the source to install triggers") from busy
    except SourceError as wrapped:
        assert transient_kind(wrapped) == "sqlite_busy"
    assert transient_kind(SourceError("source database x does not exist")) is None


def test_status_trusts_only_the_health_endpoint_of_its_own_pair(tmp_path: Path) -> None:
    from replicator.config import load_config
    from replicator.metrics import Health, MetricsServer
    from replicator.proof.status import ask_daemon
    from replicator.state.lock import pair_id

    def config(source: str, port: int) -> Any:
        return load_config(
            env={
                "DATABASE_PATH": str(tmp_path / source),
                "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                "REPLICATOR_METRICS_ADDRESS": f"127.0.0.1:{port}",
            }
        )

    health = Health(stuck_after=60, lag_ready=5)
    health.tick(connected=False, lag_seconds=float("inf"), state="retrying")
    health.note_error("connection refused", 3)
    server = MetricsServer("127.0.0.1", 0, health).start()
    try:
        ours, theirs = config("app.db", server.port), config("other.db", server.port)
        health.pair = pair_id(ours)
        answer = ask_daemon(ours)
        assert answer is not None
        assert answer["state"] == "retrying" and answer["last_error"] == "connection refused"
        assert ask_daemon(theirs) is None  # another replicator's endpoint is not ours
    finally:
        server.stop()
    assert ask_daemon(ours) is None  # nothing listens any more


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, int(sys.argv[3]), int(sys.argv[2]))
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def lock_held(path: str, start: int, length: int) -> Iterator[None]:
    """Another process holding a write lock, as SQLite's checkpointer (or a rollback
    journal's writer) does while it writes the database file."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, path, str(start), str(length)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
        yield
    finally:
        proc.kill()
        proc.communicate()


CHECKPOINT_LOCK = 121  # WAL_CKPT_LOCK in the -shm file
WRITE_LOCK = (0x40000002, 510)  # SQLite's SHARED range of the database file


def test_a_short_file_while_a_checkpoint_writes_it_is_no_suspicion(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    """Page 1 written before the pages that grow the file: while another process holds
    the checkpoint lock the file is being written, not cut."""
    path, _ = db
    guard = SourceGuard(path, grace=60)
    try:
        with lock_held(f"{path}-shm", CHECKPOINT_LOCK, 1):
            os.truncate(path, path.stat().st_size - 4096)
            assert guard.check() is None
            assert guard.suspicion is None
        # The writer gone and the file still short: now it is suspected.
        reason = guard.check()
        assert reason is not None and "its header declares" in reason
    finally:
        guard.close()


def test_a_short_file_while_a_rollback_journal_commit_writes_it_is_no_suspicion(
    tmp_path: Path,
) -> None:
    """The same for a database in rollback-journal mode, whose writer holds the
    database's own write lock while it writes the file. (In WAL mode every open
    connection keeps a shared lock there, so only the checkpoint lock tells.)"""
    path = tmp_path / "journal.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 500,) for _ in range(200)])
    conn.close()
    guard = SourceGuard(path, grace=60)
    try:
        with lock_held(str(path), *WRITE_LOCK):
            os.truncate(path, path.stat().st_size - 4096)
            assert guard.check() is None
        reason = guard.check()
        assert reason is not None and "its header declares" in reason
    finally:
        guard.close()


def test_a_writer_lock_held_without_progress_excuses_nothing_for_long(
    db: tuple[Path, sqlite3.Connection],
) -> None:
    path, _ = db
    guard = SourceGuard(path, grace=0.3)
    try:
        with lock_held(f"{path}-shm", CHECKPOINT_LOCK, 1):
            os.truncate(path, path.stat().st_size // 3 + 517)
            assert guard.check() is None  # a checkpoint at work, for now
            assert lost(guard).kind == "truncated"
    finally:
        guard.close()
