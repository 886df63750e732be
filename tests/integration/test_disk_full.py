"""PostgreSQL out of disk: stop applying, keep the position, retry; resume when space returns.

A throwaway server of the test's own keeps the target table in a tablespace on
a 3 MiB tmpfs. The application keeps writing until PostgreSQL refuses to grow
the table (SQLSTATE 53100); the daemon must neither exit nor dead-letter the
rows (a full disk is not the rows' fault), and once a filler table in the same
tablespace is dropped it must catch up with every change exactly once.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import DaemonThread, daemon_config, wait_until
from oracle import open_dead_letters
from prometheus_client import REGISTRY

from replicator.demo.devdb import ThrowawayPostgres


@pytest.fixture
def small_tablespace_dir(throwaway_pg: ThrowawayPostgres) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (as in CI and the dev machines here)")
    top = Path(tempfile.mkdtemp(prefix="replicator-diskfull-"))
    top.chmod(0o755)
    mount = top / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        owner = throwaway_pg.data_dir.stat()
        os.chown(mount, owner.st_uid, owner.st_gid)
        mount.chmod(0o700)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()
        top.rmdir()


def retries(kind: str) -> float:
    value = REGISTRY.get_sample_value("replicator_retries_total", {"kind": kind})
    return value or 0.0


@pytest.mark.slow
def test_a_full_disk_pauses_applying_and_loses_nothing(
    tmp_path: Path, throwaway_pg: ThrowawayPostgres, small_tablespace_dir: Path
) -> None:
    dsn = throwaway_pg.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE small LOCATION '{small_tablespace_dir}'")
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text) TABLESPACE small")
        # Space to give back later: about a third of the tablespace.
        conn.execute("CREATE TABLE filler (pad text) TABLESPACE small")
        conn.execute(
            "INSERT INTO filler SELECT repeat(md5(i::text), 28) FROM generate_series(1, 1000) i"
        )
    source = tmp_path / "app.db"
    app = sqlite3.connect(source, isolation_level=None)
    app.execute("PRAGMA journal_mode = WAL")
    app.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT)")
    before = retries("disk_full")
    config = daemon_config(source, dsn, snapshot__create_tables=False)
    with DaemonThread(config) as daemon:
        daemon.wait_streaming()
        row = 0

        def disk_is_full() -> bool:
            nonlocal row
            # Incompressible text, so TOAST cannot squeeze it into less space.
            body = os.urandom(600).hex()
            app.execute("BEGIN")
            for _ in range(20):
                row += 1
                app.execute("INSERT INTO items VALUES (?, ?)", (row, body))
            app.execute("COMMIT")
            return retries("disk_full") > before

        wait_until(disk_is_full, 120, "PostgreSQL to run out of space in the tablespace")
        assert daemon.gone() is None, "the daemon must not exit on a full disk"
        assert daemon.daemon.health.state == "retrying"
        assert open_dead_letters(dsn) == [], "a full disk is not the rows' fault"
        with psycopg.connect(dsn, autocommit=True) as conn:
            stuck_at = conn.execute("SELECT seq FROM replicator.stream_position").fetchone()
            assert stuck_at is not None
            conn.execute("DROP TABLE filler")  # space returns
        final = row
        wait_until(
            lambda: _position(dsn) >= _head(source),
            120,
            "the daemon to resume and catch up once space returned",
        )
        assert _position(dsn) > stuck_at[0]
    app.close()
    with psycopg.connect(dsn) as conn:
        got = conn.execute("SELECT count(*), min(id), max(id) FROM items").fetchone()
    assert got == (final, 1, final)
    assert open_dead_letters(dsn) == []


def _position(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT seq FROM replicator.stream_position").fetchone()
    return int(row[0]) if row else -1


def _head(source: Path) -> int:
    with sqlite3.connect(source) as conn:
        row = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = '_replicator_changelog'"
        ).fetchone()
    return int(row[0]) if row else 0
