"""The source schema changing while ``replicator run`` streams, under live writers.

Each test starts the daemon (a ``replicator run`` process) on a reference-app
database with a few tables of its own, keeps a small application writing to
those (the migrations run inside that writer, between its transactions, the
way an application migrates itself), and changes the schema mid-stream:

- a column added (one the target lacks, one the target already has),
- a new table (a child of a replicated table),
- a column dropped (SQLite refuses it while our triggers are on the table, so
  the table is rebuilt, SQLite's documented procedure),
- a column renamed,
- the primary key changed (the table rebuilt).

Added columns and new tables are followed at once. The other three pause the
table (log, metric, ``status``) while every other table keeps streaming; after
the operator adjusts the target and restarts the daemon the table is re-synced,
and nothing written meanwhile is missing. Every test ends with a typed,
row-for-row comparison of the whole database.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import random
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    REPLICATOR,
    DaemonProcess,
    daemon_config,
    daemon_env,
    daemon_process,
    start_writer,
    wait_until,
)
from oracle import assert_replicated, compare, replicated_tables

from replicator.demo.sample import generate_reference_db
from replicator.plan.tables import build_plans
from replicator.snapshot import Snapshotter
from replicator.source.changelog import Change
from replicator.state.migrations import ensure_state
from replicator.stream.apply import Applier

Spec = dict[str, str]  # column -> kind of value the writer puts there

ITEMS: Spec = {"name": "text", "qty": "int"}  # plus id INTEGER PRIMARY KEY
NOTES: Spec = {"body": "text", "score": "real"}
PAIRS: Spec = {"a": "seq", "b": "seq", "v": "text"}  # PRIMARY KEY (a)

WORDS = ["alpha", "beta", "gamma", "délta", "日本", "🚀 rocket", "o'quote", 'dq"x']


def create_own_tables(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(
            """
            BEGIN;
            CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER);
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, score REAL);
            CREATE TABLE pairs (a INTEGER NOT NULL, b INTEGER NOT NULL, v TEXT,
                                PRIMARY KEY (a));
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
            INSERT INTO items (name, qty) SELECT 'item ' || i, i * 7 % 101 FROM n;
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
            INSERT INTO notes (body, score) SELECT 'note ' || i, i / 8.0 FROM n;
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
            INSERT INTO pairs (a, b, v) SELECT i, i * 3, 'pair ' || i FROM n;
            COMMIT;
            """
        )
    finally:
        conn.close()


class AppWriter(threading.Thread):
    """The application's own writes to ``items``, ``notes`` and ``pairs``: inserts,
    updates and deletes, one or two per transaction, about ``rate`` per second.

    :meth:`migrate` runs DDL in this writer's connection between two of its
    transactions (in one transaction of its own) and switches the columns it
    writes, so no statement of the old shape follows the migration.
    """

    def __init__(self, path: Path, specs: Mapping[str, Spec], *, rate: float, seed: int) -> None:
        super().__init__(name="app-writer", daemon=True)
        self.path = path
        self.specs = {t: dict(s) for t, s in specs.items()}
        self.rate = rate
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.jobs: queue.Queue[tuple[list[str], dict[str, Spec] | None, list[Any]]] = queue.Queue()
        self.transactions = 0
        self.error: BaseException | None = None
        self._seq = itertools.count(1_000_000)
        self._hush = threading.Event()  # asked to write nothing for a while
        self._idle = threading.Event()  # ... and nothing is being written

    def run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA foreign_keys = ON")
            while not self.halt.is_set():
                self._migrations(conn)
                if self._hush.is_set():
                    self._idle.set()
                    self.halt.wait(0.02)
                    continue
                self._idle.clear()
                self._transaction(conn)
                self.transactions += 1
                self.halt.wait(1.0 / self.rate)
        except BaseException as exc:
            self.error = exc
        finally:
            conn.close()

    def _migrations(self, conn: sqlite3.Connection) -> None:
        while not self.jobs.empty():
            statements, specs, outcome = self.jobs.get()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in statements:
                    conn.execute(stmt)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.execute("ROLLBACK")
                outcome.append(exc)
            else:
                if specs is not None:
                    self.specs = specs
                outcome.append(None)

    def migrate(self, statements: Sequence[str], specs: Mapping[str, Spec] | None = None) -> None:
        """Run ``statements`` as the application's migration; raise what SQLite raised."""
        outcome: list[Any] = []
        new = {t: dict(s) for t, s in specs.items()} if specs is not None else None
        self.jobs.put((list(statements), new, outcome))
        wait_until(lambda: bool(outcome) or not self.is_alive(), 30, "the migration")
        if not outcome:
            raise AssertionError(f"the writer died: {self.error!r}")
        if outcome[0] is not None:
            raise outcome[0]

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """No writes inside the block (the transaction in hand is finished first)."""
        self._hush.set()
        try:
            wait_until(lambda: self._idle.is_set() or not self.is_alive(), 30, "a quiet writer")
            self.check()
            yield
        finally:
            self._idle.clear()
            self._hush.clear()

    def wait_transactions(self, count: int) -> None:
        """Let the writer commit ``count`` more transactions."""
        target = self.transactions + count
        wait_until(lambda: self.transactions >= target or not self.is_alive(), 60, "writes")
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the application writer failed: {self.error!r}")

    def finish(self) -> int:
        self.halt.set()
        self.join(30)
        self.check()
        return self.transactions

    # -- one transaction -------------------------------------------------------------

    def _value(self, conn: sqlite3.Connection, kind: str) -> object:
        rng = self.rng
        if kind == "text":
            return f"{rng.choice(WORDS)} {rng.randint(0, 9999)}"
        if kind == "int":
            return rng.randint(-(10**6), 10**6)
        if kind == "real":
            return round(rng.uniform(-1000, 1000), 3)
        if kind == "seq":
            return next(self._seq)
        if kind.startswith("ref:"):  # an existing row's id in another table
            return self._existing(conn, kind[4:], "id")
        raise AssertionError(kind)

    def _existing(self, conn: sqlite3.Connection, table: str, column: str) -> object:
        top = conn.execute(f'SELECT max(rowid) FROM "{table}"').fetchone()[0] or 0
        row = conn.execute(
            f'SELECT "{column}" FROM "{table}" WHERE rowid >= ? ORDER BY rowid LIMIT 1',
            (self.rng.randint(0, top),),
        ).fetchone()
        return row[0] if row else None

    def _transaction(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for _ in range(self.rng.choice((1, 2))):
                self._one(conn, self.rng.choice(sorted(self.specs)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _one(self, conn: sqlite3.Connection, table: str) -> None:
        spec = self.specs[table]
        t = f'"{table}"'
        roll = self.rng.random()
        if roll < 0.45:
            cols = list(spec)
            values = [self._value(conn, spec[c]) for c in cols]
            names = ", ".join(f'"{c}"' for c in cols)
            marks = ", ".join("?" for _ in cols)
            conn.execute(f"INSERT INTO {t} ({names}) VALUES ({marks})", values)
            return
        top = conn.execute(f"SELECT max(rowid) FROM {t}").fetchone()[0] or 0
        pick = f"(SELECT rowid FROM {t} WHERE rowid >= ? ORDER BY rowid LIMIT 1)"
        at = self.rng.randint(0, top)
        if roll < 0.88:
            cols = [c for c, kind in spec.items() if kind in ("text", "int", "real")]
            chosen = self.rng.sample(cols, self.rng.randint(1, len(cols)))
            sets = ", ".join(f'"{c}" = ?' for c in chosen)
            values = [self._value(conn, spec[c]) for c in chosen]
            conn.execute(f"UPDATE {t} SET {sets} WHERE rowid = {pick}", [*values, at])
        else:
            conn.execute(f"DELETE FROM {t} WHERE rowid = {pick}", (at,))


# --------------------------------------------------------------------------
# Helpers


def make_source(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=150, seed=1, bad_values=False)
    create_own_tables(path)
    return path


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Path, AppWriter]]:
    path = make_source(tmp_path)
    writer = AppWriter(path, {"items": ITEMS, "notes": NOTES, "pairs": PAIRS}, rate=80, seed=11)
    writer.start()
    try:
        yield path, writer
    finally:
        writer.halt.set()
        writer.join(30)


def holds(dsn: str) -> dict[str, tuple[str, str]]:
    """Paused and re-syncing tables in the state schema: table -> (state, reason)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT table_name, state, reason FROM replicator.paused_tables")
        return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}


def events(daemon: DaemonProcess, name: str, **fields: object) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.events()
        if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


def wait_event(
    daemon: DaemonProcess, name: str, timeout: float = 60, **fields: object
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        gone = daemon.gone()
        if gone:
            raise AssertionError(f"the daemon stopped: {gone}")
        found[:] = events(daemon, name, **fields)
        return bool(found)

    wait_until(seen, timeout, f"{name} {fields}", every=0.1)
    return found[0]


def paused_metric(daemon: DaemonProcess, table: str) -> float | None:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = reply.read().decode()
    prefix = f'replicator_table_paused{{table="{table}"}} '
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return None


def readyz(daemon: DaemonProcess) -> int:
    url = f"http://127.0.0.1:{daemon.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def settle(daemon: DaemonProcess, dsn: str, writers: Sequence[Any]) -> None:
    """Stop the writers, then wait until everything they wrote is applied and no
    table is still being re-synced."""
    for writer in writers:
        if isinstance(writer, AppWriter):
            writer.finish()
        else:
            writer.stop()
    daemon.wait_caught_up(90)
    wait_until(
        lambda: not any(state == "resync" for state, _ in holds(dsn).values()),
        90,
        "re-syncs to finish",
        every=0.2,
    )
    daemon.wait_caught_up(90)


def status_cli(path: Path, dsn: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [str(REPLICATOR), "status", "--json"],
        env=daemon_env(path, dsn),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def target_columns(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        )
        return {str(r[0]): str(r[1]) for r in rows}


def pg(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def others(path: Path, *paused: str) -> list[str]:
    return [t for t in replicated_tables(path) if t not in paused]


# --------------------------------------------------------------------------
# Followed without a restart


def test_added_columns_reach_the_target_without_a_restart(
    tmp_path: Path, refapp_pg_dsn: str, app: tuple[Path, AppWriter]
) -> None:
    path, writer = app
    dsn = refapp_pg_dsn
    refapp = start_writer(path, tmp_path / "refapp-writer.log", rate=30, seed=7)
    with daemon_process(path, dsn, tmp_path / "daemon.log") as daemon:
        try:
            daemon.wait_streaming(90)
            daemon.wait_caught_up(60)
            # The application's own PostgreSQL migration already made one of them.
            pg(dsn, "ALTER TABLE items ADD COLUMN tag text")
            writer.migrate(
                [
                    "ALTER TABLE items ADD COLUMN price REAL NOT NULL DEFAULT 1.5",
                    "ALTER TABLE items ADD COLUMN tag TEXT DEFAULT 'untagged'",
                ],
                {"items": {**ITEMS, "price": "real", "tag": "text"}, "notes": NOTES},
            )
            wait_event(daemon, "table_resynced", table="items")
            writer.wait_transactions(150)
            settle(daemon, dsn, [writer, refapp])
        finally:
            refapp.kill()
        added = events(daemon, "columns_added", table="items")
        assert [e["columns"] for e in added] == [["price"]]  # "tag" was there already
        assert not events(daemon, "table_paused")
        assert daemon.stop() == 0
    columns = target_columns(dsn, "items")
    assert columns["price"] == "double precision"
    assert columns["tag"] == "text"
    assert holds(dsn) == {}
    comparison = assert_replicated(path, dsn)
    assert comparison.rows["items"] > 300


def test_a_new_table_is_snapshotted_and_streams(
    tmp_path: Path, refapp_pg_dsn: str, app: tuple[Path, AppWriter]
) -> None:
    path, writer = app
    dsn = refapp_pg_dsn
    with daemon_process(path, dsn, tmp_path / "daemon.log") as daemon:
        daemon.wait_streaming(90)
        daemon.wait_caught_up(60)
        writer.migrate(
            [
                "CREATE TABLE gadgets (id INTEGER PRIMARY KEY, "
                "item_id INTEGER REFERENCES items (id) ON DELETE CASCADE, "
                "label TEXT, weight REAL)",
                "INSERT INTO gadgets (item_id, label, weight) "
                "SELECT id, 'gadget ' || id, id * 0.25 FROM items WHERE id % 3 = 0",
            ],
            {
                "items": ITEMS,
                "notes": NOTES,
                "gadgets": {"item_id": "ref:items", "label": "text", "weight": "real"},
            },
        )
        wait_event(daemon, "table_streaming", table="gadgets")
        writer.wait_transactions(150)
        settle(daemon, dsn, [writer])
        assert events(daemon, "table_added", table="gadgets")
        assert not events(daemon, "table_paused")
        assert daemon.stop() == 0
    assert holds(dsn) == {}
    comparison = assert_replicated(path, dsn)
    assert comparison.rows["gadgets"] > 100


# --------------------------------------------------------------------------
# Paused, the others go on; resumed by a restart after the target is adjusted


def resume(
    tmp_path: Path, path: Path, dsn: str, writer: AppWriter, table: str, run: int
) -> DaemonProcess:
    """Start the daemon again (the writer still writing) and wait for ``table``'s re-sync."""
    with daemon_process(path, dsn, tmp_path / f"daemon-{run}.log") as daemon:
        daemon.wait_streaming(90)
        wait_event(daemon, "table_resynced", table=table)
        writer.wait_transactions(100)
        settle(daemon, dsn, [writer])
        assert not events(daemon, "table_paused")
        assert paused_metric(daemon, table) in (None, 0.0)
        assert daemon.stop() == 0
        return daemon


def test_a_dropped_column_pauses_the_table_until_the_target_follows(
    tmp_path: Path, refapp_pg_dsn: str, app: tuple[Path, AppWriter]
) -> None:
    path, writer = app
    dsn = refapp_pg_dsn
    refapp = start_writer(path, tmp_path / "refapp-writer.log", rate=30, seed=8)
    try:
        with daemon_process(path, dsn, tmp_path / "daemon.log") as daemon:
            daemon.wait_streaming(90)
            daemon.wait_caught_up(60)
            # SQLite checks every trigger after a DROP COLUMN; ours name every column.
            with pytest.raises(sqlite3.OperationalError) as refused:
                writer.migrate(["ALTER TABLE items DROP COLUMN qty"])
            assert "error in trigger _replicator_" in str(refused.value)
            assert "after drop column: no such column: NEW.qty" in str(refused.value)
            # So the application rebuilds the table (SQLite's 12-step procedure).
            writer.migrate(
                [
                    "CREATE TABLE items_new (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
                    "INSERT INTO items_new (id, name) SELECT id, name FROM items",
                    "DROP TABLE items",
                    "ALTER TABLE items_new RENAME TO items",
                ],
                {"items": {"name": "text"}, "notes": NOTES},
            )
            paused = wait_event(daemon, "table_paused", table="items")
            assert paused["reason"] == 'column "qty" dropped'
            assert paused_metric(daemon, "items") == 1.0
            wait_until(lambda: readyz(daemon) == 503, 10, "/readyz to refuse a cutover")
            # Every other table goes on streaming (and the app keeps writing items).
            writer.wait_transactions(150)
            refapp.stop()
            with writer.quiet():
                daemon.wait_caught_up(60)
                assert_replicated(path, dsn, tables=others(path, "items"))
            code, status = status_cli(path, dsn)
            assert code == 1
            assert status["verdict"] == 'paused — items: column "qty" dropped'
            table = next(t for t in status["tables"] if t["table"] == "items")
            assert table["mode"] == "paused"
            assert len(events(daemon, "table_paused")) == 1  # once, and only that table
            assert daemon.stop() == 0
    finally:
        refapp.kill()
    pg(dsn, "ALTER TABLE items DROP COLUMN qty")  # the operator follows the source
    resume(tmp_path, path, dsn, writer, "items", run=2)
    assert holds(dsn) == {}
    assert "qty" not in target_columns(dsn, "items")
    assert_replicated(path, dsn)
    code, status = status_cli(path, dsn)
    assert status["verdict"].startswith("in sync"), status["verdict"]


def test_a_renamed_column_pauses_the_table_until_the_target_follows(
    tmp_path: Path, refapp_pg_dsn: str, app: tuple[Path, AppWriter]
) -> None:
    path, writer = app
    dsn = refapp_pg_dsn
    # A child of items: its rows would miss their parents if it streamed on alone.
    parts = {"item_id": "ref:items", "label": "text"}
    writer.migrate(
        [
            "CREATE TABLE parts (id INTEGER PRIMARY KEY, "
            "item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE, label TEXT)",
            "INSERT INTO parts (item_id, label) SELECT id, 'part ' || id FROM items",
        ],
        {"items": ITEMS, "notes": NOTES, "pairs": PAIRS, "parts": parts},
    )
    with daemon_process(path, dsn, tmp_path / "daemon.log") as daemon:
        daemon.wait_streaming(90)
        daemon.wait_caught_up(60)
        writer.migrate(
            ["ALTER TABLE items RENAME COLUMN name TO title"],
            {
                "items": {"title": "text", "qty": "int"},
                "notes": NOTES,
                "pairs": PAIRS,
                "parts": parts,
            },
        )
        paused = wait_event(daemon, "table_paused", table="items")
        assert paused["reason"] == 'column "name" was renamed to "title"'
        child = wait_event(daemon, "table_paused", table="parts")
        assert child["reason"] == 'its parent table "items" is paused'
        writer.wait_transactions(150)
        with writer.quiet():
            daemon.wait_caught_up(60)
            assert_replicated(path, dsn, tables=others(path, "items", "parts"))
        assert {t: state for t, (state, _) in holds(dsn).items()} == {
            "items": "paused",
            "parts": "paused",
        }
        assert daemon.stop() == 0
    pg(dsn, "ALTER TABLE items RENAME COLUMN name TO title")
    resume(tmp_path, path, dsn, writer, "items", run=2)
    assert holds(dsn) == {}
    comparison = assert_replicated(path, dsn)
    assert comparison.rows["parts"] > 300


def test_a_changed_primary_key_pauses_the_table_until_the_target_follows(
    tmp_path: Path, refapp_pg_dsn: str, app: tuple[Path, AppWriter]
) -> None:
    path, writer = app
    dsn = refapp_pg_dsn
    with daemon_process(path, dsn, tmp_path / "daemon.log") as daemon:
        daemon.wait_streaming(90)
        daemon.wait_caught_up(60)
        writer.migrate(
            [
                "CREATE TABLE pairs_new (a INTEGER NOT NULL, b INTEGER NOT NULL, v TEXT, "
                "PRIMARY KEY (a, b))",
                "INSERT INTO pairs_new SELECT a, b, v FROM pairs",
                "DROP TABLE pairs",
                "ALTER TABLE pairs_new RENAME TO pairs",
                # Rows only the new key tells apart.
                "INSERT INTO pairs (a, b, v) SELECT a, b + 1, 'twin' FROM pairs WHERE a % 4 = 0",
            ],
            {"items": ITEMS, "notes": NOTES, "pairs": PAIRS},
        )
        paused = wait_event(daemon, "table_paused", table="pairs")
        assert paused["reason"] == "the primary key changed from (a) to (a, b)"
        writer.wait_transactions(100)
        with writer.quiet():
            daemon.wait_caught_up(60)
            assert_replicated(path, dsn, tables=others(path, "pairs"))
        assert daemon.stop() == 0
    # A restart alone does not resume it: the target's key would merge the twins.
    with daemon_process(path, dsn, tmp_path / "daemon-2.log") as daemon:
        daemon.wait_streaming(90)
        again = wait_event(daemon, "table_paused", table="pairs")
        assert "the target's is (a)" in again["reason"]
        assert daemon.stop() == 0
    assert holds(dsn)["pairs"][0] == "paused"
    pg(dsn, "ALTER TABLE pairs DROP CONSTRAINT pairs_pkey, ADD PRIMARY KEY (a, b)")
    resume(tmp_path, path, dsn, writer, "pairs", run=3)
    assert holds(dsn) == {}
    comparison = assert_replicated(path, dsn)
    assert comparison.rows["pairs"] > 200


def test_cursor_tables_follow_an_added_column_and_pause_on_a_rename(
    tmp_path: Path, refapp_pg_dsn: str, app: tuple[Path, AppWriter]
) -> None:
    path, writer = app
    dsn = refapp_pg_dsn
    settings = {
        "REPLICATOR_CAPTURE_MODE": "cursor",
        "REPLICATOR_CAPTURE_RECONCILE_INTERVAL": "1",
    }
    with daemon_process(path, dsn, tmp_path / "daemon.log", settings=settings) as daemon:
        daemon.wait_streaming(90)
        notes = {**NOTES, "tag": "text"}
        writer.migrate(
            ["ALTER TABLE notes ADD COLUMN tag TEXT DEFAULT 'plain'"],
            {"items": ITEMS, "notes": notes},
        )
        wait_event(daemon, "columns_added", table="notes")
        writer.wait_transactions(60)
        # A cursor reads the table's columns by name: this must pause, not crash.
        writer.migrate(
            ["ALTER TABLE items RENAME COLUMN qty TO amount"],
            {"items": {"name": "text", "amount": "int"}, "notes": notes},
        )
        paused = wait_event(daemon, "table_paused", table="items")
        assert paused["reason"] == 'column "qty" was renamed to "amount"'
        writer.wait_transactions(60)
        writer.finish()
        wait_until(
            lambda: compare(path, dsn, tables=others(path, "items")).equal,
            90,
            "the other cursor tables to converge",
            every=0.5,
        )
        assert daemon.gone() is None
        assert daemon.stop() == 0
    assert list(holds(dsn)) == ["items"]
    assert target_columns(dsn, "notes")["tag"] == "text"


# --------------------------------------------------------------------------
# The applier and an image captured before a column existed


def test_an_image_without_a_column_leaves_that_column_alone(tmp_path: Path, pg_dsn: str) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT)")
    conn.close()
    config = daemon_config(path, pg_dsn)
    source = sqlite3.connect(path)
    with psycopg.connect(pg_dsn, autocommit=True) as target:
        ensure_state(target, pg_dsn, "replicator")
        plans = build_plans(source, target, config)
        Snapshotter(config).create_missing(target, plans)
        applier = Applier(plans, "replicator")

        def change(seq: int, op: str, key: int, image: dict[str, Any]) -> Change:
            return Change(seq, "t", op, (key,), image, time.time())

        applier.apply(target, [change(1, "I", 1, {"id": 1, "a": "x", "b": "kept"})])
        # Captured by triggers older than column b: no "b" in the images at all.
        applier.apply(
            target,
            [
                change(2, "U", 1, {"id": 1, "a": "x2"}),
                change(3, "I", 2, {"id": 2, "a": "new"}),
                change(4, "I", 3, {"id": 3, "a": "both", "b": None}),
            ],
        )
        rows = target.execute("SELECT id, a, b FROM t ORDER BY id").fetchall()
    source.close()
    assert rows == [(1, "x2", "kept"), (2, "new", None), (3, "both", None)]
