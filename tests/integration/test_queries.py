"""`replicator queries check` against real SQLite files and a real PostgreSQL.

Every database here is replicated by the product's own snapshot, so the
PostgreSQL side holds what a real cutover would. The queries whose meaning
differs between the dialects (case of LIKE, integer division, NULL order,
text against number, collation, timestamps stored as text) must be reported
as differences; their corrected forms, and queries that mean the same, must
pass.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from harness import DaemonThread, daemon_config
from pgutil import TestDatabases

from replicator.cli import main
from replicator.config import Config, load_config
from replicator.demo.sample import generate_reference_db
from replicator.queries import QueryReport, QueryResult, check_queries
from replicator.snapshot import ProgressDisplay, Snapshotter

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_CONFIG = PROJECT_ROOT / "config" / "reference-app.toml"
REFERENCE_QUERIES = PROJECT_ROOT / "config" / "reference-app-queries.toml"


def replicate(source: Path, dsn: str, config_file: Path | None = None) -> Config:
    env = {"DATABASE_PATH": str(source), "DATABASE_URL": dsn}
    config = load_config(config_file, env=env, overrides={"metrics.address": ""})
    summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
    assert summary.dead_letters == 0
    return config


def write_queries(folder: Path, text: str, name: str = "queries.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def only(report: QueryReport, name: str) -> QueryResult:
    (result,) = [q for q in report.queries if q.name == name]
    return result


# --------------------------------------------------------------------------- dialects


PEOPLE = [
    # id, name, score, amount (NUMERIC affinity: 3 is stored as an integer), code
    (1, "alice", 10, 3, "9"),
    (2, "Bob", None, 2.5, "10"),
    (3, "carol", 7, 4, "100"),
    (4, "ALICE SMITH", 3, 1, "50"),
    (5, "dave", None, 5, "7"),
]


@dataclass(frozen=True)
class Dialects:
    config: Config
    dsn: str
    folder: Path


@pytest.fixture(scope="module")
def dialects(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: TestDatabases, pg_empty_template: str
) -> Iterator[Dialects]:
    folder = tmp_path_factory.mktemp("dialects")
    path = folder / "app.db"
    with sqlite3.connect(path) as lite:
        lite.execute(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score INTEGER,"
            " amount NUMERIC, code TEXT)"
        )
        lite.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)", PEOPLE)
    lite.close()
    with pg_databases.database(pg_empty_template) as dsn:
        config = replicate(path, dsn)
        yield Dialects(config, dsn, folder)


def check(d: Dialects, text: str, **kwargs: object) -> QueryReport:
    path = write_queries(d.folder, text)
    kwargs.setdefault("measure", False)
    return check_queries(d.config, path, **kwargs)  # type: ignore[arg-type]


def test_case_sensitive_like_is_caught_and_ilike_passes(dialects: Dialects) -> None:
    report = check(
        dialects,
        """
[[query]]
name = "naive_like"
sql = "SELECT id, name FROM people WHERE name LIKE :prefix ORDER BY id"
params.prefix = "alice%"

[[query]]
name = "ilike"
sqlite = "SELECT id, name FROM people WHERE name LIKE :prefix ORDER BY id"
postgres = "SELECT id, name FROM people WHERE name ILIKE :prefix ORDER BY id"
params.prefix = "alice%"
""",
    )
    naive = only(report, "naive_like")
    assert naive.verdict == "different"
    (case,) = naive.cases
    assert (case.sqlite_rows, case.postgres_rows) == (2, 1)
    assert case.difference is not None
    assert case.difference.sqlite_rows == [[4, "ALICE SMITH"]]
    assert case.difference.postgres_rows == []
    assert only(report, "ilike").verdict == "same"
    assert not report.ok


def test_integer_division_is_caught(dialects: Dialects) -> None:
    report = check(
        dialects,
        """
[[query]]
name = "half_amount"
sql = "SELECT id, amount / 2 AS half FROM people ORDER BY id"

[[query]]
name = "half_amount_fixed"
sql = "SELECT id, amount / 2.0 AS half FROM people ORDER BY id"

