"""Cursor capture against real SQLite files and a real PostgreSQL, one pitfall each.

The cursor stream is driven poll by poll (``CursorStream.step``) so that each
test decides exactly what the source holds when the cursor looks at it; the
daemon-level behaviour (read-only source, mixed modes) is in
``test_cursor_daemon.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import daemon_config
from oracle import assert_replicated, compare
from prometheus_client import REGISTRY

from replicator.errors import SchemaError
from replicator.plan.tables import build_plans
from replicator.snapshot import Snapshotter
from replicator.source.cursor import CursorKind, choose_cursor
from replicator.source.sqlite import describe_table
from replicator.state.migrations import ensure_state
from replicator.stream.cursor import CursorStream, open_for_capture
from replicator.stream.reconcile import PassSummary
from replicator.target.connection import connect


def ts(moment: datetime) -> str:
    """A timestamp as SQLite's datetime('now') writes it."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def make_db(path: Path, script: str, rows: dict[str, Sequence[Sequence[Any]]]) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(script)
    for table, values in rows.items():
        for row in values:
            marks = ", ".join("?" for _ in row)
            conn.execute(f'INSERT INTO "{table}" VALUES ({marks})', tuple(row))
    conn.close()
    return path


def app(path: Path) -> sqlite3.Connection:
    """The application's own (writable) connection."""
    return sqlite3.connect(path, isolation_level=None)


