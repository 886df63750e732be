"""Faults under a live writer: the daemon keeps working and loses nothing.

Each streaming test runs the application simulator (``python -m
replicator.demo.sample write``) in its own process for the whole test, injects one
kind of fault into a running ``replicator run``, lets the writer go on after
it, and then checks, once the writer has stopped and the lag is zero:

* the daemon never exited on its own and stops cleanly (exit 0);
* every change-log position after the snapshot was committed in exactly one
  batch (``changes_applied == head - snapshot_seq``);
* ``sum(like_count)`` rose by exactly the writers' increments, in the source
  and in the target: a change applied twice, or lost, shows here;
* the target equals the source row for row (typed comparison), with only the
  planted bad cells left out, as open dead letters.

The source-file tests show that a file that disappears, is replaced or is
truncated under the daemon stops it with one clear sentence and exit code 3,
with nothing applied from the broken file. The integrity test shows the
replicator changes nothing in the application's database but its own
triggers and change log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from faultproxy import FaultProxy
from faultutil import (
    BackendKiller,
    LockHolder,
    TimedWriter,
    dbname_of,
    health,
    launch_daemon,
    metric_total,
    replicator_status,
    scrape,
)
from harness import (
    REPLICATOR,
    DaemonProcess,
    WriterProcess,
    changelog_rows,
    daemon_env,
    free_port,
    source_head,
    start_writer,
    stream_position,
    wait_until,
)
from oracle import assert_replicated, like_sum, open_dead_letters
from pgutil import apply_refapp_schema, make_dsn

from replicator.demo.devdb import ThrowawayPostgres
from replicator.demo.sample import SampleReport, generate_reference_db

ARTIFACTS = 600
WRITE_RATE = 60  # app transactions per second (one action plus one like each)
SMALL_BATCHES = {"REPLICATOR_STREAM_BATCH_MAX_CHANGES": "60"}  # many commits to land in
RATE_LIMIT_WINDOW = 30.0  # seconds between two `retrying` lines (stream.retry.ErrorLog)


@dataclass
class App:
    """The application's database, what was planted in it, and its writer."""

    path: Path
    report: SampleReport
    bad_tweets: list[str]
    likes_before: int
    writer: WriterProcess | None = None

    @classmethod
    def create(cls, tmp_path: Path, *, artifacts: int = ARTIFACTS) -> App:
        path = tmp_path / "app.db"
        report = generate_reference_db(path, artifacts=artifacts, seed=1)  # with bad cells
        bad_tweets = [str(key[0]) for key in report.bad_keys("tweets")]
        return cls(path, report, bad_tweets, like_sum(source=path, without=bad_tweets))

    def start_writer(self, tmp_path: Path, *, seed: int) -> WriterProcess:
        self.writer = start_writer(self.path, tmp_path / "writer.log", rate=WRITE_RATE, seed=seed)
        wait_until(
            lambda: like_sum(source=self.path, without=self.bad_tweets) > self.likes_before,
            60,
            "the writer to commit",
        )
        return self.writer

    def clean_tweet(self) -> str:
        conn = sqlite3.connect(self.path)
        try:
            ids = [str(r[0]) for r in conn.execute("SELECT tweet_id FROM tweets ORDER BY 1")]
        finally:
            conn.close()
        return next(t for t in ids if t not in self.bad_tweets)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.kill()


def applied(dsn: str) -> int | None:
    position = stream_position(dsn)
    return position.seq if position is not None else None


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name]


def check_nothing_lost_nothing_twice(
    app: App, dsn: str, daemon: DaemonProcess, increments: int, context: str = ""
) -> None:
    """Stop the daemon once caught up; then every invariant of the module docstring."""
    assert daemon.gone() is None, f"the daemon exited during the fault: {daemon.gone()}"
    position = daemon.wait_caught_up(timeout=180)
    code = daemon.stop(60)
    assert code == 0, f"exit {code}: {daemon.tail()}"
    head = source_head(app.path)
    committed = stream_position(dsn)
    assert committed is not None and head == position.seq == committed.seq, context
    # Every log position after the snapshot's was committed in exactly one batch.
    assert position.changes_applied == head - position.snapshot_seq, context
    expected = app.likes_before + increments
    assert like_sum(source=app.path, without=app.bad_tweets) == expected, context
    assert like_sum(dsn=dsn) == expected, f"{context}: a change was lost or applied twice"
    letters = open_dead_letters(dsn)
    assert sorted((d["table_name"], tuple(d["key"])) for d in letters) == sorted(
        (cell.table, cell.key) for cell in app.report.bad_cells
    ), context
    assert_replicated(app.path, dsn)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    made = App.create(tmp_path)
    yield made
    made.close()


