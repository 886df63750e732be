"""One SQLite file feeding two targets at once (a staging and a production database).

Both replicators share the source's triggers (installed once: the source's
schema does not move again once both run) and its change log, which each
prunes only below the slowest registered target's position. A target whose
registration was dropped while it was away finds out at its next start and
re-syncs instead of streaming on past a hole. Real SQLite, real PostgreSQL;
the oracle decides equality.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    DaemonThread,
    changelog_rows,
    daemon_config,
    rows_script,
    source_head,
    sqlite_from_script,
    stream_position,
    wait_until,
)
from oracle import assert_replicated
from pgutil import TestDatabases

from replicator.proof.check import run_checks
from replicator.proof.setup import remove_capture
from replicator.proof.status import read_status
from replicator.source import changelog, consumers

pytestmark = pytest.mark.slow

SCRIPT = (
    """
    PRAGMA journal_mode = WAL;
    CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, price REAL);
    CREATE TABLE tags (item_id INTEGER NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (item_id, tag));
    """
    + rows_script("items", 400, "i, 'item ' || i, i % 7, i * 0.25")
    + rows_script("tags", 400, "i, 'tag' || (i % 5)")
)


class Writer(threading.Thread):
    """The application: small transactions of inserts, updates (key changes too) and
    deletes on its own connection until stopped."""

    def __init__(self, path: Path, seed: int) -> None:
        super().__init__(name="app-writer", daemon=True)
        self.path = path
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.transactions = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            while not self.halt.is_set():
                conn.execute("BEGIN IMMEDIATE")
                write(conn, self.rng)
                conn.execute("COMMIT")
                self.transactions += 1
                time.sleep(0.004)
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()

    def stop(self) -> int:
        self.halt.set()
        self.join(30)
        assert self.error is None, f"the writer failed: {self.error!r}"
        return self.transactions


def write(conn: sqlite3.Connection, rng: random.Random) -> None:
    """One application transaction's worth of changes."""
    top = int(conn.execute("SELECT coalesce(max(id), 0) FROM items").fetchone()[0])
    some = rng.randint(1, max(top, 1))
    action = rng.random()
    if action < 0.35:
        conn.execute(
            "INSERT INTO items VALUES (?, ?, ?, ?)", (top + 1, f"new {top}", 1, rng.random())
        )
        conn.execute("INSERT OR IGNORE INTO tags VALUES (?, 'fresh')", (top + 1,))
    elif action < 0.65:
        conn.execute("UPDATE items SET qty = qty + 1, name = name || '+' WHERE id = ?", (some,))
    elif action < 0.75:
        conn.execute("UPDATE items SET id = ? WHERE id = ?", (top + 1, some))  # key change
    elif action < 0.9:
        conn.execute("DELETE FROM items WHERE id = ?", (some,))
        conn.execute("DELETE FROM tags WHERE item_id = ?", (some,))
    else:
        conn.execute("UPDATE tags SET tag = tag || 'x' WHERE item_id = ?", (some,))