class Rig:
    """A cursor stream over one source file and one target database."""

    def __init__(self, path: Path, dsn: str, **overrides: Any) -> None:
        settings: dict[str, Any] = {
            "capture__mode": "cursor",
            "capture__reconcile_interval": 3600.0,
            "capture__reconcile_chunk_rows": 7,
            "capture__reconcile_max_chunks": 0,
        }
        settings.update(overrides)
        self.path = path
        self.dsn = dsn
        self.config = daemon_config(path, dsn, **settings)
        self.source, specs, self.readonly = open_for_capture(self.config)
        self.conn = connect(dsn, autocommit=True)
        ensure_state(self.conn, dsn, self.config.target.state_schema)
        self.plans = build_plans(self.source, self.conn, self.config)
        self.stream = CursorStream(self.config, self.plans, specs)
        self.stream.record_start(self.source, self.conn)
        Snapshotter(self.config).run_plans(self.source, self.conn, self.plans)
        self.stream.start(self.source, self.conn)

    def poll(self, most: int = 50) -> int:
        """Poll until nothing more is waiting; returns the number of polls."""
        for count in range(1, most + 1):
            if not self.stream.step(self.source, self.conn):
                return count
        raise AssertionError(f"the cursor stream was still busy after {most} polls")

    def reconcile(self) -> PassSummary:
        assert self.stream.reconciler is not None
        return self.stream.reconciler.run_pass(self.source, self.conn)

    def rows(self, table: str, order: str = "1") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return [tuple(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}')]

    def applied(self, table: str) -> int:
        row = self.conn.execute(
            "SELECT rows_applied FROM replicator.cursor_position WHERE table_name = %s", (table,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        self.conn.close()
        self.source.close()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.close()


ITEMS = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    qty INTEGER,
    updated_at TEXT
);
CREATE INDEX items_updated_at ON items (updated_at);
"""


def test_equal_timestamps_across_batch_boundaries(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    """25 rows sharing one timestamp, read 7 at a time: each exactly once, never again."""
    stamp = "2025-11-12 08:15:30"
    path = make_db(tmp_path / "app.db", ITEMS, {"items": [(1, "a", 1, "2025-11-12 08:00:00")]})
    rig = Rig(path, pg_dsn, stream__batch_max_changes=7, capture__lookback_seconds=5.0)
    rigs.append(rig)
    db = app(path)
    db.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)", [(i, f"n{i}", i, stamp) for i in range(2, 27)]
    )
    polls = rig.poll()
    assert polls == 4  # 7 + 7 + 7 + 4: a full batch means "more is waiting"
    assert [r[0] for r in rig.rows("items")] == list(range(1, 27))
    # The 25 new rows, and row 1 once: after a start the look-back window is
    # re-applied, since nothing says what the copy saw of it.
    assert rig.applied("items") == 26
    # Caught up: further polls re-read the look-back window but apply nothing.
    for _ in range(3):
        assert rig.stream.step(rig.source, rig.conn) is False
    assert rig.applied("items") == 26
    # A row updated later to the very same timestamp, with a key below the position:
    # the compound position alone would skip it; the look-back window catches it.
    db.execute("UPDATE items SET qty = 1000 WHERE id = 3")
    rig.poll()
    assert rig.rows("items")[2][2] == 1000
    assert rig.applied("items") == 27
    assert_replicated(path, pg_dsn)


def test_mixed_timestamp_formats_compare_as_instants(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    """'2025-11-12 10:00:00' sorts below '2025-11-12T09:00:00Z' as text, yet is later."""
    path = make_db(
        tmp_path / "app.db",
        ITEMS,
        {"items": [(1, "a", 1, "2025-11-12T09:00:00Z"), (2, "b", 2, "2025-11-12 08:59:59")]},
    )
    rig = Rig(path, pg_dsn, capture__lookback_seconds=0.0)
    rigs.append(rig)
    assert rig.stream.positions["items"].value == "2025-11-12 09:00:00.000"
    assert rig.stream.readers["items"].prefilter  # index range reads, checked safe at start
    db = app(path)
    db.execute("INSERT INTO items VALUES (3, 'space', 3, '2025-11-12 10:00:00')")
    db.execute("INSERT INTO items VALUES (4, 'offset', 4, '2025-11-12T12:00:01+02:00')")
    db.execute("INSERT INTO items VALUES (5, 'millis', 5, '2025-11-12T10:00:00.500Z')")
    rig.poll()
    assert [r[0] for r in rig.rows("items")] == [1, 2, 3, 4, 5]
    # Normalised: UTC, milliseconds; the offset one is 10:00:01 UTC, the newest.
    assert rig.stream.positions["items"].value == "2025-11-12 10:00:01.000"
    assert_replicated(path, pg_dsn)


def test_late_commit_inside_the_lookback_window_is_caught(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    t0 = now()
    path = make_db(tmp_path / "app.db", ITEMS, {"items": [(1, "a", 1, ts(t0))]})
    rig = Rig(path, pg_dsn, capture__lookback_seconds=30.0)
    rigs.append(rig)
    db = app(path)
    db.execute("INSERT INTO items VALUES (2, 'b', 2, ?)", (ts(t0 + timedelta(seconds=1)),))
    rig.poll()
    # Committed now, stamped 20 s earlier (a client clock, a long transaction).
    db.execute("INSERT INTO items VALUES (3, 'late', 3, ?)", (ts(t0 - timedelta(seconds=20)),))
    rig.poll()
    assert [r[0] for r in rig.rows("items")] == [1, 2, 3]
    assert_replicated(path, pg_dsn)


def test_late_commit_outside_the_window_waits_for_reconciliation(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    t0 = now()
    path = make_db(tmp_path / "app.db", ITEMS, {"items": [(1, "a", 1, ts(t0))]})
    rig = Rig(path, pg_dsn, capture__lookback_seconds=5.0)
    rigs.append(rig)
    db = app(path)
    db.execute("INSERT INTO items VALUES (2, 'late', 2, ?)", (ts(t0 - timedelta(hours=1)),))
    rig.poll()
    assert [r[0] for r in rig.rows("items")] == [1]  # invisible to the cursor, as documented
    summary = rig.reconcile()
    assert summary.tables["items"].copied == 1
    assert [r[0] for r in rig.rows("items")] == [1, 2]
    assert_replicated(path, pg_dsn)


def test_null_and_unparseable_cursor_values_are_reported_and_copied_on_a_full_pass(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    rows = [
        (1, "a", 1, "2025-11-12 08:00:00"),
        (2, "null", 2, None),
        (3, "text", 3, "next tuesday"),
    ]
    path = make_db(tmp_path / "app.db", ITEMS, {"items": rows})
    # Checksums off: only the NULL-cursor copy can bring row 2's change across.
    rig = Rig(path, pg_dsn, capture__null_cursor="copy", capture__reconcile_checksums=False)
    rigs.append(rig)
    assert REGISTRY.get_sample_value("replicator_cursor_null_rows", {"table": "items"}) == 2
    assert [r[0] for r in rig.rows("items")] == [1, 2, 3]  # the snapshot copies them
    db = app(path)
    db.execute("UPDATE items SET qty = 20 WHERE id = 2")
    db.execute("UPDATE items SET qty = 30 WHERE id = 3")
    rig.poll()
    assert [r[2] for r in rig.rows("items")] == [1, 2, 3]  # the cursor cannot see them
    summary = rig.reconcile()
    assert summary.tables["items"].copied == 2
    assert [r[2] for r in rig.rows("items")] == [1, 20, 30]
    assert_replicated(path, pg_dsn)


def test_null_cursor_values_only_reported_by_default(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    rows = [(1, "a", 1, "2025-11-12 08:00:00"), (2, "null", 2, None)]
    path = make_db(tmp_path / "app.db", ITEMS, {"items": rows})
    rig = Rig(path, pg_dsn, capture__reconcile_checksums=False)
    rigs.append(rig)
    app(path).execute("UPDATE items SET qty = 20 WHERE id = 2")
    rig.poll()
    rig.reconcile()
    assert [r[2] for r in rig.rows("items")] == [1, 2]  # reported, not copied
    assert not compare(path, pg_dsn).equal
    assert REGISTRY.get_sample_value("replicator_cursor_null_rows", {"table": "items"}) == 1


EVENTS = "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"


def test_rowid_reuse_after_deleting_the_largest_row(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    """Without AUTOINCREMENT the next insert takes the deleted largest id again."""
    path = make_db(tmp_path / "app.db", EVENTS, {"events": [(i, f"e{i}") for i in range(1, 6)]})
    rig = Rig(path, pg_dsn)
    rigs.append(rig)
    assert rig.stream.specs["events"].kind == CursorKind.ROWID
    db = app(path)
    # Between two polls: the largest row is deleted and its id handed out again.
    db.execute("DELETE FROM events WHERE id = 5")
    db.execute("INSERT INTO events (body) VALUES ('reused')")
    assert db.execute("SELECT max(id) FROM events").fetchone()[0] == 5
    before = REGISTRY.get_sample_value(
        "replicator_reconcile_requests_total", {"table": "events", "reason": "last_row_changed"}
    )
    rig.poll()
    assert rig.rows("events")[-1] == (5, "reused")
    after = REGISTRY.get_sample_value(
        "replicator_reconcile_requests_total", {"table": "events", "reason": "last_row_changed"}
    )
    assert (after or 0) == (before or 0) + 1
    # Deleted, polled, then reused: re-anchored below, so the new row is read as new.
    db.execute("DELETE FROM events WHERE id IN (4, 5)")
    rig.poll()
    db.execute("INSERT INTO events (body) VALUES ('four again')")
    db.execute("INSERT INTO events (body) VALUES ('five again')")
    rig.poll()
    assert rig.rows("events")[-2:] == [(4, "four again"), (5, "five again")]
    assert_replicated(path, pg_dsn)


def test_vacuum_renumbering_a_table_without_integer_primary_key(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    path = make_db(
        tmp_path / "app.db",
        "CREATE TABLE notes (body TEXT, n INTEGER);",
        {"notes": [(f"b{i}", i) for i in range(1, 21)]},
    )
    rig = Rig(path, pg_dsn)
    rigs.append(rig)
    assert rig.stream.specs["notes"].kind == CursorKind.ROWID
    db = app(path)
    db.execute("DELETE FROM notes WHERE n <= 10")
    db.execute("VACUUM")  # rowids 11..20 become 1..10
    db.execute("INSERT INTO notes VALUES ('after vacuum', 21)")  # rowid 11, below the cursor
    assert db.execute("SELECT max(rowid) FROM notes").fetchone()[0] == 11
    rig.poll()  # the row at the cursor is gone: re-anchor and reconcile at once
    assert_replicated(path, pg_dsn)
    db.execute("INSERT INTO notes VALUES ('later', 22)")
    rig.poll()
    assert_replicated(path, pg_dsn)


# Thirty rows well before the newest one: outside the look-back window.
OLD_ROWS = [(i, f"n{i}", i, "2025-11-12 08:00:00") for i in range(1, 31)] + [
    (31, "newest", 31, "2025-11-12 09:00:00")
]


def test_reconciliation_deletes_what_the_source_no_longer_has(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    path = make_db(tmp_path / "app.db", ITEMS, {"items": OLD_ROWS})
    rig = Rig(path, pg_dsn)
    rigs.append(rig)
    db = app(path)
    db.execute("DELETE FROM items WHERE id % 3 = 0")
    db.execute("UPDATE items SET id = 100 WHERE id = 1")  # a primary-key change, same stamp
    rig.poll()
    assert len(rig.rows("items")) == 31  # deletes are invisible to a cursor
    summary = rig.reconcile()
    assert summary.tables["items"].deleted == 11  # ten deleted, and the old key 1
    assert summary.tables["items"].copied == 1  # the new key 100
    assert len(rig.rows("items")) == 21
    assert_replicated(path, pg_dsn)
    assert REGISTRY.get_sample_value(
        "replicator_reconcile_repaired_total", {"table": "items", "action": "deleted"}
    )


def test_checksum_mismatch_repaired(tmp_path: Path, pg_dsn: str, rigs: list[Rig]) -> None:
    path = make_db(tmp_path / "app.db", ITEMS, {"items": OLD_ROWS})
    rig = Rig(path, pg_dsn)
    rigs.append(rig)
    app(path).execute("UPDATE items SET qty = -1 WHERE id = 17")  # updated_at left alone
    rig.conn.execute("UPDATE items SET name = 'tampered' WHERE id = 4")
    rig.poll()
    assert not compare(path, pg_dsn).equal
    summary = rig.reconcile()
    tally = summary.tables["items"]
    assert (tally.copied, tally.deleted) == (2, 0)
    assert tally.mismatched == 2 < tally.chunks  # only the two differing chunks were written
    assert_replicated(path, pg_dsn)
    again = rig.reconcile()
    assert again.tables["items"].mismatched == 0


def test_bad_rows_are_not_dead_lettered_again_on_every_pass(
    tmp_path: Path, pg_dsn: str, rigs: list[Rig]
) -> None:
    path = make_db(
        tmp_path / "app.db",
        "CREATE TABLE m (id INTEGER PRIMARY KEY, n INTEGER, updated_at TEXT);",
        {"m": [(1, 1, "2025-11-12 08:00:00"), (2, "not a number", "2025-11-12 08:00:00")]},
    )
    rig = Rig(path, pg_dsn)
    rigs.append(rig)

    def letters() -> int:
        row = rig.conn.execute(
            "SELECT count(*) FROM replicator.dead_letters WHERE resolved_at IS NULL"
        ).fetchone()
        assert row is not None
        return int(row[0])

    assert letters() == 1
    rig.reconcile()
    rig.reconcile()
    assert letters() == 1
    app(path).execute("UPDATE m SET n = 2 WHERE id = 2")  # fixed at the source, silently
    rig.reconcile()
    assert letters() == 0  # healed by the re-copy
    assert_replicated(path, pg_dsn)


def test_automatic_cursor_choice(tmp_path: Path) -> None:
    path = make_db(
        tmp_path / "app.db",
        ITEMS
        + """
        CREATE TABLE plain (id INTEGER PRIMARY KEY, modified_at TEXT);
        CREATE TABLE keyed (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
        CREATE TABLE keyed_ts (k TEXT PRIMARY KEY, last_updated TEXT) WITHOUT ROWID;
        """,
        {},
    )
    conn = sqlite3.connect(path)
    items = choose_cursor(describe_table(conn, "items"), None)
    assert (items.kind, items.column, items.indexed) == (CursorKind.TIMESTAMP, "updated_at", True)
    plain = choose_cursor(describe_table(conn, "plain"), None)  # modified_at has no index
    assert (plain.kind, plain.column) == (CursorKind.ROWID, "id")
    keyed_ts = choose_cursor(describe_table(conn, "keyed_ts"), None)
    assert (keyed_ts.kind, keyed_ts.column, keyed_ts.indexed) == (
        CursorKind.TIMESTAMP,
        "last_updated",
        False,
    )
    with pytest.raises(SchemaError, match="WITHOUT ROWID"):
        choose_cursor(describe_table(conn, "keyed"), None)
    with pytest.raises(SchemaError, match="not a column"):
        choose_cursor(describe_table(conn, "items"), "nope")
    conn.close()