# --------------------------------------------------------------------------
# The proxy itself.


def test_fault_proxy_cuts_refuses_and_restores(pg_dsn: str) -> None:
    port = urlsplit(pg_dsn).port or 5432
    with FaultProxy(port, lifetime=120) as proxy:
        via = proxy.dsn(pg_dsn)
        conn = psycopg.connect(via, autocommit=True, connect_timeout=5)
        assert conn.execute("SELECT 42").fetchone() == (42,)
        assert proxy.active == 1
        assert proxy.cut() == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(via, connect_timeout=5)  # refused while cut
        assert proxy.refused >= 1
        proxy.restore()
        with psycopg.connect(via, autocommit=True, connect_timeout=5) as again:
            assert again.execute("SELECT 7").fetchone() == (7,)
        assert proxy.accepted == 2 and proxy.cut_connections == 1
    wait_until(lambda: proxy.active == 0, 10, "the proxy to close its connections")


# --------------------------------------------------------------------------
# PostgreSQL faults.


@pytest.mark.slow
def test_daemon_backends_terminated_mid_batch_every_half_second(
    tmp_path: Path, refapp_pg_dsn: str, app: App
) -> None:
    writer = app.start_writer(tmp_path, seed=21)
    port = free_port()
    with_settings = {**SMALL_BATCHES}
    daemon = launch_daemon(
        app.path, refapp_pg_dsn, tmp_path / "daemon.log", metrics_port=port, settings=with_settings
    )
    killer = BackendKiller(refapp_pg_dsn, dbname_of(refapp_pg_dsn))
    try:
        daemon.wait_streaming(120)
        time.sleep(1.0)
        retries_before = metric_total(scrape(port), "replicator_retries_total")
        started = time.monotonic()
        # For at least 10 s, every 0.5 s once it streams again, kill its sessions
        # the moment its data connection is inside a batch; until 5 such kills.
        while time.monotonic() - started < 10.0 or killer.batch_rounds < 5:
            assert time.monotonic() - started < 90, f"too few mid-batch kills: {killer}"
            wait_until(
                lambda: daemon.gone() is None and health(port)["state"] == "streaming",
                60,
                "the daemon to stream again",
            )
            killer.kill_round(wait_busy=1.0, only_busy=True)
            time.sleep(0.5)
        fault_seconds = time.monotonic() - started
        time.sleep(2.0)  # the writer goes on after the storm
        retries = metric_total(scrape(port), "replicator_retries_total") - retries_before
        written = writer.stop()
        context = (
            f"kills {killer.kills} in {killer.rounds} rounds ({killer.batch_rounds} mid-batch), "
            f"states {dict(killer.states)}, batches doing {dict(killer.queries)}"
        )
        check_nothing_lost_nothing_twice(app, refapp_pg_dsn, daemon, written["increments"], context)
    finally:
        daemon.kill()
    print(f"{context}; {retries:.0f} retries")
    assert killer.batch_rounds >= 5, context
    # Every round cost the daemon at least one retry.
    assert retries >= killer.rounds, f"{retries} retries; {context}"
    # A flapping connection is logged rate-limited, not once per failure.
    retrying = events(daemon, "retrying")
    assert 1 <= len(retrying) <= fault_seconds // RATE_LIMIT_WINDOW + 2, retrying
    assert len(retrying) < retries


