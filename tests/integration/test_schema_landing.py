"""The schema the application lands on after cutover, in tables the replicator creates.

Each test builds a SQLite file, snapshots it into an empty PostgreSQL database
(the replicator creating the tables), then does what the application will do
after cutover: inserts rows without the values SQLite would have filled in
(defaults, ids, generated columns), and checks that PostgreSQL fills them the
way SQLite would, and refuses what SQLite would refuse. What could not be
carried over must be listed in the schema report, with its reason.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from harness import snapshot_config, sqlite_from_script
from oracle import assert_replicated

from replicator.cli import main
from replicator.plan.ddl import advance_sequences
from replicator.plan.landing import Landing
from replicator.plan.tables import build_plans
from replicator.snapshot import ProgressDisplay, SnapshotSummary, Snapshotter
from replicator.source.sqlite import open_source


def snapshot(source: Path, dsn: str) -> SnapshotSummary:
    config = snapshot_config(source, dsn)
    return Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()


def pg(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def item(summary: SnapshotSummary, table: str, kind: str, name: str) -> Landing:
    found = [i for i in summary.schema if (i.table, i.kind, i.name) == (table, kind, name)]
    assert len(found) == 1, f"{table} {kind} {name}: {found}\n" + summary.render()
    return found[0]


# --------------------------------------------------------------------------- defaults (8)

DEFAULTS = """
CREATE TABLE posts (
  id INTEGER PRIMARY KEY,
  title TEXT NOT NULL,
  status VARCHAR(16) NOT NULL DEFAULT 'draft',
  views INTEGER NOT NULL DEFAULT 0,
  score REAL DEFAULT (-1.5),
  price NUMERIC(10,2) DEFAULT (2 + 3),
  published BOOLEAN NOT NULL DEFAULT FALSE,
  created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
  created_text TEXT DEFAULT (datetime('now')),
  created_day DATE DEFAULT CURRENT_DATE,
  stamp INTEGER DEFAULT (strftime('%s','now')),
  note TEXT DEFAULT NULL,
  token TEXT DEFAULT (hex(randomblob(4))),
  flagword BOOLEAN DEFAULT 'maybe'
);
INSERT INTO posts (title, flagword) VALUES ('first', 1);
"""


def test_defaults_are_translated_and_the_apps_insert_works(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(tmp_path / "app.db", DEFAULTS)
    summary = snapshot(source, pg_dsn)
    assert_replicated(source, pg_dsn)
    before = datetime.now(UTC).replace(microsecond=0)
    # The application's insert after cutover: only what it always gave.
    (row,) = pg(
        pg_dsn,
        "INSERT INTO posts (title) VALUES ('after cutover') RETURNING id, status, views, score,"
        " price, published, created_at, created_text, created_day, stamp, note, token, flagword",
    )
    after = datetime.now(UTC)
    ident, status, views, score, price, published, created_at, text, day, stamp, *rest = row
    assert ident == 2  # the INTEGER PRIMARY KEY is an identity past the copied ids
    assert (status, views, score, str(price), published) == ("draft", 0, -1.5, "5.00", False)
    assert before <= created_at <= after
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", text), text
    assert before.replace(tzinfo=None) <= datetime.fromisoformat(text) <= after.replace(tzinfo=None)
    assert day == datetime(after.year, after.month, after.day, tzinfo=UTC)
    assert before.timestamp() - 1 <= stamp <= after.timestamp()
    assert rest == [None, None, None]  # NULL, and the two that are not translated
    # The report: each default, and why two are not carried over.
    assert item(summary, "posts", "default", "status").outcome == "translated"
    assert item(summary, "posts", "default", "created_at").target == "CURRENT_TIMESTAMP"
    token = item(summary, "posts", "default", "token")
    assert token.outcome == "skipped" and "randomblob" in token.reason
    flag = item(summary, "posts", "default", "flagword")
    assert flag.outcome == "skipped" and "cannot fill boolean" in flag.reason


# --------------------------------------------------------------------------- ids (9, 10)

IDS = """
CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
INSERT INTO orders (item) SELECT 'item ' || i FROM n;
DELETE FROM orders WHERE id > 5;
CREATE TABLE events (what TEXT NOT NULL, at TEXT);
INSERT INTO events VALUES ('boot', '2024-01-01'), ('stop', '2024-01-02');
INSERT INTO events (rowid, what) VALUES (100, 'far');
DELETE FROM events WHERE rowid = 100;
"""


def test_ids_never_reuse_what_sqlite_handed_out(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(tmp_path / "app.db", IDS)
    with sqlite3.connect(source) as conn:
        assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'orders'").fetchone() == (
            10,
        )
    summary = snapshot(source, pg_dsn)
    assert_replicated(source, pg_dsn)
    # AUTOINCREMENT: SQLite's next id is 11, never 6, even though max(id) is 5.
    assert pg(pg_dsn, "INSERT INTO orders (item) VALUES ('new') RETURNING id") == [(11,)]
    assert item(summary, "orders", "autoincrement", "id").outcome == "translated"
    # A table without a primary key: the app's insert gets a _replicator_rowid too.
    (rowid,) = pg(pg_dsn, "INSERT INTO events (what) VALUES ('after') RETURNING _replicator_rowid")[
        0
    ]
    assert rowid == 3  # past the largest rowid copied (the deleted 100 is SQLite's own reuse)
    assert pg(
        pg_dsn,
        "SELECT is_identity, identity_generation FROM information_schema.columns"
        " WHERE table_name = 'events' AND column_name = '_replicator_rowid'",
    ) == [("YES", "BY DEFAULT")]
    # Later in the source: more ids handed out and deleted; cutover's step moves past them.
    with sqlite3.connect(source) as conn:
        conn.execute("INSERT INTO orders (item) VALUES ('x'), ('y')")  # 11, 12 in SQLite
        conn.execute("DELETE FROM orders WHERE id >= 11")
        conn.execute("INSERT INTO events (rowid, what) VALUES (40, 'later')")
    config = snapshot_config(source, pg_dsn)
    src = open_source(source, readonly=True)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert advance_sequences(conn, src, build_plans(src, conn, config)) == 2
    finally:
        src.close()
    assert pg(pg_dsn, "INSERT INTO orders (item) VALUES ('z') RETURNING id") == [(13,)]
    assert pg(pg_dsn, "INSERT INTO events (what) VALUES ('z') RETURNING _replicator_rowid") == [
        (41,)
    ]


# --------------------------------------------------------------------------- the rest (11)

SHAPES = """
CREATE TABLE people (
  id INTEGER PRIMARY KEY,
  first TEXT NOT NULL,
  last TEXT NOT NULL,
  qty INTEGER NOT NULL CHECK (qty >= 0),
  email TEXT,
  flag BOOLEAN CHECK (flag IN (0, 1)) CHECK (flag = 1 OR qty >= 0),
  code TEXT CONSTRAINT code_shape CHECK (code LIKE 'P%'),
  full_name TEXT GENERATED ALWAYS AS (first || ' ' || last) STORED,
  double_qty INTEGER AS (qty * 2) VIRTUAL,
  half_qty INTEGER AS (qty / 2) VIRTUAL,
  CONSTRAINT names_differ CHECK (first IS NOT last)
);
CREATE INDEX people_email_lower ON people (lower(email));
CREATE UNIQUE INDEX people_active_email ON people (email) WHERE qty > 0;
CREATE INDEX people_last_nocase ON people (lower(last) COLLATE NOCASE);
CREATE TRIGGER people_audit AFTER UPDATE ON people BEGIN SELECT 1; END;
INSERT INTO people (first, last, qty, email, flag, code) VALUES
  ('Ada', 'Lovelace', 3, 'ada@example.com', 1, 'P1'),
  ('Alan', 'Turing', 0, 'alan@example.com', 0, 'P2');
