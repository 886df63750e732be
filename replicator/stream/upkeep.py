"""What the daemon's loop does on every turn besides applying a batch.

Rows waiting for a parent that arrived another way, the schema-drift work the
stream owes, lag sampling, pruning the change log, the heartbeat row and the
health endpoints: each at its own pace, so that a long backlog is applied at
full speed while `status`, `/readyz` and the metrics stay true.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from replicator import metrics
from replicator.source.changelog import Change
from replicator.source.sqlite import SourceFileChanged
from replicator.state import verifymarks
from replicator.state.deadletter import count_open
from replicator.stream.setup import follow_drift, setup
from replicator.stream.sourcefile import lost

if TYPE_CHECKING:
    from replicator.stream.daemon import Daemon

KEEP_CHECK_EVERY = 10.0  # seconds between reads of the verify marks (what the log keeps)


def after_batch(d: Daemon, changes: list[Change], busy: bool) -> None:
    """Everything a turn does once its batch (if any) is applied; waits for the next
    change when there is nothing to do."""
    assert d.position is not None and d.waker is not None
    release_waiting(d)
    busy = follow_drift(d) or busy
    now = time.monotonic()
    if d.lagger.due(now):
        sample_lag(d)
    if now - d.tail.keep_checked >= KEEP_CHECK_EVERY and d.conn is not None:
        d.tail.keep_checked = now
        with d.conn.cursor() as cur:
            d.tail.keep_from = verifymarks.keep_from(
                cur, d.schema, d.config.stream.verify_keep_seconds
            )
    d.tail.prune_if_due(d.position.seq, now)
    if d.tail.dropped:
        d.tail.dropped = False
        d.log.warning(
            "consumer_dropped",
            consumer=d.consumer.consumer if d.consumer else None,
            reason="this target's registration in the source was removed: registering again",
        )
        setup(d, startup=False)
        return
    beat(d)
    d.notifier.watchdog()
    cfg = d.config.stream
    lag = d.lagger.lag
    if changes and len(changes) >= cfg.batch_max_changes // 2:
        # A full batch: a backlog. Still tick (or /healthz calls a busy loop stuck),
        # but never with a lag sampled before the backlog (ready while far behind):
        # what is pending is at most as old as the newest change just applied.
        lag = max(lag, time.time() - max(c.captured_at for c in changes))
    if d.watch.paused:
        lag = float("inf")  # a paused table is not followed: never ready for cutover
    d.health.tick(connected=True, lag_seconds=lag, state="streaming")
    if not changes and not busy and not d.stop.is_set():
        d.waker.wait(cfg.poll_interval)


def release_waiting(d: Daemon) -> None:
    """Rows waiting for a parent that reached the target by another way than this
    stream's batches (an earlier run, a repair, a cursor table's apply)."""
    assert d.conn is not None and d.applier is not None
    appliers = [d.applier]
    if d.cursors is not None and d.cursors.applier is not None:
        appliers.append(d.cursors.applier)
    released = sum(a.tick_waiting(d.conn) for a in appliers)
    if released:
        d.log.info("parent_arrived", rows=released)


def sample_lag(d: Daemon) -> None:
    assert d.source is not None and d.position is not None
    try:
        d.lagger.sample(d.source, d.position.seq, d.plans, d.specs, d.cursors, triggers=d.triggers)
    except SourceFileChanged as exc:
        raise lost(d, exc) from None


def beat(d: Daemon, *, force: bool = False) -> None:
    """The heartbeat row, every couple of seconds (or now, when ``force``), and with
    it the rows held in dead letters, for the metrics and /readyz."""
    if d.conn is None:
        return
    tables = [p.source.name for p in d.plans]
    last_error = d.errors.last_error or None
    if d.heartbeat.beat(d.conn, tables, d.state, last_error, force=force):
        with d.conn.cursor() as cur:
            open_letters = count_open(cur, d.schema, "forward")
        metrics.set_open_dead_letters(tables, open_letters)
        reconciled = d.cursors is None or d.cursors.reconciled
        d.health.note_held(sum(open_letters.values()), reconciled=reconciled)
