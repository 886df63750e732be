"""``snapshot.defer_indexes``: an existing empty table is loaded without its secondary
indexes, which are built again once the table is copied, even after a crash.

Each test snapshots a small SQLite file into its own PostgreSQL database, where the
target schema (with a b-tree, a GIN, a partial and an expression index, a UNIQUE
constraint and a foreign key) was created first, as an application's migrations would.
"""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from oracle import assert_replicated, open_dead_letters

from replicator.config import Config, load_config
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter

SOURCE = """
CREATE TABLE owners (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE things (
    id INTEGER PRIMARY KEY,
    owner_id INTEGER REFERENCES owners (id),
    code TEXT NOT NULL,
    label TEXT,
    doc TEXT,
    created_at TEXT
);
"""

TARGET = """
CREATE TABLE owners (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE things (
    id integer PRIMARY KEY,
    owner_id integer REFERENCES owners (id),
    code varchar(20) NOT NULL UNIQUE,
    label text,
    doc jsonb,
    created_at timestamp
);
CREATE INDEX things_owner ON things (owner_id);
CREATE INDEX things_doc ON things USING gin (doc);
CREATE INDEX things_labelled ON things (created_at) WHERE label IS NOT NULL;
CREATE INDEX things_lower_label ON things (lower(label));
"""

SECONDARY = {"things_owner", "things_doc"}  # plain columns: left out of the copy
# A predicate or an expression could fail on a value at build time (where the
# index in place would have refused just that row): these stay during the copy.
KEPT = {"things_labelled", "things_lower_label", "things_pkey", "things_code_key"}


def make_source(path: Path, rows: int) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SOURCE)
    conn.executemany("INSERT INTO owners VALUES (?, ?)", [(i, f"owner {i}") for i in range(1, 6)])
    conn.executemany(
        "INSERT INTO things VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                i,
                i % 5 + 1,
                f"c{i}",
                None if i % 3 else f"Label {i}",
                f'{{"n": {i}, "tags": ["t{i % 7}"]}}',
                f"2025-01-{i % 28 + 1:02d} 10:00:00",
            )
            for i in range(1, rows + 1)
        ],
    )
    conn.commit()
    conn.close()
    return path


def make_config(source: Path, dsn: str, **snapshot: Any) -> Config:
    overrides: dict[str, Any] = {
        "source.path": str(source),
        "target.url": dsn,
        "snapshot.create_tables": False,
        "snapshot.chunk_rows": 50,
        # One table at a time: the on_chunk hooks below look at the target while
        # the chunk's table is being copied (in parallel they run after the fact).
        "snapshot.parallel_tables": 1,
    }
    overrides.update({f"snapshot.{k}": v for k, v in snapshot.items()})
    return load_config(None, env={}, overrides=overrides)


def indexes(dsn: str, table: str = "things") -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename = %s",
            (table,),
        ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


def deferred(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT key, value FROM replicator.meta WHERE key LIKE 'deferred_indexes:%'"
        ).fetchall()
    return {str(r[0]): r[1] for r in rows}


def snapshot(config: Config, on_chunk: Any = None) -> SnapshotSummary:
    return Snapshotter(config, display=ProgressDisplay(io.StringIO()), on_chunk=on_chunk).run()


