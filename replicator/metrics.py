"""Prometheus metrics and the health endpoints, served on one loopback port.

Collectors are module-level and named ``replicator_*`` in base units;
counters end in ``_total``; labels are of low cardinality (``table``, ``op``,
``kind``). ``/healthz`` says the loop is alive (its last tick is recent);
``/readyz`` says it is connected and the lag is under the configured
threshold: the cutover signal.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from replicator import __version__

LAG_SECONDS = Gauge(
    "replicator_lag_seconds",
    "Age of the oldest change not yet applied (0 when caught up).",
    ["table"],
)
LAG_CHANGES = Gauge("replicator_lag_changes", "Changes captured but not yet applied.", ["table"])
CHANGES_APPLIED = Counter(
    "replicator_changes_applied_total", "Row changes applied to the target.", ["table", "op"]
)
ROWS_COPIED = Counter("replicator_rows_copied_total", "Rows copied by the snapshot.", ["table"])
BATCHES = Counter("replicator_batches_total", "Change batches committed to the target.")
BATCH_DURATION = Histogram(
    "replicator_batch_duration_seconds",
    "Time to apply one batch, read to commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "replicator_batch_size_changes",
    "Changes per applied batch.",
    buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
)
APPLY_LATENCY = Histogram(
    "replicator_apply_latency_seconds",
    "Source commit to applied in the target, per change.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DEAD_LETTERS = Counter(
    "replicator_dead_letters_total",
    "Rows sent to the dead-letter table, by the snapshot or the stream.",
    ["table"],
)
DEAD_LETTERS_OPEN = Gauge(
    "replicator_dead_letters_open",
    "Rows held in open dead letters now: not in the target as the source has them.",
    ["table"],
)
PHASE = Gauge(
    "replicator_phase",
    "1 for the phase the daemon is in (starting, snapshot, streaming, paused, retrying, "
    "standby, failed), 0 for the others.",
    ["phase"],
)
PHASES = ("starting", "snapshot", "streaming", "paused", "retrying", "standby", "failed")
SNAPSHOT_TABLES_REMAINING = Gauge(
    "replicator_snapshot_tables_remaining", "Tables the running snapshot has still to copy."
)
SNAPSHOT_DURATION = Gauge(
    "replicator_snapshot_duration_seconds",
    "Seconds the snapshot has run (the whole copy, once it is done).",
)
CHANGELOG_BYTES = Gauge(
    "replicator_changelog_bytes", "Bytes the change log takes in the source file (not pruned)."
)
ERRORS = Counter("replicator_errors_total", "Errors by kind.", ["kind"])
RETRIES = Counter("replicator_retries_total", "Retries of transient failures by kind.", ["kind"])
SNAPSHOT_PROGRESS = Gauge(
    "replicator_snapshot_progress_ratio", "Fraction of a table copied by the snapshot.", ["table"]
)
LAST_APPLIED = Gauge(
    "replicator_last_applied_timestamp_seconds",
    "Unix time of the last change applied to a table.",
    ["table"],
)
SOURCE_POSITION = Gauge("replicator_source_position", "Newest change-log position in the source.")
APPLIED_POSITION = Gauge(
    "replicator_applied_position", "Change-log position committed in the target."
)
CHANGELOG_DEPTH = Gauge(
    "replicator_changelog_depth", "Rows in the source change log (not yet pruned)."
)
UP = Gauge("replicator_up", "1 while the daemon runs and is connected to both databases.")
BUILD = Info("replicator_build", "Version of the running replicator.")
BUILD.info({"version": __version__})

# Schema drift: source schema changes followed, and tables paused by one.
TABLE_PAUSED = Gauge(
    "replicator_table_paused",
    "1 while a table's changes are not applied: paused by a schema change the replicator "
    "cannot follow alone (see `replicator status`).",
    ["table"],
)
SCHEMA_CHANGES = Counter(
    "replicator_schema_changes_total",
    "Source schema changes handled, by table and what was done "
    "(column_added, table_added, resync, paused).",
    ["table", "action"],
)

# Cursor capture and its reconciliation (tables with capture = "cursor").
CURSOR_ROWS = Counter(
    "replicator_cursor_rows_total",
    "Rows read by cursor polls, by how they were found (forward, lookback).",
    ["table", "found"],
)
CURSOR_NULL_ROWS = Gauge(
    "replicator_cursor_null_rows",
    "Rows whose cursor value is NULL or not a timestamp (the cursor cannot order them).",
    ["table"],
)
RECONCILE_INTERVAL = Gauge(
    "replicator_reconcile_interval_seconds", "Configured seconds between reconciliation passes."
)
RECONCILE_PASSES = Counter(
    "replicator_reconcile_passes_total", "Completed reconciliation passes.", ["table"]
)
RECONCILE_REQUESTS = Counter(
    "replicator_reconcile_requests_total",
    "Reconciliation passes asked for ahead of schedule, by reason.",
    ["table", "reason"],
)
RECONCILE_CHUNKS = Counter(
    "replicator_reconcile_chunks_total", "Key-range chunks compared.", ["table", "result"]
)
RECONCILE_ROWS = Counter(
    "replicator_reconcile_rows_total", "Source rows compared by reconciliation.", ["table"]
)
RECONCILE_REPAIRED = Counter(
    "replicator_reconcile_repaired_total",
    "Target rows reconciliation changed (deleted, copied).",
    ["table", "action"],
)
RECONCILE_SECONDS = Counter(
    "replicator_reconcile_seconds_total", "Time spent reconciling (its cost).", ["table"]
)
RECONCILE_LAST_PASS = Gauge(
    "replicator_reconcile_last_pass_seconds",
    "Working time of the last complete reconciliation pass.",
    ["table"],
)
RECONCILE_COMPLETED = Gauge(
    "replicator_reconcile_last_completed_timestamp_seconds",
    "Unix time the last reconciliation pass of a table completed.",
    ["table"],
)

# The reverse direction (PostgreSQL -> SQLite, after cutover): its own names, so
# that a dashboard never adds one direction's lag or throughput to the other's.
REVERSE_LAG_SECONDS = Gauge(
    "replicator_reverse_lag_seconds",
    "Age of the oldest change made in PostgreSQL not yet applied to SQLite (0 when none).",
)
REVERSE_LAG_CHANGES = Gauge(
    "replicator_reverse_lag_changes", "Changes captured in PostgreSQL not yet applied to SQLite."
)
REVERSE_CHANGES_APPLIED = Counter(
    "replicator_reverse_changes_applied_total",
    "Changes made in PostgreSQL and applied to SQLite.",
    ["table"],
)
REVERSE_BATCHES = Counter(
    "replicator_reverse_batches_total", "Reverse batches committed to the SQLite file."
)
REVERSE_DEAD_LETTERS = Counter(
    "replicator_reverse_dead_letters_total",
    "Rows SQLite refused in the reverse direction.",
    ["table"],
)
REVERSE_APPLY_LATENCY = Histogram(
    "replicator_reverse_apply_latency_seconds",
    "From a change's commit in PostgreSQL to its batch's commit in SQLite.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def declare_tables(tables: Sequence[str]) -> None:
    """Every per-table counter at 0 from the start: ``increase()`` then sees the first
    dead letter (a series that appears at 1 shows no increase at all)."""
    for table in tables:
        DEAD_LETTERS.labels(table)
        DEAD_LETTERS_OPEN.labels(table)
        ROWS_COPIED.labels(table)
        for op in ("upsert", "delete"):
            CHANGES_APPLIED.labels(table, op)


def set_open_dead_letters(tables: Sequence[str], open_by_table: Mapping[str, int]) -> None:
    for table in {*tables, *open_by_table}:
        DEAD_LETTERS_OPEN.labels(table).set(open_by_table.get(table, 0))


def _show_phase(state: str) -> None:
    for phase in PHASES:
        PHASE.labels(phase).set(1 if phase == state else 0)


class Health:
    """What the health endpoints report; updated by the daemon loop."""

    def __init__(self, stuck_after: float, lag_ready: float, held_ready: int = 0) -> None:
        self.stuck_after = stuck_after
        self.lag_ready = lag_ready
        self.held_ready = held_ready  # open dead letters /readyz tolerates
        self.held = 0  # rows in open dead letters, as last counted
        self.reconciled = True  # cursor tables have been through a reconciliation pass
        self.last_tick = time.monotonic()
        self.connected = False
        self.lag_seconds = float("inf")
        self.state = "starting"
        self.last_error: str | None = None
        self.failures = 0  # consecutive failed attempts, while retrying
        self.pair: str | None = None  # state.lock.pair_id(): whose health this is
        self._lock = threading.Lock()
        _show_phase(self.state)

    def tick(self, *, connected: bool, lag_seconds: float, state: str) -> None:
        with self._lock:
            self.last_tick = time.monotonic()
            self.connected = connected
            self.lag_seconds = lag_seconds
            changed, self.state = state != self.state, state
        if changed:  # ticks come every loop turn: the gauges move with the phase only
            _show_phase(state)

    def note_error(self, error: str | None, failures: int = 0) -> None:
        """The error the daemon is retrying (None once it has recovered): during an
        outage of the target this endpoint is the only place that can tell."""
        with self._lock:
            self.last_error = error
            self.failures = failures

    def note_held(self, held: int, *, reconciled: bool) -> None:
        """Rows held in dead letters, and whether cursor tables were reconciled yet:
        either keeps /readyz from calling the target ready for a cutover."""
        with self._lock:
            self.held = held
            self.reconciled = reconciled

    def live(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = time.monotonic() - self.last_tick
            body = {
                "state": self.state,
                "last_tick_age_s": round(age, 3),
                "pid": os.getpid(),
                "pair": self.pair,
                "last_error": self.last_error,
                "failures": self.failures,
            }
            return age < self.stuck_after, body

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok, body = self.live()
        with self._lock:
            body.update(
                connected=self.connected,
                lag_seconds=self.lag_seconds,
                held_rows=self.held,
                held_allowed=self.held_ready,
                reconciled=self.reconciled,
            )
            ready = ok and self.connected and self.lag_seconds <= self.lag_ready
            ready = ready and self.state == "streaming"
            ready = ready and self.held <= self.held_ready and self.reconciled
        return ready, body


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                check: Callable[[], tuple[bool, dict[str, Any]]] = (
                    health.live if path == "/healthz" else health.ready
                )
                ok, body = check()
                payload = json.dumps({"ok": ok, **body}, default=str).encode()
                self._send(200 if ok else 503, payload, "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # scrapes are not log events

    return Handler


class MetricsServer:
    def __init__(self, host: str, port: int, health: Health) -> None:
        self.server = ThreadingHTTPServer((host, port), _handler(health))
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
