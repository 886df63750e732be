"""Rows SQLite holds legally that PostgreSQL cannot hold as they are: each ends
copied, or named in a dead letter with its reason; ``replicator check`` counts
them beforehand and ``verify`` explains them instead of calling them missing.

* NULL in a declared non-INTEGER primary key (SQLite allows it, in any number
  of rows): dead letters naming table, key column and rowid, from the snapshot
  and from the stream alike, kept equal to the rows the source has.
* Children SQLite keeps when their parent is deleted with foreign keys off
  (SQLite's default), while the target's foreign key cascades: each named
  "source keeps this row; its parent was deleted".

Real SQLite files, real PostgreSQL, the real daemon (in a thread).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
from harness import DaemonThread, daemon_config, sqlite_from_script, wait_until
from oracle import assert_replicated, open_dead_letters

from replicator.config import Config
from replicator.proof.check import CheckReport, run_checks
from replicator.proof.verify import Verifier, VerifyReport


def sqlite_exec(path: Path, *statements: str) -> None:
    """Statements on an application connection: foreign keys off, SQLite's default."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def letters_of(dsn: str, table: str) -> list[dict[str, Any]]:
    return [d for d in open_dead_letters(dsn) if d["table_name"] == table]


def finding(report: CheckReport, check: str) -> Any:
    found = [f for f in report.findings if f.check == check]
    assert found, [f.check for f in report.findings]
    return found[0]


def verdict(report: VerifyReport, table: str) -> Any:
    return next(t for t in report.tables if t.table == table)


# -- NULL in a primary key ---------------------------------------------------------

CODES = """
PRAGMA journal_mode = WAL;
CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT NOT NULL);
INSERT INTO codes VALUES ('a', 'first');
INSERT INTO codes VALUES (NULL, 'second');
INSERT INTO codes VALUES (NULL, 'third');
INSERT INTO codes VALUES ('d', 'fourth');
"""