@pytest.fixture
def target(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(TARGET)
    return pg_dsn


def test_indexes_are_left_out_of_the_copy_and_built_again(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 400)
    before = indexes(target)
    assert before.keys() >= SECONDARY
    seen: list[set[str]] = []

    def during(table: str, read: int, written: int, total: int) -> None:
        if table == "things" and read:  # read 0: a keep-alive during the rebuild
            seen.append(set(indexes(target)))

    summary = snapshot(make_config(source, target, defer_indexes=True), during)
    assert summary.dead_letters == 0
    assert seen, "no chunk of things was reported"
    # While things was copied: its keys, UNIQUE and non-plain indexes were there.
    for names in seen:
        assert not names & SECONDARY
        assert names >= KEPT
    assert indexes(target) == before  # the same definitions, all back
    assert deferred(target) == {}
    assert_replicated(source, target)


def test_without_the_setting_the_indexes_stay(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 200)
    before = indexes(target)
    seen: list[set[str]] = []

    def during(table: str, read: int, written: int, total: int) -> None:
        if table == "things" and read:  # read 0: a keep-alive during the rebuild
            seen.append(set(indexes(target)))

    snapshot(make_config(source, target), during)
    assert seen and all(names >= SECONDARY for names in seen)
    assert indexes(target) == before


def test_a_table_with_rows_keeps_its_indexes(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 200)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("INSERT INTO owners VALUES (1, 'owner 1')")
        conn.execute("INSERT INTO things (id, owner_id, code) VALUES (1, 1, 'c1')")
    seen: list[set[str]] = []

    def during(table: str, read: int, written: int, total: int) -> None:
        if table == "things" and read:  # read 0: a keep-alive during the rebuild
            seen.append(set(indexes(target)))

    snapshot(make_config(source, target, defer_indexes=True), during)
    # Not empty at the start: merged with its indexes in place (never dropped).
    assert seen and all(names >= SECONDARY for names in seen)
    assert_replicated(source, target)


def test_unique_and_foreign_keys_still_check_every_row(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 120)
    conn = sqlite3.connect(source)
    conn.execute("UPDATE things SET code = 'c1' WHERE id = 77")  # UNIQUE (code) in the target
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("UPDATE things SET owner_id = 99 WHERE id = 88")  # no such owner
    conn.commit()
    conn.close()
    summary = snapshot(make_config(source, target, defer_indexes=True))
    with psycopg.connect(target, autocommit=True) as pg:
        letters = set(
            pg.execute(
                "SELECT table_name, key::text, sqlstate FROM replicator.dead_letters"
                " WHERE resolved_at IS NULL"
            ).fetchall()
        )
    assert summary.dead_letters == 2
    assert letters == {("things", "[77]", "23505"), ("things", "[88]", "23503")}
    assert len(open_dead_letters(target)) == 2
    assert indexes(target).keys() >= SECONDARY


def test_a_copy_killed_meanwhile_rebuilds_them_on_its_next_run(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 400)
    before = indexes(target)

    class Killed(Exception):
        pass

    def kill(table: str, read: int, written: int, total: int) -> None:
        if table == "things" and read >= 150:
            raise Killed

    config = make_config(source, target, defer_indexes=True)
    with pytest.raises(Killed):
        snapshot(config, kill)
    # Stopped mid-table: the indexes are gone, their definitions kept in the state schema.
    assert not SECONDARY & indexes(target).keys()
    kept = deferred(target)
    assert list(kept) == ["deferred_indexes:public.things"]
    assert {name for name, _ in kept["deferred_indexes:public.things"]["indexes"]} == SECONDARY
    snapshot(config)  # resumes the copy, then builds them
    assert indexes(target) == before
    assert deferred(target) == {}
    assert_replicated(source, target)


def test_indexes_left_by_a_run_killed_after_its_last_chunk_are_built_by_the_next(
    tmp_path: Path, target: str
) -> None:
    source = make_source(tmp_path / "app.db", 100)
    before = indexes(target)
    config = make_config(source, target, defer_indexes=True)
    # As if killed between the table's last chunk and the rebuild: drop and record.
    with psycopg.connect(target) as conn:
        Snapshotter(config).defer_indexes(conn, _plan(config, conn, "things"))
    assert not SECONDARY & indexes(target).keys()
    snapshot(config)
    assert indexes(target) == before
    assert deferred(target) == {}


def _plan(config: Config, conn: psycopg.Connection[Any], name: str) -> Any:
    from replicator.plan.tables import build_plans
    from replicator.source.sqlite import open_source
    from replicator.state.migrations import ensure_state

    ensure_state(conn, config.require_target(), config.target.state_schema)
    source = open_source(config.require_source(), readonly=True)
    try:
        return next(p for p in build_plans(source, conn, config) if p.source.name == name)
    finally:
        source.close()


def test_deferred_indexes_of_a_table_not_planned_are_built_too(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 100)
    before = indexes(target)
    config = make_config(source, target, defer_indexes=True)
    with psycopg.connect(target) as conn:
        Snapshotter(config).defer_indexes(conn, _plan(config, conn, "things"))
    Snapshotter(config, display=ProgressDisplay(io.StringIO())).run(only=["owners"])
    assert indexes(target) == before
    assert deferred(target) == {}


def test_deferring_again_keeps_what_was_recorded_before(tmp_path: Path, target: str) -> None:
    source = make_source(tmp_path / "app.db", 10)
    config = make_config(source, target, defer_indexes=True)
    with psycopg.connect(target, autocommit=True) as conn:
        plan = _plan(config, conn, "things")
        Snapshotter(config).defer_indexes(conn, plan)
        conn.execute("CREATE INDEX things_owner ON things (owner_id)")  # one came back
        Snapshotter(config).defer_indexes(conn, plan)
    kept = deferred(target)["deferred_indexes:public.things"]
    assert {name for name, _ in kept["indexes"]} == SECONDARY
