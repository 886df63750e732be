"""``replicator reverse run``: the loop that applies PostgreSQL's changes to SQLite.

Wait for a notification from the capture trigger (or the poll interval, or the
stop event); read a batch; apply it to SQLite with its position; delete it in
PostgreSQL. A SIGTERM finishes the batch in hand. SQLite busy / locked and
PostgreSQL connection failures are retried with capped, jittered exponential
backoff (tenacity); anything else stops the daemon with the error.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from types import FrameType
from typing import Any

import psycopg
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)

from replicator import metrics
from replicator.config import Config, parse_address
from replicator.errors import ConfigError, LockHeldError, SourceError
from replicator.logs import get_logger
from replicator.plan.reverse import build_reverse_plans
from replicator.reverse import position as rpos
from replicator.reverse.apply import ReverseApplier, ReverseBatch
from replicator.reverse.setup import plan_tables, require_captured, require_guarded_source
from replicator.source.sqlite import open_source
from replicator.state import reverse as state
from replicator.state.migrations import ensure_state
from replicator.target.connection import Connection, connect

__all__ = ["ReverseDaemon", "transient"]


def transient(exc: BaseException) -> str | None:
    """The kind of a failure worth retrying, or None."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "sqlite_busy" if "locked" in text or "busy" in text else None
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "connection"
    state_code = str(getattr(exc, "sqlstate", None) or "")
    if state_code in ("40001", "40P01", "57P01") or state_code.startswith("08"):
        return "connection"
    return None