PRAGMA ignore_check_constraints = ON;
CREATE TABLE stock (id INTEGER PRIMARY KEY, n INTEGER CHECK (n > 0));
INSERT INTO stock VALUES (1, 5), (2, -1);
PRAGMA ignore_check_constraints = OFF;
CREATE TABLE bag (id INTEGER PRIMARY KEY, v ANY) STRICT;
INSERT INTO bag VALUES (1, 42), (2, 'forty-two'), (3, 4.5), (4, x'41'), (5, NULL), (6, x'ff');
"""


def test_generated_checks_indexes_and_strict_any(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(tmp_path / "app.db", SHAPES)
    summary = snapshot(source, pg_dsn)
    assert_replicated(source, pg_dsn)  # the x'ff' in bag is an open dead letter, left out
    # Generated columns: PostgreSQL computes them, and what it computed is SQLite's.
    with sqlite3.connect(source) as conn:
        want = conn.execute("SELECT id, full_name, double_qty FROM people ORDER BY id").fetchall()
    assert pg(pg_dsn, "SELECT id, full_name, double_qty FROM people ORDER BY id") == want
    assert item(summary, "people", "generated column", "full_name").outcome == "translated"
    half = item(summary, "people", "generated column", "half_qty")
    assert half.outcome == "skipped" and "zero divisor" in half.reason
    # The app's insert: generated values computed, the CHECK enforced as SQLite does.
    assert pg(
        pg_dsn,
        "INSERT INTO people (first, last, qty) VALUES ('Grace', 'Hopper', 2)"
        " RETURNING full_name, double_qty",
    ) == [("Grace Hopper", 4)]
    with pytest.raises(psycopg.errors.CheckViolation):
        pg(pg_dsn, "INSERT INTO people (first, last, qty) VALUES ('x', 'y', -1)")
    with pytest.raises(psycopg.errors.CheckViolation):
        pg(pg_dsn, "INSERT INTO people (first, last, qty) VALUES ('Same', 'Same', 1)")
    assert item(summary, "people", "check", "names_differ").outcome == "translated"
    like = item(summary, "people", "check", "code_shape")
    assert like.outcome == "skipped" and "LIKE" in like.reason
    (boolean,) = [i for i in summary.schema if i.kind == "check" and "flag IN" in i.source]
    assert boolean.outcome == "translated" and boolean.target == "the boolean type itself"
    refused = [i for i in summary.schema if i.kind == "check" and "flag =" in i.source]
    assert len(refused) == 1 and refused[0].outcome == "skipped", summary.render()
    assert "PostgreSQL refused it" in refused[0].reason  # boolean = integer
    # A CHECK the copied rows break is not added (it would refuse their updates).
    (stock,) = [i for i in summary.schema if i.table == "stock" and i.kind == "check"]
    assert stock.outcome == "skipped" and "violated" in stock.reason, stock
    pg(pg_dsn, "UPDATE stock SET n = n - 1")
    checks = pg(
        pg_dsn,
        "SELECT conname, convalidated FROM pg_constraint WHERE contype = 'c'"
        " AND conrelid = 'people'::regclass ORDER BY conname",
    )
    assert [c[1] for c in checks] == [True, True], checks
    # Indexes: the expression and the partial index are made; NOCASE in an expression is not.
    indexes = dict(
        pg(pg_dsn, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'people'")
    )
    assert "lower(email)" in indexes["people_email_lower"]
    assert "WHERE (qty > 0)" in indexes["people_active_email"]
    assert "people_last_nocase" not in indexes
    nocase = item(summary, "people", "index", "people_last_nocase")
    assert nocase.outcome == "skipped" and "NOCASE" in nocase.reason
    pg(
        pg_dsn,
        "INSERT INTO people (first, last, qty, email) VALUES ('a', 'b', 0, 'ada@example.com')",
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        pg(
            pg_dsn,
            "INSERT INTO people (first, last, qty, email) VALUES ('c', 'd', 1, 'ada@example.com')",
        )
    trigger = item(summary, "people", "trigger", "people_audit")
    assert trigger.outcome == "skipped" and "recreate" in trigger.reason
    # STRICT ANY: text, every value kept; a blob that is not text is dead-lettered.
    assert pg(
        pg_dsn,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'bag'::regclass AND attname = 'v'",
    ) == [("text",)]
    assert pg(pg_dsn, "SELECT id, v FROM bag ORDER BY id") == [
        (1, "42"),
        (2, "forty-two"),
        (3, "4.5"),
        (4, "A"),
        (5, None),
    ]
    assert summary.dead_letters == 1


# --------------------------------------------------------------------------- the report (12)


def test_check_reports_the_schema_in_text_and_json(tmp_path: Path, pg_dsn: str) -> None:
    source = sqlite_from_script(tmp_path / "app.db", SHAPES + DEFAULTS + IDS)
    args = ["--source", str(source), "--target", pg_dsn, "check", "--no-integrity"]
    runner = CliRunner()
    text = runner.invoke(main, args)
    assert text.exit_code == 0, text.output  # what is not carried over is a warning
    assert "schema (SQLite -> PostgreSQL):" in text.output
    assert "[WARN] schema carried over" in text.output
    assert "skipped    trigger people_audit" in text.output
    as_json = runner.invoke(main, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    kinds = {i["kind"] for i in doc["schema"]}
    assert kinds >= {
        "table",
        "column",
        "primary key",
        "index",
        "check",
        "default",
        "generated column",
        "trigger",
        "autoincrement",
    }, kinds
    assert all(i["outcome"] in ("created", "translated", "kept", "skipped") for i in doc["schema"])
    assert all(i["reason"] for i in doc["schema"] if i["outcome"] == "skipped")
    assert {f["check"] for f in doc["findings"]} >= {
        "schema carried over",
        "tables and columns mappable",
    }
    # After the snapshot the tables exist: check says they are kept as they are.
    snapshot(source, pg_dsn)
    after = json.loads(runner.invoke(main, [*args, "--json"]).output)
    tables = [i for i in after["schema"] if i["kind"] == "table"]
    assert tables and all(i["outcome"] == "kept" for i in tables)
