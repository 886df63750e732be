"""``replicator snapshot`` killed with SIGKILL mid-copy and run again; ``--restart`` on a
filled target; ``on_error = "stop"``.

The CLI runs as a subprocess against the reference application's schema, so
the kill is a real one: no ``finally`` block, no flush, no goodbye.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgutil import TestDatabases
from psycopg import sql

from replicator.config import load_config
from replicator.demo.sample import REFERENCE_TABLES, SampleReport, generate_reference_db
from replicator.snapshot import ProgressDisplay, Snapshotter

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_CONFIG = PROJECT_ROOT / "config" / "reference-app.toml"
COPIED_TABLES = tuple(t for t in REFERENCE_TABLES if t != "alembic_version")
CHUNK_ROWS = 500
# The kill test: tables of more than 5,000 rows are copied as two key ranges at once
# (the 30,000 artifacts and their child tables), and every chunk holds CHUNK_ROWS rows.
KILL_ENV = {"REPLICATOR_SNAPSHOT_SPLIT_ROWS": "5000", "REPLICATOR_SNAPSHOT_CHUNK_BYTES": "0"}

Key = tuple[Any, ...]


def replicator_command() -> list[str]:
    script = Path(sys.executable).with_name("replicator")
    return [str(script)] if script.exists() else [sys.executable, "-m", "replicator.cli"]


def cli_env(source: Path, dsn: str) -> dict[str, str]:
    """What a user's shell would hold: no REPLICATOR_* leftovers from the test run."""
    keep = ("PATH", "HOME", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if k.startswith("PG") or k in keep}
    env.update({"LANG": "C.UTF-8", "DATABASE_PATH": str(source), "DATABASE_URL": dsn})
    return env


def run_cli(
    source: Path, dsn: str, *args: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = cli_env(source, dsn) | (extra_env or {})
    return subprocess.run(
        [*replicator_command(), "-c", str(REFERENCE_CONFIG), "--log-format", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def log_events(stderr: str) -> list[dict[str, Any]]:
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


@dataclass(frozen=True)
class Progress:
    rows_read: int
    rows_written: int
    dead_letters: int
    rows_total: int | None
    done: bool
    method: str


def load_progress(pg: psycopg.Connection[Any]) -> dict[str, Progress]:
    return {
        str(r[0]): Progress(*r[1:])
        for r in pg.execute(
            "SELECT table_name, rows_read, rows_written, dead_letters, rows_total, done, method"
            " FROM replicator.snapshot_progress"
        )
    }


def open_letters(pg: psycopg.Connection[Any]) -> list[tuple[str, Key, str | None]]:
    return [
        (str(r[0]), tuple(r[1]), r[2])
        for r in pg.execute(
            "SELECT table_name, key, column_name FROM replicator.dead_letters"
            " WHERE resolved_at IS NULL"
        )
    ]


def key_columns(pg: psycopg.Connection[Any], table: str) -> list[str]:
    return [
        str(r[0])
        for r in pg.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = to_regclass(format('public.%%I', %s::text))"
            " AND i.indisprimary ORDER BY k.ord",
            (table,),
        )
    ]


def table_contents(pg: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    """Every row, every column, in key order."""
    key = sql.SQL(", ").join(sql.Identifier(k) for k in key_columns(pg, table))
    return pg.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier("public", table), key)
    ).fetchall()


def target_keys(pg: psycopg.Connection[Any], table: str) -> list[Key]:
    cols = sql.SQL(", ").join(sql.Identifier(k) for k in key_columns(pg, table))
    return [
        tuple(r)
        for r in pg.execute(
            sql.SQL("SELECT {} FROM {}").format(cols, sql.Identifier("public", table))
        )
    ]


def source_keys(path: Path, table: str, key: list[str]) -> list[Key]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cols = ", ".join(f'"{k}"' for k in key)
        return [tuple(r) for r in conn.execute(f'SELECT {cols} FROM "{table}"')]
    finally:
        conn.close()


def assert_exactly_once(pg: psycopg.Connection[Any], report: SampleReport) -> None:
    """Every source key is in the target or dead-lettered (open), never both, never twice,
    and the dead letters are exactly the planted bad cells."""
    letters = open_letters(pg)
    assert Counter(letters) == Counter((c.table, c.key, c.column) for c in report.bad_cells)
    dead = {(t, k) for t, k, _ in letters}
    for table in COPIED_TABLES:
        key = key_columns(pg, table)
        in_target = target_keys(pg, table)
        assert len(in_target) == len(set(in_target)), table
        in_dead = {k for t, k in dead if t == table}
        in_source = source_keys(report.path, table, key)
        assert len(in_source) == report.rows[table]
        assert not set(in_target) & in_dead, f"{table}: keys both copied and dead-lettered"
        missing = set(in_source) - set(in_target) - in_dead
        extra = (set(in_target) | in_dead) - set(in_source)
        assert not missing, f"{table}: {len(missing)} rows missing, e.g. {sorted(missing)[:5]}"
        assert not extra, f"{table}: {len(extra)} rows not in the source: {sorted(extra)[:5]}"
        assert len(in_target) + len(in_dead) == report.rows[table], table


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> SampleReport:
    """Enough rows that a snapshot in 500-row chunks takes several seconds."""
    path = tmp_path_factory.mktemp("resume") / "app.db"
    return generate_reference_db(path, artifacts=30_000, seed=42, bad_values=True)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory: pytest.TempPathFactory) -> SampleReport:
    path = tmp_path_factory.mktemp("small") / "app.db"
    return generate_reference_db(path, artifacts=2_000, seed=7, bad_values=True)


