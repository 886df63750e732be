"""Snapshot and stream while the application keeps writing, end to end.

The application simulator (``python -m replicator.demo.sample write``) writes to a
reference-app database from its own process for over 30 seconds: inserts with
children, updates, cascading deletes, primary-key changes and one
``like_count + 1`` per transaction. ``replicator run`` starts on a fresh
target while it writes, so the snapshot itself runs under load. Once the
writer has stopped and the lag is zero, the target must equal the source.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from harness import daemon_process, source_head, start_writer, wait_until
from oracle import assert_replicated, like_sum, open_dead_letters

from replicator.demo.sample import generate_reference_db

pytestmark = pytest.mark.slow

WRITE_SECONDS = 32
WRITE_RATE = 150  # transactions per second: each is one app action plus one like


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(port: int, name: str) -> float:
    _, body = get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not among the metrics")


def test_snapshot_and_stream_under_a_live_writer_end_with_equal_databases(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    path = tmp_path / "app.db"
    report = generate_reference_db(path, artifacts=2000, seed=1)  # with planted bad cells
    # Tweets with a planted bad cell never reach the target (and the writer
    # never touches them): the like sums leave them out on both sides.
    bad_tweets = [str(key[0]) for key in report.bad_keys("tweets")]
    likes_before = like_sum(source=path, without=bad_tweets)
    writer = start_writer(
        path, tmp_path / "writer.log", duration=WRITE_SECONDS, rate=WRITE_RATE, seed=7
    )
    try:
        wait_until(
            lambda: like_sum(source=path, without=bad_tweets) > likes_before,
            30,
            "the writer to start",
        )
        with daemon_process(
            path,
            refapp_pg_dsn,
            tmp_path / "daemon.log",
            # Many chunks, so the snapshot spans many of the writer's transactions; the
            # planted bad cells are held in dead letters, which /readyz is told to allow.
            settings={
                "REPLICATOR_SNAPSHOT_CHUNK_ROWS": "200",
                "REPLICATOR_METRICS_READY_MAX_DEAD_LETTERS": str(len(report.bad_cells)),
            },
        ) as daemon:
            daemon.wait_streaming(timeout=90)
            port = daemon.metrics_port
            snapshot_ended_at = source_head(path)
            written = writer.wait(WRITE_SECONDS + 60)
            position = daemon.wait_caught_up(timeout=120)
            # Lag zero is also what the cutover signal says.
            wait_until(lambda: get(port, "/readyz")[0] == 200, 15, "/readyz to report ready")
            _, body = get(port, "/readyz")
            assert json.loads(body)["state"] == "streaming"
            assert json.loads(body)["held_rows"] == len(report.bad_cells)
            wait_until(
                lambda: metric(port, "replicator_applied_position") == position.seq,
                10,
                "the applied-position gauge",
            )
            assert daemon.stop() == 0, daemon.tail()
            log = daemon.log_text()
    finally:
        writer.kill()

    head = source_head(path)
    assert head is not None and head == position.seq
    assert snapshot_ended_at is not None and snapshot_ended_at > position.snapshot_seq, (
        "no change was made while the snapshot ran"
    )
    assert written["transactions"] > WRITE_SECONDS * WRITE_RATE // 2, written
    assert written["deletes"] > 0 and written["tables"]["cursors"]["updates"] > 0, written
    # Each change after the recorded position was read in exactly one committed batch.
    assert position.changes_applied == head - position.snapshot_seq
    assert like_sum(source=path, without=bad_tweets) == likes_before + written["increments"]
    assert like_sum(dsn=refapp_pg_dsn) == likes_before + written["increments"]
    # What stays out of the target is exactly the planted bad cells, one letter each.
    letters = open_dead_letters(refapp_pg_dsn)
    assert sorted((d["table_name"], tuple(d["key"])) for d in letters) == sorted(
        (cell.table, cell.key) for cell in report.bad_cells
    )
    assert '"level": "error"' not in log
    assert_replicated(path, refapp_pg_dsn)
