"""Streaming apply, end to end: SQLite writes -> trigger log -> Daemon -> PostgreSQL.

Most tests run the real :class:`~replicator.stream.daemon.Daemon` in a thread of
this process (no signal handlers) against a real PostgreSQL database and a
real SQLite file; the lock tests run ``replicator run`` as processes, since
the lock is about separate processes. Every test ends on a typed, row-for-row
comparison of source and target.
"""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    DaemonThread,
    changelog_rows,
    daemon_config,
    daemon_process,
    source_head,
    start_writer,
    stream_position,
    wait_until,
)
from oracle import assert_replicated, like_sum, open_dead_letters
from prometheus_client import REGISTRY

from replicator.demo.sample import generate_reference_db, run_writer

CHINOOK = Path("/work/shared/corpus/chinook.sqlite")


# -- fixtures and small helpers ------------------------------------------------


@pytest.fixture
def refapp_db(tmp_path: Path) -> Path:
    """A small reference-app database without planted bad values."""
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=60, bad_values=False)
    return path


@pytest.fixture
def chinook_db(tmp_path: Path) -> Path:
    path = tmp_path / "chinook.sqlite"
    shutil.copyfile(CHINOOK, path)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def app(path: Path) -> sqlite3.Connection:
    """A connection like the application's: foreign keys enforced (and cascading)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def pg_all(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def applied(table: str, op: str) -> float:
    value = REGISTRY.get_sample_value(
        "replicator_changes_applied_total", {"table": table, "op": op}
    )
    return value or 0.0


def a_full_artifact(conn: sqlite3.Connection) -> int:
    """An artifact with a classification, scores and at least one label."""
    row = conn.execute(
        "SELECT a.id FROM artifacts a WHERE EXISTS (SELECT 1 FROM artifact_classifications c "
        "WHERE c.artifact_id = a.id) AND EXISTS (SELECT 1 FROM artifact_scores s "
        "WHERE s.artifact_id = a.id) AND EXISTS (SELECT 1 FROM discovery_labels l "
        "WHERE l.artifact_id = a.id) ORDER BY a.id LIMIT 1"
    ).fetchone()
    assert row is not None, "the sample has no artifact with every kind of child"
    return int(row[0])


# -- inserts, updates, deletes, keys ---------------------------------------------


def test_inserts_updates_deletes_and_key_changes_reach_the_target(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn = app(refapp_db)
        old_cursor = conn.execute("SELECT name FROM cursors ORDER BY name LIMIT 1").fetchone()[0]
        tweet = conn.execute("SELECT tweet_id FROM tweets ORDER BY tweet_id LIMIT 1").fetchone()[0]
        gone_tweet = conn.execute(
            "SELECT tweet_id FROM tweets ORDER BY tweet_id DESC LIMIT 1"
        ).fetchone()[0]
        with transaction(conn):
            conn.execute(
                "INSERT INTO tweets (tweet_id, text, created_at, like_count, tags, salience) "
                "VALUES ('1999000000000000001', 'new 🚀', '2025-11-12T08:15:30Z', 0, "
                '\'["a", "多言語"]\', 0.1)'
            )
            conn.execute(
                "INSERT INTO artifacts (type, source, source_id, title, published_at, raw_json) "
                "VALUES ('paper', 'arxiv', 'new-1', 'Title \U0001d53c', "
                "'2025-11-12 10:15:30+02:00', '{\"k\": [1, 2.5, null, true]}')"
            )
            new_id = conn.execute("SELECT max(id) FROM artifacts").fetchone()[0]
            conn.execute(
                "INSERT INTO artifact_scores VALUES (?, 0.1, 0.2, 0.3, 0.4, '2025-11-12 08:15:30')",
                (new_id,),
            )
        conn.execute(
            "UPDATE tweets SET text = 'edited', like_count = like_count + 5, notified_at = "
            "'2025-11-12T08:15:30.123456Z' WHERE tweet_id = ?",
            (tweet,),
        )
        conn.execute("DELETE FROM tweets WHERE tweet_id = ?", (gone_tweet,))
        conn.execute(
            "UPDATE cursors SET name = ?, value = 'v2' WHERE name = ?",
            (old_cursor + "@renamed", old_cursor),
        )
        daemon.wait_caught_up()

    assert_replicated(refapp_db, refapp_pg_dsn)
    assert open_dead_letters(refapp_pg_dsn) == []
    names = {r[0] for r in pg_all(refapp_pg_dsn, "SELECT name FROM cursors")}
    assert old_cursor + "@renamed" in names and old_cursor not in names
    assert pg_all(refapp_pg_dsn, "SELECT 1 FROM tweets WHERE tweet_id = %s", (gone_tweet,)) == []
    assert pg_all(refapp_pg_dsn, "SELECT text FROM tweets WHERE tweet_id = %s", (tweet,)) == [
        ("edited",)
    ]


def test_a_row_changed_many_times_in_one_batch_is_written_once(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        before = stream_position(refapp_pg_dsn)
        writes_before = applied("tweets", "upsert")
        conn = app(refapp_db)
        tweet = conn.execute("SELECT tweet_id FROM tweets ORDER BY tweet_id LIMIT 1").fetchone()[0]
        with transaction(conn):  # one commit: one batch
            for n in range(200):
                conn.execute(
                    "UPDATE tweets SET like_count = ?, text = ? WHERE tweet_id = ?",
                    (n, f"version {n}", tweet),
                )
        after = daemon.wait_caught_up()

    assert before is not None
    assert after.changes_applied - before.changes_applied == 200  # every change read ...
    assert applied("tweets", "upsert") - writes_before == 1  # ... one row written
    assert pg_all(
        refapp_pg_dsn, "SELECT like_count, text FROM tweets WHERE tweet_id = %s", (tweet,)
    ) == [(199, "version 199")]
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_cascading_deletes_in_the_source_reach_the_target(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    conn = app(refapp_db)
    victim = a_full_artifact(conn)
    children = ("artifact_classifications", "artifact_scores", "discovery_labels")
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        for child in children:
            found = pg_all(
                refapp_pg_dsn, f"SELECT count(*) FROM {child} WHERE artifact_id = %s", (victim,)
            )
            assert found[0][0] > 0
        conn.execute("DELETE FROM artifacts WHERE id = ?", (victim,))  # cascades in SQLite
        for child in children:
            assert conn.execute(
                f"SELECT count(*) FROM {child} WHERE artifact_id = ?", (victim,)
            ).fetchone() == (0,)
        daemon.wait_caught_up()

    for table, column in [("artifacts", "id")] + [(c, "artifact_id") for c in children]:
        assert pg_all(
            refapp_pg_dsn, f"SELECT count(*) FROM {table} WHERE {column} = %s", (victim,)
        ) == [(0,)]
    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


def swap_emails(conn: sqlite3.Connection, first: int, second: int) -> None:
    """Swap two UNIQUE values the only way SQLite allows: through a third value."""
    a, b = (
        conn.execute("SELECT email FROM beta_users WHERE id = ?", (i,)).fetchone()[0]
        for i in (first, second)
    )
    conn.execute("UPDATE beta_users SET email = 'swap@tmp' WHERE id = ?", (first,))
    conn.execute("UPDATE beta_users SET email = ? WHERE id = ?", (a, second))
    conn.execute("UPDATE beta_users SET email = ? WHERE id = ?", (b, first))


def test_a_unique_value_swap_in_one_batch_is_replayed_in_order(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """Coalesced, the swap is two upserts that each collide with the other row's
    old value; only the change-by-change replay can apply it."""
    conn = app(refapp_db)
    first, second = (r[0] for r in conn.execute("SELECT id FROM beta_users ORDER BY id LIMIT 2"))
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        with transaction(conn):
            swap_emails(conn, first, second)
            names = [r[0] for r in conn.execute("SELECT name FROM experiments ORDER BY id")][:2]
            conn.execute("UPDATE experiments SET name = 'tmp' WHERE name = ?", (names[0],))
            conn.execute("UPDATE experiments SET name = ? WHERE name = ?", (names[0], names[1]))
            conn.execute("UPDATE experiments SET name = ? WHERE name = 'tmp'", (names[1],))
        daemon.wait_caught_up()

    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_a_replayed_large_batch_does_not_break_the_next_large_batch(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """Over 256 rows of a table go through a staging table. When the batch that
    first creates it is replayed, the savepoint holding the CREATE is rolled
    back: the next large batch must not assume the staging table exists."""
    conn = app(refapp_db)
    first, second = (r[0] for r in conn.execute("SELECT id FROM beta_users ORDER BY id LIMIT 2"))
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        with transaction(conn):
            conn.executemany(
                "INSERT INTO beta_users (email, is_admin, created_at) VALUES (?, ?, ?)",
                [(f"bulk{i}@example.org", i % 2, "2025-11-12 08:15:30") for i in range(300)],
            )
            swap_emails(conn, first, second)
        daemon.wait_caught_up()
        conn.execute("UPDATE beta_users SET status = 'active' WHERE email LIKE 'bulk%'")
        daemon.wait_caught_up()

    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


# -- every column type ---------------------------------------------------------------


def test_every_reference_app_column_type_streams_exactly(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """The app simulator touches every table and both timestamp styles; the edge
    values below cover what it does not (offsets, extreme doubles, int limits)."""
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        stats = run_writer(refapp_db, duration=2.0, rate=150, seed=11)
        conn = app(refapp_db)
        with transaction(conn):
            conn.execute(
                "INSERT INTO tweets (tweet_id, text, author_id, author_username, created_at, "
                "lang, like_count, retweet_count, reply_count, quote_count, category, "
                "sentiment, urgency, tags, reasoning, salience, notified_at, inserted_at, "
                "updated_at) VALUES ('1999000000000000002', "
                "'astral \U0001d53c𠀋 👩\u200d🔬 e\u0301', "
                "'42', 'ü', '2025-11-12T03:15:30-05:00', 'ja', 2147483647, -2147483648, 0, "
                "NULL, 'llm', 'mixed', -1, '[\"🔥\", {\"nested\": [1e300, -0.5]}]', "
                "'line\nbreak \\ backslash \"quote\"', ?, "
                "'2025-11-12T08:15:30.5Z', '2025-11-12 08:15:30.123', '2025-11-12')",
                # Doubles as parameters: SQLite's own parsing of a literal is not exact.
                (1.7976931348623157e308,),
            )
            conn.execute(
                "INSERT INTO beta_users (email, invite_code, status, is_admin, created_at, "
                "activated_at, metadata) VALUES ('edge@example.org', NULL, 'active', 1, "
                "'2025-11-12 08:15:30', '2025-11-12T08:15:30+00:00', "
                '\'{"escaped": "\\ud83d\\ude80", "empty": {}, "list": []}\')'
            )
            conn.execute("UPDATE beta_users SET is_admin = 0 WHERE id = 1")
            conn.execute(
                "INSERT INTO snapshots (name, row_count, checksum, path, meta) VALUES "
                "('edge', 9223372036854775807, 'sha256:00', '/tmp/x', '12.5')"
            )
            conn.execute(
                "INSERT INTO experiments (name, scoring_weights, baseline_id) VALUES "
                "('edge', '{\"novelty\": 0.30000000000000004}', "
                "(SELECT min(id) FROM experiments))"
            )
            conn.execute(
                "INSERT INTO experiment_runs (experiment_id, precision, recall, f1_score, "
                "accuracy, started_at, metadata) VALUES ((SELECT max(id) FROM experiments), "
                "?, ?, 0.1, -0.0, '2025-11-12T08:15:30.000001Z', 'null')",
                (5e-324, 2.2250738585072014e-308),
            )
        daemon.wait_caught_up()

    assert stats.transactions > 0
    assert open_dead_letters(refapp_pg_dsn) == []
    comparison = assert_replicated(refapp_db, refapp_pg_dsn)
    assert set(comparison.rows) == {
        "tweets",
        "artifacts",
        "artifact_classifications",
        "artifact_scores",
        "discovery_labels",
        "experiments",
        "experiment_runs",
        "snapshots",
        "beta_users",
        "cursors",
    }
    salience = pg_all(
        refapp_pg_dsn, "SELECT salience FROM tweets WHERE tweet_id = '1999000000000000002'"
    )
    assert salience == [(1.7976931348623157e308,)]


def test_every_chinook_column_type_streams_into_tables_the_replicator_created(
    chinook_db: Path, pg_dsn: str
) -> None:
    with DaemonThread(daemon_config(chinook_db, pg_dsn)) as daemon:
        daemon.wait_streaming()
        assert_replicated(chinook_db, pg_dsn)  # the snapshot, first
        conn = app(chinook_db)
        with transaction(conn):
            conn.execute("INSERT INTO Artist VALUES (1000, 'Sigur Rós')")
            conn.execute("INSERT INTO Album VALUES (1000, 'Ágætis byrjun', 1000)")
            conn.execute(
                "INSERT INTO Track VALUES (5000, 'Svefn-g-englar', 1000, 1, 1, NULL, "
                "600000, 12345678901, 0.99)"
            )
            conn.execute(
                "INSERT INTO Invoice VALUES (1000, 1, '2025-11-12 08:15:30', 'Laugavegur 1', "
                "'Reykjavík', NULL, 'Iceland', '101', 1.98)"
            )
            conn.execute("INSERT INTO InvoiceLine VALUES (5000, 1000, 5000, 0.99, 2)")
            conn.execute("INSERT INTO PlaylistTrack VALUES (1, 5000)")
        conn.execute(
            "UPDATE Track SET UnitPrice = 1.99, Composer = '\U0001d53c Jónsi' WHERE TrackId = 1"
        )
        conn.execute(
            "UPDATE Employee SET BirthDate = '1962-02-18T00:00:00', ReportsTo = NULL "
            "WHERE EmployeeId = 2"
        )
        conn.execute(
            "UPDATE Customer SET Email = 'new@example.org', Fax = NULL WHERE CustomerId = 1"
        )
        conn.execute("UPDATE Invoice SET Total = 13.86 WHERE InvoiceId = 1")
        conn.execute("DELETE FROM PlaylistTrack WHERE PlaylistId = 1 AND TrackId = 3402")
        conn.execute(  # a key change of a composite key
            "UPDATE PlaylistTrack SET TrackId = 5000 WHERE PlaylistId = 8 AND TrackId = 3402"
        )
        conn.execute("DELETE FROM InvoiceLine WHERE InvoiceLineId = 1")
        conn.execute("UPDATE Genre SET Name = NULL WHERE GenreId = 25")
        daemon.wait_caught_up()

    assert open_dead_letters(pg_dsn) == []
    comparison = assert_replicated(chinook_db, pg_dsn)
    assert len(comparison.rows) == 11
    assert pg_all(pg_dsn, 'SELECT "Total" FROM "Invoice" WHERE "InvoiceId" = 1000') == [
        (Decimal("1.98"),)
    ]


# -- dead letters ------------------------------------------------------------------------


def test_a_bad_value_is_dead_lettered_and_a_later_fix_heals_it(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    conn = app(refapp_db)
    tweet = conn.execute("SELECT tweet_id FROM tweets ORDER BY tweet_id LIMIT 1").fetchone()[0]
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute(
            "INSERT INTO tweets (tweet_id, text, lang) VALUES ('1999000000000000003', 'x', "
            "'en-US-x-twitter')"  # varchar(8) in PostgreSQL
        )
        conn.execute("UPDATE tweets SET created_at = 'next tuesday' WHERE tweet_id = ?", (tweet,))
        position = daemon.wait_caught_up().seq

        letters = open_dead_letters(refapp_pg_dsn)
        assert [(d["table_name"], d["key"], d["column_name"], d["stage"]) for d in letters] == [
            ("tweets", ["1999000000000000003"], "lang", "stream"),
            ("tweets", [tweet], "created_at", "stream"),
        ]
        assert "character varying(8)" in letters[0]["error"]
        assert "timestamp" in letters[1]["error"]
        assert letters[1]["position"] == position
        assert (
            pg_all(refapp_pg_dsn, "SELECT 1 FROM tweets WHERE tweet_id = '1999000000000000003'")
            == []
        )
        assert_replicated(refapp_db, refapp_pg_dsn)  # everything but those two rows

        conn.execute("UPDATE tweets SET lang = 'en' WHERE tweet_id = '1999000000000000003'")
        conn.execute(
            "UPDATE tweets SET created_at = '2025-11-12T08:15:30Z' WHERE tweet_id = ?", (tweet,)
        )
        daemon.wait_caught_up()

    assert open_dead_letters(refapp_pg_dsn) == []
    healed = pg_all(
        refapp_pg_dsn,
        "SELECT resolution FROM replicator.dead_letters WHERE resolved_at IS NOT NULL",
    )
    assert len(healed) == 2 and all("later change" in r[0] for r in healed)
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_a_bad_value_fixed_later_in_a_replayed_batch_leaves_no_open_dead_letter(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """The batch is replayed change by change (the email swap forces that): the
    bad insert fails, the update right after it succeeds, so the row in the
    target is right and nothing may remain open."""
    conn = app(refapp_db)
    first, second = (r[0] for r in conn.execute("SELECT id FROM beta_users ORDER BY id LIMIT 2"))
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        with transaction(conn):
            swap_emails(conn, first, second)
            conn.execute("INSERT INTO beta_users (id, email, is_admin) VALUES (900, 'b@x', 2)")
            conn.execute("UPDATE beta_users SET is_admin = 1 WHERE id = 900")
        daemon.wait_caught_up()

    assert pg_all(refapp_pg_dsn, "SELECT is_admin FROM beta_users WHERE id = 900") == [(True,)]
    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


# -- snapshot, restart, pruning --------------------------------------------------------------


def test_changes_made_during_the_snapshot_are_neither_lost_nor_applied_twice(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=600, bad_values=False)
    likes_before = like_sum(source=path)
    # The app writes from its own process (in this one it would fight the daemon
    # thread for the GIL), all through the snapshot and after it.
    writer = start_writer(path, tmp_path / "writer.log", rate=200, seed=5)
    seen: dict[str, int | None] = {}
    try:
        wait_until(lambda: like_sum(source=path) > likes_before, 30, "the writer to start")
        # Small chunks: the snapshot is many short transactions while the writer runs.
        daemon = DaemonThread(daemon_config(path, refapp_pg_dsn, snapshot__chunk_rows=25))

        def watch() -> None:
            while "streaming" not in seen and daemon.thread.is_alive():
                state = daemon.daemon.health.state
                if state in ("snapshot", "streaming") and state not in seen:
                    seen[state] = source_head(path) or 0  # no row yet: nothing logged
                time.sleep(0.002)

        with daemon:
            watcher = threading.Thread(target=watch)
            watcher.start()
            daemon.wait_streaming()
            watcher.join()
            time.sleep(0.5)
            written = writer.stop()
            position = daemon.wait_caught_up()
    finally:
        writer.kill()

    head = source_head(path)
    assert head is not None
    started, finished = seen.get("snapshot"), seen.get("streaming")
    assert started is not None and finished is not None, seen
    assert position.snapshot_seq <= started < finished, (position, seen)  # writes during it
    # Every change after the recorded position read exactly once, none skipped.
    assert position.changes_applied == head - position.snapshot_seq
    assert like_sum(source=path) == likes_before + written["increments"]
    assert like_sum(dsn=refapp_pg_dsn) == likes_before + written["increments"]
    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(path, refapp_pg_dsn)


def test_a_restart_resumes_from_the_committed_position(refapp_db: Path, refapp_pg_dsn: str) -> None:
    conn = app(refapp_db)
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute("UPDATE tweets SET like_count = like_count + 1")
        stopped_at = daemon.wait_caught_up()
    progress = pg_all(
        refapp_pg_dsn, "SELECT table_name, updated_at FROM replicator.snapshot_progress"
    )

    # While it is down the application goes on; none of this may be lost.
    run_writer(refapp_db, duration=1.0, rate=100, seed=3)
    conn.execute("UPDATE tweets SET like_count = like_count + 1")
    head = source_head(refapp_db)
    assert head is not None and head > stopped_at.seq
    assert [s for s in changelog_rows(refapp_db) if s > stopped_at.seq] == list(
        range(stopped_at.seq + 1, head + 1)
    )

    assert stream_position(refapp_pg_dsn) == stopped_at
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as again:
        final = again.wait_caught_up()

    assert (final.snapshot_seq, final.seq) == (stopped_at.snapshot_seq, head)
    assert final.changes_applied == head - final.snapshot_seq
    # No second snapshot: the progress rows are untouched.
    assert (
        pg_all(refapp_pg_dsn, "SELECT table_name, updated_at FROM replicator.snapshot_progress")
        == progress
    )
    assert like_sum(dsn=refapp_pg_dsn) == like_sum(source=refapp_db)
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_the_change_log_is_pruned_up_to_the_applied_position(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    conn = app(refapp_db)
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        for _ in range(5):
            conn.execute("UPDATE tweets SET like_count = like_count + 1")
        position = daemon.wait_caught_up()
        wait_until(lambda: changelog_rows(refapp_db) == [], 10, "the change log to be pruned")
    # Down: what is written now is not applied, so it must stay.
    conn.execute("UPDATE cursors SET value = 'pending'")
    head = source_head(refapp_db)
    assert head is not None
    assert changelog_rows(refapp_db) == list(range(position.seq + 1, head + 1))
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_caught_up()
        wait_until(lambda: changelog_rows(refapp_db) == [], 10, "the change log to be pruned")
    assert_replicated(refapp_db, refapp_pg_dsn)


# -- one replicator at a time ------------------------------------------------------------


def test_a_second_replicator_is_refused_and_a_standby_takes_over(
    refapp_db: Path, refapp_pg_dsn: str, tmp_path: Path
) -> None:
    conn = app(refapp_db)
    with daemon_process(refapp_db, refapp_pg_dsn, tmp_path / "first.log") as first:
        first.wait_streaming()

        with daemon_process(refapp_db, refapp_pg_dsn, tmp_path / "second.log") as second:
            code = second.wait_exit(60)
            message = second.log_text()
        assert code == 6, message
        assert "another replicator is already running" in message
        assert f"pid {first.pid}" in message, message  # says who holds the lock

        with daemon_process(
            refapp_db, refapp_pg_dsn, tmp_path / "standby.log", standby=True
        ) as standby:
            standby.wait_event("standby")
            conn.execute("UPDATE tweets SET like_count = like_count + 1")
            first.wait_caught_up()
            assert not standby.has_event("lock_acquired")
            assert first.stop() == 0

            standby.wait_event("lock_acquired", timeout=30)
            standby.wait_streaming()
            conn.execute("UPDATE tweets SET like_count = like_count + 1")
            conn.execute("DELETE FROM cursors")
            standby.wait_caught_up()
            assert standby.stop() == 0

    assert_replicated(refapp_db, refapp_pg_dsn)


def in_another_process(path: Path, statement: str) -> None:
    """Open the source in a separate process, run one statement, close it: what a
    backup script, the sqlite3 shell or a second replicator does."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute(sys.argv[2]).fetchall(); c.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path), statement], check=True, timeout=30)


