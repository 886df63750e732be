"""The daemon: init -> record the log position -> snapshot -> stream, forever.

The loop waits on any of: a file-change event on the SQLite file or its
``-wal`` (watchfiles), the poll interval, or the stop event. Signal handlers
only set the stop event; shutdown finishes the batch in hand and commits it
with its position. A second signal exits at once, which is still safe because
the position is only ever committed together with the data it covers.

Transient PostgreSQL failures (connection lost, admin shutdown, too many
connections, serialization failure, deadlock, read-only during failover,
disk full) are retried with capped, jittered exponential backoff; the daemon
reconnects and resumes from the committed position. Only configuration and
schema problems, or a lost source file, end it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import threading
import time
from collections import Counter, deque
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from replicator import __version__, checkpoint, metrics, sink
from replicator.apply import Applier, BatchResult, StreamPosition, init_position, load_position
from replicator.config import Config, parse_address
from replicator.cursor_stream import CursorStream, Specs, open_for_capture
from replicator.errors import LockHeldError
from replicator.identifiers import pg_ident
from replicator.logs import get_logger
from replicator.schema import TablePlan, build_plans
from replicator.snapshot import Snapshotter, ensure_state
from replicator.source import changelog
from replicator.systemd import Notifier

RATE_WINDOW = 60.0  # seconds of history behind the per-table throughput in the heartbeat

# SQLSTATEs worth retrying, with the kind we count them under.
TRANSIENT_STATES = {
    "40001": "serialization_failure",
    "40P01": "deadlock",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "53300": "too_many_connections",
    "25006": "read_only",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "58030": "io_error",
}


def transient_kind(exc: BaseException) -> str | None:
    """The retry kind of a transient error, or None when retrying cannot help."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "sqlite_busy" if "locked" in text or "busy" in text else None
    if not isinstance(exc, psycopg.Error):
        return None
    state = getattr(exc, "sqlstate", None)
    if state in TRANSIENT_STATES:
        return TRANSIENT_STATES[state]
    if state and state.startswith("08"):
        return "connection"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and state is None:
        return "connection"  # dropped connection, refused connect
    return None


def lock_key(state_schema: str) -> int:
    """A signed 64-bit advisory-lock key, the same for every replicator of a state schema."""
    digest = hashlib.sha256(f"replicator:{state_schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SnapshotInterrupted(Exception):
    """A stop request during the snapshot: the committed chunks stay, resume later."""


class PairLock:
    """Exactly one active replicator per target state schema: a session advisory lock."""

    def __init__(self, dsn: str, state_schema: str, connect_timeout: int) -> None:
        self.dsn = dsn
        self.key = lock_key(state_schema)
        self.connect_timeout = connect_timeout
        self.conn: sink.Connection | None = None
        self.identity = f"replicator {socket.gethostname()} pid {os.getpid()}"

    def try_acquire(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=self.connect_timeout,
                application_name=self.identity,
            )
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        return bool(row and row[0])

    def holder(self) -> str:
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT a.application_name, a.client_addr::text, a.backend_start "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = ((%s::bigint >> 32) & 4294967295)::oid "
            "AND l.objid = (%s::bigint & 4294967295)::oid AND l.objsubid = 1",
            (self.key, self.key),
        ).fetchone()
        if not row:
            return "another replicator (it has just released the lock)"
        name, addr, since = row
        where = f" from {addr}" if addr else ""
        return f"{name}{where}, connected since {since:%Y-%m-%d %H:%M:%S %Z}"

    def alive(self) -> bool:
        if self.conn is None or self.conn.closed:
            return False
        try:
            self.conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def release(self) -> None:
        if self.conn is not None and not self.conn.closed:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
            self.conn.close()
        self.conn = None


class Waker:
    """Wakes the loop on file changes of the source (or every poll interval)."""

    def __init__(self, path: Path, *, watch: bool) -> None:
        self.event = threading.Event()
        self._stop = threading.Event()
        self.mode = "poll"
        self._thread: threading.Thread | None = None
        if watch:
            try:
                import watchfiles  # noqa: F401 - availability check
            except ImportError:  # pragma: no cover - a declared dependency
                return
            self.mode = "watch"
            names = {path.name, f"{path.name}-wal", f"{path.name}-journal"}
            self._thread = threading.Thread(
                target=self._watch, args=(path.parent, names), name="watch", daemon=True
            )
            self._thread.start()

    def _watch(self, folder: Path, names: set[str]) -> None:
        import watchfiles

        try:
            for _changes in watchfiles.watch(
                folder,
                watch_filter=lambda _change, p: os.path.basename(p) in names,
                debounce=20,
                step=1,
                stop_event=self._stop,
                recursive=False,
                raise_interrupt=False,
            ):
                self.event.set()
        except Exception:  # events stop (e.g. inotify limits): polling goes on
            self.mode = "poll"

    def wake(self) -> None:
        self.event.set()

    def wait(self, timeout: float) -> None:
        self.event.wait(timeout)
        self.event.clear()

    def close(self) -> None:
        self._stop.set()
        self.event.set()


