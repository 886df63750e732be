"""The daemon: init -> record the log position -> snapshot -> stream, forever.

The loop waits on any of: a file-change event on the SQLite file or its
``-wal`` (watchfiles), the poll interval, or the stop event. Signal handlers
only set the stop event; shutdown finishes the batch in hand and commits it
with its position. A second signal exits at once, which is still safe because
the position is only ever committed together with the data it covers.

A change of the source's schema is noticed on every loop and followed without
a restart where it can be (an added column, a new table); a table it cannot
follow alone is paused while the others stream on (stream/drift.py, stream/setup.py).

Transient PostgreSQL failures (connection lost, admin shutdown, too many
connections, serialization failure, deadlock, read-only during failover,
disk full) are retried with capped, jittered exponential backoff; the daemon
reconnects and resumes from the committed position. Only configuration and
schema problems, or a lost source file, end it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from types import FrameType
from typing import Any

import psycopg
from psycopg.abc import Transformer
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from replicator import __version__, metrics
from replicator.config import Config, parse_address
from replicator.errors import ConfigError, LockHeldError
from replicator.logs import get_logger
from replicator.plan.tables import TablePlan
from replicator.source import changelog
from replicator.source.sqlite import SourceFileChanged, SourceGuard, abandon, schema_version
from replicator.state import heartbeat
from replicator.state.lock import PairLock, pair_id
from replicator.state.migrations import ensure_state
from replicator.state.position import StreamPosition
from replicator.stream import drift
from replicator.stream.apply import Applier
from replicator.stream.cursor import CursorStream, Specs, open_for_capture
from replicator.stream.heartbeat import Heartbeat, LagSampler
from replicator.stream.reconcile import Reconciler
from replicator.stream.retry import ErrorLog, transient_kind
from replicator.stream.setup import follow_drift, setup
from replicator.stream.sourcefile import check_source, lost, source_paused
from replicator.stream.systemd import Notifier
from replicator.stream.tail import LogTail
from replicator.stream.waker import Waker
from replicator.target.connection import Connection, connect

__all__ = ["Daemon", "SnapshotInterrupted"]


class SnapshotInterrupted(Exception):
    """A stop request during the snapshot: the committed chunks stay, resume later."""


class StoppedBeforeLock(Exception):
    """A stop request before the lock was taken: nothing was done, nothing to finish."""


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        standby: bool = False,
        notifier: Notifier | None = None,
        install_signals: bool = True,
    ) -> None:
        self.config = config
        self.path = config.require_source()
        self.dsn = config.require_target()
        self.schema = config.target.state_schema
        self.standby = standby
        self.notifier = notifier or Notifier()
        self.install_signals = install_signals
        self.stop = threading.Event()
        self.log = get_logger()
        self.errors = ErrorLog(self.log)
        self.health = metrics.Health(
            stuck_after=max(60.0, config.stream.poll_interval * 10),
            lag_ready=config.metrics.lag_ready_seconds,
        )
        self.health.pair = pair_id(config)
        self.lock = PairLock(self.dsn, self.schema, config.target.connect_timeout)
        self.heartbeat = Heartbeat(self.schema)
        self.lagger = LagSampler(self.path)
        self.tail = LogTail(config, self.path, self.log)  # the log's next batch; pruning
        self.source: sqlite3.Connection | None = None
        self.guard: SourceGuard | None = None  # is the file still the one opened?
        self.conn: Connection | None = None
        self.formatter: Transformer | None = None  # COPY formatting on the read-ahead thread
        self.waker: Waker | None = None
        self.server: metrics.MetricsServer | None = None
        self.state = "starting"
        self.source_lost = False  # the file is not the one opened: never touch it again
        self.ready_sent = False
        self._prepared = False  # _prepare() completed on the current connection
        self._signals = 0
        self._stop_signal: str | None = None
        # What setup() plans (stream/setup.py), and how far the stream is.
        self.applier: Applier | None = None
        self.plans: list[TablePlan] = []
        self.specs: Specs = {}  # table -> its cursor, or None when triggers capture it
        self.cursors: CursorStream | None = None
        self.triggers = True  # some tables are captured by triggers
        self.position: StreamPosition | None = None
        # Schema drift (stream/drift.py): the schema we planned for, paused and
        # re-syncing tables, and what waits for the stream to pass the new triggers' start.
        self.watch = drift.Watch()
        self.writable = True  # the source takes triggers
        self.skip: dict[str, int] = {}  # table -> its log entries up to here are skipped
        self.resync: Reconciler | None = None
        self.drift_after = 0
        self.drift_snapshot: list[TablePlan] = []
        self.announced_paused: set[str] = set()
        self.announced_later: set[str] = set()

    # -- lifecycle ------------------------------------------------------------

    def request_stop(self, *_args: Any) -> None:
        self.stop.set()
        if self.waker is not None:
            self.waker.wake()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here: logging from a signal handler can deadlock on the
        # logger's lock when the signal lands while the loop is writing a line.
        self._signals += 1
        if self._signals > 1:
            # Safe: the position is only committed together with its data.
            os._exit(128 + signum)
        self._stop_signal = signal.Signals(signum).name
        self.request_stop()

    def run(self) -> int:
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if self.config.metrics.address:
            host, port = parse_address(self.config.metrics.address)
            self.server = metrics.MetricsServer(host, port, self.health).start()
            self.log.info("metrics_listening", address=f"{host}:{self.server.port}")
        self.waker = Waker(self.path, watch=self.config.stream.watch)
        self.log.info(
            "started",
            version=__version__,
            source=str(self.path),
            wake_mode=self.waker.mode,
            poll_interval_s=self.config.stream.poll_interval,
        )
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _loop(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: transient_kind(exc) is not None),
            # Not wait_exponential_jitter(initial=...): deprecated in tenacity 9
            # (a DeprecationWarning, an error under the test suite's filterwarnings),
            # and its replacement 'multiplier' does not exist in tenacity 8.
            wait=wait_exponential(multiplier=0.5, max=30.0) + wait_random(0, 0.5),
            stop=stop_when_event_set(self.stop),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        while not self.stop.is_set():
            try:
                for attempt in retrying:
                    with attempt:
                        if self.conn is None:
                            self._prepare()
                        self._step()
            except SnapshotInterrupted as stopped:
                self.log.info("snapshot_paused", table=str(stopped), reason="stop requested")
                break
            except StoppedBeforeLock:
                break
            except Exception as exc:
                if self.stop.is_set() and transient_kind(exc) is not None:
                    break  # asked to stop during an outage: nothing in hand to finish
                if isinstance(exc, sqlite3.Error):
                    check_source(self)  # a broken file says more than SQLite's error
                raise
            if self.errors.failures:
                self.health.note_error(None)
                metrics.UP.set(1)
                if self.state == "retrying":
                    self.state = "streaming"
            self.errors.recovered()

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)  # a stop request cuts the backoff short

    def _before_retry(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        assert exc is not None
        kind = transient_kind(exc) or "unknown"
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        metrics.RETRIES.labels(kind).inc()
        metrics.ERRORS.labels(kind).inc()
        metrics.UP.set(0)
        self.state = "retrying"
        self.health.tick(connected=False, lag_seconds=float("inf"), state="retrying")
        self.errors.failed(kind, exc, delay)
        self.health.note_error(self.errors.last_error, self.errors.failures)
        if kind != "sqlite_busy" or not self._prepared:
            # A busy source is no reason to reconnect to the target.
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None
        self._prepared = False

    def _prepare(self) -> None:
        """Connect, lock, plan, install triggers, record the position, snapshot."""
        if self.source is None:
            # Read-only (SQLite mode=ro) when every table is followed by a cursor.
            self.source, self.specs, readonly = open_for_capture(self.config)
            self.guard = SourceGuard(self.path)
            self.writable = self.tail.writable = not readonly
            self.tail.worker()
            self.log.info(
                "source_opened",
                readonly=readonly,
                cursor_tables=sum(1 for s in self.specs.values() if s is not None),
                trigger_tables=sum(1 for s in self.specs.values() if s is None),
            )
        self._acquire_lock()
        try:
            conn = connect(
                self.dsn, autocommit=True, connect_timeout=self.config.target.connect_timeout
            )
        except ConfigError as exc:
            # The lock's connection to this very target has just succeeded: the
            # server went away in between, which is worth a retry, not an exit.
            raise psycopg.OperationalError(str(exc)) from exc
        self.conn = conn
        # A Transformer of this connection (its adapters and encoding), for the
        # read-ahead thread's use only: it formats large upserts as COPY text.
        self.formatter = psycopg.adapt.Transformer(conn)
        ensure_state(conn, self.dsn, self.schema)
        self.watch.load(conn, self.schema)
        setup(self, startup=True)
        self._prepared = True

    def snapshot_chunk(self, table: str, read: int, _written: int, total: int) -> None:
        """Keep systemd's watchdog, the heartbeat and /healthz fed during a long copy."""
        self.notifier.watchdog()
        self.notifier.status(f"snapshot {table}: {read}/{total} rows")
        self.beat()
        self.health.tick(connected=True, lag_seconds=float("inf"), state="snapshot")
        if self.stop.is_set():
            raise SnapshotInterrupted(table)

    def _acquire_lock(self) -> None:
        if not self.lock.alive():
            try:
                self.lock.acquire(self.stop, standby=self.standby, waiting=self._standing_by)
            except LockHeldError:
                # Stopped at once (SIGTERM right after the start): a clean exit, not
                # "another replicator is running" (exit 6, which systemd never restarts).
                if self.stop.is_set() and not self.standby:
                    raise StoppedBeforeLock from None
                raise
            self.log.info("lock_acquired", key=self.lock.key)

    def _standing_by(self, holder: str) -> None:
        if self.state != "standby":
            self.log.info("standby", holder=holder)
            self.state = "standby"
        self.health.tick(connected=True, lag_seconds=float("inf"), state="standby")

    # -- the loop body ---------------------------------------------------------

    def _step(self) -> None:
        assert self.source is not None and self.conn is not None and self.applier is not None
        assert self.position is not None and self.waker is not None
        if not self.lock.alive():
            # The lock's session died: another replicator may have taken over.
            self._drop_connection()
            raise psycopg.OperationalError("lost the advisory-lock connection")
        if source_paused(self):
            return
        if self.watch.changed(self.source):
            self._schema_changed()
            return
        cfg = self.config.stream
        try:
            busy = self.cursors.step(self.source, self.conn) if self.cursors is not None else False
            changes, prepared = (
                self.tail.read_batch(
                    self.source,
                    self.position.seq,
                    self.watch.version,
                    self.applier,
                    self.skip,
                    self.formatter,
                )
                if self.triggers
                else ([], None)
            )
        except (changelog.SchemaChanged, sqlite3.OperationalError) as exc:
            # A cursor's read can fail first ("no such column") when the schema moves.
            if isinstance(exc, changelog.SchemaChanged) or self.watch.changed(self.source):
                self._schema_changed()
                return
            raise
        if changes and check_source(self) is not None:
            return  # the file turned suspect while we read: apply nothing from that read
        if changes:
            result = self.applier.apply(
                self.conn, changes, skip_through=self.skip, prepared=prepared
            )
            self.position = StreamPosition(result.last_seq, self.position.snapshot_seq)
            self.heartbeat.record(result, self.log)
            upserted = {table for (table, op), n in result.applied.items() if op == "upsert" and n}
            if upserted:
                healed = self.applier.retry_waiting_children(self.conn, self.source, upserted)
                if healed:
                    self.log.info("parent_arrived", rows=healed)
        busy = follow_drift(self) or busy
        now = time.monotonic()
        if self.lagger.due(now):
            self._sample_lag()
        self.tail.prune_if_due(self.position.seq, now)
        self.beat()
        self.notifier.watchdog()
        lag = self.lagger.lag
        if changes and len(changes) >= cfg.batch_max_changes // 2:
            # A full batch: a backlog. Still tick (or /healthz calls a busy loop stuck),
            # but never with a lag sampled before the backlog (ready while far behind):
            # what is pending is at most as old as the newest change just applied.
            lag = max(lag, time.time() - max(c.captured_at for c in changes))
        if self.watch.paused:
            lag = float("inf")  # a paused table is not followed: never ready for cutover
        self.health.tick(connected=True, lag_seconds=lag, state="streaming")
        if not changes and not busy and not self.stop.is_set():
            self.waker.wait(cfg.poll_interval)

    def _schema_changed(self) -> None:
        assert self.source is not None
        was = self.watch.version
        self.log.info("schema_changed", schema_version=was, now=schema_version(self.source))
        setup(self, startup=False)

    def _sample_lag(self) -> None:
        assert self.source is not None and self.position is not None
        try:
            self.lagger.sample(
                self.source,
                self.position.seq,
                self.plans,
                self.specs,
                self.cursors,
                triggers=self.triggers,
            )
        except SourceFileChanged as exc:
            raise lost(self, exc) from None

    def beat(self, *, force: bool = False) -> None:
        """The heartbeat row, every couple of seconds (or now, when ``force``)."""
        if self.conn is not None:
            tables = [p.source.name for p in self.plans]
            last_error = self.errors.last_error or None
            self.heartbeat.beat(self.conn, tables, self.state, last_error, force=force)

    def _shutdown(self) -> None:
        if self._stop_signal is not None:
            self.log.info("stopping", signal=self._stop_signal)
        self.notifier.stopping()
        metrics.UP.set(0)
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                heartbeat.mark_stopped(self.conn, self.schema)
        self._drop_connection()
        self.lock.release()
        if self.waker is not None:
            self.waker.close()
        if self.server is not None:
            self.server.stop()
        self.tail.close(release=abandon if self.source_lost else None)
        if self.source is not None:
            if self.source_lost:
                abandon(self.source)  # closing could write its stale WAL into the file
            else:
                self.source.close()
            self.source = None
        if self.guard is not None and not self.source_lost:
            self.guard.close()  # after the connection: closing it drops SQLite's locks
        self.log.info("stopped", position=self.position.seq if self.position else None)