def writes(path: Path, count: int, seed: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    rng = random.Random(seed)
    try:
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            write(conn, rng)
            conn.execute("COMMIT")
    finally:
        conn.close()


def schema_cookie(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA schema_version").fetchone()[0])
    finally:
        conn.close()


def registered(path: Path) -> list[consumers.Consumer]:
    conn = sqlite3.connect(path)
    try:
        return consumers.registered(conn)
    finally:
        conn.close()


def age(path: Path, consumer: str, seconds: float) -> None:
    """Make ``consumer`` look unseen for ``seconds`` (as a replicator gone for good)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute(
            f'UPDATE "{consumers.CONSUMERS}" SET seen_at = seen_at - ? WHERE consumer = ?',
            (seconds, consumer),
        )
    finally:
        conn.close()


def log_keeps(path: Path, dsn: str) -> bool:
    """The change log still holds every change after the target's position."""
    position = stream_position(dsn)
    head = source_head(path)
    assert position is not None and head is not None
    rows = changelog_rows(path)
    first = rows[0] if rows else head + 1
    return first <= position.seq + 1


def caught_up(daemon: DaemonThread) -> None:
    daemon.wait_caught_up(timeout=120)


@pytest.fixture
def staging_dsn(pg_databases: TestDatabases, pg_empty_template: str) -> Iterator[str]:
    """A second target database of this test's own."""
    with pg_databases.database(pg_empty_template) as dsn:
        yield dsn


def test_two_targets_off_one_source_under_a_writer_both_equal_the_source(
    tmp_path: Path, pg_dsn: str, staging_dsn: str
) -> None:
    path = sqlite_from_script(tmp_path / "app.db", SCRIPT)
    writer = Writer(path, seed=3)
    writer.start()
    try:
        with DaemonThread(daemon_config(path, pg_dsn)) as production:
            # One after the other: Alembic, which both run at start-up, is not
            # thread-safe within one process (separate processes are fine).
            production.wait_streaming(timeout=90)
            staging = DaemonThread(daemon_config(path, staging_dsn)).start()
            try:
                staging.wait_streaming(timeout=90)
                cookie = schema_cookie(path)  # both have installed what they need
                time.sleep(2)
                staging.stop()  # one of them restarts while the writer goes on
                time.sleep(2.5)  # production prunes meanwhile (every second)
                assert log_keeps(path, staging_dsn), "production pruned what staging needs"
                staging = DaemonThread(daemon_config(path, staging_dsn)).start()
                staging.wait_streaming(timeout=90)
                time.sleep(2)
                transactions = writer.stop()
                caught_up(production)
                caught_up(staging)
                # The triggers were installed once and shared: no reinstalls back and forth.
                assert schema_cookie(path) == cookie
                # Both positions are recorded in the source; the log is pruned to the slower.
                head = source_head(path)
                wait_until(
                    lambda: sorted(c.position for c in registered(path)) == [head, head],
                    15,
                    "both targets' positions to be recorded in the source",
                )
                wait_until(lambda: changelog_rows(path) == [], 15, "the log to be pruned")
            finally:
                staging.stop()
    finally:
        writer.halt.set()
        writer.join(30)
    assert transactions > 200
    assert_replicated(path, pg_dsn)
    assert_replicated(path, staging_dsn)
    targets = {c.target.rsplit("/", 1)[-1] for c in registered(path)}
    assert targets == {pg_dsn.rsplit("/", 1)[-1], staging_dsn.rsplit("/", 1)[-1]}


def test_a_target_gone_for_good_is_reported_dropped_and_resyncs_if_it_returns(
    tmp_path: Path, pg_dsn: str, staging_dsn: str
) -> None:
    path = sqlite_from_script(tmp_path / "app.db", SCRIPT)
    production_config = daemon_config(path, pg_dsn)
    staging_config = daemon_config(path, staging_dsn)
    with DaemonThread(staging_config) as staging:
        staging.wait_streaming(timeout=90)
        writes(path, 50, seed=1)
        caught_up(staging)
    (gone,) = registered(path)
    with DaemonThread(production_config) as production:
        production.wait_streaming(timeout=90)
        writes(path, 300, seed=2)  # deletes, key changes and updates staging never sees
        caught_up(production)
        time.sleep(2)
        assert log_keeps(path, staging_dsn), "the log was pruned past a registered target"

        # Staging's replicator is gone for good: status and check say so, by name.
        age(path, gone.consumer, 3 * 3600)
        status = read_status(production_config)
        assert len(status.consumers) == 2
        (warning,) = status.warnings
        assert gone.consumer in warning and "uninstall --consumer" in warning
        assert "password" not in warning
        findings = run_checks(production_config).findings
        (finding,) = [f for f in findings if f.check.startswith("consumer ")]
        assert not finding.ok and finding.severity == "warning"
        assert gone.consumer in finding.check and gone.consumer in finding.fix
        assert status.verdict.startswith("in sync")  # production itself is fine

        # The way out: forget it; production then prunes everything it applied.
        removal = remove_capture(production_config, consumer=gone.consumer[:6])
        assert removal.dropped is not None and removal.dropped.consumer == gone.consumer
        assert not removal.everything and len(removal.kept_for) == 1
        writes(path, 20, seed=3)
        caught_up(production)
        wait_until(lambda: changelog_rows(path) == [], 15, "the log to be pruned")
    assert not log_keeps(path, staging_dsn)

    # Staging comes back after all: its changes are gone from the log, so it
    # re-syncs its tables (deletes included) instead of streaming on past the hole.
    with DaemonThread(staging_config) as staging:
        staging.wait_streaming(timeout=90)
        wait_until(
            lambda: not staging.daemon.watch.holds and not staging.daemon.skip,
            120,
            "the re-sync to finish",
        )
        writes(path, 20, seed=4)
        caught_up(staging)
    assert_replicated(path, staging_dsn)
    with DaemonThread(production_config) as production:  # it catches up on what it missed
        production.wait_streaming(timeout=90)
        caught_up(production)
    assert_replicated(path, pg_dsn)


def test_uninstall_forgets_only_this_target_while_another_is_fed(
    tmp_path: Path, pg_dsn: str, staging_dsn: str
) -> None:
    path = sqlite_from_script(tmp_path / "app.db", SCRIPT)
    production_config = daemon_config(path, pg_dsn)
    staging_config = daemon_config(path, staging_dsn)
    with DaemonThread(staging_config) as staging:
        staging.wait_streaming(timeout=90)
    with DaemonThread(production_config) as production:
        production.wait_streaming(timeout=90)
        removal = remove_capture(staging_config)  # staging is done with
        assert removal.dropped is not None and not removal.everything
        (kept,) = removal.kept_for
        assert kept.target.endswith("/" + pg_dsn.rsplit("/", 1)[-1])
        writes(path, 100, seed=5)
        caught_up(production)
    conn = sqlite3.connect(path)
    try:
        assert len(changelog.installed_triggers(conn)) == 6  # still capturing for production
    finally:
        conn.close()
    assert_replicated(path, pg_dsn)
    removal = remove_capture(production_config)  # the last one: everything goes
    assert removal.everything and removal.triggers == 6 and removal.had_log
    assert registered(path) == []


def test_a_running_target_forgotten_registers_again_and_ends_equal(
    tmp_path: Path, pg_dsn: str, staging_dsn: str
) -> None:
    path = sqlite_from_script(tmp_path / "app.db", SCRIPT)
    staging_db = "/" + staging_dsn.rsplit("/", 1)[-1]
    with DaemonThread(daemon_config(path, staging_dsn)) as staging:
        staging.wait_streaming(timeout=90)
        production = DaemonThread(daemon_config(path, pg_dsn)).start()
        production.wait_streaming(timeout=90)
        (mine,) = [c for c in registered(path) if c.target.endswith(staging_db)]
        # An operator forgets the wrong target: production may now prune past it.
        remove_capture(daemon_config(path, pg_dsn), consumer=mine.consumer)
        writes(path, 300, seed=9)
        caught_up(production)
        caught_up(staging)
        head = source_head(path)
        wait_until(
            lambda: (
                [c.position for c in registered(path) if c.target.endswith(staging_db)] == [head]
            ),
            30,
            "staging to be registered again",
        )
        wait_until(
            lambda: not staging.daemon.watch.holds and not staging.daemon.skip,
            120,
            "any re-sync to finish",
        )
        production.stop()
    assert_replicated(path, staging_dsn)
    assert_replicated(path, pg_dsn)
