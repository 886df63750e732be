"""Tables copied in parallel (``snapshot.parallel_tables``): who waits for whom, that
copies really overlap, stopping and resuming, and the setting's validation.

Each test snapshots a small SQLite file into its own PostgreSQL database with
:class:`~replicator.snapshot.copy.Snapshotter` and compares the result with the
source, row for row (the oracle's typed comparison).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import rows_script, snapshot_config, sqlite_from_script
from oracle import assert_replicated, open_dead_letters
from psycopg import sql

from replicator.config import Config, load_config
from replicator.errors import ConfigError
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter

Chunk = tuple[str, int, int, int]  # what on_chunk gets: table, read, written, total


# --------------------------------------------------------------------------- helpers


make_source = sqlite_from_script
make_config = snapshot_config


class Recorder:
    """An on_chunk hook noting every call (and where it ran); optionally raising."""

    def __init__(self, raise_after: int | None = None) -> None:
        self.calls: list[Chunk] = []
        self.threads: set[str] = set()
        self.raise_after = raise_after
        self.raised: BaseException | None = None

    def __call__(self, table: str, read: int, written: int, total: int) -> None:
        self.calls.append((table, read, written, total))
        self.threads.add(threading.current_thread().name)
        if self.raise_after is not None and len(self.calls) >= self.raise_after:
            self.raised = Boom(f"stopped after {len(self.calls)} chunks")
            raise self.raised

    def tables(self) -> list[str]:
        return [c[0] for c in self.calls]

    def first(self, table: str) -> int:
        return self.tables().index(table)

    def last(self, table: str) -> int:
        return len(self.calls) - 1 - self.tables()[::-1].index(table)

    def of(self, table: str) -> list[Chunk]:
        return [c for c in self.calls if c[0] == table]


class Boom(Exception):
    pass


def snapshot(config: Config, hook: Recorder | None = None) -> SnapshotSummary:
    return Snapshotter(config, display=ProgressDisplay(io.StringIO()), on_chunk=hook).run()


def progress(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT table_name, rows_read, rows_written, dead_letters, rows_total, done,"
            " started_at, finished_at FROM replicator.snapshot_progress"
        )
        names = [d.name for d in cur.description or ()]
        return {str(r[0]): dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def counts(dsn: str, tables: Sequence[str]) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = {}
        for table in tables:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
            ).fetchone()
            assert row is not None
            out[table] = int(row[0])
        return out


def duplicate_keys(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) - count(DISTINCT id) FROM {}").format(
                sql.Identifier("public", table)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


def snapshot_threads() -> list[threading.Thread]:
    """Threads of a parallel copy (the pool's and each table's prefetcher)."""
    return [
        t
        for t in threading.enumerate()
        if t.is_alive() and (t.name.startswith("snapshot") or t.name.startswith("read:"))
    ]


# ------------------------------------------------------------------ existing tables with FKs

FAMILY_SOURCE = """
CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER {fk}, note TEXT);
CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);
"""

FAMILY_TARGET = """
CREATE TABLE parent (id bigint PRIMARY KEY, name text);
CREATE TABLE child (
    id bigint PRIMARY KEY, parent_id bigint REFERENCES parent (id), note text
);
CREATE TABLE other (id bigint PRIMARY KEY, v text);
-- Who wrote what, and what the writer of a child chunk could see of its parent.
CREATE TABLE audit (
    seq bigserial PRIMARY KEY,
    tbl text NOT NULL,
    pid int NOT NULL,
    parent_rows bigint NOT NULL,
    parent_done boolean
);
CREATE FUNCTION audit_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit (tbl, pid, parent_rows, parent_done) VALUES (
        TG_TABLE_NAME,
        pg_backend_pid(),
        (SELECT count(*) FROM parent),
        (SELECT done FROM replicator.snapshot_progress WHERE table_name = 'parent'));
    RETURN NULL;