[[query]]
name = "half_score"
sql = "SELECT id, score / 2 AS half FROM people ORDER BY id"
""",
    )
    # SQLite keeps 3 in a NUMERIC column as an integer and divides it as one
    # (1); PostgreSQL's numeric gives 1.5.
    diff = only(report, "half_amount").cases[0].difference
    assert diff is not None and diff.position == 0
    assert diff.sqlite_rows[0] == [1, 1] and diff.postgres_rows[0] == [1, "1.5000000000000000"]
    fixed = only(report, "half_amount_fixed")
    # The same numbers, but the application gets a float from SQLite and a
    # Decimal from psycopg.
    assert fixed.equal and fixed.verdict == "type_drift"
    assert [(d.column, d.sqlite_type, d.postgres_type) for d in fixed.type_drift] == [
        ("half", "float", "Decimal")
    ]
    assert only(report, "half_score").verdict == "same"  # bigint / int truncates on both sides


def test_null_ordering_is_caught_and_an_explicit_nulls_first_passes(dialects: Dialects) -> None:
    report = check(
        dialects,
        """
[[query]]
name = "nulls_default"
sql = "SELECT id, score FROM people ORDER BY score, id"

[[query]]
name = "nulls_first"
sqlite = "SELECT id, score FROM people ORDER BY score, id"
postgres = "SELECT id, score FROM people ORDER BY score NULLS FIRST, id"

[[query]]
name = "top_two_desc"
sql = "SELECT id FROM people ORDER BY score DESC, id LIMIT 2"
""",
    )
    diff = only(report, "nulls_default").cases[0].difference
    assert diff is not None
    assert "same rows in a different order" in diff.summary
    assert diff.sqlite_rows[0] == [2, None] and diff.postgres_rows[0] == [4, 3]
    assert only(report, "nulls_first").verdict == "same"
    top = only(report, "top_two_desc").cases[0]
    assert top.difference is not None and "different rows" in top.difference.summary


def test_text_compared_with_a_number_is_caught(dialects: Dialects) -> None:
    report = check(
        dialects,
        """
[[query]]
name = "code_over_50"
sqlite = "SELECT id FROM people WHERE code > 50 ORDER BY id"
postgres = "SELECT id FROM people WHERE code::integer > 50 ORDER BY id"

[[query]]
name = "code_over_50_numeric"
sqlite = "SELECT id FROM people WHERE CAST(code AS INTEGER) > 50 ORDER BY id"
postgres = "SELECT id FROM people WHERE code::integer > 50 ORDER BY id"

[[query]]
name = "code_over_50_unported"
sql = "SELECT id FROM people WHERE code > 50 ORDER BY id"
""",
    )
    # A TEXT column compared with 50 compares as text in SQLite: '9' and '7'
    # are "greater" than '50', '100' is not.
    naive = only(report, "code_over_50")
    assert naive.verdict == "different"
    diff = naive.cases[0].difference
    assert diff is not None and diff.sqlite_rows == [[1], [5]] and diff.postgres_rows == [[3]]
    assert only(report, "code_over_50_numeric").verdict == "same"
    unported = only(report, "code_over_50_unported")
    assert unported.verdict == "error"
    assert unported.cases[0].error is not None
    assert "operator does not exist" in unported.cases[0].error


def test_collation_order_is_caught(dialects: Dialects) -> None:
    with psycopg.connect(dialects.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT collname FROM pg_collation WHERE collname IN ('en-x-icu', 'und-x-icu')"
            " ORDER BY collname LIMIT 1"
        ).fetchone()
    if row is None:
        pytest.skip("this PostgreSQL has no ICU collations")
    collation = row[0]
    report = check(
        dialects,
        f"""
[[query]]
name = "by_name"
sql = "SELECT name FROM people ORDER BY name"

[[query]]
name = "by_name_icu"
sqlite = "SELECT name FROM people ORDER BY name"
postgres = 'SELECT name FROM people ORDER BY name COLLATE "{collation}"'
""",
    )
    # SQLite's BINARY collation puts capitals first; this server's C.UTF-8 (or
    # any C-like) collation agrees, a linguistic one does not.
    assert only(report, "by_name").verdict == "same"
    diff = only(report, "by_name_icu").cases[0].difference
    assert diff is not None and "same rows in a different order" in diff.summary


def test_equal_queries_pass_as_multisets_with_latency(dialects: Dialects) -> None:
    report = check(
        dialects,
        """