@pytest.mark.slow
def test_postgres_stopped_for_30_seconds_then_started_again(
    tmp_path: Path, throwaway_pg: ThrowawayPostgres, app: App
) -> None:
    with psycopg.connect(throwaway_pg.dsn, autocommit=True) as admin:
        admin.execute("CREATE DATABASE app")
    dsn = make_dsn(throwaway_pg.dsn, "app")
    with psycopg.connect(dsn) as conn:
        apply_refapp_schema(conn)
    writer = app.start_writer(tmp_path, seed=22)
    port = free_port()
    daemon = launch_daemon(app.path, dsn, tmp_path / "daemon.log", metrics_port=port)
    try:
        daemon.wait_streaming(120)
        daemon.wait_caught_up(60)
        retries_before = metric_total(scrape(port), "replicator_retries_total")
        throwaway_pg.stop("fast")
        down_at = time.monotonic()

        # During the outage: the daemon runs on, and `status` says it is retrying.
        def says_retrying() -> bool:
            report = replicator_status(app.path, dsn, port)
            data = report.data or {}
            state = str(data.get("daemon", {}).get("state", ""))
            return "retrying" in state and bool(data["daemon"].get("last_error"))

        wait_until(says_retrying, 25, "`replicator status` to show the daemon retrying")
        report = replicator_status(app.path, dsn, port)
        assert report.exit_code == 1 and report.data is not None, report
        assert str(report.data["verdict"]).startswith("stalled — retrying"), report.data
        while time.monotonic() - down_at < 30.0:
            assert daemon.gone() is None, daemon.gone()
            time.sleep(0.5)
        during = metric_total(scrape(port), "replicator_retries_total") - retries_before
        assert during >= 3, during  # kept trying (backoff 0.5 s, 1 s, 2 s, ... 30 s)
        assert health(port)["state"] == "retrying"
        retrying = events(daemon, "retrying")
        assert 1 <= len(retrying) <= 2, retrying  # rate-limited: 1 line per 30 s

        throwaway_pg.start()
        recovered = daemon.wait_event("recovered", 90)
        retries = metric_total(scrape(port), "replicator_retries_total") - retries_before
        assert recovered["failures"] == retries >= during, (recovered, retries)
        assert recovered["seconds"] >= 29, recovered
        time.sleep(2.0)
        written = writer.stop()
        check_nothing_lost_nothing_twice(app, dsn, daemon, written["increments"])
    finally:
        daemon.kill()


@pytest.mark.slow
def test_connection_cut_and_restored_through_a_proxy(
    tmp_path: Path, refapp_pg_dsn: str, app: App
) -> None:
    writer = app.start_writer(tmp_path, seed=23)
    port = free_port()
    pg_port = urlsplit(refapp_pg_dsn).port or 5432
    with FaultProxy(pg_port, lifetime=300) as proxy:
        daemon = launch_daemon(
            app.path,
            proxy.dsn(refapp_pg_dsn),
            tmp_path / "daemon.log",
            metrics_port=port,
            settings=SMALL_BATCHES,
        )
        try:
            daemon.wait_streaming(120)
            retries_before = metric_total(scrape(port), "replicator_retries_total")
            for cut in range(3):
                time.sleep(1.5)
                assert proxy.cut() >= 2  # the lock's session and the data connection
                # `status` reads PostgreSQL directly, where the daemon's heartbeat
                # has stopped: it asks the daemon itself.
                wait_until(
                    lambda: (
                        "retrying"
                        in str(
                            (replicator_status(app.path, refapp_pg_dsn, port).data or {})
                            .get("daemon", {})
                            .get("state")
                        )
                    ),
                    20,
                    f"status to show retrying during cut {cut + 1}",
                )
                time.sleep(2.0)
                assert daemon.gone() is None, daemon.gone()
                proxy.restore()
                wait_until(
                    lambda: health(port)["state"] == "streaming",
                    60,
                    f"the daemon to stream again after cut {cut + 1}",
                )
            retries = metric_total(scrape(port), "replicator_retries_total") - retries_before
            time.sleep(1.0)
            written = writer.stop()
            check_nothing_lost_nothing_twice(
                app, refapp_pg_dsn, daemon, written["increments"], f"proxy {vars(proxy)}"
            )
        finally:
            daemon.kill()
    assert proxy.cuts == 3 and proxy.refused >= 3, vars(proxy)
    assert retries >= 3
    assert len(events(daemon, "retrying")) <= 2  # three outages within 30 s: rate-limited


# --------------------------------------------------------------------------
# SQLite's write lock held by the application.

HOLD_SECONDS = 10.0  # the application's long write transaction
RESTART_HOLD_SECONDS = 8.0  # longer than source.busy_timeout_ms (5 s)
WRITER_LATENCY_LIMIT = 0.25  # s: the longest an app transaction may take beside the daemon