def test_the_daemon_keeps_seeing_commits_when_other_processes_open_and_close_the_source(
    refapp_db: Path, refapp_pg_dsn: str, tmp_path: Path
) -> None:
    """In WAL mode the last connection to close deletes the WAL. A daemon whose
    process opened and closed the database file itself (plain open()/close(), e.g.
    to read the header) has lost its POSIX locks, no longer counts as a connection,
    and goes on reading a WAL that is gone: it never sees another commit."""
    with daemon_process(refapp_db, refapp_pg_dsn, tmp_path / "daemon.log") as daemon:
        daemon.wait_streaming()
        for _ in range(3):
            in_another_process(refapp_db, "SELECT count(*) FROM tweets")
            in_another_process(refapp_db, "UPDATE tweets SET like_count = like_count + 1")
            daemon.wait_caught_up(timeout=20)
        assert daemon.stop() == 0
    assert_replicated(refapp_db, refapp_pg_dsn)


# -- what the trigger log does not see ------------------------------------------------------


def test_a_row_removed_by_insert_or_replace_is_removed_in_the_target(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """REPLACE deletes the row holding the UNIQUE email; SQLite fires delete
    triggers for that only with PRAGMA recursive_triggers, which is off by default.
    The apply frees the email from the source: the old row is gone there."""
    conn = app(refapp_db)
    victim, email = conn.execute("SELECT id, email FROM beta_users ORDER BY id LIMIT 1").fetchone()
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute(
            "INSERT OR REPLACE INTO beta_users (email, status) VALUES (?, 'active')", (email,)
        )
        assert conn.execute("SELECT 1 FROM beta_users WHERE id = ?", (victim,)).fetchone() is None
        daemon.wait_caught_up()

    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


@pytest.mark.xfail(
    strict=True,
    reason="known bug: VACUUM renumbers rowids silently, so later changes of a table "
    "keyed by rowid land on the wrong target rows",
)
def test_vacuum_renumbering_the_rowids_of_a_table_without_a_key(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Without an INTEGER PRIMARY KEY, rows are keyed by rowid, and VACUUM may
    renumber rowids (it does, after deletes) without firing any trigger."""
    path = tmp_path / "notes.db"
    conn = app(path)
    conn.execute("CREATE TABLE notes (body TEXT, n INTEGER)")
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [(f"note {i}", i) for i in range(10)])
    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute("DELETE FROM notes WHERE n IN (1, 3, 5)")
        daemon.wait_caught_up()
        conn.execute("VACUUM")
        conn.execute("UPDATE notes SET body = 'edited' WHERE n = 9")
        conn.execute("DELETE FROM notes WHERE n = 8")
        daemon.wait_caught_up()

    assert_replicated(path, pg_dsn)


def test_a_child_waiting_for_its_dead_lettered_parent_is_written_when_the_parent_arrives(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """A row refused for a missing parent (23503) is retried, from the source as it is
    then, once the stream writes to its parent table: it needs no change of its own."""
    conn = app(refapp_db)
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute(
            "INSERT INTO artifacts (id, type, source, source_id, url) VALUES "
            "(900001, 'paper', 'arxiv', 'parent-arrives', ?)",
            ("https://example.org/" + "x" * 2100,),  # longer than varchar(2048)
        )
        conn.execute(
            "INSERT INTO artifact_scores (artifact_id, novelty, computed_at) "
            "VALUES (900001, 0.5, '2025-11-12 08:15:30')"
        )
        daemon.wait_caught_up()
        letters = {d["table_name"]: d for d in open_dead_letters(refapp_pg_dsn)}
        assert set(letters) == {"artifacts", "artifact_scores"}, letters
        assert "foreign key" in letters["artifact_scores"]["error"]

        conn.execute("UPDATE artifacts SET url = 'https://example.org/ok' WHERE id = 900001")
        daemon.wait_caught_up()
        wait_until(
            lambda: (
                pg_all(
                    refapp_pg_dsn, "SELECT novelty FROM artifact_scores WHERE artifact_id = 900001"
                )
                == [(0.5,)]
            ),
            30,
            "the waiting child to be written",
        )
    assert open_dead_letters(refapp_pg_dsn) == []
    resolutions = sorted(
        r[0]
        for r in pg_all(
            refapp_pg_dsn,
            "SELECT resolution FROM replicator.dead_letters WHERE resolved_at IS NOT NULL",
        )
    )
    assert resolutions == ["healed by a later change", "parent arrived"]
    assert_replicated(refapp_db, refapp_pg_dsn)