[settings]
runs = 12
warmup = 2

[[query]]
name = "everyone"
sql = "SELECT name, score, amount FROM people"
accept = ["type_drift:amount"]  # int/float in SQLite, Decimal in psycopg

[[query]]
name = "by_ids"
sqlite = "SELECT id, name FROM people WHERE id IN (:a, :b) ORDER BY id"
postgres = "SELECT id, name FROM people WHERE id IN (:a, :b) ORDER BY id"
params.a = [1, 2, 3]
params.b = 5
""",
        measure=True,
    )
    assert report.ok, report.render()
    everyone = only(report, "everyone")
    assert not everyone.ordered
    assert everyone.sqlite is not None and everyone.postgres is not None
    assert everyone.sqlite.n == 12 and everyone.postgres.n == 12
    assert 0 < everyone.postgres.p50 <= everyone.postgres.p95 <= everyone.postgres.p99
    by_ids = only(report, "by_ids")
    assert [c.params for c in by_ids.cases] == [
        {"a": 1, "b": 5},
        {"a": 2, "b": 5},
        {"a": 3, "b": 5},
    ]
    assert by_ids.rows == (6, 6)
    text = report.render()
    assert "everyone" in text and "verdict: PASS" in text
    data = json.loads(json.dumps(report.to_json(), default=str))
    assert data["ok"] is True
    assert data["queries"][0]["postgres"]["n"] == 12


def test_both_sides_stay_read_only(dialects: Dialects) -> None:
    report = check(
        dialects,
        """
[[query]]
name = "delete_everyone"
sql = "DELETE FROM people"
""",
    )
    (case,) = only(report, "delete_everyone").cases
    assert case.error is not None and "readonly" in case.error.replace("-", "")
    path = dialects.config.require_source()
    with sqlite3.connect(path) as lite:
        assert lite.execute("SELECT count(*) FROM people").fetchone() == (5,)
    lite.close()
    with psycopg.connect(dialects.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM people").fetchone() == (5,)
    # The PostgreSQL side refuses too (the SQLite side fails first above).
    report = check(
        dialects,
        """
[[query]]
name = "delete_pg"
sqlite = "SELECT 1"
postgres = "DELETE FROM people RETURNING 1"
""",
    )
    (case,) = only(report, "delete_pg").cases
    assert case.error is not None and "read-only transaction" in case.error
    with psycopg.connect(dialects.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM people").fetchone() == (5,)


def test_cli_exit_codes_and_json(dialects: Dialects) -> None:
    good = write_queries(
        dialects.folder, "-- name: n\nSELECT count(*) AS n FROM people\n", "good.sql"
    )
    bad = write_queries(
        dialects.folder, "-- name: n\nSELECT id FROM people ORDER BY score, id\n", "bad.sql"
    )
    args = ["--source", str(dialects.config.require_source()), "--target", dialects.dsn]
    runner = CliRunner()
    ok = runner.invoke(main, [*args, "queries", "check", str(good), "--runs", "3", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["ok"] is True and data["queries"][0]["verdict"] == "same"
    assert data["queries"][0]["postgres"]["n"] == 3
    failed = runner.invoke(main, [*args, "queries", "check", str(bad), "--no-latency"])
    assert failed.exit_code == 1
    assert "DIFFERENT" in failed.output and "verdict: FAIL" in failed.output
    broken = write_queries(dialects.folder, "-- name: n\nSELECT :x\n", "broken.sql")
    usage = runner.invoke(main, [*args, "queries", "check", str(broken)])
    assert usage.exit_code == 2
    assert "uses :x but params gives no value" in usage.output


# --------------------------------------------------------------------------- reference app


BOUNDARY_ROWS = [
    # published_at as the app stored it; UTC meaning in the comment
    (9001, "2025-10-01T01:30:00+02:00"),  # 2025-09-30 23:30 UTC: before the window
    (9002, "2025-09-30 23:59:59"),  # before
    (9003, "2025-10-01T00:00:00Z"),  # on the boundary: inside
    (9004, "2025-10-01 00:00:00.250"),  # inside
    (9005, "2025-09-30T21:00:00-05:00"),  # 2025-10-01 02:00 UTC: inside
]


def small_reference_db(path: Path) -> None:
    generate_reference_db(path, artifacts=300, seed=11, bad_values=False)
    with sqlite3.connect(path) as lite:
        lite.executemany(
            "INSERT INTO artifacts (id, type, source, source_id, title, published_at, raw_json)"
            " VALUES (?, 'repo', 'github', 'edge/' || ?, 'Edge case', ?, '{\"n\": 5}')",
            [(i, i, at) for i, at in BOUNDARY_ROWS],
        )
    lite.close()


@pytest.fixture(scope="module")
def refapp(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: TestDatabases, pg_refapp_template: str
) -> Iterator[Dialects]:
    folder = tmp_path_factory.mktemp("refapp")
    path = folder / "app.db"
    small_reference_db(path)
    with pg_databases.database(pg_refapp_template) as dsn:
        yield Dialects(replicate(path, dsn, REFERENCE_CONFIG), dsn, folder)


def test_timestamps_in_two_styles_compare_fairly(refapp: Dialects) -> None:
    report = check(
        refapp,
        """
