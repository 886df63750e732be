"""The read-ahead thread (replicator/readahead.py) over a real SQLite change log.

A :class:`~replicator.source.readahead.ReadAhead` only reads the trigger log (and
prunes it) on a thread of its own, over connections of its own, so these tests
need no PostgreSQL (except the last one, which drives a real Daemon's pruning).
They pin down that what it hands over is exactly what a read in hand would
have returned, that anything read for another position, schema or context is
never used, and how pruning and closing behave.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import daemon_config

from replicator.source import changelog
from replicator.source.changelog import Change
from replicator.source.readahead import ReadAhead
from replicator.source.sqlite import describe_table, open_source, schema_version
from replicator.stream.daemon import Daemon

EVERYTHING = 1 << 40  # a byte limit that never applies
PRUNE_WAIT_MS = 100  # the pruner's busy timeout (the daemon's is short too)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Source:
    """A WAL-mode SQLite file with the change-log triggers installed and 30 changes."""

    path: Path
    writer: sqlite3.Connection  # autocommit, like the application's

    def read(
        self,
        after: int,
        max_changes: int = 10_000,
        max_bytes: int = EVERYTHING,
        version: int | None = None,
    ) -> list[Change]:
        """What the daemon's read in hand returns, over a connection of its own."""
        conn = open_source(self.path, readonly=True)
        try:
            return changelog.read_changes(
                conn, after, max_changes, max_bytes, schema_version=version
            )
        finally:
            conn.close()

    def version(self) -> int:
        return schema_version(self.writer)

    def head(self) -> int:
        return changelog.head_position(self.writer)

    def log_seqs(self) -> list[int]:
        return [
            int(r[0])
            for r in self.writer.execute(
                f'SELECT seq FROM "{changelog.CHANGELOG}" ORDER BY seq'
            ).fetchall()
        ]


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    path = tmp_path / "app.db"
    writer = sqlite3.connect(path, isolation_level=None, timeout=30)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB)")
    changelog.install(writer, [describe_table(writer, "t")])
    for i in range(1, 21):  # seq 1..20
        writer.execute(
            "INSERT INTO t VALUES (?, ?, ?, ?)",
            (i, f"row {i}\ttab\nnewline \\ 日本 🚀", i / 3, bytes([i, 0, 255])),
        )
    for i in range(1, 7):  # seq 21..26
        writer.execute("UPDATE t SET name = ?, score = NULL WHERE id = ?", (f"v2 {i}", i))
    for i in range(17, 21):  # seq 27..30
        writer.execute("DELETE FROM t WHERE id = ?", (i,))
    assert changelog.head_position(writer) == 30
    yield Source(path, writer)
    writer.close()


@dataclass
class Opened:
    kind: str
    conn: sqlite3.Connection
    thread: threading.Thread


@dataclass
class Harness:
    """A ReadAhead whose connection openers record what they opened, where."""

    source: Source
    readahead: ReadAhead
    opened: list[Opened] = field(default_factory=list)
    gates: list[threading.Event] = field(default_factory=list)

    def conns(self, kind: str) -> list[sqlite3.Connection]:
        return [o.conn for o in self.opened if o.kind == kind]

    def gate(self) -> threading.Event:
        """An event a blocking prune waits for; opened at teardown at the latest."""
        event = threading.Event()
        self.gates.append(event)
        return event


@pytest.fixture
def make(source: Source) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(max_changes: int = 10_000, max_bytes: int = EVERYTHING) -> Harness:
        opened: list[Opened] = []

        def reader() -> sqlite3.Connection:
            conn = open_source(source.path, readonly=True)
            opened.append(Opened("read", conn, threading.current_thread()))
            return conn

        def pruner() -> sqlite3.Connection:
            conn = open_source(source.path, busy_timeout_ms=PRUNE_WAIT_MS)
            opened.append(Opened("prune", conn, threading.current_thread()))
            return conn

        harness = Harness(source, ReadAhead(reader, max_changes, max_bytes, pruner=pruner), opened)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        for gate in harness.gates:
            gate.set()
        with contextlib.suppress(RuntimeError):  # closed by the test already
            harness.readahead.close()