def test_null_primary_keys_are_dead_lettered_by_snapshot_and_stream_and_verified(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = sqlite_from_script(tmp_path / "app.db", CODES)
    config: Config = daemon_config(path, pg_dsn)

    # check counts them before anything is copied.
    null_keys = finding(run_checks(config, integrity=False), "NULL keys in codes")
    assert not null_keys.ok and null_keys.severity == "warning"
    assert "2 row(s) hold NULL in key column(s) code" in null_keys.detail

    with DaemonThread(config) as daemon:
        daemon.wait_streaming(120)
        # The snapshot: 4 rows read, 2 written, 2 dead letters naming rowids 2 and 3.
        letters = letters_of(pg_dsn, "codes")
        assert sorted(str(d["error"]).split("(")[1].split(")")[0] for d in letters) == [
            "rowid 2",
            "rowid 3",
        ], letters
        assert all(d["column_name"] == "code" and d["key"] == [None] for d in letters)
        assert all("NULL in key column 'code'" in str(d["error"]) for d in letters)
        with psycopg.connect(pg_dsn, autocommit=True) as pg:
            counts = pg.execute(
                "SELECT rows_read, rows_written, dead_letters FROM replicator.snapshot_progress"
                " WHERE table_name = 'codes'"
            ).fetchone()
        assert counts == (4, 2, 2)  # read = written + dead-lettered

        # The stream treats them the same: a new one is named, one given a key is
        # copied (and its letter resolved), one deleted is no longer named.
        sqlite_exec(
            path,
            "INSERT INTO codes VALUES (NULL, 'fifth')",
            "UPDATE codes SET code = 'b' WHERE rowid = 2",
            "DELETE FROM codes WHERE rowid = 3",
        )
        daemon.wait_caught_up(60)
        letters = letters_of(pg_dsn, "codes")
        assert [d["stage"] for d in letters] == ["stream"], letters
        assert "(rowid 5)" in str(letters[0]["error"])
        assert target_codes(pg_dsn) == [("a", "first"), ("b", "second"), ("d", "fourth")]

        # verify sees the row the target cannot hold, named by its letter.
        report = Verifier(config, settle_timeout=10).run()
        codes = verdict(report, "codes")
        assert (codes.source_rows, codes.target_rows) == (4, 3)
        assert (codes.null_key, codes.missing, codes.dead_lettered) == (1, 1, 1)
        assert not report.ok
        assert "DIFFERENT only by the 1 dead-lettered row(s)" in report.render()
        assert "(rowid 5): NULL in a key column, dead-lettered" in report.render()

    again = finding(run_checks(config, integrity=False), "NULL keys in codes")
    assert "1 row(s) hold NULL" in again.detail


def named_rowids(dsn: str, table: str) -> list[int]:
    """The rowids the open NULL-key dead letters of ``table`` name."""
    return sorted(
        int(str(d["error"]).split("(rowid ")[1].split(")")[0])
        for d in letters_of(dsn, table)
        if "(rowid " in str(d["error"])
    )


def target_codes(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as pg:
        return [tuple(r) for r in pg.execute("SELECT code, label FROM codes ORDER BY code")]


def test_cursor_capture_treats_null_keys_as_triggers_do(tmp_path: Path, pg_dsn: str) -> None:
    """A rowid cursor sees the new row (a letter at once); reconciliation copies the
    row given a key and resolves the letters of rows that have a key or are gone."""
    path = sqlite_from_script(tmp_path / "app.db", CODES)
    config = daemon_config(path, pg_dsn, capture__mode="cursor", capture__reconcile_interval=1.0)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(120)
        assert daemon.daemon.cursors is not None and daemon.daemon.triggers is False
        assert named_rowids(pg_dsn, "codes") == [2, 3]
        sqlite_exec(
            path,
            "INSERT INTO codes VALUES (NULL, 'fifth')",
            "UPDATE codes SET code = 'b' WHERE rowid = 2",
            "DELETE FROM codes WHERE rowid = 3",
        )

        def converged() -> bool:
            expected = [("a", "first"), ("b", "second"), ("d", "fourth")]
            return named_rowids(pg_dsn, "codes") == [5] and target_codes(pg_dsn) == expected

        wait_until(converged, 60, "the cursor and reconciliation to name and copy the rows")


def test_verify_names_null_key_rows_no_letter_names(tmp_path: Path, pg_dsn: str) -> None:
    """Without the replicator's letters (rows written behind its back), verify still
    counts the NULL-key rows as missing, says no letter names them, and --repair
    names them."""
    path = sqlite_from_script(tmp_path / "app.db", CODES)
    config = daemon_config(path, pg_dsn)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(120)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute("UPDATE replicator.dead_letters SET resolved_at = now()")
    report = Verifier(config, settle_timeout=5).run()
    codes = verdict(report, "codes")
    assert (codes.null_key, codes.missing, codes.dead_lettered) == (2, 2, 0)
    assert "verdict: DIFFERENT" in report.render()
    assert "no dead letter names it" in report.render()
    repaired = Verifier(config, settle_timeout=5).run(repair=True)
    assert verdict(repaired, "codes").dead_lettered == 2
    assert len(letters_of(pg_dsn, "codes")) == 2


# -- parents deleted with SQLite's foreign keys off -----------------------------------

FAMILY = """
PRAGMA journal_mode = WAL;
CREATE TABLE parents (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE children (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER REFERENCES parents(id) ON DELETE CASCADE,
    note TEXT
);
INSERT INTO parents VALUES (1, 'one'), (2, 'two');
INSERT INTO children VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c');
"""

FAMILY_PG = """
CREATE TABLE parents (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE children (
    id bigint PRIMARY KEY,
    parent_id bigint REFERENCES parents(id) ON DELETE CASCADE,
    note text
);
"""


def test_children_sqlite_keeps_after_their_parent_is_deleted_are_named(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = sqlite_from_script(tmp_path / "app.db", FAMILY)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(FAMILY_PG)
    config = daemon_config(path, pg_dsn)

    report = run_checks(config, integrity=False)
    enforcement = finding(report, "foreign-key enforcement")
    assert not enforcement.ok and enforcement.severity == "warning"
    assert "ON DELETE CASCADE in PostgreSQL, CASCADE in SQLite" in enforcement.detail
    assert finding(report, "source orphans").ok

    with DaemonThread(config) as daemon:
        daemon.wait_streaming(120)
        sqlite_exec(path, "DELETE FROM parents WHERE id = 1")  # foreign keys off: 10, 11 stay
        daemon.wait_caught_up(60)
        letters = letters_of(pg_dsn, "children")
        assert sorted(d["key"] for d in letters) == [[10], [11]], letters
        for letter in letters:
            assert str(letter["error"]).startswith(
                "source keeps this row; its parent was deleted (parents key [1])"
            ), letter

        orphans = finding(run_checks(config, integrity=False), "source orphans in children")
        assert not orphans.ok and "2 row(s) of children point at parents" in orphans.detail

        # verify explains them by their letters ...
        verified = Verifier(config, settle_timeout=10).run()
        children = verdict(verified, "children")
        assert (children.missing, children.dead_lettered) == (2, 2)
        assert "DIFFERENT only by the 2 dead-lettered row(s)" in verified.render()
        # ... and, with no letter, as source orphans, never as plain missing rows.
        with psycopg.connect(pg_dsn, autocommit=True) as pg:
            pg.execute("UPDATE replicator.dead_letters SET resolved_at = now()")
        verified = Verifier(config, settle_timeout=10).run()
        children = verdict(verified, "children")
        assert (children.missing, children.dead_lettered, children.orphaned) == (2, 0, 2)
        assert "and 2 source orphan(s)" in verified.render()
        assert "source orphan: SQLite keeps this row" in verified.render()

        # The parent back: the stream copies the children again.
        sqlite_exec(path, "INSERT INTO parents VALUES (1, 'one again')")
        sqlite_exec(path, "UPDATE children SET note = note || '!' WHERE parent_id = 1")
        daemon.wait_caught_up(60)
    assert open_dead_letters(pg_dsn) == []
    assert_replicated(path, pg_dsn)
    assert Verifier(config, settle_timeout=5).run().ok


def test_a_parent_delete_postgresql_refuses_is_named_and_the_parent_kept(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Without a cascade in PostgreSQL, the delete SQLite allowed (foreign keys off)
    is refused there: a dead letter names it, and verify explains the parent kept."""
    path = sqlite_from_script(tmp_path / "app.db", FAMILY)
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(FAMILY_PG.replace(" ON DELETE CASCADE", ""))
    config = daemon_config(path, pg_dsn)
    enforcement = finding(run_checks(config, integrity=False), "foreign-key enforcement")
    assert enforcement.ok and "refused by PostgreSQL" in enforcement.detail
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(120)
        sqlite_exec(path, "DELETE FROM parents WHERE id = 1")
        daemon.wait_caught_up(60)
        letters = letters_of(pg_dsn, "parents")
        assert [d["key"] for d in letters] == [[1]], letters
        assert letters_of(pg_dsn, "children") == []
        verified = Verifier(config, settle_timeout=10).run()
        parents = verdict(verified, "parents")
        assert (parents.extra, parents.dead_lettered) == (1, 1)
        assert "DIFFERENT only by the 1 dead-lettered row(s)" in verified.render()


def test_an_orphan_older_than_the_snapshot_is_named_as_one(tmp_path: Path, pg_dsn: str) -> None:
    """A child whose parent SQLite no longer had before replication began: the
    snapshot's letter says the source keeps it without its parent (not merely that
    PostgreSQL refused it), and verify explains it."""
    path = sqlite_from_script(
        tmp_path / "app.db", FAMILY + "INSERT INTO children VALUES (13, 99, 'lost');"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(FAMILY_PG)
    config = daemon_config(path, pg_dsn)
    orphans = finding(run_checks(config, integrity=False), "source orphans in children")
    assert "1 row(s) of children point at parents" in orphans.detail
    with DaemonThread(config) as daemon:
        daemon.wait_streaming(120)
        letters = letters_of(pg_dsn, "children")
        assert [d["key"] for d in letters] == [[13]], letters
        assert str(letters[0]["error"]).startswith(
            "source keeps this row; its parent is not in SQLite either (parents id = 99"
        ), letters
        verified = Verifier(config, settle_timeout=10).run()
        children = verdict(verified, "children")
        assert (children.missing, children.dead_lettered) == (1, 1)