class ErrorLog:
    """Rate-limited logging of repeated failures, and a 'recovered' line at the end."""

    def __init__(self, log: Any, every: float = 30.0) -> None:
        self.log = log
        self.every = every
        self.failures = 0
        self.first_at = 0.0
        self._last_logged = 0.0
        self.last_error = ""

    def failed(self, kind: str, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        self.failures += 1
        self.last_error = sink.first_line(exc)
        if self.failures == 1:
            self.first_at = now
        if self.failures == 1 or now - self._last_logged >= self.every:
            self._last_logged = now
            self.log.warning(
                "retrying",
                kind=kind,
                error=self.last_error,
                failures=self.failures,
                retry_in_s=round(delay, 2),
            )

    def recovered(self) -> None:
        if self.failures:
            self.log.info(
                "recovered",
                failures=self.failures,
                seconds=round(time.monotonic() - self.first_at, 2),
            )
            self.failures = 0
            self.last_error = ""


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
        self.source: sqlite3.Connection | None = None
        self.conn: sink.Connection | None = None
        self.lock = PairLock(self.dsn, self.schema, config.target.connect_timeout)
        self.applier: Applier | None = None
        self.plans: list[TablePlan] = []
        self.specs: Specs = {}  # table -> its cursor, or None when triggers capture it
        self.cursors: CursorStream | None = None
        self.triggers = True  # some tables are captured by triggers
        self.position: StreamPosition | None = None
        self.waker: Waker | None = None
        self.server: metrics.MetricsServer | None = None
        self._signals = 0
        self._last_prune = 0.0
        self._last_lag = 0.0
        self._lag_every = 1.0
        self._last_heartbeat = 0.0
        self._started_at = time.time()
        self._state = "starting"
        self._ready_sent = False
        self._pruned_upto = 0
        self._lag = float("inf")
        self._applied: Counter[str] = Counter()  # changes applied per table since start
        self._rate_window: deque[tuple[float, Counter[str]]] = deque()

    # -- lifecycle ------------------------------------------------------------

    def request_stop(self, *_args: Any) -> None:
        self.stop.set()
        if self.waker is not None:
            self.waker.wake()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # Safe: the position is only committed together with its data.
            os._exit(128 + signum)
        self.log.info("stopping", signal=signal.Signals(signum).name)
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
            except Exception as exc:
                if self.stop.is_set() and transient_kind(exc) is not None:
                    break  # asked to stop during an outage: nothing in hand to finish
                raise
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
        self._state = "retrying"
        self.health.tick(connected=False, lag_seconds=float("inf"), state="retrying")
        self.errors.failed(kind, exc, delay)
        self._drop_connection()

    def _drop_connection(self) -> None:
        if self.conn is not None:
            if self.applier is not None:
                self.applier.forget_connection(self.conn)
            if self.cursors is not None:
                self.cursors.forget_connection(self.conn)
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
        self.conn = None

    def _prepare(self) -> None:
        """Connect, lock, plan, install triggers, record the position, snapshot."""
        if self.source is None:
            # Read-only (SQLite mode=ro) when every table is followed by a cursor.
            self.source, self.specs, readonly = open_for_capture(self.config)
            self.log.info(
                "source_opened",
                readonly=readonly,
                cursor_tables=sum(1 for s in self.specs.values() if s is not None),
                trigger_tables=sum(1 for s in self.specs.values() if s is None),
            )
        self._acquire_lock()
        conn = sink.connect(
            self.dsn, autocommit=True, connect_timeout=self.config.target.connect_timeout
        )
        self.conn = conn
        ensure_state(conn, self.dsn, self.schema)
        self.plans = build_plans(self.source, conn, self.config)
        trigger_plans = [p for p in self.plans if self.specs.get(p.source.name) is None]
        self.triggers = bool(trigger_plans)
        if self.triggers:
            installed = changelog.install(self.source, [p.source for p in trigger_plans])
            self.log.info("triggers_installed", tables=len(installed))
        elif changelog.installed_triggers(self.source):
            self.log.warning(
                "triggers_left_installed",
                reason="every table is followed by a cursor, but change-capture triggers of an "
                "earlier run still fill the change log: `replicator uninstall` removes them",
            )
        cursors = CursorStream(self.config, self.plans, self.specs)
        self.cursors = cursors if cursors.tables else None
        with conn.cursor() as cur:
            position = load_position(cur, self.schema)
            progress = checkpoint.load_progress(cur, self.schema)
        restart = False
        if position is None:
            head = changelog.head_position(self.source) if self.triggers else 0
            if progress:
                # A snapshot taken without a recorded position cannot be streamed
                # from: copy again (upserting over what is there) from here.
                restart = True
                self.log.warning("snapshot_restarted", reason="no stream position was recorded")
            with conn.transaction(), conn.cursor() as cur:
                position = init_position(cur, self.schema, head)
            self.log.info("position_recorded", position=head)
        self.position = position
        if self.cursors is not None:
            # Like the log head above: recorded before the copy starts.
            self.cursors.record_start(self.source, conn)
        if restart or not all(
            progress.get(p.source.name, None) and progress[p.source.name].done for p in self.plans
        ):
            self._state = "snapshot"
            self.notifier.status("snapshot")
            self.health.tick(connected=True, lag_seconds=float("inf"), state="snapshot")
            self._heartbeat(force=True)
            summary = Snapshotter(self.config, on_chunk=self._snapshot_chunk).run_plans(
                self.source, conn, self.plans, restart=restart
            )
            self.log.info(
                "snapshot_done",
                rows=sum(t.rows_written for t in summary.tables),
                dead_letters=summary.dead_letters,
            )
        applier = Applier(
            trigger_plans, self.schema, stop_on_error=self.config.snapshot.on_error == "stop"
        )
        applier.load_open_dead_letters(conn)
        applier.load_sequences(conn)
        self.applier = applier
        if self.cursors is not None:
            self.cursors.start(self.source, conn)
        with conn.cursor() as cur:
            self.position = load_position(cur, self.schema)
        assert self.position is not None
        metrics.APPLIED_POSITION.set(self.position.seq)
        metrics.UP.set(1)
        self._state = "streaming"
        # Publish the new state now: the throttled heartbeat would leave `status`
        # saying "snapshot" until the first batch (maybe a long backlog) is applied.
        self._heartbeat(force=True)
        self.log.info("streaming", position=self.position.seq, tables=len(self.plans))
        if not self._ready_sent:
            self.notifier.ready(f"streaming from position {self.position.seq}")
            self._ready_sent = True

    def _snapshot_chunk(self, table: str, read: int, _written: int, total: int) -> None:
        """Keep systemd's watchdog, the heartbeat and /healthz fed during a long copy."""
        self.notifier.watchdog()
        self.notifier.status(f"snapshot {table}: {read}/{total} rows")
        self._heartbeat()
        self.health.tick(connected=True, lag_seconds=float("inf"), state="snapshot")
        if self.stop.is_set():
            raise SnapshotInterrupted(table)

    def _acquire_lock(self) -> None:
        if self.lock.alive():
            return
        announced = False
        while not self.stop.is_set():
            if self.lock.try_acquire():
                self.log.info("lock_acquired", key=self.lock.key)
                return
            holder = self.lock.holder()
            if not self.standby:
                self.lock.release()
                raise LockHeldError(
                    f"another replicator is already running for state schema {self.schema!r}: "
                    f"{holder} (use --standby to wait and take over when it stops)"
                )
            if not announced:
                self.log.info("standby", holder=holder)
                self._state = "standby"
                announced = True
            self.health.tick(connected=True, lag_seconds=float("inf"), state="standby")
            self.stop.wait(2.0)
        raise LockHeldError("stopped while waiting as a standby")

    # -- the loop body ---------------------------------------------------------

    def _step(self) -> None:
        assert self.source is not None and self.conn is not None and self.applier is not None
        assert self.position is not None and self.waker is not None
        if not self.lock.alive():
            # The lock's session died: another replicator may have taken over.
            self._drop_connection()
            raise psycopg.OperationalError("lost the advisory-lock connection")
        cfg = self.config.stream
        busy = self.cursors.step(self.source, self.conn) if self.cursors is not None else False
        changes = (
            changelog.read_changes(
                self.source, self.position.seq, cfg.batch_max_changes, cfg.batch_max_bytes
            )
            if self.triggers
            else []
        )
        if changes:
            result = self.applier.apply(self.conn, changes)
            self.position = StreamPosition(result.last_seq, self.position.snapshot_seq)
            self._record(result)
        now = time.monotonic()
        if now - self._last_lag >= self._lag_every:
            self._sample_lag()
        if now - self._last_prune >= 1.0 and self._pruned_upto < self.position.seq:
            self._last_prune = now
            self._pruned_upto = self.position.seq
            changelog.prune(self.source, self.position.seq, cfg.prune_batch)
        self._heartbeat()
        self.notifier.watchdog()
        lag = self._lag
        if changes and len(changes) >= cfg.batch_max_changes // 2:
            # A full batch: a backlog. Still tick (or /healthz calls a busy loop stuck),
            # but never with a lag sampled before the backlog (ready while far behind):
            # what is pending is at most as old as the newest change just applied.
            lag = max(lag, time.time() - max(c.captured_at for c in changes))
        self.health.tick(connected=True, lag_seconds=lag, state="streaming")
        if not changes and not busy and not self.stop.is_set():
            self.waker.wait(cfg.poll_interval)

    def _record(self, result: BatchResult) -> None:
        now = time.time()
        metrics.BATCHES.inc()
        metrics.BATCH_DURATION.observe(result.seconds)
        metrics.BATCH_SIZE.observe(result.changes)
        metrics.APPLIED_POSITION.set(result.last_seq)
        for (table, op), count in result.applied.items():
            self._applied[table] += count
            metrics.CHANGES_APPLIED.labels(table, op).inc(count)
            metrics.LAST_APPLIED.labels(table).set(now)
        for letter in result.dead_letters:
            metrics.DEAD_LETTERS.labels(letter.table).inc()
            self.log.warning(
                "dead_letter", stage="stream", position=letter.position, reason=letter.describe()
            )
        latency = max(0.0, now - result.newest_captured_at)
        metrics.APPLY_LATENCY.observe(latency)
        self.log.debug(
            "batch_applied",
            position=result.last_seq,
            changes=result.changes,
            rows=sum(result.applied.values()),
            ms=round(result.seconds * 1000, 2),
            replayed=result.replayed,
        )

    def _sample_lag(self) -> None:
        assert self.source is not None and self.position is not None
        if not self.triggers:
            self._lag = self.cursors.lag_seconds if self.cursors is not None else 0.0
            self._last_lag = time.monotonic()
            return
        started = time.monotonic()
        head = changelog.head_position(self.source)
        per_table = changelog.lag_by_table(self.source, self.position.seq)
        now = time.time()
        metrics.SOURCE_POSITION.set(head)
        metrics.CHANGELOG_DEPTH.set(changelog.log_rows(self.source))
        overall = 0.0
        for plan in self.plans:
            if self.specs.get(plan.source.name) is not None:
                continue  # a cursor table: its lag is the cursor stream's
            count, oldest = per_table.get(plan.source.name, (0, None))
            lag = max(0.0, now - oldest) if oldest is not None else 0.0
            overall = max(overall, lag)
            metrics.LAG_CHANGES.labels(plan.source.name).set(count)
            metrics.LAG_SECONDS.labels(plan.source.name).set(lag)
        self._lag = max(overall, self.cursors.lag_seconds if self.cursors is not None else 0.0)
        took = time.monotonic() - started
        self._last_lag = time.monotonic()
        # Keep the sampling cost under ~5% of the loop even with a big backlog.
        self._lag_every = max(1.0, took * 20)

    def _heartbeat(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.conn is None or (not force and now - self._last_heartbeat < 2.0):
            return
        self._last_heartbeat = now
        self._rate_window.append((now, Counter(self._applied)))
        while len(self._rate_window) > 2 and now - self._rate_window[1][0] >= RATE_WINDOW:
            self._rate_window.popleft()
        first_at, first = self._rate_window[0]
        span = now - first_at
        rates = {
            t: round((self._applied[t] - first[t]) / span, 2) if span > 0 else 0.0
            for t in (p.source.name for p in self.plans)
        }
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, host, pid, version, started_at, heartbeat_at, state,"
                " last_error, rates) VALUES (1, %s, %s, %s, to_timestamp(%s), now(), %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,"
                " version = EXCLUDED.version, started_at = EXCLUDED.started_at,"
                " heartbeat_at = now(), state = EXCLUDED.state, last_error = EXCLUDED.last_error,"
                " rates = EXCLUDED.rates,"
                " stopped_at = NULL"
            ).format(pg_ident(self.schema, "daemon")),
            (
                socket.gethostname(),
                os.getpid(),
                __version__,
                self._started_at,
                self._state,
                self.errors.last_error or None,
                Jsonb(rates),
            ),
        )

    def _shutdown(self) -> None:
        self.notifier.stopping()
        metrics.UP.set(0)
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.execute(
                    sql.SQL(
                        "UPDATE {} SET state = 'stopped', stopped_at = now()"
                        " WHERE id = 1 AND pid = %s"
                    ).format(pg_ident(self.schema, "daemon")),
                    (os.getpid(),),
                )
        self._drop_connection()
        self.lock.release()
        if self.waker is not None:
            self.waker.close()
        if self.server is not None:
            self.server.stop()
        if self.source is not None:
            self.source.close()
            self.source = None
        self.log.info("stopped", position=self.position.seq if self.position else None)