[[query]]
name = "naive_text_window"
sqlite = "SELECT id FROM artifacts WHERE id > 9000 AND published_at >= :since ORDER BY id"
postgres = "SELECT id FROM artifacts WHERE id > 9000 AND published_at >= :since ORDER BY id"
params.since = { type = "timestamp", value = "2025-10-01T00:00:00Z" }

[[query]]
name = "julianday_window"
sqlite = '''SELECT id FROM artifacts WHERE id > 9000
             AND julianday(published_at) >= julianday(:since) ORDER BY id'''
postgres = "SELECT id FROM artifacts WHERE id > 9000 AND published_at >= :since ORDER BY id"
params.since = { type = "timestamp", value = "2025-10-01T00:00:00Z" }

[[query]]
name = "datetime_window"
sqlite = '''SELECT id FROM artifacts WHERE id > 9000
             AND datetime(published_at) >= :since ORDER BY id'''
postgres = "SELECT id FROM artifacts WHERE id > 9000 AND published_at >= :since ORDER BY id"
params.since = { type = "timestamp", value = 2025-10-01T00:00:00Z }

[[query]]
name = "stored_values"
sqlite = "SELECT id, published_at, raw_json FROM artifacts ORDER BY id"

[[query]]
name = "utc_day"
sqlite = "SELECT id, date(published_at) AS day FROM artifacts WHERE id > 9000 ORDER BY id"
postgres = "SELECT id, published_at::date AS day FROM artifacts WHERE id > 9000 ORDER BY id"

[[query]]
name = "text_day"
sqlite = "SELECT id, substr(published_at, 1, 10) AS day FROM artifacts WHERE id > 9000 ORDER BY id"
postgres = "SELECT id, published_at::date AS day FROM artifacts WHERE id > 9000 ORDER BY id"

[[query]]
name = "json_number"
sqlite = "SELECT id, json_extract(raw_json, '$.n') FROM artifacts WHERE id > 9000 ORDER BY id"
postgres = "SELECT id, raw_json -> 'n' FROM artifacts WHERE id > 9000 ORDER BY id"
""",
    )
    naive = only(report, "naive_text_window").cases[0]
    # Text comparison: '2025-10-01T01:30:00+02:00' >= '2025-10-01 00:00:00' is
    # true, '2025-09-30T21:00:00-05:00' is false; in UTC it is the other way.
    assert naive.difference is not None
    assert naive.difference.sqlite_rows[0] == [9001]
    assert naive.difference.postgres_rows[0] == [9003]
    for name in ("julianday_window", "datetime_window", "json_number"):
        assert only(report, name).verdict == "same", report.render()
    # Equal values, but the application reads text and JSON text from SQLite
    # where psycopg hands it datetimes, dicts and dates.
    for name, drift in (
        ("stored_values", {"published_at": ("str", "datetime"), "raw_json": ("str", "dict")}),
        ("utc_day", {"day": ("str", "date")}),
    ):
        result = only(report, name)
        assert result.equal and result.verdict == "type_drift", report.render()
        found = {d.column: (d.sqlite_type, d.postgres_type) for d in result.type_drift}
        assert found == drift
    assert only(report, "stored_values").rows == (305, 305)
    text_day = only(report, "text_day").cases[0].difference
    assert text_day is not None
    assert text_day.sqlite_rows[0] == [9001, "2025-10-01"]
    assert text_day.postgres_rows[0] == [9001, "2025-09-30"]


def test_a_slow_query_shows_its_plan_and_the_index_sqlite_had(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    path = tmp_path / "app.db"
    small_reference_db(path)
    config = replicate(path, refapp_pg_dsn, REFERENCE_CONFIG)
    with psycopg.connect(refapp_pg_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX idx_artifacts_published_at")
    queries = write_queries(
        tmp_path,
        """
