"""The daemon: init -> record the log position -> snapshot -> stream, forever.

The loop waits on any of: a file-change event on the SQLite file or its
``-wal`` (watchfiles), the poll interval, or the stop event. Signal handlers
only set the stop event; shutdown finishes the batch in hand and commits it
with its position. A second signal exits at once, which is still safe because
the position is only ever committed together with the data it covers.

A change of the source's schema is noticed on every loop and followed without
a restart where it can be (an added column, a new table); a table it cannot
follow alone is paused while the others stream on (replicator/drift.py).

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
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Transformer
from psycopg.types.json import Jsonb
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
from replicator.errors import ConfigError, LockHeldError, SourceError
from replicator.identifiers import pg_ident
from replicator.logs import get_logger
from replicator.plan.tables import TablePlan
from replicator.snapshot import Snapshotter
from replicator.source import changelog
from replicator.source.changelog import Change
from replicator.source.readahead import ReadAhead
from replicator.source.sqlite import (
    SourceFileChanged,
    SourceGuard,
    abandon,
    open_source,
    schema_version,
)
from replicator.state import checkpoint
from replicator.state.migrations import ensure_state
from replicator.stream import drift
from replicator.stream.apply import (
    Applier,
    BatchResult,
    Prepared,
    StreamPosition,
    init_position,
    load_position,
)
from replicator.stream.cursor import CursorStream, Specs, open_for_capture
from replicator.stream.reconcile import Reconciler
from replicator.stream.systemd import Notifier
from replicator.target.connection import Connection, connect, first_line, with_keepalives
from replicator.target.writer import TableWriter

RATE_WINDOW = 60.0  # seconds of history behind the per-table throughput in the heartbeat
PRUNE_LOCK_WAIT_MS = 50  # pruning waits this long for SQLite's write lock, then tries later

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
    if isinstance(exc, SourceError) and isinstance(exc.__cause__, sqlite3.OperationalError):
        # e.g. installing the triggers while the application holds the write lock
        return transient_kind(exc.__cause__)
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


def pair_id(config: Config) -> str:
    """Who a health endpoint answers for: the source file and the state schema.

    ``replicator status`` trusts a /healthz answer only when it carries its own
    pair's id, so another replicator on the same port is never taken for ours.
    """
    source = os.path.realpath(config.require_source())
    return hashlib.sha256(f"{source}\n{config.target.state_schema}".encode()).hexdigest()[:16]


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
        self.conn: Connection | None = None
        self.identity = f"replicator {socket.gethostname()} pid {os.getpid()}"

    def try_acquire(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(
                with_keepalives(self.dsn),
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
    """Rate-limited logging of repeated failures, and a 'recovered' line at the end.

    At most one ``retrying`` line per ``every`` seconds, whether the failures
    belong to one long outage or to many short ones (a flapping connection):
    an outage that began and ended between two lines gets no lines of its
    own, and is counted in the next line (``unlogged_outages`` and their
    ``unlogged_failures``). ``replicator_retries_total`` counts every retry.
    """

    def __init__(self, log: Any, every: float = 30.0) -> None:
        self.log = log
        self.every = every
        self.failures = 0  # in the current outage
        self.first_at = 0.0
        self._last_logged = float("-inf")
        self._outage_logged = False
        self._unlogged_outages = 0
        self._unlogged_failures = 0
        self.last_error = ""

    def failed(self, kind: str, exc: BaseException, delay: float) -> None:
        now = time.monotonic()
        self.failures += 1
        self.last_error = first_line(exc)
        if self.failures == 1:
            self.first_at = now
        if now - self._last_logged >= self.every:
            self._last_logged = now
            self._outage_logged = True
            earlier: dict[str, int] = {}
            if self._unlogged_outages:
                earlier = {
                    "unlogged_outages": self._unlogged_outages,
                    "unlogged_failures": self._unlogged_failures,
                }
                self._unlogged_outages = self._unlogged_failures = 0
            self.log.warning(
                "retrying",
                kind=kind,
                error=self.last_error,
                failures=self.failures,
                retry_in_s=round(delay, 2),
                **earlier,
            )

    def recovered(self) -> None:
        if self.failures:
            if self._outage_logged:
                self.log.info(
                    "recovered",
                    failures=self.failures,
                    seconds=round(time.monotonic() - self.first_at, 2),
                )
            else:
                self._unlogged_outages += 1
                self._unlogged_failures += self.failures
            self.failures = 0
            self._outage_logged = False
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
        self.health.pair = pair_id(config)
        self.source: sqlite3.Connection | None = None
        self.guard: SourceGuard | None = None  # is the file still the one opened?
        self.conn: Connection | None = None
        self._prepared = False  # _prepare() completed on the current connection
        self._source_lost = False  # the file is not the one opened: never touch it again
        self._prune_deferred = False
        self.lock = PairLock(self.dsn, self.schema, config.target.connect_timeout)
        self.applier: Applier | None = None
        self.plans: list[TablePlan] = []
        self.specs: Specs = {}  # table -> its cursor, or None when triggers capture it
        self.cursors: CursorStream | None = None
        self.triggers = True  # some tables are captured by triggers
        self.position: StreamPosition | None = None
        # The second thread: the next batch read ahead during a backlog, and pruning.
        self.readahead: ReadAhead | None = None
        self._pruning_upto = 0
        self._formatter: Transformer | None = None  # COPY formatting on that thread
        self.waker: Waker | None = None
        self.server: metrics.MetricsServer | None = None
        self._signals = 0
        self._stop_signal: str | None = None
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
        # Schema drift (replicator/drift.py): the schema we planned for, paused and
        # re-syncing tables, and what waits for the stream to pass the new triggers' start.
        self.watch = drift.Watch()
        self._writable = True  # the source takes triggers
        self.skip: dict[str, int] = {}  # table -> its log entries up to here are skipped
        self.resync: Reconciler | None = None
        self._drift_after = 0
        self._drift_snapshot: list[TablePlan] = []
        self._announced_paused: set[str] = set()
        self._announced_later: set[str] = set()

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
            except Exception as exc:
                if self.stop.is_set() and transient_kind(exc) is not None:
                    break  # asked to stop during an outage: nothing in hand to finish
                if isinstance(exc, sqlite3.Error):
                    self._check_source()  # a broken file says more than SQLite's error
                raise
            if self.errors.failures:
                self.health.note_error(None)
                metrics.UP.set(1)
                if self._state == "retrying":
                    self._state = "streaming"
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
            self._writable = not readonly
            self._worker()
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
        self._formatter = psycopg.adapt.Transformer(conn)
        ensure_state(conn, self.dsn, self.schema)
        self.watch.load(conn, self.schema)
        self._setup(startup=True)
        self._prepared = True

    def _setup(self, *, startup: bool) -> None:
        """Plan, install the triggers, build the appliers; at start-up also record the
        position and snapshot.

        A source schema change runs it again (``startup`` false): the tables the
        change touched are planned again, re-synced or paused (replicator/drift.py);
        the others keep their plans, and the stream its position.
        """
        assert self.source is not None and self.conn is not None
        source, conn = self.source, self.conn
        previous = {} if startup else {p.source.name: p for p in self.plans}
        while True:
            found = drift.survey(source, self.config)
            later = self._capture_new(found)
            decision = drift.decide(
                source,
                conn,
                self.config,
                found,
                self.watch,
                previous,
                cursor_tables=[n for n, s in self.specs.items() if s is not None],
                leave_out=later,
                startup=startup,
                go_ahead=startup and not self._ready_sent,  # not after a mere reconnect
            )
            trigger_plans = [p for p in decision.plans if self.specs.get(p.source.name) is None]
            installed: changelog.Installed | None = None
            try:
                if trigger_plans or (not startup and self.triggers):
                    installed = changelog.install_triggers(
                        source, [p.source for p in trigger_plans], expect_version=found.version
                    )
            except changelog.SchemaChanged:
                continue  # changed again while we planned: plan again
            break
        self.plans = decision.plans
        self.triggers = bool(trigger_plans)
        self.watch.version = installed.schema_version if installed else found.version
        if installed is not None:
            self.log.info("triggers_installed", tables=len(installed.tables))
        elif startup and changelog.installed_triggers(source):
            self.log.warning(
                "triggers_left_installed",
                reason="every table is followed by a cursor, but change-capture triggers of an "
                "earlier run still fill the change log: `replicator uninstall` removes them",
            )
        for name, columns in decision.added.items():
            metrics.SCHEMA_CHANGES.labels(name, "column_added").inc(len(columns))
            self.log.info("columns_added", table=name, columns=columns)
        if not startup:
            # A changed plan may have new columns: the session's staging tables go.
            for plan in self.plans:
                if previous.get(plan.source.name) is not plan:
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(TableWriter(plan).stage))
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
        self._hold(decision, installed.head if installed else 0, position.seq)
        fresh = [p for p in self.plans if p.source.name in decision.fresh]
        if fresh:
            # Created now (the stream may write to them at once), copied once the
            # stream has caught up with the new triggers (see _follow_drift).
            with conn.transaction(), conn.cursor() as cur:
                drift.forget_progress(cur, self.schema, [p.source.name for p in fresh])
            Snapshotter(self.config).create_missing(conn, fresh)
            for plan in fresh:
                metrics.SCHEMA_CHANGES.labels(plan.source.name, "table_added").inc()
                self.log.info("table_added", table=plan.source.name)
        if self.cursors is not None:
            # Like the log head above: recorded before the copy starts.
            self.cursors.record_start(self.source, conn, keep=decision.pause)
        if startup and (
            restart
            or not all(
                progress.get(p.source.name, None) and progress[p.source.name].done
                for p in self.plans
            )
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
        if startup:
            # Indexes a copy left out (snapshot.defer_indexes) and a killed run did
            # not get to build again: back before anything is streamed.
            Snapshotter(self.config, on_chunk=self._snapshot_chunk).rebuild_deferred(conn)
        applier = Applier(
            trigger_plans, self.schema, stop_on_error=self.config.snapshot.on_error == "stop"
        )
        applier.load_open_dead_letters(conn)
        applier.load_sequences(conn)
        self.applier = applier
        if self.cursors is not None:
            self.cursors.start(self.source, conn)
            assert self.cursors.reconciler is not None
            for name in decision.resync:
                if self.specs.get(name) is not None:
                    self.cursors.reconciler.request(name, "schema_changed")
        self._drift_snapshot = fresh
        self._drift_after = installed.head if installed else 0
        self.resync = None
        with conn.cursor() as cur:
            self.position = load_position(cur, self.schema)
        assert self.position is not None
        metrics.APPLIED_POSITION.set(self.position.seq)
        metrics.UP.set(1)
        self._state = "streaming"
        if self.watch.paused:  # not ready for a cutover from this moment on
            self.health.tick(connected=True, lag_seconds=float("inf"), state="streaming")
        # Publish the new state now: the throttled heartbeat would leave `status`
        # saying "snapshot" until the first batch (maybe a long backlog) is applied.
        self._heartbeat(force=True)
        if startup:
            self.log.info("streaming", position=self.position.seq, tables=len(self.plans))
        if not self._ready_sent:
            self.notifier.ready(f"streaming from position {self.position.seq}")
            self._ready_sent = True

    def _capture_new(self, found: drift.Survey) -> list[str]:
        """Capture of tables this run has not seen: triggers when the source takes them;
        the others are left for the next start (which picks their cursor). Returns those."""
        later = []
        for name in found.tables:
            if name in self.specs:
                continue
            tconf = self.config.table_config(name)
            mode = tconf.capture or self.config.capture.mode
            if mode == "auto":
                mode = "triggers" if self._writable else "cursor"
            if mode == "triggers" and self._writable and self.config.schema_drift.new_tables:
                self.specs[name] = None
            else:
                later.append(name)
        for name in later:
            if name not in self._announced_later:
                self._announced_later.add(name)
                self.log.info(
                    "table_left_for_restart",
                    table=name,
                    reason="schema_drift.new_tables is off"
                    if not self.config.schema_drift.new_tables
                    else "followed by a cursor: picked up at the next start",
                )
        return later

    def _hold(self, decision: drift.Decision, head: int, position: int) -> None:
        """Record paused and re-syncing tables, and the shapes the plans were made from."""
        assert self.conn is not None
        watch = self.watch
        holds: dict[str, drift.Hold] = {}
        for name, reason in decision.pause.items():
            old = watch.holds.get(name)
            if old is not None and old.state == "paused":
                holds[name] = replace(old, reason=reason)  # paused since then, maybe for more
                if name not in self._announced_paused or reason != old.reason:
                    self.log.warning("table_paused", table=name, reason=reason, since=old.position)
            else:
                holds[name] = drift.Hold(name, "paused", reason, position)
                metrics.SCHEMA_CHANGES.labels(name, "paused").inc()
                self.log.warning("table_paused", table=name, reason=reason, position=position)
            self._announced_paused.add(name)
            metrics.TABLE_PAUSED.labels(name).set(1)
        for name, reason in decision.resync.items():
            if self.specs.get(name) is None:
                holds[name] = drift.Hold(name, "resync", reason, head)
                metrics.SCHEMA_CHANGES.labels(name, "resync").inc()
                self.log.info("table_resync_planned", table=name, reason=reason, skip_through=head)
        for name in list(self._announced_paused):
            if name not in decision.pause:
                self._announced_paused.discard(name)
                metrics.TABLE_PAUSED.labels(name).set(0)
        for name in sorted(decision.forget):
            self.log.info("table_forgotten", table=name, reason="no longer in the source")
        shapes = {n: s for n, s in watch.shapes.items() if n in decision.pause}
        shapes.update({p.source.name: drift.Shape.of(p.source) for p in self.plans})
        with self.conn.transaction(), self.conn.cursor() as cur:
            watch.save(cur, self.schema, shapes, holds)
            drift.forget_progress(cur, self.schema, sorted(decision.forget))
        self.skip = watch.skip_through()

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
        if self._source_paused():
            return
        if self.watch.changed(self.source):
            self._schema_changed()
            return
        cfg = self.config.stream
        try:
            busy = self.cursors.step(self.source, self.conn) if self.cursors is not None else False
            changes, prepared = self._read_batch() if self.triggers else ([], None)
        except (changelog.SchemaChanged, sqlite3.OperationalError) as exc:
            # A cursor's read can fail first ("no such column") when the schema moves.
            if isinstance(exc, changelog.SchemaChanged) or self.watch.changed(self.source):
                self._schema_changed()
                return
            raise
        if changes and self._check_source() is not None:
            return  # the file turned suspect while we read: apply nothing from that read
        if changes:
            result = self.applier.apply(
                self.conn, changes, skip_through=self.skip, prepared=prepared
            )
            self.position = StreamPosition(result.last_seq, self.position.snapshot_seq)
            self._record(result)
            upserted = {table for (table, op), n in result.applied.items() if op == "upsert" and n}
            if upserted:
                healed = self.applier.retry_waiting_children(self.conn, self.source, upserted)
                if healed:
                    self.log.info("parent_arrived", rows=healed)
        busy = self._follow_drift() or busy
        now = time.monotonic()
        if now - self._last_lag >= self._lag_every:
            self._sample_lag()
        self._prune_done()
        due = now - self._last_prune >= 1.0 and self._pruned_upto < self.position.seq
        if due and self._writable and not self._worker().pruning():
            self._last_prune = now
            self._prune()
        self._heartbeat()
        self.notifier.watchdog()
        lag = self._lag
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

    def _read_batch(self) -> tuple[list[Change], Prepared | None]:
        """The next batch of the log, and its rows converted when that is done already:
        read ahead while the previous batch was applied (during a backlog), or read now."""
        assert self.source is not None and self.position is not None
        assert self.applier is not None
        cfg = self.config.stream
        version = self.watch.version
        context = (self.applier, dict(self.skip))
        found = None
        if self.readahead is not None:
            found = self.readahead.take(self.position.seq, version, context)
        if found is not None and found[0]:
            changes, prepared = found
        else:  # nothing read ahead, or it found the log's end: read what is there now
            changes = changelog.read_changes(
                self.source,
                self.position.seq,
                cfg.batch_max_changes,
                cfg.batch_max_bytes,
                schema_version=version,
            )
            prepared = None
        if changes and len(changes) >= cfg.batch_max_changes // 2:
            # A backlog: read and convert the next batch while this one is applied.
            applier, skip = self.applier, dict(self.skip)
            formatter = self._formatter
            self._worker().start(
                changes[-1].seq,
                version,
                context,
                lambda batch: applier.prepare(batch, skip, formatter=formatter),
            )
        return changes, prepared

    def _schema_changed(self) -> None:
        assert self.source is not None
        was = self.watch.version
        self.log.info("schema_changed", schema_version=was, now=schema_version(self.source))
        self._setup(startup=False)

    def _follow_drift(self) -> bool:
        """Once the stream has passed the start of the new triggers: copy tables new to
        this run, then re-sync the tables that need it, a few chunks per loop.
        True while such work remains (the loop does not sleep)."""
        assert self.source is not None and self.conn is not None and self.position is not None
        if not self._drift_snapshot and self.resync is None and not self.skip:
            return False
        if self.triggers and self.position.seq < self._drift_after:
            return True  # the log up to the new triggers first (parents before children)
        if self._drift_snapshot:
            plans, self._drift_snapshot = self._drift_snapshot, []
            summary = Snapshotter(self.config, on_chunk=self._snapshot_chunk).run_plans(
                self.source, self.conn, plans
            )
            self.health.tick(connected=True, lag_seconds=self._lag, state="streaming")
            for table in summary.tables:
                self.log.info("table_streaming", table=table.table, rows=table.rows_written)
        assert self.applier is not None
        pending = [n for n, h in self.watch.holds.items() if h.state == "resync"]
        unknown = [n for n in pending if n not in self.applier.plans]
        if unknown:  # never expected; released rather than waited for forever
            self.watch.release(self.conn, self.schema, unknown)
            pending = [n for n in pending if n not in unknown]
            self.skip = self.watch.skip_through()
        if self.resync is None and pending:
            capture = replace(self.config.capture, reconcile_checksums=True)
            self.resync = Reconciler(
                replace(self.config, capture=capture),
                list(self.applier.plans.values()),
                self.applier,
                {},
                last_completed=float("inf"),  # never a scheduled pass: only these tables
            )
            for name in pending:
                self.resync.request(name, "schema_drift")
        if self.resync is None:
            self.skip = {}
            return False
        if not self.resync.step(self.source, self.conn):
            return True
        passed = self.resync.last_summary
        assert passed is not None
        self.resync = None
        self.watch.release(self.conn, self.schema, list(passed.tables))
        for name, tally in passed.tables.items():
            self.log.info("table_resynced", table=name, deleted=tally.deleted, copied=tally.copied)
        self.skip = self.watch.skip_through()
        return bool(self.skip)

    def _prune(self) -> None:
        """Delete applied log rows, on the read-ahead thread, without ever making the
        application wait: when it holds SQLite's write lock, pruning waits a moment
        at most and is left for a later round (reads go on meanwhile: WAL readers
        are not blocked). Its outcome is collected by :meth:`_prune_done`."""
        assert self.position is not None
        upto, batch = self.position.seq, self.config.stream.prune_batch
        self._pruning_upto = upto
        self._worker().prune(lambda conn: changelog.prune(conn, upto, batch))

    def _prune_done(self) -> None:
        if self.readahead is None:
            return
        try:
            if self.readahead.pruned() is None:
                return  # still running, or none started
        except sqlite3.OperationalError as exc:
            if transient_kind(exc) != "sqlite_busy":
                raise
            if not self._prune_deferred:
                self.log.info(
                    "prune_deferred",
                    reason="the source's write lock is taken",
                    position=self._pruning_upto,
                )
            self._prune_deferred = True
            return
        self._pruned_upto = self._pruning_upto
        self._prune_deferred = False

    def _worker(self) -> ReadAhead:
        """The read-ahead and pruning thread. Its connections are opened here, on this
        thread, when the source is (so they are to the file the guard watches)."""
        if self.readahead is None:
            cfg = self.config
            reader = open_source(
                self.path, readonly=True, busy_timeout_ms=cfg.source.busy_timeout_ms
            )
            pruner = (
                open_source(self.path, busy_timeout_ms=PRUNE_LOCK_WAIT_MS)
                if self._writable
                else None
            )
            self.readahead = ReadAhead(
                lambda: reader,
                cfg.stream.batch_max_changes,
                cfg.stream.batch_max_bytes,
                pruner=(lambda: pruner) if pruner is not None else None,
            )
        return self.readahead

    def _lost(self, exc: SourceFileChanged) -> SourceFileChanged:
        """Log and record why the source is unusable; the caller raises it (exit 3)."""
        self.log.error("source_lost", kind=exc.kind, path=str(self.path), reason=str(exc))
        self._source_lost = True
        self.errors.last_error = str(exc)
        self._state = "failed"
        self.health.tick(connected=self.conn is not None, lag_seconds=float("inf"), state="failed")
        with contextlib.suppress(psycopg.Error):
            self._heartbeat(force=True)  # `replicator status` shows it as the last error
        return exc

    def _check_source(self) -> str | None:
        """Stop, with one clear sentence, when the source file is gone, replaced or
        truncated under our connection; a reason while a truncation is only suspected."""
        if self.guard is None:
            return None
        try:
            return self.guard.check()
        except SourceFileChanged as exc:
            raise self._lost(exc) from None

    def _source_paused(self) -> bool:
        """Pause (read and apply nothing) while the source file is suspect."""
        assert self.guard is not None and self.waker is not None
        suspicion = self._check_source()
        if suspicion is None:
            if self._state == "paused":
                self.log.info("source_ok", path=str(self.path))
                self._state = "streaming"
                self.errors.last_error = ""
            return False
        entering = self._state != "paused"
        if entering:
            self.log.warning(
                "source_suspect", path=str(self.path), reason=suspicion, grace_s=self.guard.grace
            )
            self._state = "paused"
        self.errors.last_error = f"source file suspect: {suspicion}"
        self.health.tick(connected=True, lag_seconds=self._lag, state="paused")
        self._heartbeat(force=entering)  # `status` shows the pause at once
        self.waker.wait(min(self.config.stream.poll_interval, 0.5))
        return True

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
        if head < self.position.seq:
            raise self._lost(
                SourceFileChanged(
                    "rewound",
                    f"the source database {self.path} has a change log that ends at {head}, "
                    f"before the {self.position.seq} already applied: it was restored or "
                    "replaced (or its change log removed) while being replicated; nothing from "
                    "it was applied: run `replicator verify --repair` before starting again",
                )
            )
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
        if self._stop_signal is not None:
            self.log.info("stopping", signal=self._stop_signal)
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
        if self.readahead is not None:
            self.readahead.close(release=abandon if self._source_lost else None)
            self.readahead = None
        if self.source is not None:
            if self._source_lost:
                abandon(self.source)  # closing could write its stale WAL into the file
            else:
                self.source.close()
            self.source = None
        if self.guard is not None and not self._source_lost:
            self.guard.close()  # after the connection: closing it drops SQLite's locks
        self.log.info("stopped", position=self.position.seq if self.position else None)