@pytest.fixture
def reference_copy(
    pg_databases: TestDatabases, pg_refapp_template: str
) -> Iterator[tuple[str, Any]]:
    """A second target and a function filling it with an uninterrupted snapshot."""
    with pg_databases.database(pg_refapp_template) as dsn:

        def fill(report: SampleReport) -> None:
            config = load_config(
                REFERENCE_CONFIG, env={"DATABASE_PATH": str(report.path), "DATABASE_URL": dsn}
            )
            Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()

        yield dsn, fill


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_sigkill_mid_copy_then_resume_loses_and_doubles_nothing(
    big_source: SampleReport,
    refapp_pg_dsn: str,
    reference_copy: tuple[str, Any],
    tmp_path: Path,
) -> None:
    report, dsn = big_source, refapp_pg_dsn
    total_rows = report.total_rows - report.rows["alembic_version"]
    with (tmp_path / "first.err").open("w") as err:
        proc = subprocess.Popen(
            [
                *replicator_command(),
                "-c",
                str(REFERENCE_CONFIG),
                "--log-format",
                "json",
                "snapshot",
                "--chunk-rows",
                str(CHUNK_ROWS),
            ],
            env=cli_env(report.path, dsn) | KILL_ENV,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 180
            with psycopg.connect(dsn, autocommit=True) as pg:
                while True:
                    assert proc.poll() is None, "the snapshot finished before it could be killed"
                    assert time.monotonic() < deadline, "no chunk was committed in time"
                    try:
                        row = pg.execute(
                            "SELECT coalesce(sum(rows_read), 0) FROM replicator.snapshot_progress"
                        ).fetchone()
                    except psycopg.errors.UndefinedTable:  # state schema not created yet
                        row = (0,)
                    assert row is not None
                    if row[0] >= 3 * CHUNK_ROWS:
                        proc.send_signal(signal.SIGKILL)
                        break
                    time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with psycopg.connect(dsn) as pg:
        killed = load_progress(pg)
        read_before = sum(p.rows_read for p in killed.values())
        assert CHUNK_ROWS <= read_before < total_rows, "killed neither too early nor too late"
        assert not all(p.done for p in killed.values())
        split = pg.execute(
            "SELECT count(*) FROM replicator.snapshot_parts WHERE NOT done"
        ).fetchone()
        assert split is not None and split[0] > 0, "killed while key ranges were being copied"
        dead_now = Counter(t for t, _, _ in open_letters(pg))
        for table, p in killed.items():
            # Data and checkpoint commit together: nothing half-written survives.
            count = pg.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
            ).fetchone()
            assert count == (p.rows_written,), table
            assert dead_now[table] == p.dead_letters, table
            assert p.rows_read == p.rows_written + p.dead_letters, table
            if not p.done:
                assert p.rows_read % CHUNK_ROWS == 0, "only whole chunks are committed"
        for table in COPIED_TABLES:
            if table not in killed:
                count = pg.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
                ).fetchone()
                assert count == (0,), table
    partial = {t: p for t, p in killed.items() if not p.done and p.rows_read}

    second = run_cli(
        report.path, dsn, "snapshot", "--chunk-rows", str(CHUNK_ROWS), extra_env=KILL_ENV
    )
    assert second.returncode == 0, second.stderr[-2000:]

    events = log_events(second.stderr)
    resumed = {e["table"]: e["from_rows"] for e in events if e["event"] == "snapshot_resumed"}
    assert resumed == {t: p.rows_read for t, p in partial.items()}
    for table, p in partial.items():
        first_chunk = next(
            e for e in events if e["event"] == "snapshot_chunk" and e["table"] == table
        )
        assert first_chunk["copied"] == p.rows_read + first_chunk["rows"], "counting went on"
    for table, p in killed.items():
        if p.done:
            assert not any(
                e.get("table") == table for e in events if e["event"] == "snapshot_chunk"
            )

    with psycopg.connect(dsn) as pg:
        final = load_progress(pg)
        assert set(final) == set(COPIED_TABLES)
        for table in COPIED_TABLES:
            p = final[table]
            assert p.done, table
            assert p.rows_read == report.rows[table] == p.rows_total, table
            assert p.rows_written == report.good_rows(table), table
            assert p.method == "copy", table  # continued as it started
        assert_exactly_once(pg, report)

        # Values: exactly what one uninterrupted snapshot produces.
        reference_dsn, fill = reference_copy
        fill(report)
        with psycopg.connect(reference_dsn) as ref:
            for table in COPIED_TABLES:
                assert table_contents(pg, table) == table_contents(ref, table), table