class ReverseDaemon:
    def __init__(
        self,
        config: Config,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        once: bool = False,
        install_signals: bool = True,
        metrics_address: str = "",
    ) -> None:
        self.config = config
        self.schema = config.target.state_schema
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.once = once  # apply what is there, then return (tests, rollback's catch-up)
        self.install_signals = install_signals
        self.stop = threading.Event()
        self.log = get_logger(direction="reverse")
        self.conn: Connection | None = None
        self.source: sqlite3.Connection | None = None
        self.applier: ReverseApplier | None = None
        self.open_letters = 0
        self.connected_once = False
        # /metrics (the replicator_reverse_* series), /healthz and /readyz of this
        # process; its own address, since a forward daemon may hold the default one.
        self.metrics_address = metrics_address
        self.health = metrics.Health(
            stuck_after=max(60.0, poll_interval * 10),
            lag_ready=config.metrics.lag_ready_seconds,
        )
        self.server: metrics.MetricsServer | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(128 + signum)  # safe: the position commits with its data
        self.stop.set()

    def run(self) -> int:
        if self.install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if self.metrics_address:
            host, port = parse_address(self.metrics_address)
            try:
                self.server = metrics.MetricsServer(host, port, self.health).start()
            except OSError as exc:
                raise ConfigError(
                    f"--metrics-address {self.metrics_address} cannot be listened on: "
                    f"{exc.strerror or exc}"
                ) from None
            self.log.info("metrics_listening", address=f"{host}:{self.server.port}")
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: transient(exc) is not None),
            wait=wait_exponential(multiplier=0.5, max=30.0) + wait_random(0, 0.5),
            stop=stop_when_event_set(self.stop),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._run_once_connected()
        finally:
            self._close()
            if self.server is not None:
                self.server.stop()
        self.log.info("stopped")
        return 0

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def _before_retry(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        kind = transient(exc) if exc else None
        metrics.RETRIES.labels(kind=f"reverse_{kind}").inc()
        self.health.note_error(str(exc).splitlines()[0] if exc else None)
        self.health.tick(connected=False, lag_seconds=float("inf"), state="retrying")
        self.log.warning("retrying", kind=kind, error=str(exc).splitlines()[0] if exc else None)
        if kind == "connection":
            self._close()

    def _close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None
        if self.source is not None:
            self.source.close()
            self.source = None

    def _prepare(self) -> tuple[Connection, sqlite3.Connection, ReverseApplier]:
        if self.conn is not None and self.source is not None and self.applier is not None:
            return self.conn, self.source, self.applier
        self._close()
        try:
            conn = connect(
                self.config.require_target(),
                autocommit=True,
                connect_timeout=self.config.target.connect_timeout,
            )
        except ConfigError as exc:
            if not self.connected_once:
                raise  # a wrong URL at start: say so and exit, not retry forever
            # It connected before: the server is restarting or unreachable for a
            # while, which is worth a retry (with backoff), not an exit.
            raise psycopg.OperationalError(str(exc)) from exc
        self.connected_once = True
        self.conn = conn
        if not state.try_lock(conn, self.schema):
            raise LockHeldError(
                f"another reverse daemon holds the lock of state schema {self.schema!r}"
            )
        ensure_state(conn, self.config.require_target(), self.schema)
        source = open_source(
            self.config.require_source(), busy_timeout_ms=self.config.source.busy_timeout_ms
        )
        self.source = source
        # PostgreSQL enforced the foreign keys already, and its cascades arrive as
        # captured deletes of their own: SQLite must not refuse a batch's order nor
        # cascade a second time.
        source.execute("PRAGMA foreign_keys = OFF")
        require_guarded_source(source)
        with conn.cursor() as cur:
            if not state.captured_tables(cur):
                raise SourceError(
                    "no capture trigger in PostgreSQL: run `replicator reverse init` first"
                )
            self.open_letters = state.count_open_letters(cur, self.schema)
        plans = plan_tables(self.config, conn, source)
        with conn.cursor() as cur:
            require_captured(cur, self.schema, plans)
        applier = ReverseApplier(build_reverse_plans(source, plans), self.schema)
        applier.position = rpos.load(source)
        # The last batch committed before a stop or a crash: its changes may still
        # be in PostgreSQL. Deleting them before anything is read is what keeps
        # them from being applied twice.
        gone = applier.finish(conn)
        self.log.info(
            "started",
            tables=len(plans),
            position=str(applier.position),
            batches=applier.position.batches,
            finished_earlier_batch=gone,
        )
        state.listen(conn, self.schema)
        self.applier = applier
        return conn, source, applier

    def _run_once_connected(self) -> None:
        conn, source, applier = self._prepare()
        while not self.stop.is_set():
            changes = applier.read(conn, self.batch_size)
            if not changes:
                self._idle(conn)
                if self.once:
                    return
                continue
            batch = applier.apply(conn, source, changes)
            applier.finish(conn)
            self._after(conn, applier, batch)

    def _idle(self, conn: Connection) -> None:
        metrics.REVERSE_LAG_SECONDS.set(0)
        metrics.REVERSE_LAG_CHANGES.set(0)
        self.health.tick(connected=True, lag_seconds=0.0, state="streaming")
        if self.once:
            return
        # Woken by the trigger's notification at the next commit, or the poll.
        deadline = time.monotonic() + self.poll_interval
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in conn.notifies(timeout=min(left, 0.5), stop_after=1):
                return

    def _after(self, conn: Connection, applier: ReverseApplier, batch: ReverseBatch) -> None:
        now = time.time()
        metrics.REVERSE_BATCHES.inc()
        for table, count in batch.by_table.items():
            metrics.REVERSE_CHANGES_APPLIED.labels(table=table).inc(count)
        for letter in batch.letters:
            metrics.REVERSE_DEAD_LETTERS.labels(table=letter.table).inc()
        if batch.oldest_captured is not None:
            metrics.REVERSE_APPLY_LATENCY.observe(max(0.0, now - batch.oldest_captured))
        if batch.letters:
            self.open_letters += len(batch.letters)
            for letter in batch.letters:
                self.log.warning("reverse_dead_letter", reason=letter.describe())
        if self.open_letters:
            healed = applier.heal(conn, batch)
            self.open_letters = max(0, self.open_letters - healed)
        with conn.cursor() as cur:
            pending, oldest = state.depth(cur, self.schema)
        metrics.REVERSE_LAG_CHANGES.set(pending)
        lag = max(0.0, now - oldest.timestamp()) if oldest else 0.0
        metrics.REVERSE_LAG_SECONDS.set(lag)
        self.health.tick(connected=True, lag_seconds=lag, state="streaming")
        self.log.info(
            "reverse_batch",
            position=str(applier.position),
            batch_rows=batch.changes,
            written=sum(batch.written.values()),
            deleted=sum(batch.deleted.values()),
            dead_letters=len(batch.letters),
            seconds=round(batch.seconds, 4),
        )


def run_reverse(config: Config, **options: Any) -> int:
    return ReverseDaemon(config, **options).run()
