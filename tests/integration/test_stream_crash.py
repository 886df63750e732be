"""SIGKILL ``replicator run`` at random moments, under a live writer, and restart it.

Kills land during start-up (trigger install, planning), during the snapshot
and during streaming; no shutdown code runs. After the writer stops and a
last restart catches up, nothing may be lost or applied twice:

* the committed ``changes_applied`` counter equals the number of log
  positions after the snapshot position (each read in exactly one committed
  batch);
* ``sum(like_count)`` in the target rose by exactly the writer's
  ``increments`` (one ``+1`` per committed app transaction);
* the target equals the source row for row (typed comparison), with exactly
  the planted bad cells left out as open dead letters.

The kill schedule is random but seeded; the seed is in the failure message.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from harness import (
    DaemonProcess,
    source_head,
    start_daemon,
    start_writer,
    stream_position,
    wait_until,
)
from oracle import assert_replicated, like_sum, open_dead_letters

from replicator.demo.sample import generate_reference_db

pytestmark = pytest.mark.slow

KILLS = 24
MAX_SNAPSHOT_KILLS = 8
SETTINGS = {
    # Small chunks and batches: many commits, so kills land between and inside them.
    "REPLICATOR_SNAPSHOT_CHUNK_ROWS": "20",
    "REPLICATOR_STREAM_BATCH_MAX_CHANGES": "150",
}


def phase_at_kill(daemon: DaemonProcess) -> str:
    """Where the daemon was: its log is line-buffered, so the last line says."""
    names = {e.get("event") for e in daemon.events()}
    if "streaming" in names:
        return "streaming"
    if "triggers_installed" in names:
        return "snapshot"  # checking progress, copying, or finishing the copy
    return "startup"


def test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    path = tmp_path / "app.db"
    report = generate_reference_db(path, artifacts=2000, seed=1)
    bad_tweets = [str(key[0]) for key in report.bad_keys("tweets")]
    likes_before = like_sum(source=path, without=bad_tweets)
    phases: Counter[str] = Counter()
    refused = 0
    started: list[DaemonProcess] = []
    writer = start_writer(path, tmp_path / "writer.log", rate=120, seed=13)

    def start() -> DaemonProcess:
        log = tmp_path / f"daemon-{len(started) + 1}.log"
        started.append(start_daemon(path, refapp_pg_dsn, log, settings=SETTINGS))
        return started[-1]

    try:
        wait_until(
            lambda: like_sum(source=path, without=bad_tweets) > likes_before,
            30,
            "the writer to start",
        )
        snapshot_done = False
        while sum(phases.values()) < KILLS:
            daemon = start()
            try:
                if not snapshot_done and phases["snapshot"] < MAX_SNAPSHOT_KILLS:
                    # Somewhere in the snapshot (resumed each time), rarely just after it.
                    daemon.wait_event("triggers_installed", 60)  # logged on every start
                    time.sleep(rng.uniform(0.0, 0.4))
                elif rng.random() < 0.15:
                    # Start-up: installing triggers, planning, recording the position.
                    daemon.wait_event("lock_acquired", 60)
                    time.sleep(rng.uniform(0.0, 0.08))
                else:
                    daemon.wait_streaming(60)
                    time.sleep(rng.uniform(0.0, 1.2))
            except AssertionError:
                if daemon.proc.poll() == 6:
                    # The killed daemon's session may still hold the lock for a moment.
                    refused += 1
                    assert refused <= 5, daemon.tail()
                    time.sleep(0.2)
                    continue
                raise AssertionError(f"seed {seed}: {daemon.tail()}") from None
            assert daemon.gone() is None, f"seed {seed}: {daemon.gone()}"
            daemon.kill()
            phases[phase_at_kill(daemon)] += 1
            snapshot_done = snapshot_done or daemon.has_event("snapshot_done")

        written = writer.stop()
        final = start()
        position = final.wait_caught_up(timeout=120)
        assert final.stop() == 0, final.tail()
    finally:
        for daemon in started:  # whatever failed, no daemon outlives the test
            daemon.kill()
        writer.kill()

    context = f"seed {seed}, kills {dict(phases)}, refused starts {refused}"
    assert sum(phases.values()) >= 20, context
    assert phases["snapshot"] >= 3 and phases["streaming"] >= 10, context
    head = source_head(path)
    committed = stream_position(refapp_pg_dsn)
    assert committed is not None and head == position.seq == committed.seq, context
    assert position.changes_applied == head - position.snapshot_seq, context
    assert written["transactions"] > 0
    assert like_sum(source=path, without=bad_tweets) == likes_before + written["increments"]
    assert like_sum(dsn=refapp_pg_dsn) == likes_before + written["increments"], context
    letters = open_dead_letters(refapp_pg_dsn)
    assert sorted((d["table_name"], tuple(d["key"])) for d in letters) == sorted(
        (cell.table, cell.key) for cell in report.bad_cells
    ), context
    assert_replicated(path, refapp_pg_dsn)