# --------------------------------------------------------------------------- --restart


def test_restart_on_a_filled_target_merges(small_source: SampleReport, refapp_pg_dsn: str) -> None:
    report, dsn = small_source, refapp_pg_dsn
    first = run_cli(report.path, dsn, "snapshot")
    assert first.returncode == 0, first.stderr[-2000:]
    with psycopg.connect(dsn) as pg:
        before = {t: table_contents(pg, t) for t in COPIED_TABLES}
        good_artifact = min(k for (k,) in target_keys(pg, "artifacts"))
        scored = min(k for (k,) in target_keys(pg, "artifact_scores"))
        # Drift a later run must repair: changed values, a lost row.
        pg.execute("UPDATE artifacts SET title = 'tampered' WHERE id = %s", (good_artifact,))
        pg.execute("DELETE FROM artifact_scores WHERE artifact_id = %s", (scored,))
        pg.execute("UPDATE cursors SET value = NULL")

    again = run_cli(report.path, dsn, "snapshot")  # without --restart: nothing to do
    assert again.returncode == 0
    assert "(done earlier)" in again.stdout
    with psycopg.connect(dsn) as pg:
        assert pg.execute(
            "SELECT title FROM artifacts WHERE id = %s", (good_artifact,)
        ).fetchone() == ("tampered",)

    restarted = run_cli(report.path, dsn, "snapshot", "--restart")
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "(done earlier)" not in restarted.stdout
    with psycopg.connect(dsn) as pg:
        progress = load_progress(pg)
        assert {t: p.method for t, p in progress.items()} == {t: "merge" for t in COPIED_TABLES}
        assert all(p.done and p.rows_read == report.rows[t] for t, p in progress.items())
        for table in COPIED_TABLES:
            assert table_contents(pg, table) == before[table], table
        # The bad rows were read again and refused again: one open letter each,
        # the earlier one superseded, so the counts still add up.
        assert_exactly_once(pg, report)
        resolved = pg.execute(
            "SELECT count(*) FROM replicator.dead_letters WHERE resolved_at IS NOT NULL"
        ).fetchone()
        assert resolved == (len(report.bad_cells),)


# --------------------------------------------------------------------------- on_error = "stop"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_on_error_stop_makes_the_first_bad_row_fatal(
    small_source: SampleReport, refapp_pg_dsn: str, how: str
) -> None:
    report, dsn = small_source, refapp_pg_dsn
    if how == "flag":
        result = run_cli(report.path, dsn, "snapshot", "--on-error", "stop")
    else:
        result = run_cli(
            report.path, dsn, "snapshot", extra_env={"REPLICATOR_SNAPSHOT_ON_ERROR": "stop"}
        )
    assert result.returncode == 5
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1, result.stderr[-2000:]
    message = errors[0]
    assert message.startswith("replicator: error: ")
    assert "Traceback" not in result.stderr

    named = [
        c
        for c in report.bad_cells
        if message.startswith(f"replicator: error: {c.table} key {json.dumps(list(c.key))} ")
        and f" column {c.column}" in message
    ]
    assert len(named) == 1, message
    cell = named[0]
    assert repr(cell.value)[:40] in message, "the refused value is shown"
    assert 'on_error = "stop"' in message
    # The first bad row of its table in key order stopped it, before anything of it
    # (or after it) was written, and nothing was dead-lettered.
    assert cell.key == min(c.key for c in report.bad_cells if c.table == cell.table)
    with psycopg.connect(dsn) as pg:
        key = key_columns(pg, cell.table)
        assert len(key) == 1
        beyond = pg.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} >= %s").format(
                sql.Identifier("public", cell.table), sql.Identifier(key[0])
            ),
            (cell.key[0],),
        ).fetchone()
        assert beyond == (0,)
        letters = pg.execute("SELECT count(*) FROM replicator.dead_letters").fetchone()
        assert letters == (0,)