END $$;
CREATE TRIGGER audit_child AFTER INSERT ON child
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write();
CREATE TRIGGER audit_parent AFTER INSERT ON parent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write();
"""

PARENTS = 600


@pytest.mark.parametrize(
    "source_fk",
    [
        pytest.param("REFERENCES parent(id)", id="fk-in-source-and-target"),
        pytest.param("", id="fk-in-target-only"),
    ],
)
def test_a_child_table_waits_for_its_parent_when_the_target_has_foreign_keys(
    tmp_path: Path, pg_dsn: str, source_fk: str
) -> None:
    source = make_source(
        tmp_path / "family.db",
        FAMILY_SOURCE.format(fk=source_fk)
        + rows_script("parent", PARENTS, "i, 'parent ' || i")
        # The first children point at the last parents: a child copied before its
        # parent table is complete would break the foreign key at once.
        + rows_script("child", PARENTS, f"i, {PARENTS + 1} - i, 'child ' || i")
        + rows_script("other", 3, "i, 'other ' || i"),
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(FAMILY_TARGET)
    config = make_config(source, pg_dsn, parallel_tables=2, create_tables=False, chunk_rows=25)
    hook = Recorder()
    summary = snapshot(config, hook)

    assert summary.dead_letters == 0
    assert open_dead_letters(pg_dsn) == []
    assert [t.table for t in summary.tables] == ["other", "parent", "child"]
    assert {t.table: t.rows_written for t in summary.tables} == {
        "other": 3,
        "parent": PARENTS,
        "child": PARENTS,
    }
    # on_chunk: every chunk of the child after the last one of its parent
    assert len(hook.of("parent")) == len(hook.of("child")) == PARENTS // 25
    assert hook.first("child") > hook.last("parent")
    # the checkpoint table: the child's first chunk began after the parent was done
    done = progress(pg_dsn)
    assert done["child"]["started_at"] >= done["parent"]["finished_at"]
    # what PostgreSQL saw: each child write found its parent table complete and done
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        audit = conn.execute("SELECT tbl, pid, parent_rows, parent_done FROM audit").fetchall()
    child_writes = [a for a in audit if a[0] == "child"]
    parent_writes = [a for a in audit if a[0] == "parent"]
    assert len(child_writes) == PARENTS // 25
    assert all(rows == PARENTS and is_done for _, _, rows, is_done in child_writes)
    # ... and was written over a connection of its own (the parallel path ran)
    assert {a[1] for a in child_writes}.isdisjoint({a[1] for a in parent_writes})
    assert len({a[1] for a in child_writes}) == 1
    assert_replicated(source, pg_dsn)


@pytest.mark.timeout(120)
def test_existing_tables_in_a_foreign_key_cycle_are_still_copied(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Neither table of a cycle can wait for the other: they go in plan order."""
    source = make_source(
        tmp_path / "cycle.db",
        "CREATE TABLE a (id INTEGER PRIMARY KEY, b_id INTEGER);"
        "CREATE TABLE b (id INTEGER PRIMARY KEY, a_id INTEGER);"
        "CREATE TABLE c (id INTEGER PRIMARY KEY);"
        + rows_script("a", 100, "i, NULL")
        + rows_script("b", 100, "i, i")
        + rows_script("c", 50, "i"),
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE a (id bigint PRIMARY KEY, b_id bigint);"
            "CREATE TABLE b (id bigint PRIMARY KEY, a_id bigint REFERENCES a (id));"
            "ALTER TABLE a ADD FOREIGN KEY (b_id) REFERENCES b (id);"
            "CREATE TABLE c (id bigint PRIMARY KEY);"
        )
    hook = Recorder()
    summary = snapshot(
        make_config(source, pg_dsn, parallel_tables=2, create_tables=False, chunk_rows=10), hook
    )
    assert summary.dead_letters == 0
    assert counts(pg_dsn, ["a", "b", "c"]) == {"a": 100, "b": 100, "c": 50}
    # b's rows point at a: b began once a was done
    assert hook.first("b") > hook.last("a")
    assert_replicated(source, pg_dsn)


# --------------------------------------------------------------------------- created tables

ROWS = 2000
CHUNK = 10


def test_created_tables_are_copied_at_the_same_time(tmp_path: Path, pg_dsn: str) -> None:
    """Tables the snapshot creates get their foreign keys after the load, so even a
    child does not wait for its parent: the copies overlap."""
    source = make_source(
        tmp_path / "created.db",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE child (id INTEGER PRIMARY KEY,"
        " parent_id INTEGER REFERENCES parent(id), note TEXT);"
        + rows_script("parent", ROWS, "i, 'parent ' || i")
        + rows_script("child", ROWS, f"i, {ROWS + 1} - i, 'child ' || i"),
    )
    hook = Recorder()
    summary = snapshot(make_config(source, pg_dsn, parallel_tables=2, chunk_rows=CHUNK), hook)

    assert len(hook.of("parent")) == len(hook.of("child")) == ROWS // CHUNK
    # Chunks of the two tables interleave: each began before the other ended.
    assert hook.first("child") < hook.last("parent")
    assert hook.first("parent") < hook.last("child")
    switches = sum(1 for a, b in zip(hook.tables(), hook.tables()[1:], strict=False) if a != b)
    assert switches >= 2, hook.tables()
    # Each table's own progress is reported in order, whatever the interleaving.
    for table in ("parent", "child"):
        assert [c[1] for c in hook.of(table)] == list(range(CHUNK, ROWS + 1, CHUNK))
    assert hook.threads == {threading.current_thread().name}  # on_chunk runs here
    started = progress(pg_dsn)
    assert started["child"]["started_at"] < started["parent"]["finished_at"]
    assert started["parent"]["started_at"] < started["child"]["finished_at"]

    assert summary.dead_letters == 0
    assert open_dead_letters(pg_dsn) == []
    assert any("foreign key" in p for p in summary.post_load), summary.post_load
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        fks = conn.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint"
            " WHERE conrelid = 'public.child'::regclass AND contype = 'f'"
        ).fetchall()
    assert fks == [("parent",)]
    assert_replicated(source, pg_dsn)
    assert snapshot_threads() == []


