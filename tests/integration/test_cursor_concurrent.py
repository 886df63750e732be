"""The streaming issue's concurrent-writer test, with every table followed by a cursor.

``replicator run`` (a real process, cursor mode for every table, so the source
is opened read-only) follows the reference application's database while the
simulated application writes to it: inserts, updates that bump
``updated_at`` and updates that do not (``like_count``, scores), primary-key
changes, cascading deletes. Once the writer has stopped and one reconciliation
pass that started after it has completed, the target must equal the source,
row for row and column for column.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from harness import daemon_process, start_writer, wait_until
from oracle import assert_replicated, like_sum, open_dead_letters

from replicator.demo.sample import generate_reference_db


def reconciled_since(dsn: str, moment: float) -> bool:
    """Every cursor table has completed a reconciliation pass that started after ``moment``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name, reconcile_started_at >= to_timestamp(%s)"
            " AND reconciled_at >= reconcile_started_at FROM replicator.cursor_position",
            (moment,),
        ).fetchall()
    return bool(rows) and all(bool(done) for _table, done in rows)


@pytest.mark.slow
def test_concurrent_writer_with_every_table_by_cursor(tmp_path: Path, refapp_pg_dsn: str) -> None:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=2000, seed=7, bad_values=False)
    settings = {
        "REPLICATOR_CAPTURE_MODE": "cursor",
        "REPLICATOR_CAPTURE_LOOKBACK_SECONDS": "3",
        "REPLICATOR_CAPTURE_RECONCILE_INTERVAL": "5",
        "REPLICATOR_CAPTURE_RECONCILE_CHUNK_ROWS": "500",
        "REPLICATOR_CAPTURE_RECONCILE_MAX_CHUNKS": "4",
    }
    with daemon_process(path, refapp_pg_dsn, tmp_path / "daemon.log", settings=settings) as daemon:
        daemon.wait_streaming(120)
        writer = start_writer(path, tmp_path / "writer.log", rate=150, seed=11)
        time.sleep(15)
        stats = writer.stop()
        stopped_at = time.time()
        assert stats["transactions"] > 500
        assert stats["deletes"] > 0 and stats["updates"] > 0
        wait_until(
            lambda: reconciled_since(refapp_pg_dsn, stopped_at),
            120,
            "a reconciliation pass that started after the writer stopped",
            every=0.5,
        )
        assert daemon.gone() is None
        assert open_dead_letters(refapp_pg_dsn) == []
        assert_replicated(path, refapp_pg_dsn)
        assert like_sum(source=path) == like_sum(dsn=refapp_pg_dsn)
        events = daemon.events()
        assert daemon.stop() == 0
    opened = next(e for e in events if e.get("event") == "source_opened")
    assert opened["readonly"] is True and opened["trigger_tables"] == 0
    repaired = [e for e in events if e.get("event") == "reconcile_repaired"]
    assert repaired, "the writer's deletes and silent updates must have needed reconciliation"
    conn = sqlite3.connect(path)
    ours = conn.execute(
        "SELECT name FROM sqlite_schema WHERE name LIKE '\\_replicator%' ESCAPE '\\'"
    ).fetchall()
    conn.close()
    assert ours == []
