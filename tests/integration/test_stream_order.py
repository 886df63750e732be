"""Changes whose log order PostgreSQL refuses, end to end on real SQLite and PostgreSQL.

A row waiting for its parent (23503) is written as soon as the parent is, in
whatever table it is and across a restart; a parent's key change with its child
re-pointed while SQLite's foreign keys are off (its default) leaves no ghost
parent, in one batch or split over two; a row ``INSERT OR REPLACE`` removed
through a UNIQUE column (no delete trigger fires) is removed in the target too.
Every test ends on the oracle's row-for-row comparison and no open dead letter.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import DaemonThread, daemon_config, wait_until
from oracle import assert_replicated, open_dead_letters

from replicator.demo.sample import generate_reference_db
from replicator.plan.tables import build_plans
from replicator.proof.letters import retry_letters
from replicator.snapshot import Snapshotter
from replicator.state.migrations import ensure_state
from replicator.stream.cursor import CursorStream, open_for_capture
from replicator.target.connection import connect

PARENT = 900001


@pytest.fixture
def refapp_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=30, bad_values=False)
    return path


def app(path: Path, *, foreign_keys: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    return conn


def pg_all(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def open_tables(dsn: str) -> list[str]:
    return sorted(d["table_name"] for d in open_dead_letters(dsn))


def resolutions(dsn: str) -> list[str]:
    return sorted(
        str(r[0])
        for r in pg_all(
            dsn, "SELECT resolution FROM replicator.dead_letters WHERE resolved_at IS NOT NULL"
        )
    )


# -- item 2: rows waiting for their parent ------------------------------------------------


def a_refused_parent_with_children(path: Path) -> None:
    """An artifact whose raw_json is not JSON (the target's jsonb refuses it), with a
    classification (key = foreign key), scores and a label: children in three tables."""
    conn = app(path)
    conn.execute(
        "INSERT INTO artifacts (id, type, source, source_id, raw_json) "
        "VALUES (?, 'paper', 'arxiv', 'waits', '{\"broken\": ')",
        (PARENT,),
    )
    conn.execute(
        "INSERT INTO artifact_classifications (artifact_id, category, tags) "
        "VALUES (?, 'ml', '[\"a\"]')",
        (PARENT,),
    )
    conn.execute(
        "INSERT INTO artifact_scores (artifact_id, novelty, computed_at) "
        "VALUES (?, 0.5, '2025-11-12 08:15:30')",
        (PARENT,),
    )
    conn.execute(
        "INSERT INTO discovery_labels (artifact_id, label, annotator) VALUES (?, 'gem', 'ann')",
        (PARENT,),
    )
    conn.close()


CHILDREN = ["artifact_classifications", "artifact_scores", "discovery_labels"]


def test_children_in_every_table_are_written_in_the_batch_that_heals_their_parent(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """The parent is refused in the snapshot, its children wait (23503); one update of
    the parent writes all of them in its own batch, none of them changed."""
    a_refused_parent_with_children(refapp_db)
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        assert open_tables(refapp_pg_dsn) == sorted(["artifacts", *CHILDREN])
        conn = app(refapp_db)
        # Another artifact first: a write to the parent table that releases nobody.
        conn.execute("UPDATE artifacts SET title = 'touched' WHERE id = 1")
        daemon.wait_caught_up()
        assert open_tables(refapp_pg_dsn) == sorted(["artifacts", *CHILDREN])
        conn.execute("UPDATE artifacts SET raw_json = '{}' WHERE id = ?", (PARENT,))
        daemon.wait_caught_up()
        # Caught up means the batch committed: the children were written in it.
        assert open_dead_letters(refapp_pg_dsn) == []
    assert resolutions(refapp_pg_dsn) == ["healed by a later change"] + ["parent arrived"] * 3
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_waiting_children_survive_a_restart_and_follow_a_parent_written_meanwhile(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """The parent is refused by the target (a url longer than its varchar(2048)), not
    for anything in the source. Stopped with its children waiting; the column is
    widened and ``dead-letters retry`` writes the parent while no daemon runs: the
    next start writes the children, though the log holds no change of any of them."""
    a_refused_parent_with_children(refapp_db)
    app(refapp_db).execute(
        "UPDATE artifacts SET raw_json = NULL, url = ? WHERE id = ?",
        ("https://example.org/" + "x" * 2100, PARENT),
    )
    config = daemon_config(refapp_db, refapp_pg_dsn)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()  # the log is empty: nothing to catch up with
        assert open_tables(refapp_pg_dsn) == sorted(["artifacts", *CHILDREN])
    with psycopg.connect(refapp_pg_dsn, autocommit=True) as pg:
        pg.execute("ALTER TABLE artifacts ALTER COLUMN url TYPE varchar(4096)")
    totals = retry_letters(config, table="artifacts", report=lambda _r: None)
    assert (totals.resolved, totals.still_open) == (1, 0)
    assert open_tables(refapp_pg_dsn) == CHILDREN
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        wait_until(lambda: open_dead_letters(refapp_pg_dsn) == [], 20, "the children")
    assert resolutions(refapp_pg_dsn).count("parent arrived") == 3
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_waiting_children_are_released_by_the_stream_after_a_restart(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """The index of waiting rows is rebuilt at start from the open dead letters: the
    parent's update, made while no daemon ran, releases them in its batch."""
    a_refused_parent_with_children(refapp_db)
    config = daemon_config(refapp_db, refapp_pg_dsn)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
    app(refapp_db).execute("UPDATE artifacts SET raw_json = '[1]' WHERE id = ?", (PARENT,))
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        daemon.wait_caught_up()
        assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


# -- item 3: a parent's key change with its child re-pointed ------------------------------


def parent_and_child(path: Path) -> None:
    conn = app(path)
    conn.executescript(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
        "CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent (id),"
        " note TEXT);"
        "INSERT INTO parent VALUES (1, 'one'), (5, 'five');"
        "INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 5, 'c');"
    )
    conn.close()


def move_parent(path: Path, old: int, new: int, *, children_first: bool = False) -> None:
    """The application's way with foreign keys off (SQLite's default): the parent's key
    and its children re-pointed, in one transaction, in either order."""
    statements = [
        ("UPDATE parent SET id = ? WHERE id = ?", (new, old)),
        ("UPDATE child SET pid = ? WHERE pid = ?", (new, old)),
    ]
    conn = app(path, foreign_keys=False)
    conn.execute("BEGIN IMMEDIATE")
    for query, params in reversed(statements) if children_first else statements:
        conn.execute(query, params)
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.parametrize("batch", [1000, 2], ids=["one-batch", "split-over-batches"])
def test_a_parent_key_change_with_its_children_re_pointed_leaves_no_ghost(
    tmp_path: Path, pg_dsn: str, batch: int
) -> None:
    """The target (created by the replicator) has the foreign key, NO ACTION: the delete
    of the old key is refused while a child points at it, in log order too. It is tried
    again after the changes behind it in the batch, or, when the re-pointing comes in a
    later batch, once that batch changed the child table."""
    path = tmp_path / "keys.db"
    parent_and_child(path)
    config = daemon_config(path, pg_dsn, stream__batch_max_changes=batch)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        move_parent(path, 1, 2)
        daemon.wait_caught_up()
        if batch == 2:  # the held-back delete is written with the batch that frees it
            wait_until(lambda: open_dead_letters(pg_dsn) == [], 20, "the old key's delete")
        assert open_dead_letters(pg_dsn) == []
        assert pg_all(pg_dsn, "SELECT id FROM public.parent ORDER BY id") == [(2,), (5,)]
        move_parent(path, 5, 1, children_first=True)  # the freed key taken again
        daemon.wait_caught_up()
        if batch == 2:
            wait_until(lambda: open_dead_letters(pg_dsn) == [], 20, "the old key's delete")
        assert open_dead_letters(pg_dsn) == []
        assert pg_all(pg_dsn, "SELECT id FROM public.parent ORDER BY id") == [(1,), (2,)]
    assert_replicated(path, pg_dsn)


# -- item 4: rows INSERT OR REPLACE removes through a UNIQUE column ----------------------


def test_update_or_replace_and_upsert_through_a_unique_column(
    refapp_db: Path, refapp_pg_dsn: str
) -> None:
    """UPDATE OR REPLACE removes the row holding the email silently, like INSERT OR
    REPLACE; INSERT ... ON CONFLICT (email) DO UPDATE fires the update trigger of the
    row holding it (its key unchanged), and ON CONFLICT DO NOTHING nothing at all."""
    conn = app(refapp_db)
    (a, a_email), (b, _b_email) = conn.execute(
        "SELECT id, email FROM beta_users ORDER BY id LIMIT 2"
    ).fetchall()
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute("UPDATE OR REPLACE beta_users SET email = ? WHERE id = ?", (a_email, b))
        assert conn.execute("SELECT 1 FROM beta_users WHERE id = ?", (a,)).fetchone() is None
        conn.execute(
            "INSERT INTO beta_users (id, email, status) VALUES (990001, ?, 'merged') "
            "ON CONFLICT (email) DO UPDATE SET status = excluded.status",
            (a_email,),
        )
        conn.execute(
            "INSERT INTO beta_users (email, status) VALUES (?, 'ignored') ON CONFLICT DO NOTHING",
            (a_email,),
        )
        conn.execute("INSERT OR IGNORE INTO beta_users (email) VALUES (?)", (a_email,))
        # An upsert whose update moves the key: logged as the old key's delete, the new row.
        conn.execute(
            "INSERT INTO beta_users (email) VALUES (?) "
            "ON CONFLICT (email) DO UPDATE SET id = 995000",
            (a_email,),
        )
        daemon.wait_caught_up()
        assert pg_all(
            refapp_pg_dsn, "SELECT id, status FROM beta_users WHERE email = %s", (a_email,)
        ) == [(995000, "merged")]
    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


def test_a_replace_chain_in_one_batch(refapp_db: Path, refapp_pg_dsn: str) -> None:
    """Two REPLACEs in one transaction, each removing the row the one before wrote:
    the log holds three inserts and no delete; the target ends with the last row."""
    conn = app(refapp_db)
    (victim, email), *_ = conn.execute(
        "SELECT id, email FROM beta_users ORDER BY id LIMIT 1"
    ).fetchall()
    with DaemonThread(daemon_config(refapp_db, refapp_pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute("BEGIN IMMEDIATE")
        for status in ("first", "second", "third"):
            conn.execute(
                "INSERT OR REPLACE INTO beta_users (email, status) VALUES (?, ?)",
                (email, status),
            )
        conn.execute("COMMIT")
        daemon.wait_caught_up()
        rows = pg_all(refapp_pg_dsn, "SELECT id, status FROM beta_users WHERE email = %s", (email,))
        assert [r[1] for r in rows] == ["third"] and rows[0][0] != victim
    assert open_dead_letters(refapp_pg_dsn) == []
    assert_replicated(refapp_db, refapp_pg_dsn)


# -- item 2 under cursor capture -----------------------------------------------------------


def test_a_cursor_tables_waiting_child_is_written_with_its_parent(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Cursor capture, a target made beforehand: the parent's name is too long for its
    varchar(5), so the parent is refused and its child waits. The poll that brings the
    parent's fix writes the child in the same transaction; reconciliation then finds
    nothing left to copy."""
    path = tmp_path / "cursor.db"
    conn = app(path)
    conn.executescript(
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT);"
        "CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent (id),"
        " updated_at TEXT);"
        "CREATE INDEX parent_updated ON parent (updated_at);"
        "CREATE INDEX child_updated ON child (updated_at);"
        "INSERT INTO parent VALUES (1, 'far too long', '2025-11-12 08:00:00'),"
        " (2, 'ok', '2025-11-12 08:00:00');"
        "INSERT INTO child VALUES (10, 1, '2025-11-12 08:00:00'),"
        " (11, 2, '2025-11-12 08:00:00');"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(
            "CREATE TABLE parent (id bigint PRIMARY KEY, name varchar(5), updated_at text);"
            "CREATE TABLE child (id bigint PRIMARY KEY, pid bigint REFERENCES parent (id),"
            " updated_at text)"
        )
    config = daemon_config(path, pg_dsn, capture__mode="cursor", capture__reconcile_interval=3600.0)
    source, specs, _readonly = open_for_capture(config)
    target = connect(pg_dsn, autocommit=True)
    try:
        ensure_state(target, pg_dsn, config.target.state_schema)
        plans = build_plans(source, target, config)
        stream = CursorStream(config, plans, specs)
        stream.record_start(source, target)
        Snapshotter(config).run_plans(source, target, plans)
        stream.start(source, target)
        assert open_tables(pg_dsn) == ["child", "parent"]
        conn.execute("UPDATE parent SET name = 'fixed', updated_at = '2099-01-01 00:00:00'")
        for _ in range(20):
            if not stream.step(source, target):
                break
        assert open_dead_letters(pg_dsn) == []
        # The look-back window may bring the child in the parent's very poll (healed).
        assert set(resolutions(pg_dsn)) <= {"healed by a later change", "parent arrived"}
        assert stream.reconciler is not None
        summary = stream.reconciler.run_pass(source, target)
        assert summary.repaired == 0
    finally:
        target.close()
        source.close()
    assert_replicated(path, pg_dsn)


def test_a_unique_value_the_source_holds_twice_is_never_freed_by_a_guess(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The target has a UNIQUE the source lacks: the second row with the value is
    dead-lettered, named, and the first stays (the source still has it). A REPLACE on
    a table keyed by a timestamp (a key that does not read back as the source's) is
    dead-lettered too: the old row is never deleted on a guess."""
    path = tmp_path / "dupes.db"
    conn = app(path)
    conn.executescript(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT);"
        "CREATE TABLE events (at TEXT PRIMARY KEY, code TEXT UNIQUE);"
        "INSERT INTO people VALUES (1, 'a@x');"
        "INSERT INTO events VALUES ('2025-11-12 08:00:00', 'c1');"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(
            "CREATE TABLE people (id bigint PRIMARY KEY, email text UNIQUE);"
            "CREATE TABLE events (at timestamp PRIMARY KEY, code text UNIQUE)"
        )
    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
        conn.execute("INSERT INTO people VALUES (2, 'a@x')")
        # REPLACE removes the row holding 'c1' silently; the key is a timestamp.
        conn.execute("INSERT OR REPLACE INTO events VALUES ('2025-11-12 09:00:00', 'c1')")
        daemon.wait_caught_up()
        letters = open_dead_letters(pg_dsn)
    assert [(d["table_name"], d["key"]) for d in letters] == [
        ("people", [2]),
        ("events", ["2025-11-12 09:00:00"]),
    ], letters
    assert all("duplicate key" in d["error"] for d in letters)
    assert pg_all(pg_dsn, "SELECT id FROM people") == [(1,)]
    assert pg_all(pg_dsn, "SELECT code FROM events") == [("c1",)]


def test_a_grandchild_waiting_on_a_waiting_child_is_written_in_the_same_batch(
    tmp_path: Path, pg_dsn: str
) -> None:
    """a <- b <- c, the target made beforehand: a's name is too long for it, so b waits
    for a and c for b. The batch that writes a writes b, then c."""
    path = tmp_path / "chain.db"
    conn = app(path)
    conn.executescript(
        "CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE b (id INTEGER PRIMARY KEY, aid INTEGER REFERENCES a (id));"
        "CREATE TABLE c (id INTEGER PRIMARY KEY, bid INTEGER REFERENCES b (id));"
        "INSERT INTO a VALUES (1, 'far too long');"
        "INSERT INTO b VALUES (10, 1);"
        "INSERT INTO c VALUES (100, 10);"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as pg:
        pg.execute(
            "CREATE TABLE a (id bigint PRIMARY KEY, name varchar(5));"
            "CREATE TABLE b (id bigint PRIMARY KEY, aid bigint REFERENCES a (id));"
            "CREATE TABLE c (id bigint PRIMARY KEY, bid bigint REFERENCES b (id))"
        )
    with DaemonThread(daemon_config(path, pg_dsn)) as daemon:
        daemon.wait_streaming()
        assert open_tables(pg_dsn) == ["a", "b", "c"]
        conn.execute("UPDATE a SET name = 'fine'")
        daemon.wait_caught_up()
        assert open_dead_letters(pg_dsn) == []
    assert resolutions(pg_dsn) == ["healed by a later change"] + ["parent arrived"] * 2
    assert_replicated(path, pg_dsn)
