"""The reference-app sample databases and the simulated application writer.

Real SQLite files in tmp_path; no PostgreSQL. What the target would refuse is
judged here by an independent reading of ``postgres_schema.sql`` (not by the
checker inside ``replicator.demo.sample``), so the two can catch each other out.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from replicator.demo.sample import (
    REFERENCE_PG_SCHEMA,
    REFERENCE_SQLITE_SCHEMA,
    REFERENCE_TABLES,
    SQLITE_ALEMBIC_VERSION,
    BadKind,
    SampleReport,
    TableChanges,
    WriterStats,
    generate_reference_db,
    main,
    run_writer,
)
from replicator.demo.sample.writer import _App  # the PK-change operation, driven directly

ARTIFACTS = 3_000
CHILD_TABLES = ("artifact_classifications", "artifact_scores", "discovery_labels")


# --------------------------------------------------------------------------- helpers


def _target_columns() -> dict[str, dict[str, tuple[str, int | None, bool]]]:
    """table -> column -> (type, varchar length, not null), read from the PG schema."""
    tables: dict[str, dict[str, tuple[str, int | None, bool]]] = {}
    current: dict[str, tuple[str, int | None, bool]] | None = None
    for line in REFERENCE_PG_SCHEMA.splitlines():
        if line.startswith("CREATE TABLE"):
            current = tables[line.split()[2]] = {}
        elif line.startswith(")"):
            current = None
        elif current is not None and line.strip() and not line.strip().startswith("CONSTRAINT"):
            name, rest = line.split(None, 1)
            length = re.match(r"VARCHAR\((\d+)\)", rest)
            kind = "DOUBLE PRECISION" if rest.startswith("DOUBLE") else re.split(r"[\s(,]", rest)[0]
            not_null = "NOT NULL" in rest or "PRIMARY KEY" in rest
            current[name] = (kind, int(length[1]) if length else None, not_null)
    return tables


TARGET = _target_columns()
APP_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)?")


def _no_constants(token: str) -> object:
    raise ValueError(token)


def refused(table: str, column: str, value: object) -> bool:
    """Would the PostgreSQL target refuse ``value`` in ``table.column``?"""
    kind, length, not_null = TARGET[table][column]
    if value is None:
        return not_null
    if kind in ("INTEGER", "BIGINT", "BIGSERIAL"):
        bits = 32 if kind == "INTEGER" else 64
        return not (type(value) is int and -(2 ** (bits - 1)) <= value < 2 ** (bits - 1))
    if kind == "DOUBLE PRECISION":
        return not isinstance(value, int | float)
    if kind == "BOOLEAN":
        return value not in (0, 1) or type(value) is not int
    if not isinstance(value, str) or "\x00" in value:
        return True
    if kind == "VARCHAR":
        return length is not None and len(value) > length
    if kind == "TIMESTAMP":
        if not APP_TIMESTAMP.fullmatch(value):
            return True
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return True
        return False
    if kind == "JSONB":
        try:
            json.loads(value, parse_constant=_no_constants)
        except ValueError:
            return True
        return "\\u0000" in value
    assert kind == "TEXT", kind
    return False


def rows_of(conn: sqlite3.Connection, table: str) -> Iterator[tuple[list[str], tuple[object, ...]]]:
    cursor = conn.execute(f'SELECT * FROM "{table}" ORDER BY 1')
    names = [d[0] for d in cursor.description]
    for row in cursor:
        yield names, row


def refused_cells(path: Path) -> set[tuple[str, tuple[object, ...], str]]:
    """(table, primary key, column) of every cell the target would refuse."""
    found: set[tuple[str, tuple[object, ...], str]] = set()
    with sqlite3.connect(path) as conn:
        for table in REFERENCE_TABLES:
            for names, row in rows_of(conn, table):
                for name, value in zip(names, row, strict=True):
                    if refused(table, name, value):
                        found.add((table, (row[0],), name))  # column 0 is the key everywhere
    return found


def content_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with sqlite3.connect(path) as conn:
        for table in REFERENCE_TABLES:
            digest.update(table.encode())
            for _, row in rows_of(conn, table):
                digest.update(repr(row).encode())
    return digest.hexdigest()


def table_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return {
            t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in REFERENCE_TABLES
        }


def like_sum(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        total: int = conn.execute("SELECT coalesce(sum(like_count), 0) FROM tweets").fetchone()[0]
        return total


def cell_value(
    conn: sqlite3.Connection, table: str, key: tuple[object, ...], column: str
) -> object:
    key_column = conn.execute(
        f'SELECT name FROM pragma_table_info("{table}") WHERE pk = 1'
    ).fetchone()
    row = conn.execute(
        f'SELECT "{column}" FROM "{table}" WHERE "{key_column[0]}" = ?', key
    ).fetchone()
    assert row is not None, (table, key)
    return row[0]


# --------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleReport:
    return generate_reference_db(
        tmp_path_factory.mktemp("sample") / "app.db", artifacts=ARTIFACTS, seed=7
    )


def test_schemas_are_package_data() -> None:
    assert "CREATE TABLE artifacts" in REFERENCE_SQLITE_SCHEMA
    assert "journal_mode = WAL" in REFERENCE_SQLITE_SCHEMA
    assert "JSONB" in REFERENCE_PG_SCHEMA and "'20251112_0010'" in REFERENCE_PG_SCHEMA
    assert set(TARGET) == set(REFERENCE_TABLES)


def test_counts_match_the_report(sample: SampleReport) -> None:
    counts = table_counts(sample.path)
    assert counts == dict(sample.rows)
    assert all(counts[t] > 0 for t in REFERENCE_TABLES), counts
    assert counts["artifacts"] == ARTIFACTS
    assert sample.total_rows == sum(counts.values())
    # Children for most artifacts, as in the app.
    assert counts["artifact_classifications"] > 0.8 * ARTIFACTS
    assert counts["artifact_scores"] > 0.8 * ARTIFACTS


def test_file_is_consistent_and_in_wal_mode(sample: SampleReport) -> None:
    with sqlite3.connect(sample.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert set(re.findall(r"CREATE INDEX (\w+)", REFERENCE_SQLITE_SCHEMA)) <= indexes
        # AUTOINCREMENT state is there, so the app's next id follows the data.
        seq = dict(conn.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        assert seq["artifacts"] == ARTIFACTS
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == SQLITE_ALEMBIC_VERSION == "20251101_0009"


def test_values_look_like_the_app(sample: SampleReport) -> None:
    with sqlite3.connect(sample.path) as conn:
        stamps = [
            v
            for row in conn.execute("SELECT published_at, created_at, updated_at FROM artifacts")
            for v in row
            if v is not None
        ]
        types = {r[0] for r in conn.execute("SELECT DISTINCT type FROM artifacts")}
        sources = {r[0] for r in conn.execute("SELECT DISTINCT source FROM artifacts")}
        texts = [
            v
            for row in conn.execute("SELECT title, text FROM artifacts")
            for v in row
            if isinstance(v, str)
        ]
        raw = [r[0] for r in conn.execute("SELECT raw_json FROM artifacts")]
        authors = [r[0] for r in conn.execute("SELECT author_entity_ids FROM artifacts")]
        admins = Counter(r[0] for r in conn.execute("SELECT is_admin FROM beta_users"))
        tweet_ids = [r[0] for r in conn.execute("SELECT tweet_id FROM tweets")]
        baselines = conn.execute("SELECT count(*) FROM experiments WHERE baseline_id IS NOT NULL")
        has_baselines = baselines.fetchone()[0]
    assert types == {"preprint", "repo", "paper", "post"}
    assert sources == {"arxiv", "github", "x", "ss"}
    styles = {
        "api": r"\S+T\d\d:\d\d:\d\dZ",
        "sql": r"\S+ \d\d:\d\d:\d\d",
        "fraction": r".*\.\d+Z?",
        "offset": r".*[+-]\d\d:\d\d",
    }
    for style, pattern in styles.items():
        assert any(re.fullmatch(pattern, s) for s in stamps), style
    assert any(any(ord(c) > 0xFFFF for c in t) for t in texts), "no astral-plane characters"
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in texts), "no CJK"
    good_raw = [json.loads(r) for r in raw if not refused("artifacts", "raw_json", r)]
    assert all(isinstance(r, dict) for r in good_raw)
    assert any(isinstance(v, dict | list) for r in good_raw for v in r.values())
    assert 200 < sum(len(r) for r in raw) / len(raw) < 1_000
    assert any("\\ud83" in r for r in raw), "no JSON with escaped surrogate pairs"
    assert all(
        isinstance(x, int)
        for a in authors
        if a is not None and not refused("artifacts", "author_entity_ids", a)
        for x in json.loads(a)
    )
    assert set(admins) >= {0, 1}
    assert all(t.isdigit() and len(t) == 19 for t in tweet_ids)
    assert has_baselines > 0


def test_every_reported_bad_cell_holds_its_value(sample: SampleReport) -> None:
    with sqlite3.connect(sample.path) as conn:
        for cell in sample.bad_cells:
            stored = cell_value(conn, cell.table, cell.key, cell.column)
            assert stored == cell.value and type(stored) is type(cell.value), cell
            assert refused(cell.table, cell.column, cell.value), cell


def test_refused_cells_are_exactly_the_reported_ones_one_per_row(sample: SampleReport) -> None:
    reported = {(c.table, c.key, c.column) for c in sample.bad_cells}
    assert len(reported) == len(sample.bad_cells)
    assert refused_cells(sample.path) == reported
    per_row = Counter((c.table, c.key) for c in sample.bad_cells)
    assert set(per_row.values()) == {1}


def test_bad_cells_cover_every_kind_and_many_tables(sample: SampleReport) -> None:
    assert {c.kind for c in sample.bad_cells} == set(BadKind)
    tables = {c.table for c in sample.bad_cells}
    assert len(tables) >= 8
    assert "alembic_version" not in tables
    total_rows = sample.total_rows
    assert len(sample.bad_cells) < 0.01 * total_rows
    kinds_of = {(c.table, c.column): c.kind for c in sample.bad_cells}
    assert kinds_of[("beta_users", "is_admin")] is BadKind.BAD_BOOLEAN
    assert sample.good_rows("artifacts") == ARTIFACTS - sample.bad_rows("artifacts")


def test_bad_cells_stay_out_of_keys(sample: SampleReport) -> None:
    keys = {"id", "artifact_id", "experiment_id", "baseline_id", "tweet_id", "name", "email"}
    keys |= {"source", "source_id", "annotator", "version_num"}
    assert not {c.column for c in sample.bad_cells} & keys


def test_bad_parents_have_no_children(sample: SampleReport) -> None:
    with sqlite3.connect(sample.path) as conn:
        for (artifact_id,) in sample.bad_keys("artifacts"):
            for child in CHILD_TABLES:
                n = conn.execute(
                    f'SELECT count(*) FROM "{child}" WHERE artifact_id = ?', (artifact_id,)
                ).fetchone()[0]
                assert n == 0, (artifact_id, child)
        bad_experiments = sample.bad_keys("experiments")
        assert bad_experiments
        for (experiment_id,) in bad_experiments:
            runs = conn.execute(
                "SELECT count(*) FROM experiment_runs WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()[0]
            followers = conn.execute(
                "SELECT count(*) FROM experiments WHERE baseline_id = ?", (experiment_id,)
            ).fetchone()[0]
            assert runs == followers == 0


def test_without_bad_values_every_cell_is_acceptable(tmp_path: Path) -> None:
    report = generate_reference_db(tmp_path / "clean.db", artifacts=600, seed=3, bad_values=False)
    assert report.bad_cells == ()
    assert refused_cells(report.path) == set()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    one = generate_reference_db(tmp_path / "one.db", artifacts=800, seed=11)
    two = generate_reference_db(tmp_path / "two.db", artifacts=800, seed=11)
    other = generate_reference_db(tmp_path / "other.db", artifacts=800, seed=12)
    assert content_hash(one.path) == content_hash(two.path)
    assert one.bad_cells == two.bad_cells and one.rows == two.rows
    assert content_hash(other.path) != content_hash(one.path)


def test_artifacts_only(tmp_path: Path) -> None:
    report = generate_reference_db(tmp_path / "a.db", artifacts=500, children=False)
    counts = table_counts(report.path)
    assert counts["artifacts"] == 500 and counts["alembic_version"] == 1
    assert sum(counts.values()) == 501
    assert {c.table for c in report.bad_cells} == {"artifacts"}


def test_existing_file_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=50)
    with pytest.raises(FileExistsError):
        generate_reference_db(path, artifacts=50)
    report = generate_reference_db(path, artifacts=60, overwrite=True)
    assert table_counts(path)["artifacts"] == report.rows["artifacts"] == 60


# --------------------------------------------------------------------------- writer


@pytest.fixture
def live_db(tmp_path: Path) -> SampleReport:
    return generate_reference_db(tmp_path / "live.db", artifacts=2_000, seed=5)


def assert_stats_explain_the_changes(
    report: SampleReport, before: dict[str, int], likes_before: int, stats: WriterStats
) -> None:
    after = table_counts(report.path)
    for table in REFERENCE_TABLES:
        changes = stats.tables.get(table, TableChanges())
        assert after[table] - before[table] == changes.inserts - changes.deletes, table
    assert like_sum(report.path) - likes_before == stats.increments == stats.transactions
    assert stats.inserts == sum(c.inserts for c in stats.tables.values())
    assert stats.deletes == sum(c.deletes for c in stats.tables.values())
    assert stats.updates >= stats.increments
    with sqlite3.connect(report.path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # The app never touched a row holding a planted bad cell ...
        for cell in report.bad_cells:
            assert cell_value(conn, cell.table, cell.key, cell.column) == cell.value
    # ... and wrote nothing the target would refuse.
    planted = {(c.table, c.key, c.column) for c in report.bad_cells}
    assert refused_cells(report.path) == planted


def test_writer_at_a_rate(live_db: SampleReport) -> None:
    before, likes = table_counts(live_db.path), like_sum(live_db.path)
    stats = run_writer(live_db.path, duration=2.0, rate=100, seed=3)
    assert 1.9 < stats.seconds < 4.0
    assert 60 <= stats.transactions <= 205  # paced: never ahead of the rate
    assert stats.inserts > 0 and stats.updates > 0 and stats.deletes > 0
    for table in ("artifacts", "tweets", "artifact_scores", *CHILD_TABLES):
        assert table in stats.tables
    assert_stats_explain_the_changes(live_db, before, likes, stats)


def test_writer_flat_out_stops_on_the_event(live_db: SampleReport) -> None:
    before, likes = table_counts(live_db.path), like_sum(live_db.path)
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    try:
        stats = run_writer(live_db.path, duration=60.0, stop=stop)
    finally:
        timer.cancel()
    assert stats.seconds < 5.0
    assert stats.transactions > 50
    assert_stats_explain_the_changes(live_db, before, likes, stats)


def test_writer_on_an_artifacts_only_file(tmp_path: Path) -> None:
    report = generate_reference_db(tmp_path / "bare.db", artifacts=100, children=False)
    stats = run_writer(report.path, duration=0.5, seed=9)
    assert stats.transactions > 0
    assert like_sum(report.path) == stats.increments


def test_writer_rejects_a_bad_rate(live_db: SampleReport) -> None:
    with pytest.raises(ValueError, match="rate"):
        run_writer(live_db.path, duration=1.0, rate=0)


# --------------------------------------------------------------------------- CLI


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", "replicator.demo.sample", *args]


def test_cli_generate_then_write_until_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "cli.db"
    done = subprocess.run(
        _module("generate", str(path), "--artifacts", "400", "--seed", "4"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    generated = json.loads(done.stdout.strip().splitlines()[-1])
    assert generated["rows"]["artifacts"] == 400 and generated["bad_cells"] > 0
    before, likes = table_counts(path), like_sum(path)

    writer = subprocess.Popen(
        _module("write", str(path), "--duration", "60", "--rate", "200", "--seed", "8"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while like_sum(path) - likes < 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        writer.send_signal(signal.SIGTERM)
        out, err = writer.communicate(timeout=20)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    assert writer.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["increments"] >= 100
    assert like_sum(path) - likes == stats["increments"] == stats["transactions"]
    after = table_counts(path)
    for table in REFERENCE_TABLES:
        changes = stats["tables"].get(table, {"inserts": 0, "deletes": 0})
        assert after[table] - before[table] == changes["inserts"] - changes["deletes"], table


def test_cli_help_lists_both_commands() -> None:
    done = subprocess.run(_module("--help"), capture_output=True, text=True, timeout=30, check=True)
    assert "generate" in done.stdout and "write" in done.stdout


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["write", str(tmp_path / "missing.db"), "--duration", "1"]) == 2
    assert not (tmp_path / "missing.db").exists()
    assert main(["generate", str(tmp_path / "g.db"), "--artifacts", "20"]) == 0
    assert main(["generate", str(tmp_path / "g.db"), "--artifacts", "20"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"]["artifacts"] == 20
    assert captured.err.count("error:") == 2


def test_writer_waits_out_another_writer(live_db: SampleReport) -> None:
    before, likes = table_counts(live_db.path), like_sum(live_db.path)
    blocker = sqlite3.connect(live_db.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, as a migration or checkpoint might
    release = threading.Timer(0.8, blocker.execute, ("COMMIT",))
    release.start()
    try:
        stats = run_writer(live_db.path, duration=1.5, rate=50)
    finally:
        release.join()
        blocker.close()
    assert stats.transactions > 0
    assert_stats_explain_the_changes(live_db, before, likes, stats)


def test_the_app_renames_cursors_a_primary_key_change(live_db: SampleReport) -> None:
    conn = sqlite3.connect(live_db.path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        names_before = {r[0] for r in conn.execute("SELECT name FROM cursors")}
        app = _App(conn, seed=1)
        conn.execute("BEGIN IMMEDIATE")
        app.rename_cursor()
        conn.execute("COMMIT")
        names_after = {r[0] for r in conn.execute("SELECT name FROM cursors")}
    finally:
        conn.close()
    assert len(names_after) == len(names_before)
    (gone,) = names_before - names_after
    (new,) = names_after - names_before
    assert new.startswith(gone.split("@")[0] + "@")
    assert (gone,) not in live_db.bad_keys("cursors")
    assert app.tally.changes == {"cursors": [0, 1, 0]}