def record_prepare(calls: list[tuple[str, list[int]]]) -> Callable[[list[Change]], Any]:
    """A ``prepare`` that notes the thread it ran on and the seqs it was given."""

    def prepare(batch: list[Change]) -> Any:
        calls.append((threading.current_thread().name, [c.seq for c in batch]))
        return ("prepared", tuple(c.seq for c in batch))

    return prepare


def blocking_prune(
    gate: threading.Event, upto: int, seen: list[sqlite3.Connection]
) -> Callable[[sqlite3.Connection], int]:
    """A prune that waits for ``gate`` first: it holds the worker thread meanwhile."""

    def prune(conn: sqlite3.Connection) -> int:
        seen.append(conn)
        assert gate.wait(30), "the test never opened the gate"
        return changelog.prune(conn, upto, 100)

    return prune


def wait_pruned(readahead: ReadAhead, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done = readahead.pruned()
        if done is not None:
            return done
        assert time.monotonic() < deadline, "the prune did not end"
        time.sleep(0.01)


# --------------------------------------------------------------------------- take()


@pytest.mark.parametrize(
    ("after", "max_changes", "max_bytes"),
    [
        pytest.param(0, 10_000, EVERYTHING, id="whole-log"),
        pytest.param(5, 7, EVERYTHING, id="count-limited"),
        pytest.param(3, 10_000, 400, id="byte-limited"),
        pytest.param(24, 10_000, EVERYTHING, id="tail"),
    ],
)
def test_take_returns_exactly_what_read_changes_returns(
    source: Source, make: Callable[..., Harness], after: int, max_changes: int, max_bytes: int
) -> None:
    harness = make(max_changes, max_bytes)
    version = source.version()
    expected = source.read(after, max_changes, max_bytes, version)
    assert expected, "the case reads something"
    if max_changes < 10_000 or max_bytes < EVERYTHING:
        assert len(expected) < source.head() - after, "the limit really cut the batch short"

    calls: list[tuple[str, list[int]]] = []
    context = ("applier", {"t": 0})
    harness.readahead.start(after, version, context, record_prepare(calls))
    found = harness.readahead.take(after, version, context)

    assert found is not None
    changes, prepared = found
    assert changes == expected  # seq, table, op, key, image, captured_at: all equal
    assert [c.seq for c in changes] == list(range(after + 1, after + 1 + len(expected)))
    assert [c.image for c in changes] == [c.image for c in expected]
    assert prepared == ("prepared", tuple(c.seq for c in expected))
    # prepare ran once, on the read-ahead thread, on exactly these changes
    assert len(calls) == 1
    thread_name, seqs = calls[0]
    assert thread_name != threading.current_thread().name
    assert thread_name.startswith("read-ahead")
    assert seqs == [c.seq for c in expected]
    # read over the thread's own read connection, opened there
    (read,) = [o for o in harness.opened if o.kind == "read"]
    assert read.thread is not threading.current_thread()
    assert read.thread.name == thread_name
    assert (harness.readahead.used, harness.readahead.wasted) == (1, 0)


def test_an_empty_read_is_not_prepared(source: Source, make: Callable[..., Harness]) -> None:
    harness = make()
    calls: list[tuple[str, list[int]]] = []
    head, version = source.head(), source.version()
    harness.readahead.start(head, version, "ctx", record_prepare(calls))
    assert harness.readahead.take(head, version, "ctx") == ([], None)
    assert calls == []


def test_a_batch_read_ahead_is_a_prefix_of_a_later_read(
    source: Source, make: Callable[..., Harness]
) -> None:
    """Rows logged after the read-ahead's read are not in its batch; what it holds
    is the start of what a read now returns: the same consecutive changes."""
    harness = make()
    version = source.version()
    read_done = threading.Event()

    def prepare(batch: list[Change]) -> Any:
        read_done.set()  # read_changes has returned: its transaction is over
        return len(batch)

    harness.readahead.start(10, version, "ctx", prepare)
    assert read_done.wait(10)
    for i in range(100, 105):  # seq 31..35, after the read
        source.writer.execute("INSERT INTO t (id, name) VALUES (?, 'late')", (i,))
    found = harness.readahead.take(10, version, "ctx")

    assert found is not None
    changes, prepared = found
    assert [c.seq for c in changes] == list(range(11, 31))
    assert prepared == 20
    now = source.read(10, version=version)
    assert [c.seq for c in now] == list(range(11, 36))
    assert changes == now[: len(changes)]


@pytest.mark.parametrize("mismatch", ["after", "version", "context"])
def test_a_batch_read_for_other_arguments_is_never_used(
    source: Source, make: Callable[..., Harness], mismatch: str
) -> None:
    harness = make()
    ra = harness.readahead
    version = source.version()
    calls: list[tuple[str, list[int]]] = []
    ra.start(0, version, ("applier", {"t": 0}), record_prepare(calls))
    after, asked_version, context = 0, version, ("applier", {"t": 0})
    if mismatch == "after":
        after = 20  # the stream moved on: the batch would be stale
    elif mismatch == "version":
        asked_version = version + 1
    else:
        context = ("applier", {"t": 5})  # e.g. a table re-synced since

    assert ra.take(after, asked_version, context) is None
    assert (ra.used, ra.wasted) == (0, 1)
    # It is gone: asking again with the very arguments it was read for finds nothing.
    assert ra.take(0, version, ("applier", {"t": 0})) is None
    assert (ra.used, ra.wasted) == (0, 1)

    # The caller reads again; a fresh read-ahead for what it asks is used.
    ra.start(after, version, "again", record_prepare(calls))
    found = ra.take(after, version, "again")
    assert found is not None
    assert found[0] == source.read(after, version=version)
    assert (ra.used, ra.wasted) == (1, 1)


def test_an_equal_context_is_enough(source: Source, make: Callable[..., Harness]) -> None:
    """The daemon passes a fresh ``(applier, dict(skip))`` each time: equality counts."""
    harness = make()
    version = source.version()
    applier = object()
    harness.readahead.start(0, version, (applier, {"t": 3}), len)
    found = harness.readahead.take(0, version, (applier, dict(t=3)))
    assert found is not None
    assert found[1] == 30
    assert (harness.readahead.used, harness.readahead.wasted) == (1, 0)


def test_take_without_a_start_and_discard(source: Source, make: Callable[..., Harness]) -> None:
    harness = make()
    ra = harness.readahead
    version = source.version()
    assert ra.take(0, version, "ctx") is None
    assert (ra.used, ra.wasted) == (0, 0)
    ra.start(0, version, "ctx", lambda batch: None)
    ra.discard()
    assert ra.take(0, version, "ctx") is None
    assert (ra.used, ra.wasted) == (0, 1)
    # A new start replaces the one in flight (which is counted as wasted).
    ra.start(0, version, "first", lambda batch: "first")
    ra.start(5, version, "second", lambda batch: "second")
    assert (ra.used, ra.wasted) == (0, 2)
    found = ra.take(5, version, "second")
    assert found is not None
    assert found[1] == "second"
    assert [c.seq for c in found[0]] == list(range(6, 31))
    assert (ra.used, ra.wasted) == (1, 2)


def test_the_error_of_a_read_nobody_uses_is_not_raised(
    source: Source, make: Callable[..., Harness]
) -> None:
    harness = make()
    version = source.version()
    # Read under a version the source does not have: that read raises SchemaChanged ...
    harness.readahead.start(0, version + 7, "ctx", lambda batch: None)
    # ... but the caller asks for something else: the batch is thrown away, quietly.
    assert harness.readahead.take(0, version, "ctx") is None
    assert harness.readahead.wasted == 1


# --------------------------------------------------------------------------- schema changes


@pytest.mark.parametrize("when", ["before-the-read", "while-the-read-is-queued"])
def test_a_schema_change_after_start_raises_schema_changed_from_take(
    source: Source, make: Callable[..., Harness], when: str
) -> None:
    harness = make()
    ra = harness.readahead
    old = source.version()
    calls: list[tuple[str, list[int]]] = []
    gate = harness.gate()
    if when == "while-the-read-is-queued":
        # Hold the worker thread, so that the read starts only after the ALTER.
        seen: list[Any] = []
        ra.prune(blocking_prune(gate, 0, seen))
        ra.start(0, old, "ctx", record_prepare(calls))
        source.writer.execute("ALTER TABLE t ADD COLUMN extra TEXT")
        gate.set()
    else:
        source.writer.execute("ALTER TABLE t ADD COLUMN extra TEXT")
        ra.start(0, old, "ctx", record_prepare(calls))
    new = source.version()
    assert new != old

    with pytest.raises(changelog.SchemaChanged) as raised:
        ra.take(0, old, "ctx")
    assert raised.value.version == new
    assert calls == [], "nothing read under the new schema was prepared"

    # The worker's connection is fine afterwards: read again under the new version.
    source.writer.execute("INSERT INTO t (id, name, extra) VALUES (50, 'after', 'x')")
    ra.start(0, new, "ctx", record_prepare(calls))
    found = ra.take(0, new, "ctx")
    assert found is not None
    assert found[0] == source.read(0, version=new)
    assert [c.seq for c in found[0]] == list(range(1, 32))
    if when == "while-the-read-is-queued":
        assert wait_pruned(ra) == 0


# --------------------------------------------------------------------------- pruning


def test_prune_runs_on_the_workers_write_connection_and_deletes_up_to_the_seq(
    source: Source, make: Callable[..., Harness]
) -> None:
    harness = make()
    ra = harness.readahead
    used: list[tuple[Any, str]] = []

    def prune_upto(upto: int) -> Callable[[Any], int]:
        def prune(conn: Any) -> int:
            used.append((conn, threading.current_thread().name))
            return changelog.prune(conn, upto, 5)  # several write transactions

        return prune

    assert ra.pruned() is None  # nothing started
    ra.prune(prune_upto(12))
    assert wait_pruned(ra) == 12
    assert source.log_seqs() == list(range(13, 31))
    assert ra.pruned() is None  # collected: nothing pending
    assert not ra.pruning()

    ra.prune(prune_upto(20))
    assert wait_pruned(ra) == 8
    assert source.log_seqs() == list(range(21, 31))
    ra.prune(prune_upto(20))  # nothing left up to there
    assert wait_pruned(ra) == 0

    (write,) = harness.conns("prune")  # opened once, then reused
    assert [conn for conn, _ in used] == [write, write, write]
    assert all(name.startswith("read-ahead") for _, name in used)
    assert harness.conns("read") == []  # pruning needs no read connection
    # The head (AUTOINCREMENT) is untouched: pruned positions are never reused.
    assert source.head() == 30


def test_pruned_is_none_while_the_prune_runs(source: Source, make: Callable[..., Harness]) -> None:
    harness = make()
    ra = harness.readahead
    gate = harness.gate()
    seen: list[Any] = []
    ra.prune(blocking_prune(gate, 25, seen))
    deadline = time.monotonic() + 10
    while not seen:  # the prune has started on the thread
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for _ in range(5):
        assert ra.pruning()
        assert ra.pruned() is None
        time.sleep(0.01)
    assert source.log_seqs() == list(range(1, 31))
    with pytest.raises(AssertionError, match="a prune is still running"):
        ra.prune(lambda conn: 0)  # one at a time
    gate.set()
    assert wait_pruned(ra) == 25
    assert not ra.pruning()
    assert source.log_seqs() == list(range(26, 31))


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


def test_a_prune_while_another_process_holds_the_write_lock_fails_and_deletes_nothing(
    source: Source, make: Callable[..., Harness]
) -> None:
    harness = make()
    ra = harness.readahead
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(source.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as locker:
        try:
            assert locker.stdout is not None and locker.stdin is not None
            assert locker.stdout.readline().strip() == "locked"
            ra.prune(lambda conn: changelog.prune(conn, 30, 100))
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                wait_pruned(ra)  # pruned() raises the prune's error once it has ended
            assert ra.pruned() is None  # the error is reported once
            locker.stdin.write("\n")
            locker.stdin.flush()
            assert locker.wait(10) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
    assert source.log_seqs() == list(range(1, 31))  # nothing deleted

    # The lock is gone: the same write connection prunes (no transaction left open).
    ra.prune(lambda conn: changelog.prune(conn, 30, 100))
    assert wait_pruned(ra) == 30
    assert source.log_seqs() == []
    assert len(harness.conns("prune")) == 1


# --------------------------------------------------------------------------- close()


def use_both_connections(source: Source, harness: Harness) -> None:
    version = source.version()
    harness.readahead.start(0, version, "ctx", lambda batch: None)
    assert harness.readahead.take(0, version, "ctx") is not None
    harness.readahead.prune(lambda conn: changelog.prune(conn, 5, 100))
    assert wait_pruned(harness.readahead) == 5
    assert {o.kind for o in harness.opened} == {"read", "prune"}
    assert len(harness.opened) == 2


def test_close_closes_the_workers_connections_and_ends_its_thread(
    source: Source, make: Callable[..., Harness]
) -> None:
    harness = make()
    use_both_connections(source, harness)
    harness.readahead.close()
    for opened in harness.opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            opened.conn.execute("SELECT 1")
        assert not opened.thread.is_alive()


def test_close_with_release_hands_each_connection_over_unclosed(
    source: Source, make: Callable[..., Harness]
) -> None:
    harness = make()
    use_both_connections(source, harness)
    released: list[Any] = []
    harness.readahead.close(release=released.append)
    try:
        assert sorted(map(id, released)) == sorted(id(o.conn) for o in harness.opened)
        for conn in released:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (16,)
        assert not harness.opened[0].thread.is_alive()
    finally:
        for conn in released:
            conn.close()


def test_close_waits_for_the_read_and_prune_in_flight(
    source: Source, make: Callable[..., Harness]
) -> None:
    harness = make()
    ra = harness.readahead
    gate = harness.gate()
    seen: list[Any] = []
    ra.prune(blocking_prune(gate, 10, seen))
    ra.start(0, source.version(), "ctx", lambda batch: None)
    opener = threading.Timer(0.3, gate.set)
    opener.start()
    started = time.monotonic()
    ra.close()
    opener.join()
    assert time.monotonic() - started >= 0.25, "close did not wait for the prune"
    assert source.log_seqs() == list(range(11, 31)), "the prune in flight completed"
    assert ra.wasted == 1  # the read nobody took
    for opened in harness.opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            opened.conn.execute("SELECT 1")


def test_close_before_any_use_opens_nothing(make: Callable[..., Harness]) -> None:
    harness = make()
    released: list[Any] = []
    harness.readahead.close(release=released.append)
    assert harness.opened == []
    assert released == []


# --------------------------------------------------------------------------- regression


def test_a_prune_ending_between_prune_done_and_the_pruning_check_does_not_crash_the_daemon(
    source: Source, pg_dsn: str
) -> None:
    """Drives the real LogTail methods in the order LogTail.prune_if_due calls them:

        self.collect()                               # the prune is still running
        due = ...                                    # the prune ends right here
        if due and self.writable and not self.worker().pruning():
            self.prune(position)

    A prune outlives the one-second prune interval whenever it waits for the
    application's write lock batch after batch, or is queued behind a read-ahead
    read; here the application holds the write lock, so the prune waits its 50 ms
    (PRUNE_LOCK_WAIT_MS) and then fails with "database is locked". A prune that
    ended but was not collected yet counts as running (pruning() is true until
    pruned() collects it), so no second prune is started over it (that was an
    AssertionError, fatal to the daemon's loop); later rounds collect it, and the
    log gets pruned once the application lets go of the lock.
    """
    daemon = Daemon(daemon_config(source.path, pg_dsn), install_signals=False)
    app = sqlite3.connect(source.path, isolation_level=None)
    app.execute("BEGIN IMMEDIATE")  # the application is writing
    tail = daemon.tail  # the daemon's end of the change log: reads ahead, prunes
    try:
        tail.prune(30)  # the loop started a prune (a second ago or more)
        tail.collect()  # next round: not ended yet, nothing to collect
        if tail.deferred:
            pytest.fail("the prune ended before collect(): scenario not reproduced")
        readahead = tail.worker()
        time.sleep(0.5)  # ... and it ends (its 50 ms wait for the lock is long over)
        app.execute("ROLLBACK")  # the application's transaction is over too
        if not tail.worker().pruning():  # LogTail.prune_if_due's check, as it is written
            tail.prune(30)
        # Without the bug: later rounds collect the outcome and the log gets pruned.
        deadline = time.monotonic() + 10
        while tail.pruned_upto < 30:
            assert time.monotonic() < deadline, "the log was never pruned"
            time.sleep(0.01)
            tail.collect()
            if not readahead.pruning() and tail.pruned_upto < 30:
                tail.prune(30)
        assert source.log_seqs() == []
    finally:
        if app.in_transaction:
            app.execute("ROLLBACK")
        app.close()
        tail.close()