def test_parallel_tables_1_copies_one_table_after_another(tmp_path: Path, pg_dsn: str) -> None:
    source = make_source(
        tmp_path / "serial.db",
        "CREATE TABLE x (id INTEGER PRIMARY KEY, v TEXT);"
        "CREATE TABLE y (id INTEGER PRIMARY KEY, v TEXT);"
        + rows_script("x", 300, "i, 'x' || i")
        + rows_script("y", 300, "i, 'y' || i"),
    )
    hook = Recorder()
    snapshot(make_config(source, pg_dsn, parallel_tables=1, chunk_rows=CHUNK), hook)
    assert hook.tables() == ["x"] * 30 + ["y"] * 30
    assert_replicated(source, pg_dsn)


# --------------------------------------------------------------------------- stopping and resuming

THREE = (
    "CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);"
    "CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT);"
    "CREATE TABLE c (id INTEGER PRIMARY KEY, v TEXT);"
    + rows_script("a", 400, "i, 'a ' || i")
    + rows_script("b", 400, "i, 'b ' || i")
    + rows_script("c", 400, "i, 'c ' || i")
)


def test_an_on_chunk_error_stops_the_copy_and_a_second_run_resumes(
    tmp_path: Path, pg_dsn: str
) -> None:
    source = make_source(tmp_path / "three.db", THREE)
    config = make_config(source, pg_dsn, parallel_tables=2, chunk_rows=CHUNK)
    first = Recorder(raise_after=6)
    with pytest.raises(Boom) as raised:
        snapshot(config, first)
    assert raised.value is first.raised  # the hook's own exception, as it was
    assert len(first.calls) == 6  # no call after the one that raised

    # Stopped for good: no thread left, nothing written any more.
    assert snapshot_threads() == []
    tables = ["a", "b", "c"]
    stopped = counts(pg_dsn, tables)
    time.sleep(0.3)
    assert counts(pg_dsn, tables) == stopped
    # What was committed is whole chunks, each with its checkpoint.
    partial = progress(pg_dsn)
    assert sum(stopped.values()) > 0
    # The workers stopped after the chunk in hand: no table was copied to its end.
    assert not any(p["done"] for p in partial.values()), partial
    for table in tables:
        p = partial.get(table)
        if p is None:
            assert stopped[table] == 0, table
            continue
        assert stopped[table] == p["rows_written"] == p["rows_read"], table
        if not p["done"]:
            assert p["rows_read"] % CHUNK == 0, table
    assert set(first.tables()) <= set(partial)

    second = Recorder()
    summary = snapshot(config, second)
    for table in tables:
        p = partial.get(table)
        resumed_from = p["rows_read"] if p is not None else 0
        if p is not None and p["done"]:
            assert second.of(table) == [], table
            continue
        # counting went on from where the first run stopped: no chunk copied twice
        assert second.of(table)[0][1] == resumed_from + CHUNK, table
        assert second.of(table)[-1][1] == 400, table
    assert {t.table: t.rows_written for t in summary.tables} == dict.fromkeys(tables, 400)
    assert summary.dead_letters == 0
    assert open_dead_letters(pg_dsn) == []
    assert counts(pg_dsn, tables) == dict.fromkeys(tables, 400)
    assert all(duplicate_keys(pg_dsn, t) == 0 for t in tables)
    assert all(p["done"] for p in progress(pg_dsn).values())
    assert_replicated(source, pg_dsn)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "snapshot.parallel_tables must be at least 1"),
        (-1, "snapshot.parallel_tables: must not be negative, got -1"),
    ],
)
def test_parallel_tables_below_one_is_refused(tmp_path: Path, value: int, message: str) -> None:
    source = tmp_path / "app.db"
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    with pytest.raises(ConfigError, match=message):
        make_config(source, dsn, parallel_tables=value)
    with pytest.raises(ConfigError, match=message):
        load_config(
            None,
            env={
                "DATABASE_PATH": str(source),
                "DATABASE_URL": dsn,
                "REPLICATOR_SNAPSHOT_PARALLEL_TABLES": str(value),
            },
        )
    toml = tmp_path / "replicator.toml"
    toml.write_text(
        f'[source]\npath = "{source}"\n[target]\nurl = "{dsn}"\n'
        f"[snapshot]\nparallel_tables = {value}\n"
    )
    with pytest.raises(ConfigError, match=message):
        load_config(toml, env={})


def test_parallel_tables_defaults_to_two_and_accepts_one(tmp_path: Path) -> None:
    source = tmp_path / "app.db"
    dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    assert make_config(source, dsn).snapshot.parallel_tables == 2
    assert make_config(source, dsn, parallel_tables=1).snapshot.parallel_tables == 1
    env = {
        "DATABASE_PATH": str(source),
        "DATABASE_URL": dsn,
        "REPLICATOR_SNAPSHOT_PARALLEL_TABLES": "4",
    }
    assert load_config(None, env=env).snapshot.parallel_tables == 4
