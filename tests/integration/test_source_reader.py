"""The one SQLite reader: text that is not valid UTF-8 is read, never a crash, on
every path that reads rows (the snapshot's own tests are in test_snapshot_edge.py).

Before the readers were one, ``verify`` and cursor capture re-read such text on
the same strict connection and stopped with "Could not decode to UTF-8".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
from harness import DaemonThread, daemon_config, snapshot_config, sqlite_from_script, wait_until
from oracle import open_dead_letters

from replicator.proof.verify import Verifier
from replicator.snapshot import Snapshotter
from replicator.source.reader import batches, fetch, fetch_one, read_rows
from replicator.source.sqlite import open_source

BAD = b"caf\xc3\xa9 \xff\xfe"  # valid UTF-8 up to the last two bytes


def bad_text(raw: bytes) -> str:
    """How the reader gives text whose bytes are not valid UTF-8."""
    return raw.decode("utf-8", errors="surrogateescape")


def notes_db(path: Path, rows: int, bad: set[int]) -> Path:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    for i in range(1, rows + 1):
        if i in bad:
            conn.execute("INSERT INTO notes VALUES (?, CAST(? AS TEXT))", (i, BAD))
        else:
            conn.execute("INSERT INTO notes VALUES (?, ?)", (i, f"note {i}"))
    conn.close()
    return path


def test_fetch_reads_invalid_utf8_inside_the_callers_transaction(tmp_path: Path) -> None:
    path = notes_db(tmp_path / "n.db", 3, {2})
    conn = open_source(path)
    try:
        conn.execute("BEGIN")
        rows = fetch(conn, "SELECT id, body FROM notes ORDER BY id")
        assert conn.in_transaction  # the re-read happened in the same transaction
        conn.execute("COMMIT")
        assert rows == [(1, "note 1"), (2, bad_text(BAD)), (3, "note 3")]
        assert rows[1][1].encode("utf-8", "surrogateescape") == BAD  # the exact bytes
        assert conn.text_factory is str  # the fast path is back for the next read
        assert fetch_one(conn, "SELECT body FROM notes WHERE id = ?", (2,)) == (bad_text(BAD),)
        assert fetch_one(conn, "SELECT body FROM notes WHERE id = 9") is None
        assert read_rows(conn, "SELECT count(*) FROM notes") == [(3,)]
    finally:
        conn.close()


def test_batches_give_each_row_once_when_bad_text_comes_after_the_first_batch(
    tmp_path: Path,
) -> None:
    path = notes_db(tmp_path / "n.db", 11, {7})
    conn = open_source(path)
    try:
        conn.execute("BEGIN")
        got = [
            r for b in batches(conn, "SELECT id, body FROM notes ORDER BY id", size=3) for r in b
        ]
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert [r[0] for r in got] == list(range(1, 12))
    assert got[6] == (7, bad_text(BAD))


def test_verify_explains_a_row_with_invalid_utf8_instead_of_crashing(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = notes_db(tmp_path / "n.db", 5, {3})
    config = snapshot_config(path, pg_dsn)
    summary = Snapshotter(config).run()
    assert (summary.tables[0].rows_written, summary.dead_letters) == (4, 1)

    report = Verifier(config).run()

    [notes] = report.tables
    assert (notes.source_rows, notes.target_rows) == (5, 4)
    assert notes.missing == 1  # row 3 is not in the target ...
    assert notes.dead_lettered == 1  # ... and its open dead letter says why
    [letter] = open_dead_letters(pg_dsn)
    assert (letter["table_name"], letter["key"], letter["column_name"]) == ("notes", [3], "body")


def test_cursor_capture_dead_letters_invalid_utf8_and_streams_on(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Bad text in the snapshot, in the stream, and as the row a restart starts from."""
    path = notes_db(tmp_path / "n.db", 5, {2})
    config = daemon_config(path, pg_dsn, capture__mode="cursor")

    def target_ids() -> set[int]:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return {int(r[0]) for r in conn.execute("SELECT id FROM notes").fetchall()}

    def letters() -> set[tuple[int, str, str]]:
        return {(d["key"][0], d["column_name"], d["stage"]) for d in open_dead_letters(pg_dsn)}

    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        assert daemon.daemon.triggers is False  # every table followed by a cursor
        app = sqlite3.connect(path, isolation_level=None)
        app.execute("INSERT INTO notes VALUES (6, CAST(? AS TEXT))", (BAD,))
        app.execute("INSERT INTO notes VALUES (7, 'after the bad one')")
        wait_until(lambda: 7 in target_ids(), 30, "the cursor to pass the bad row")
        app.execute("INSERT INTO notes VALUES (8, CAST(? AS TEXT))", (BAD,))  # the last row
        app.close()
        wait_until(lambda: (8, "body", "stream") in letters(), 30, "row 8's dead letter")
    # A restart reads the row at its position (8) to check it is the one it left.
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        app = sqlite3.connect(path, isolation_level=None)
        app.execute("INSERT INTO notes VALUES (9, 'after the restart')")
        app.close()
        wait_until(lambda: 9 in target_ids(), 30, "the restarted cursor")
    assert target_ids() == {1, 3, 4, 5, 7, 9}
    assert letters() == {(2, "body", "snapshot"), (6, "body", "stream"), (8, "body", "stream")}


def test_a_key_that_is_not_utf8_reads_back_byte_exact(tmp_path: Path) -> None:
    path = sqlite_from_script(
        tmp_path / "k.db",
        "CREATE TABLE k (code TEXT PRIMARY KEY, v INTEGER);"
        "INSERT INTO k VALUES (CAST(x'61ff' AS TEXT), 1), ('b', 2);",
    )
    conn = open_source(path)
    try:
        rows = read_rows(conn, "SELECT code, v FROM k ORDER BY code")
    finally:
        conn.close()
    assert rows == [(bad_text(b"a\xff"), 1), ("b", 2)]


def test_verify_compares_a_table_keyed_by_a_timestamp(tmp_path: Path, pg_dsn: str) -> None:
    """A key whose target values are datetimes (not a value SQLite returns) is
    compared by its text, not refused (it once stopped verify and a re-sync)."""
    path = sqlite_from_script(
        tmp_path / "ts.db",
        "CREATE TABLE events (at TIMESTAMP PRIMARY KEY, v INTEGER);"
        "INSERT INTO events VALUES ('2024-01-02 03:04:05', 1), ('2024-01-02T03:04:06Z', 2);",
    )
    config = snapshot_config(path, pg_dsn)
    Snapshotter(config).run()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE events SET v = 9 WHERE v = 2")
    report = Verifier(config).run()
    [events] = report.tables
    assert (events.different, events.missing, events.extra) == (1, 0, 0)