@pytest.mark.slow
def test_application_holding_the_write_lock_does_not_stall_or_stop_the_daemon(
    tmp_path: Path, refapp_pg_dsn: str, app: App
) -> None:
    writer = app.start_writer(tmp_path, seed=24)
    timed = TimedWriter(app.path, app.clean_tweet(), rate=50)
    timed.start()
    port = free_port()
    first = launch_daemon(app.path, refapp_pg_dsn, tmp_path / "daemon-1.log", metrics_port=port)
    second: DaemonProcess | None = None
    holds: list[LockHolder] = []
    try:
        first.wait_streaming(120)
        first.wait_caught_up(60)
        # 1. A running daemon. Hold its batch up in PostgreSQL (a lock on a target
        # table) so that a backlog builds in the source's log; then the app takes
        # SQLite's write lock for 10 s and PostgreSQL lets go. WAL readers are not
        # blocked: the whole backlog must be applied while the lock is held.
        with psycopg.connect(refapp_pg_dsn) as blocker:
            blocker.execute("LOCK TABLE public.tweets IN ACCESS EXCLUSIVE MODE")
            time.sleep(3.0)
            holds.append(LockHolder(app.path, HOLD_SECONDS))
            head = source_head(app.path)
            assert head is not None and (applied(refapp_pg_dsn) or 0) < head
            blocker.rollback()
        wait_until(
            lambda: applied(refapp_pg_dsn) == head,
            max(1.0, holds[0].held_at + HOLD_SECONDS - time.monotonic() - 0.5),
            "the backlog to be applied while the application holds the write lock",
        )
        assert holds[0].proc.poll() is None, "the lock was released before the backlog was applied"
        assert health(port)["state"] == "streaming"
        assert first.gone() is None
        holds[0].wait()
        # Pruning waited for the lock (without a retry), and goes on once it is free.
        assert events(first, "prune_deferred"), first.tail()
        wait_until(
            lambda: min(changelog_rows(app.path), default=head + 1) > head,
            30,
            "the change log to be pruned after the lock was released",
        )
        assert not events(first, "retrying"), "a held lock is not a failure"

        # 2. A daemon (re)starting while the app holds the lock longer than the busy
        # timeout: it cannot install its triggers yet, so it waits and retries.
        assert first.stop() == 0, first.tail()
        holds.append(LockHolder(app.path, RESTART_HOLD_SECONDS))
        second = launch_daemon(
            app.path, refapp_pg_dsn, tmp_path / "daemon-2.log", metrics_port=free_port()
        )
        while holds[1].proc.poll() is None:
            assert second.gone() is None, second.gone()
            time.sleep(0.1)
        holds[1].wait()
        second.wait_streaming(60)
        waited = events(second, "retrying")
        assert waited and {e["kind"] for e in waited} == {"sqlite_busy"}, waited
        time.sleep(2.0)
        written = writer.stop()
        timed.stop()
        check_nothing_lost_nothing_twice(
            app, refapp_pg_dsn, second, written["increments"] + timed.increments
        )
    finally:
        timed.stop_event.set()
        for hold in holds:
            hold.kill()
        first.kill()
        if second is not None:
            second.kill()
    # The app's own transactions, outside its two long ones, never waited on the daemon.
    windows = [(h.held_at - 0.05, (h.released_at or h.held_at) + 0.05) for h in holds]
    latencies = timed.latencies(outside=windows)
    assert len(latencies) > 200
    summary = (
        f"{len(latencies)} app transactions: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {statistics.quantiles(latencies, n=100)[98] * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    print(summary)
    assert max(latencies) < WRITER_LATENCY_LIMIT, summary


# --------------------------------------------------------------------------
# Source file faults.


def _replace(path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    generate_reference_db(other, artifacts=20, seed=7)  # a valid, much smaller database
    os.replace(other, path)


def _restore_in_place(path: Path, tmp_path: Path) -> None:
    """A backup copied over the file (same inode), its -wal and -shm removed."""
    shutil.copyfile(tmp_path / "backup.db", path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _truncate_zero(path: Path, _tmp: Path) -> None:
    os.truncate(path, 0)


def _truncate_partial(path: Path, _tmp: Path) -> None:
    os.truncate(path, path.stat().st_size // 3 + 517)  # mid-page


def _truncate_pages(path: Path, _tmp: Path) -> None:
    size = path.stat().st_size
    os.truncate(path, size // 2 - (size // 2) % 4096)  # whole pages: a valid-looking size


FaultInjector = Callable[[Path, Path], object]

# fault -> (how, the `source_lost` kind, words of the one sentence printed)
FILE_FAULTS: dict[str, tuple[FaultInjector, str, str]] = {
    "deleted": (lambda path, _tmp: path.unlink(), "missing", "was deleted or moved away"),
    "moved": (
        lambda path, tmp: shutil.move(path, tmp / "moved.db"),
        "missing",
        "was deleted or moved away",
    ),
    "replaced": (_replace, "replaced", "was replaced by a different file"),
    "restored-in-place": (
        _restore_in_place,
        "detached",
        "no longer sees the application's writes",
    ),
    "truncated-to-zero": (_truncate_zero, "truncated", "was truncated"),
    "truncated-mid-page": (_truncate_partial, "truncated", "was truncated"),
    "truncated-whole-pages": (_truncate_pages, "truncated", "was truncated"),
}


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def target_rows(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        out = {}
        for name in names:
            row = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            assert row is not None
            out[name] = int(row[0])
    return out


# Cursor capture reconciles by deleting what the source lacks: the mode a
# truncated or swapped file could turn into a mass delete.
FILE_FAULT_CASES = [(fault, "triggers") for fault in FILE_FAULTS] + [
    (fault, "cursor") for fault in ("replaced", "truncated-to-zero", "truncated-mid-page")
]


@pytest.mark.parametrize(("fault", "capture"), FILE_FAULT_CASES)
def test_source_file_fault_stops_the_daemon_with_one_clear_sentence(
    tmp_path: Path, refapp_pg_dsn: str, fault: str, capture: str
) -> None:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=200, seed=1)
    settings = {"REPLICATOR_STREAM_POLL_INTERVAL": "0.1"}
    if capture == "cursor":
        # Reconcile all the time: the path that would delete what the source lacks.
        settings |= {
            "REPLICATOR_CAPTURE_MODE": "cursor",
            "REPLICATOR_CAPTURE_RECONCILE_INTERVAL": "0.5",
        }
    port = free_port()
    daemon = launch_daemon(
        path, refapp_pg_dsn, tmp_path / "daemon.log", metrics_port=port, settings=settings
    )
    try:
        daemon.wait_streaming(120)
        backup = sqlite3.connect(tmp_path / "backup.db")
        with contextlib.closing(sqlite3.connect(path)) as live:
            live.backup(backup)  # the file as it was before the writes below
        backup.close()
        start_writer(path, tmp_path / "writer.log", duration=1.5, rate=40, seed=26).wait(60)
        if capture == "triggers":
            daemon.wait_caught_up(60)
        else:  # two reconciliation passes that began after the writes
            passes = len(events(daemon, "reconcile_done"))
            wait_until(
                lambda: len(events(daemon, "reconcile_done")) >= passes + 2,
                60,
                "reconciliation to catch up",
            )
        before = target_rows(refapp_pg_dsn)
        letters = len(open_dead_letters(refapp_pg_dsn))
        inject, kind, sentence = FILE_FAULTS[fault]
        inject(path, tmp_path)
        after_fault = file_digest(path)
        if fault == "truncated-mid-page" and capture == "triggers":
            # Could be a checkpoint caught halfway for a moment: paused, not stopped yet.
            wait_until(lambda: health(port)["state"] == "paused", 10, "the daemon to pause")
            report = replicator_status(path, refapp_pg_dsn, port)
            assert report.data is not None, report
            assert str(report.data["verdict"]).startswith("stalled — paused: source file"), report
        code = daemon.wait_exit(60)
    finally:
        daemon.kill()
    text = daemon.log_text()
    assert code == 3, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("replicator: error: the source database"), last
    assert sentence in last, last
    lost = events(daemon, "source_lost")
    assert len(lost) == 1 and lost[0]["kind"] == kind, lost
    # Nothing was applied from the broken file: no mass delete, no new dead letters.
    assert target_rows(refapp_pg_dsn) == before
    assert len(open_dead_letters(refapp_pg_dsn)) == letters
    # Nor was anything written into what is at the path now (closing the old
    # connection would checkpoint its stale write-ahead log into it).
    assert file_digest(path) == after_fault
    if fault == "restored-in-place":
        # Started again on the restored file, whose change log ends before what was
        # applied: it refuses instead of silently skipping the log's next positions.
        again = launch_daemon(
            path, refapp_pg_dsn, tmp_path / "daemon-2.log", metrics_port=free_port()
        )
        try:
            code = again.wait_exit(60)
        finally:
            again.kill()
        last = again.log_text().strip().splitlines()[-1]
        assert code == 3 and "was restored or replaced" in last, again.tail()
        assert [e["kind"] for e in events(again, "source_lost")] == ["rewound"]
        assert target_rows(refapp_pg_dsn) == before


# --------------------------------------------------------------------------
# The source is never modified but for the documented trigger and log objects.

OURS = "_replicator_"


def source_fingerprint(path: Path) -> dict[str, Any]:
    """Everything of the application's in the file: schema, content hash per
    table, the AUTOINCREMENT counters and the header settings."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        schema = sorted(
            tuple(r)
            for r in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema")
            if not str(r[1]).startswith(OURS)
        )
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY name"
            )
            if not str(r[0]).startswith(OURS)
        ]
        content = {}
        for table in tables:
            digest = hashlib.sha256()
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                digest.update(repr([(type(v).__name__, v) for v in row]).encode())
            content[table] = digest.hexdigest()
        sequences = sorted(
            tuple(r)
            for r in conn.execute("SELECT name, seq FROM sqlite_sequence")
            if not str(r[0]).startswith(OURS)
        )
        pragmas = {
            name: conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("user_version", "application_id", "page_size", "journal_mode", "encoding")
        }
        integrity = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    return {
        "schema": schema,
        "content": content,
        "sequences": sequences,
        "pragmas": pragmas,
        "integrity": integrity,
    }


def test_source_is_never_modified_but_for_triggers_and_change_log(
    tmp_path: Path, refapp_pg_dsn: str
) -> None:
    path = tmp_path / "app.db"
    generate_reference_db(path, artifacts=400, seed=1)
    # Some history first (the writer stopped before the baseline is taken).
    stats = start_writer(path, tmp_path / "writer.log", duration=3, rate=80, seed=25).wait(90)
    assert stats["transactions"] > 0
    before = source_fingerprint(path)
    assert before["integrity"] == ["ok"]
    port = free_port()
    daemon = launch_daemon(path, refapp_pg_dsn, tmp_path / "daemon.log", metrics_port=port)
    killer = BackendKiller(refapp_pg_dsn, dbname_of(refapp_pg_dsn))
    try:
        daemon.wait_streaming(120)
        for done in range(1, 4):  # each reconnection runs the start-up path again
            killer.kill_round(wait_busy=0.0)
            wait_until(
                lambda: (
                    metric_total(scrape(port), "replicator_retries_total") >= done  # noqa: B023
                    and health(port)["state"] == "streaming"
                ),
                60,
                "the daemon to notice the kill and recover",
            )
        assert daemon.stop() == 0, daemon.tail()
    finally:
        daemon.kill()
    installed = sqlite3.connect(path)
    try:
        ours = sorted(
            (str(r[0]), str(r[1]))
            for r in installed.execute("SELECT type, name FROM sqlite_schema")
            if str(r[1]).startswith(OURS)
        )
    finally:
        installed.close()
    assert ("table", "_replicator_changelog") in ours
    assert {kind for kind, _ in ours} == {"table", "trigger"}, ours
    assert source_fingerprint(path) == before
    # `replicator uninstall` leaves exactly the application's database.
    result = subprocess.run(
        [str(REPLICATOR), "uninstall", "--yes"],
        env=daemon_env(path, refapp_pg_dsn),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    after = source_fingerprint(path)
    assert after == before
    conn = sqlite3.connect(path)
    try:
        left = conn.execute(
            "SELECT name FROM sqlite_schema WHERE name LIKE '%replicator%'"
        ).fetchall()
        seq = conn.execute(
            "SELECT name FROM sqlite_sequence WHERE name LIKE '%replicator%'"
        ).fetchall()
    finally:
        conn.close()
    assert left == [] and seq == []
