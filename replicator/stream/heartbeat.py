"""What the running daemon tells the world: its heartbeat row, lag, and batch metrics.

The heartbeat row (state/heartbeat.py) is rewritten every couple of seconds
with the daemon's state and each table's throughput over the last minute;
``replicator status`` reads it. Lag is sampled from the change log (or the
cursors) at most every second, and less often when sampling itself is slow.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from replicator import metrics
from replicator.config import Config, parse_address
from replicator.errors import ConfigError
from replicator.plan.tables import TablePlan
from replicator.source import changelog
from replicator.source.sqlite import SourceFileChanged
from replicator.state import heartbeat
from replicator.stream.batch import BatchResult
from replicator.stream.cursor import CursorStream
from replicator.target.connection import Connection

RATE_WINDOW = 60.0  # seconds of history behind the per-table throughput in the heartbeat
BEAT_EVERY = 2.0  # seconds between heartbeat rows (unless forced)


class Heartbeat:
    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.started_at = time.time()
        self.applied: Counter[str] = Counter()  # changes applied per table since start
        self._window: deque[tuple[float, Counter[str]]] = deque()
        self._last = 0.0

    def beat(
        self,
        conn: Connection,
        tables: Iterable[str],
        state: str,
        last_error: str | None,
        *,
        force: bool = False,
    ) -> bool:
        """Write the heartbeat row when it is due (or ``force``); True when written."""
        now = time.monotonic()
        if not force and now - self._last < BEAT_EVERY:
            return False
        self._last = now
        self._window.append((now, Counter(self.applied)))
        while len(self._window) > 2 and now - self._window[1][0] >= RATE_WINDOW:
            self._window.popleft()
        first_at, first = self._window[0]
        span = now - first_at
        rates = {
            t: round((self.applied[t] - first[t]) / span, 2) if span > 0 else 0.0 for t in tables
        }
        heartbeat.beat(
            conn,
            self.schema,
            started_at=self.started_at,
            state=state,
            last_error=last_error,
            rates=rates,
        )
        return True

    def record(self, result: BatchResult, log: Any) -> None:
        """A committed batch: its metrics, its dead letters logged, its counts kept."""
        now = time.time()
        metrics.BATCHES.inc()
        metrics.BATCH_DURATION.observe(result.seconds)
        metrics.BATCH_SIZE.observe(result.changes)
        metrics.APPLIED_POSITION.set(result.last_seq)
        for (table, op), count in result.applied.items():
            self.applied[table] += count
            metrics.CHANGES_APPLIED.labels(table, op).inc(count)
            metrics.LAST_APPLIED.labels(table).set(now)
        for letter in result.dead_letters:
            metrics.DEAD_LETTERS.labels(letter.table).inc()
            log.warning(
                "dead_letter", stage="stream", position=letter.position, reason=letter.describe()
            )
        if result.null_key_letters:
            log.warning(
                "null_key_rows",
                stage="stream",
                position=result.last_seq,
                letters=result.null_key_letters,
                reason="rows whose primary key holds NULL, dead-lettered: PostgreSQL cannot",
            )
        latency = max(0.0, now - result.newest_captured_at)
        metrics.APPLY_LATENCY.observe(latency)
        log.debug(
            "batch_applied",
            position=result.last_seq,
            changes=result.changes,
            rows=sum(result.applied.values()),
            ms=round(result.seconds * 1000, 2),
            replayed=result.replayed,
        )


class LagSampler:
    """The oldest unapplied change's age, per table and overall, into the metrics."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lag = float("inf")  # seconds; infinite until first sampled
        self._last = 0.0
        self._every = 1.0

    def due(self, now: float) -> bool:
        return now - self._last >= self._every

    def sample(
        self,
        source: sqlite3.Connection,
        position: int,
        plans: Sequence[TablePlan],
        specs: Mapping[str, object],
        cursors: CursorStream | None,
        *,
        triggers: bool,
    ) -> float:
        """Raises :class:`SourceFileChanged` when the log ends before ``position``."""
        if not triggers:
            self.lag = cursors.lag_seconds if cursors is not None else 0.0
            self._last = time.monotonic()
            return self.lag
        started = time.monotonic()
        head = changelog.head_position(source)
        if head < position:
            raise SourceFileChanged(
                "rewound",
                f"the source database {self.path} has a change log that ends at {head}, "
                f"before the {position} already applied: it was restored or "
                "replaced (or its change log removed) while being replicated; nothing from "
                "it was applied: run `replicator verify --repair` before starting again",
            )
        per_table = changelog.lag_by_table(source, position)
        now = time.time()
        metrics.SOURCE_POSITION.set(head)
        metrics.CHANGELOG_DEPTH.set(changelog.log_rows(source))
        if (size := changelog.log_bytes(source)) is not None:
            metrics.CHANGELOG_BYTES.set(size)
        overall = 0.0
        for plan in plans:
            if specs.get(plan.source.name) is not None:
                continue  # a cursor table: its lag is the cursor stream's
            count, oldest = per_table.get(plan.source.name, (0, None))
            lag = max(0.0, now - oldest) if oldest is not None else 0.0
            overall = max(overall, lag)
            metrics.LAG_CHANGES.labels(plan.source.name).set(count)
            metrics.LAG_SECONDS.labels(plan.source.name).set(lag)
        self.lag = max(overall, cursors.lag_seconds if cursors is not None else 0.0)
        took = time.monotonic() - started
        self._last = time.monotonic()
        # Keep the sampling cost under ~5% of the loop even with a big backlog.
        self._every = max(1.0, took * 20)
        return self.lag


def serve_metrics(config: Config, health: metrics.Health, log: Any) -> metrics.MetricsServer | None:
    """The metrics and health endpoints at ``metrics.address`` (None when it is empty)."""
    if not config.metrics.address:
        return None
    host, port = parse_address(config.metrics.address)
    try:
        server = metrics.MetricsServer(host, port, health).start()
    except OSError as exc:
        raise ConfigError(
            f"metrics.address {config.metrics.address} cannot be listened on: "
            f"{exc.strerror or exc} (another address, or an empty one to turn the "
            "metrics and health endpoints off)"
        ) from None
    log.info("metrics_listening", address=f"{host}:{server.port}")
    return server