[settings]
target_p95_ms = 0.001   # everything is slow
large_table_rows = 0    # every table is large
runs = 5
warmup = 1

[[query]]
name = "recent"
sqlite = "SELECT count(*) AS n FROM artifacts WHERE published_at >= :since"
postgres = "SELECT count(*) AS n FROM artifacts WHERE published_at >= :since"
params.since = { type = "timestamp", values = ["2025-01-01T00:00:00Z", "2025-06-01T00:00:00Z"] }
""",
    )
    report = check_queries(config, queries)
    recent = only(report, "recent")
    assert recent.equal and recent.slow and recent.verdict == "slow"
    assert recent.plan is not None
    assert recent.plan.execution_ms is not None
    assert any("Seq Scan on artifacts" in line for line in recent.plan.lines)
    assert any(
        "USING" in line and "idx_artifacts_published_at" in line for line in recent.plan.sqlite_plan
    )
    hints = "\n".join(recent.plan.hints)
    assert "sequential scan on artifacts" in hints
    assert "SQLite has index idx_artifacts_published_at on artifacts(published_at)" in hints
    assert "SQLite's plan uses it" in hints
    assert "CREATE INDEX ON artifacts (published_at)" in hints
    text = report.render()
    assert "SLOW" in text and "hint:" in text and "verdict: FAIL" in text


# --------------------------------------------------------------------------- streaming


def streaming_setup(tmp_path: Path, dsn: str) -> Config:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=200, seed=5, bad_values=False)
    config = daemon_config(path, dsn, snapshot__create_tables=False)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        with sqlite3.connect(path) as lite:
            lite.execute("UPDATE artifacts SET url = url || '#seen' WHERE id = 1")
        lite.close()
        daemon.wait_caught_up()
    with sqlite3.connect(path) as lite:  # the app writes while nothing applies it
        lite.execute("UPDATE artifacts SET title = 'renamed ' || id WHERE id <= 20")
    lite.close()
    return config


TITLES = """
[[query]]
name = "titles"
sql = "SELECT id, title FROM artifacts WHERE id <= 20 ORDER BY id"
"""


def test_changes_in_flight_are_settled_before_calling_a_difference(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    config = streaming_setup(tmp_path, refapp_pg_dsn)
    started: list[DaemonThread] = []

    def resume() -> None:
        started.append(DaemonThread(config).start())

    timer = threading.Timer(2.0, resume)
    timer.start()
    began = time.monotonic()
    try:
        report = check_queries(
            config, write_queries(tmp_path, TITLES), measure=False, settle_timeout=60
        )
    finally:
        timer.join()
        for daemon in started:
            daemon.stop()
    assert report.streaming
    assert report.source_position is not None and report.target_position is not None
    assert report.source_position > report.target_position  # behind when the check began
    (case,) = only(report, "titles").cases
    assert case.equal and case.in_flight, report.render()
    assert case.source_position == case.target_position  # compared at one position
    assert time.monotonic() - began >= 2.0  # it did wait for the stream
    assert report.ok
    assert "equal once in-flight changes were applied" in report.render()


def test_a_difference_that_outlasts_the_wait_is_reported_with_positions(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    config = streaming_setup(tmp_path, refapp_pg_dsn)
    report = check_queries(
        config, write_queries(tmp_path, TITLES), measure=False, settle_timeout=0.5
    )
    (case,) = only(report, "titles").cases
    assert not case.equal and not case.in_flight
    assert case.source_position is not None and case.target_position is not None
    assert case.source_position > case.target_position
    assert case.difference is not None
    assert case.difference.sqlite_rows[0] == [1, "renamed 1"]
    text = report.render()
    assert f"source change-log head {case.source_position}" in text


def cursor_captured(tmp_path: Path, dsn: str) -> Config:
    """A replicated source whose state says tables are followed by a cursor (no change log)."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as lite:
        lite.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        lite.executemany("INSERT INTO people VALUES (?, ?)", [(1, "alice"), (2, "bob")])
    lite.close()
    replicate(path, dsn)
    config = load_config(
        None,
        env={"DATABASE_PATH": str(path), "DATABASE_URL": dsn},
        overrides={"metrics.address": "", "stream.poll_interval": 0.5},
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass('replicator.cursor_position')").fetchone()
        assert found is not None and found[0] is not None, "the state schema lacks cursor_position"
        conn.execute(
            "INSERT INTO replicator.cursor_position (table_name, kind, column_name)"
            " VALUES ('people', 'rowid', 'id')"
        )
    with sqlite3.connect(path) as lite:  # the app writes; the next poll will bring it
        lite.execute("UPDATE people SET name = 'alice b.' WHERE id = 1")
    lite.close()
    return config


PEOPLE_NAMES = '[[query]]\nname = "names"\nsql = "SELECT id, name FROM people ORDER BY id"\n'


def test_cursor_capture_gets_a_few_polls_before_a_difference(tmp_path: Path, pg_dsn: str) -> None:
    config = cursor_captured(tmp_path, pg_dsn)

    def poll() -> None:  # what the cursor daemon's next poll does
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE people SET name = 'alice b.' WHERE id = 1")

    timer = threading.Timer(1.0, poll)
    timer.start()
    began = time.monotonic()
    try:
        report = check_queries(config, write_queries(tmp_path, PEOPLE_NAMES), measure=False)
    finally:
        timer.join()
    (case,) = only(report, "names").cases
    assert case.equal and case.in_flight, report.render()
    assert time.monotonic() - began >= 2.5  # three polls of 0.5 s and a second
    assert report.streaming and report.source_position is None
    assert "cursor capture" in report.render()


def test_cursor_capture_difference_that_stays_is_reported(tmp_path: Path, pg_dsn: str) -> None:
    config = cursor_captured(tmp_path, pg_dsn)
    report = check_queries(config, write_queries(tmp_path, PEOPLE_NAMES), measure=False)
    (case,) = only(report, "names").cases
    assert not case.equal and not case.in_flight
    assert case.difference is not None and case.difference.sqlite_rows[0] == [1, "alice b."]


# --------------------------------------------------------------------------- 50,000 artifacts


@pytest.mark.slow
def test_reference_queries_on_a_replicated_50k_artifact_database(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    """~25 s: generate 200k rows, snapshot them, run the reference file with short timing."""
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=50_000, seed=1, bad_values=False)
    config = replicate(path, refapp_pg_dsn, REFERENCE_CONFIG)
    # Latency on a shared test machine says little; the target is generous
    # here and the benchmark (bench/queries.py) measures properly.
    report = check_queries(config, REFERENCE_QUERIES, runs=5, warmup=1, target_p95_ms=5_000)
    assert report.ok, report.render()
    assert len(report.queries) >= 7
    for q in report.queries:
        assert q.equal, q.name
        lite_rows, pg_rows = q.rows
        assert lite_rows == pg_rows, q.name
        assert lite_rows > 0 or q.vacuous, q.name
        assert q.sqlite is not None and q.postgres is not None
        assert q.postgres.n == 5
        assert all(d.accepted for d in q.type_drift), q.name
    # The file exercises the verdicts a query may accept: shown, not failed.
    assert only(report, "labels_of_missing_artifacts").vacuous
    drift = {d.column for d in only(report, "active_admins").type_drift}
    assert drift == {"is_admin", "activated_at"}
    assert report.session == {"TimeZone": "UTC"}
    assert "type drift (accepted) in column is_admin" in report.render()
