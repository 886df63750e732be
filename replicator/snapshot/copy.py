"""The initial copy: every table, chunk by chunk, resumable at any point.

Each chunk is read by primary key (keyset pagination) in its own short SQLite
read transaction, converted to the target types, and written to PostgreSQL in
one transaction together with the progress checkpoint. A process killed at any
moment (SIGKILL included) resumes after the last committed chunk: no row twice,
no row missed. Rows that cannot be written go to the dead-letter table.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TextIO

import psycopg
from psycopg import sql

from replicator import metrics
from replicator.config import Config
from replicator.errors import ConfigError, DataError
from replicator.identifiers import pg_ident
from replicator.logs import get_logger
from replicator.plan.rows import Converted, convert_rows, failures_to_letters
from replicator.plan.tables import (
    TablePlan,
    advance_sequences,
    build_plans,
    create_table_sql,
    post_load_sql,
)
from replicator.source.reader import ChunkReader, RawRow
from replicator.source.sqlite import open_source, read_transaction
from replicator.state import checkpoint, deadletter
from replicator.state.checkpoint import PartProgress, SnapshotProgress
from replicator.state.deadletter import DeadLetter, json_safe
from replicator.state.migrations import ensure_state
from replicator.target.connection import Connection, Cursor, connect, first_line
from replicator.target.writer import TableWriter, write_isolating

FOREIGN_KEY_VIOLATION = "23503"
CREATED_TABLES_KEY = "created_tables"
DEFERRED_INDEXES_KEY = "deferred_indexes"  # + ":schema.table" -> [[index, definition]]
CHUNK_ATTEMPTS = 5  # a chunk rolled back by a deadlock between two ranges is tried again
SIZE_SAMPLE = 64  # rows of a chunk whose size sets the next chunk's (snapshot.chunk_bytes)
DONE = -1  # WorkerEvent.part of a table's completion (its indexes built, its result given)

# Secondary indexes: not a primary key or unique index, not behind any constraint
# (exclusion constraints included), not a partition of a partitioned index, and
# on plain columns only: an expression or a predicate could fail on a value when
# the index is built after the load, where it would have refused that one row.
_SECONDARY_INDEXES_SQL = """
SELECT i.relname, pg_get_indexdef(x.indexrelid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %s AND t.relname = %s
  AND NOT x.indisprimary AND NOT x.indisunique AND x.indisvalid
  AND x.indexprs IS NULL AND x.indpred IS NULL
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)
  AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)
ORDER BY i.relname
"""


@dataclass
class TableResult:
    table: str
    rows_read: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    skipped: bool = False  # already complete from an earlier run


@dataclass
class SnapshotSummary:
    tables: list[TableResult] = field(default_factory=list)
    sequences_set: int = 0
    post_load: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def dead_letters(self) -> int:
        return sum(t.dead_letters for t in self.tables)

    def render(self) -> str:
        head = f"{'table':<28} {'read':>10} {'written':>10} {'dead':>6} {'seconds':>8}"
        lines = [head, "-" * len(head)]
        for t in self.tables:
            note = "  (done earlier)" if t.skipped else ""
            lines.append(
                f"{t.table[:28]:<28} {t.rows_read:>10} {t.rows_written:>10} "
                f"{t.dead_letters:>6} {t.seconds:>8.1f}{note}"
            )
        total_r = sum(t.rows_read for t in self.tables)
        total_w = sum(t.rows_written for t in self.tables)
        secs = sum(t.seconds for t in self.tables)
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<28} {total_r:>10} {total_w:>10} {self.dead_letters:>6} {secs:>8.1f}"
        )
        if self.dead_letters:
            lines.append(
                f"{self.dead_letters} row(s) went to the dead-letter table: "
                "see `replicator dead-letters list`."
            )
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


class ProgressDisplay:
    """A progress line per table on a terminal; structured log lines otherwise.

    While several tables are copied at once, the terminal line shows each of
    them side by side, and a table's own line is printed when it is done.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log = get_logger()
        self._active: dict[str, tuple[str, str]] = {}  # table -> its progress, long and short

    def chunk(self, table: str, done: int, total: int | None, started: float, rows: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done / elapsed
        if self.tty:
            pct = f"{100 * done / total:5.1f}%" if total else "   ? %"
            eta = (total - done) / rate if total and rate > 0 else 0.0
            self._active[table] = (
                f"{table[:28]:<28} {pct} {done:>10}/{total or '?':<10} "
                f"{rate:>9.0f} rows/s  ETA {eta:5.0f}s",
                f"{table[:16]} {pct.strip()} ETA {eta:.0f}s",
            )
            if len(self._active) == 1:
                line = self._active[table][0]
            else:
                line = " | ".join(short for _, short in self._active.values())
            self.stream.write(f"\r{line} \x1b[K")
            self.stream.flush()
        else:
            self.log.info(
                "snapshot_chunk",
                table=table,
                rows=rows,
                copied=done,
                total=total,
                rows_per_s=round(rate),
            )

    def table_done(self, table: str, result: TableResult) -> None:
        if self.tty:
            if self._active.pop(table, None) is not None or not result.skipped:
                rate = result.rows_read / result.seconds if result.seconds > 0 else 0.0
                self.stream.write(
                    f"\r{table[:28]:<28} done {result.rows_read:>10} rows "
                    f"{rate:>9.0f} rows/s  {result.seconds:6.1f}s \x1b[K\n"
                )
            self.stream.flush()
        self.log.info(
            "snapshot_table_done",
            table=table,
            rows_read=result.rows_read,
            rows_written=result.rows_written,
            dead_letters=result.dead_letters,
            seconds=round(result.seconds, 3),
        )


def stop_on_first(letters: Sequence[DeadLetter]) -> None:
    if letters:
        first = letters[0]
        shown = repr(first.raw_value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        value = f" value {shown}" if first.column else ""
        raise DataError(f'{first.describe()}{value} (on_error = "stop")')


Chunk = tuple[list[RawRow], Converted]


def _row_memory(row: RawRow) -> int:
    """Roughly the bytes Python holds for a row read from SQLite: the tuple, and each
    value's object (text counted by its length, as if it were ASCII)."""
    size = 56 + 8 * len(row)
    for v in row:
        if isinstance(v, str | bytes):
            size += 49 + len(v)
        elif v is not None:
            size += 32
    return size


class Prefetcher:
    """Reads and converts the next chunk in a thread while the current one is written.

    PostgreSQL parses, indexes and commits a chunk in its own process; without
    this the replicator would sit idle meanwhile, and PostgreSQL would sit idle
    while the next chunk is read and converted. One chunk ahead at most, so
    memory stays bounded: a chunk holds at most ``rows`` rows and, estimated from
    the rows read so far, about ``max_bytes`` of values (wide rows, fewer of them).
    """

    def __init__(
        self,
        reader: ChunkReader,
        plan: TablePlan,
        after: tuple[Any, ...] | None,
        rows: int,
        max_bytes: int = 0,
    ) -> None:
        self.reader = reader
        self.plan = plan
        self.rows = rows
        self.max_bytes = max_bytes
        self.queue: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(after,), name=f"read:{plan.source.name}", daemon=True
        )
        self.thread.start()

    def _run(self, after: tuple[Any, ...] | None) -> None:
        keypos = self.plan.key_positions
        # The first chunk, small, sizes the next ones.
        limit = min(self.rows, SIZE_SAMPLE * 4) if self.max_bytes else self.rows
        try:
            while not self.stopping.is_set():
                raw_rows, valid = self.reader.read_checked(after, limit)
                if not raw_rows:
                    self._put(None)
                    return
                if self.max_bytes:
                    limit = self._limit(raw_rows)
                self._put((raw_rows, convert_rows(self.plan, raw_rows, "snapshot", valid)))
                after = tuple(raw_rows[-1][i] for i in keypos)
        except BaseException as exc:  # handed to the writing thread, raised there
            self._put(exc)

    def _limit(self, rows: list[RawRow]) -> int:
        """Rows for the next chunk: ``max_bytes`` over the memory a row of this one
        takes as read (from a sample of its rows; about what Python holds for it)."""
        sample = rows[:: max(1, len(rows) // SIZE_SAMPLE)]
        size = sum(_row_memory(r) for r in sample)
        per_row = max(1.0, size / len(sample))
        return max(1, min(self.rows, int(self.max_bytes / per_row)))

    def _put(self, item: Chunk | BaseException | None) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self) -> Chunk | None:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            self.queue.get_nowait()
        self.thread.join(timeout=30)


ChunkHook = Callable[[str, int, int, int], None]  # table, rows copied, rows written, total
# table, rows copied, rows written, total, when the table started, rows in the chunk
ChunkReport = Callable[[str, int, int, int, float, int], None]


class SnapshotStopped(Exception):
    """A parallel copy was told to stop (after the chunk it had just committed)."""


class WorkerEvent(NamedTuple):
    """What a worker tells the thread that schedules: a chunk committed (``chunk``:
    rows read, written, total of the table, when it started, rows in the chunk), or,
    with ``chunk`` None, that its range (``part``) or the table (DONE) is finished."""

    table: str
    part: int
    chunk: tuple[int, int, int, float, int] | None = None


@dataclass(eq=False)
class TableJob:
    """One table's copy, shared by the workers that copy its ranges."""

    plan: TablePlan
    progress: SnapshotProgress  # its row in snapshot_progress (the sums, when split)
    parts: list[PartProgress]  # its key ranges; empty: one range, positioned in progress
    upper: tuple[Any, ...] | None  # the largest key when this run started the table
    supersede: bool  # open dead letters of the table: copied keys resolve them
    started: float = field(default_factory=time.monotonic)  # reset when its copy begins
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _read: int = field(init=False, repr=False)  # the table's rows so far, all ranges
    _written: int = field(init=False, repr=False)
    _begun: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self._read, self._written = self.progress.rows_read, self.progress.rows_written

    @property
    def name(self) -> str:
        return self.plan.source.name

    @property
    def split(self) -> bool:
        return bool(self.parts)

    def todo(self) -> list[PartProgress]:
        """The ranges still to copy."""
        if self.parts:
            return [p for p in self.parts if not p.done]
        return [PartProgress(self.name, 0, None, None, last_key=self.progress.last_key)]

    def estimate(self, part: PartProgress) -> int:
        """Rows left in ``part``, roughly (ranges are cut to hold about as many)."""
        total = self.progress.rows_total or 0
        if not self.parts:
            return max(0, total - self.progress.rows_read)
        return max(0, total // len(self.parts) - part.rows_read)

    def begin(self) -> None:
        """A range's copy begins: the table's clock starts with the first one."""
        with self.lock:
            if not self._begun:
                self._begun = True
                self.started = time.monotonic()

    def add(self, read: int, written: int) -> tuple[int, int, int]:
        """Count a committed chunk; the table's rows read and written so far, and its total."""
        with self.lock:
            self._read += read
            self._written += written
            return self._read, self._written, self.progress.rows_total or 0


class Snapshotter:
    def __init__(
        self,
        config: Config,
        *,
        display: ProgressDisplay | None = None,
        on_chunk: ChunkHook | None = None,
    ) -> None:
        self.config = config
        self.display = display or ProgressDisplay()
        self.on_chunk = on_chunk
        self.log = get_logger()
        self.schema = config.target.state_schema
        self.path = config.require_source()
        self.dsn = config.require_target()
        self._lenient: sqlite3.Connection | None = None
        # Of the current run_plans(): every plan, and the tables we created.
        self._plans: Sequence[TablePlan] = ()
        self._created: set[str] = set()

    def _lenient_conn(self) -> sqlite3.Connection:
        if self._lenient is None:
            self._lenient = open_source(
                self.path,
                readonly=True,
                busy_timeout_ms=self.config.source.busy_timeout_ms,
                lenient=True,
            )
        return self._lenient

    def run(self, *, restart: bool = False, only: Sequence[str] | None = None) -> SnapshotSummary:
        source = open_source(
            self.path,
            readonly=self.config.source.readonly,
            busy_timeout_ms=self.config.source.busy_timeout_ms,
        )
        conn = connect(
            self.dsn, autocommit=True, connect_timeout=self.config.target.connect_timeout
        )
        try:
            ensure_state(conn, self.dsn, self.schema)
            plans = build_plans(source, conn, self.config, only=only)
            return self.run_plans(source, conn, plans, restart=restart)
        finally:
            conn.close()
            source.close()
            if self._lenient is not None:
                self._lenient.close()
                self._lenient = None

    def run_plans(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plans: Sequence[TablePlan],
        *,
        restart: bool = False,
    ) -> SnapshotSummary:
        summary = SnapshotSummary()
        created = self.create_missing(conn, plans)
        self._plans, self._created = plans, created
        with conn.cursor() as cur:
            if restart:
                checkpoint.reset_progress(cur, self.schema)
            progress = checkpoint.load_progress(cur, self.schema)
        todo = [p for p in plans if not self._done(progress.get(p.source.name))]
        workers = self.config.snapshot.parallel_tables
        if workers <= 1 or not todo:
            for plan in plans:
                summary.tables.append(
                    self.copy_table(source, conn, plan, progress.get(plan.source.name))
                )
        else:
            results = self._copy_parallel(source, conn, plans, progress, workers)
            summary.tables.extend(results[p.source.name] for p in plans)
        self.finish(source, conn, plans, created, summary)
        return summary

    @staticmethod
    def _done(progress: SnapshotProgress | None) -> bool:
        return progress is not None and progress.done

    def _copy_parallel(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plans: Sequence[TablePlan],
        progress: dict[str, SnapshotProgress],
        workers: int,
    ) -> dict[str, TableResult]:
        """Copy up to ``workers`` tables, or key ranges of a large table, at once, each
        on connections of its own.

        This thread prepares each table (counts it, splits it), schedules, shows
        progress and calls ``on_chunk`` (which may stop the copy by raising); the
        workers only read, convert and write, and, once every range of a table is
        copied, one of them completes it (its indexes built). A table whose target
        existed before waits for the tables its foreign keys point to (PostgreSQL
        checks them row by row); a table created by us gets its foreign keys after
        the load and waits for nothing. Of the ranges ready to copy, the largest go
        first.
        """
        names = {p.source.name for p in plans} | {p.name for p in plans}
        results: dict[str, TableResult] = {}
        finished: set[str] = set()
        waiting = list(plans)
        pending: list[tuple[TableJob, PartProgress | None]] = []  # None: the table's completion
        running: dict[tuple[str, int], Future[TableResult | None]] = {}
        jobs: dict[str, TableJob] = {}
        left: dict[str, int] = {}  # ranges of a table not copied yet
        events: queue.Queue[WorkerEvent] = queue.Queue()
        stop = threading.Event()

        def ready(plan: TablePlan) -> bool:
            if not plan.exists:
                return True
            return all(p in finished or p not in names for p in plan.parents)

        def start(plan: TablePlan) -> None:
            job = self.prepare(source, conn, plan, progress.get(plan.source.name), ways=workers)
            todo = job.todo()
            jobs[job.name], left[job.name] = job, len(todo)
            pending.extend((job, part) for part in todo)
            if not todo:  # every range was copied by an earlier run
                pending.append((job, None))

        def order(item: tuple[TableJob, PartProgress | None]) -> tuple[int, int]:
            job, part = item
            return (0, 0) if part is None else (1, -job.estimate(part))

        def run(job: TableJob, part: PartProgress | None) -> TableResult | None:
            number = DONE if part is None else part.part
            try:
                if part is None:
                    return self._complete_on_own_connection(job)
                self._copy_on_own_connections(job, part, events, stop)
                return None
            finally:
                events.put(WorkerEvent(job.name, number))  # wakes the loop

        for plan in list(waiting):
            earlier = progress.get(plan.source.name)
            if earlier is not None and earlier.done:
                waiting.remove(plan)
                results[plan.source.name] = self._skipped(earlier)
                finished.update({plan.source.name, plan.name})
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot")
        try:
            while waiting or pending or running:
                # Tables are prepared (counted, cut) as connections free up, so that
                # the workers, and on_chunk, do not wait for all of them at once.
                for plan in [p for p in waiting if ready(p)]:
                    if len(pending) >= workers - len(running):
                        break
                    waiting.remove(plan)
                    start(plan)
                if waiting and not pending and not running:
                    # a cycle among existing tables: take them in plan order
                    start(waiting.pop(0))
                pending.sort(key=order)
                while pending and len(running) < workers:
                    job, part = pending.pop(0)
                    number = DONE if part is None else part.part
                    running[(job.name, number)] = pool.submit(run, job, part)
                event = events.get()
                if event.chunk is not None:
                    read, written, total, started, rows = event.chunk
                    self.display.chunk(event.table, read, total, started, rows)
                    if self.on_chunk is not None:
                        self.on_chunk(event.table, read, written, total)
                    continue
                # a worker has returned or raised; its error is raised here
                result = running.pop((event.table, event.part)).result()
                if event.part != DONE:
                    left[event.table] -= 1
                    if not left[event.table]:
                        pending.append((jobs[event.table], None))
                    continue
                assert result is not None
                results[event.table] = result
                finished.update({event.table, self._plan_named(plans, event.table).name})
                self.display.table_done(event.table, result)
        except BaseException:
            stop.set()  # the workers stop after the chunk in hand (committed or not)
            raise
        finally:
            pool.shutdown(wait=True)
        return results

    @staticmethod
    def _skipped(progress: SnapshotProgress) -> TableResult:
        """The result of a table an earlier run copied completely."""
        return TableResult(
            table=progress.table,
            rows_read=progress.rows_read,
            rows_written=progress.rows_written,
            dead_letters=progress.dead_letters,
            skipped=True,
        )

    @staticmethod
    def _plan_named(plans: Sequence[TablePlan], name: str) -> TablePlan:
        return next(p for p in plans if p.source.name == name)

    def _connect_worker(self) -> Connection:
        try:
            return connect(
                self.dsn, autocommit=True, connect_timeout=self.config.target.connect_timeout
            )
        except ConfigError as exc:
            # The main connection to this very target works: a server gone or full
            # for a moment, worth a retry by the daemon, not a configuration error.
            raise psycopg.OperationalError(str(exc)) from exc

    def _open_worker_connections(self) -> tuple[sqlite3.Connection, Connection]:
        source = open_source(
            self.path, readonly=True, busy_timeout_ms=self.config.source.busy_timeout_ms
        )
        try:
            return source, self._connect_worker()
        except BaseException:
            source.close()
            raise

    def _copy_on_own_connections(
        self,
        job: TableJob,
        part: PartProgress,
        events: queue.Queue[WorkerEvent],
        stop: threading.Event,
    ) -> None:
        source, conn = self._open_worker_connections()
        lenient: list[sqlite3.Connection] = []

        def open_lenient() -> sqlite3.Connection:
            if not lenient:
                lenient.append(
                    open_source(
                        self.path,
                        readonly=True,
                        busy_timeout_ms=self.config.source.busy_timeout_ms,
                        lenient=True,
                    )
                )
            return lenient[0]

        def report(
            name: str, read: int, written: int, total: int, started: float, rows: int
        ) -> None:
            events.put(WorkerEvent(name, part.part, (read, written, total, started, rows)))
            if stop.is_set():
                raise SnapshotStopped(name)

        try:
            self.copy_part(source, conn, job, part, report=report, lenient=open_lenient)
        finally:
            conn.close()
            source.close()
            for c in lenient:
                c.close()

    def _complete_on_own_connection(self, job: TableJob) -> TableResult:
        conn = self._connect_worker()
        try:
            return self.complete(conn, job, show=False)
        finally:
            conn.close()

    def create_missing(self, conn: Connection, plans: Sequence[TablePlan]) -> set[str]:
        """Create tables that do not exist yet; return every table we ever created."""
        with conn.transaction(), conn.cursor() as cur:
            kept = checkpoint.load_meta(cur, self.schema, CREATED_TABLES_KEY)
            created: set[str] = set(kept) if kept is not None else set()
            for plan in plans:
                if not plan.exists:
                    cur.execute(create_table_sql(plan))
                    created.add(plan.name)
                    self.log.info("table_created", table=plan.name, schema=plan.schema)
            checkpoint.save_meta(cur, self.schema, CREATED_TABLES_KEY, sorted(created))
        return created

    def copy_table(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        progress: SnapshotProgress | None,
    ) -> TableResult:
        """Copy one table on these connections, its ranges one after another."""
        if progress is not None and progress.done:
            return self._skipped(progress)
        job = self.prepare(source, conn, plan, progress, ways=1)
        for part in job.todo():
            self.copy_part(source, conn, job, part, report=self._report)
        return self.complete(conn, job, show=True)

    def prepare(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        progress: SnapshotProgress | None,
        *,
        ways: int,
    ) -> TableJob:
        """Count the table, decide copy or merge, split it into up to ``ways`` key
        ranges when it is large (a split is recorded, and kept by later runs), and
        set its secondary indexes aside when configured."""
        name = plan.source.name
        reader = ChunkReader(source, plan, self._lenient_conn)
        if progress is None:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(plan.table))
                row = cur.fetchone()
            method = "merge" if row and row[0] else "copy"
            progress = SnapshotProgress(table=name, last_key=None, method=method)
        with read_transaction(source):
            progress = replace(progress, rows_total=reader.count())
        upper = reader.max_key()
        fresh = progress.last_key is None and not progress.rows_read
        with conn.cursor() as cur:
            parts = checkpoint.load_parts(cur, self.schema, name)
            # Open dead letters of this table (an earlier run, or the stream): a key
            # copied again gets a fresh verdict, so they are superseded, never doubled.
            supersede = deadletter.count_open(cur, self.schema).get(name, 0) > 0
        if parts and not fresh:  # a split table resumed: its row gets today's count
            with conn.transaction(), conn.cursor() as cur:
                checkpoint.save_progress(cur, self.schema, progress)
        if not parts and fresh and not self._refers_to_itself(conn, plan):
            parts = self._split(reader, progress, upper, ways)
            if parts:
                with conn.transaction(), conn.cursor() as cur:
                    checkpoint.save_progress(cur, self.schema, progress)
                    checkpoint.create_parts(cur, self.schema, parts)
                self.log.info(
                    "snapshot_split",
                    table=name,
                    parts=len(parts),
                    bounds=[json_safe(list(p.key_to)) for p in parts if p.key_to is not None],
                )
        if (
            fresh
            and progress.method == "copy"
            and plan.exists
            and self.config.snapshot.defer_indexes
        ):
            self.defer_indexes(conn, plan)
        if progress.rows_read:
            self.log.info("snapshot_resumed", table=name, from_rows=progress.rows_read)
        return TableJob(plan, progress, parts, upper, supersede)

    @staticmethod
    def _refers_to_itself(conn: Connection, plan: TablePlan) -> bool:
        """Whether the target table has a foreign key to itself: PostgreSQL checks it
        row by row, and a row in one range may point at a row of another range not
        committed yet, so such a table is copied as one range, in key order."""
        with conn.cursor() as cur:
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f'"
                " AND conrelid = %s::regclass AND confrelid = conrelid)",
                (plan.table.as_string(conn),),
            )
            row = cur.fetchone()
        return bool(row and row[0])

    def _split(
        self,
        reader: ChunkReader,
        progress: SnapshotProgress,
        upper: tuple[Any, ...] | None,
        ways: int,
    ) -> list[PartProgress]:
        every = self.config.snapshot.split_rows
        total = progress.rows_total or 0
        if every <= 0 or ways < 2 or upper is None:
            return []
        n = min(ways, total // every)
        if n < 2:
            return []
        with read_transaction(reader.conn):
            bounds = reader.split_points(n, total, upper)
        if not bounds:
            return []
        edges: list[tuple[Any, ...] | None] = [None, *bounds, None]
        return [
            PartProgress(table=progress.table, part=i, key_from=edges[i], key_to=edges[i + 1])
            for i in range(len(edges) - 1)
        ]

    def copy_part(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        job: TableJob,
        part: PartProgress,
        *,
        report: ChunkReport,
        lenient: Callable[[], sqlite3.Connection] | None = None,
    ) -> None:
        """Copy one key range of a table (the whole table when it is not split)."""
        job.begin()
        reader = ChunkReader(source, job.plan, lenient or self._lenient_conn, check_json=True)
        reader.upper = part.key_to if part.key_to is not None else job.upper
        snap = self.config.snapshot
        prefetch = Prefetcher(reader, job.plan, part.after, snap.chunk_rows, snap.chunk_bytes)
        try:
            self._copy_chunks(conn, job, part, prefetch, report)
        finally:
            prefetch.close()

    def complete(self, conn: Connection, job: TableJob, *, show: bool) -> TableResult:
        """Once every range of a table is copied: mark it done, build the indexes
        set aside or left to after the load, and give its result."""
        job.begin()  # (when an earlier run copied every range)
        with conn.transaction(), conn.cursor() as cur:
            found = checkpoint.load_progress(cur, self.schema).get(job.name)
            progress = found if found is not None else job.progress
            if not progress.done:
                progress = replace(progress, done=True)
                checkpoint.save_progress(cur, self.schema, progress)
        metrics.SNAPSHOT_PROGRESS.labels(job.name).set(1.0)
        self.rebuild_indexes(conn, job.plan)
        if job.plan.name in self._created:
            self._build_indexes(conn, job.plan)
        result = TableResult(
            table=job.name,
            rows_read=progress.rows_read,
            rows_written=progress.rows_written,
            dead_letters=progress.dead_letters,
            seconds=time.monotonic() - job.started,
        )
        if show:
            self.display.table_done(job.name, result)
        return result

    def _report(
        self, name: str, read: int, written: int, total: int, started: float, rows: int
    ) -> None:
        self.display.chunk(name, read, total, started, rows)
        if self.on_chunk is not None:
            self.on_chunk(name, read, written, total)

    def _copy_chunks(
        self,
        conn: Connection,
        job: TableJob,
        part: PartProgress,
        prefetch: Prefetcher,
        report: ChunkReport,
    ) -> None:
        plan, name = job.plan, job.name
        stop = self.config.snapshot.on_error == "stop"
        log = self.log.bind(table=name)
        keypos = plan.key_positions
        write = TableWriter(plan)
        copy = write.copy if job.progress.method == "copy" else write.upsert
        columns = write.column_names()
        while True:
            chunk = prefetch.get()
            if chunk is None:
                if job.split:  # the table is done when every part is (complete())
                    with conn.transaction(), conn.cursor() as cur:
                        checkpoint.save_part(cur, self.schema, replace(part, done=True), (0, 0, 0))
                return
            raw_rows, (good, good_raw, found) = chunk
            if stop:
                stop_on_first(found)
            last_key = tuple(raw_rows[-1][i] for i in keypos)
            for attempt in itertools.count(1):
                letters = list(found)
                try:
                    written = self._commit_chunk(
                        conn, job, part, raw_rows, good, good_raw, letters, copy, columns, last_key
                    )
                    break
                except psycopg.errors.TransactionRollback as exc:
                    # Two ranges of one table can deadlock on a value both insert
                    # into a unique index: the chunk is rolled back whole, try again.
                    if attempt >= CHUNK_ATTEMPTS:
                        raise
                    log.info("chunk_retried", attempt=attempt, reason=first_line(exc))
                    time.sleep(0.05 * attempt)
            part = part.advance(last_key, len(raw_rows), written, len(letters))
            for letter in letters:
                if letter.sqlstate == FOREIGN_KEY_VIOLATION:
                    # Usually a child whose parent was inserted after the parent
                    # table was copied: the stream replays both and heals it.
                    log.info("waiting_for_parent", stage="snapshot", reason=letter.describe())
                else:
                    log.warning("dead_letter", stage="snapshot", reason=letter.describe())
            metrics.ROWS_COPIED.labels(name).inc(written)
            with job.lock:  # ranges of one table report in the order they count
                read, written_all, total = job.add(len(raw_rows), written)
                if total:
                    metrics.SNAPSHOT_PROGRESS.labels(name).set(min(1.0, read / total))
                report(name, read, written_all, total, job.started, len(raw_rows))

    def _commit_chunk(
        self,
        conn: Connection,
        job: TableJob,
        part: PartProgress,
        raw_rows: list[RawRow],
        good: list[tuple[object, ...]],
        good_raw: list[RawRow],
        letters: list[DeadLetter],
        write: Callable[[Cursor, Sequence[tuple[object, ...]]], None],
        columns: Sequence[str],
        last_key: tuple[Any, ...],
    ) -> int:
        """Write one chunk, its dead letters and its checkpoint in one transaction;
        ``letters`` gets the rows PostgreSQL refused. Returns the rows written."""
        plan, name, keypos = job.plan, job.name, job.plan.key_positions
        with conn.transaction():
            # The chunk and its checkpoint commit together or not at all either
            # way; not waiting for the WAL flush can only lose the newest chunks
            # in a server crash, and then their checkpoint with them: the next
            # run copies them again. (The stream's commits stay synchronous, and
            # its first one flushes every chunk before it.)
            conn.execute("SET LOCAL synchronous_commit = off")
            failures = write_isolating(conn, good, write, columns)
            if failures:
                failed = failures_to_letters(plan, good_raw, failures, "snapshot")
                if self.config.snapshot.on_error == "stop":
                    stop_on_first(failed)
                letters.extend(failed)
            written = len(good) - len(failures)
            with conn.cursor() as cur:
                if job.supersede:
                    chunk_keys = [tuple(r[i] for i in keypos) for r in raw_rows]
                    deadletter.resolve_keys(
                        cur, self.schema, name, chunk_keys, "superseded by a new snapshot copy"
                    )
                deadletter.record(cur, self.schema, letters)
                added = (len(raw_rows), written, len(letters))
                if job.split:
                    checkpoint.save_part(cur, self.schema, part.advance(last_key, *added), added)
                    advanced = None
                else:
                    advanced = job.progress.advance(last_key, *added)
                    checkpoint.save_progress(cur, self.schema, advanced)
        if advanced is not None:  # committed: the table's own position moves on
            job.progress = advanced
        return written

    # -- secondary indexes left out of the copy (snapshot.defer_indexes) ---------

    def _deferred_key(self, plan: TablePlan) -> str:
        return f"{DEFERRED_INDEXES_KEY}:{plan.schema}.{plan.name}"

    def defer_indexes(self, conn: Connection, plan: TablePlan) -> None:
        """Drop ``plan``'s plain secondary indexes, keeping their definitions in the
        state schema in the same transaction (added to any kept there already)."""
        key = self._deferred_key(plan)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_SECONDARY_INDEXES_SQL, (plan.schema, plan.name))
            found = [[str(r[0]), str(r[1])] for r in cur.fetchall()]
            if not found:
                return
            kept = checkpoint.load_meta(cur, self.schema, key)
            earlier = kept["indexes"] if isinstance(kept, dict) else []
            names = {i for i, _ in found}
            indexes = [x for x in earlier if x[0] not in names] + found
            checkpoint.save_meta(
                cur,
                self.schema,
                key,
                {"schema": plan.schema, "table": plan.name, "indexes": indexes},
            )
            for index, _definition in found:
                cur.execute(sql.SQL("DROP INDEX {}").format(pg_ident(plan.schema, index)))
        self.log.info("indexes_deferred", table=plan.name, indexes=sorted(names))

    def _build_indexes(self, conn: Connection, plan: TablePlan) -> None:
        """The secondary and UNIQUE indexes of a table we created, built as soon as it
        is copied (on the worker that copied it, while others copy on). Foreign keys
        wait for :meth:`finish`, which runs every post-load statement again (each is
        idempotent) and reports those that fail."""
        for what, stmt in post_load_sql(plan, self._plans):
            if not what.startswith("index "):
                continue
            try:
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(stmt)
            except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
                continue  # finish() tries again and reports it

    def rebuild_indexes(self, conn: Connection, plan: TablePlan) -> None:
        """Build the indexes :meth:`defer_indexes` dropped from ``plan``'s table."""
        self._rebuild(conn, self._deferred_key(plan))

    def rebuild_deferred(self, conn: Connection) -> None:
        """Build every index still recorded as deferred, whatever table it is on
        (a run killed between a table's last chunk and its rebuild, or a table
        no longer planned). The daemon calls this before it streams."""
        with conn.cursor() as cur:
            keys = checkpoint.meta_keys(cur, self.schema, f"{DEFERRED_INDEXES_KEY}:")
        for key in keys:
            self._rebuild(conn, key)

    def _rebuild(self, conn: Connection, key: str) -> None:
        with conn.cursor() as cur:
            kept = checkpoint.load_meta(cur, self.schema, key)
        if not isinstance(kept, dict):
            return
        schema, table = str(kept["schema"]), str(kept["table"])
        started = time.monotonic()
        built = []
        for index, definition in kept["indexes"]:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(
                    "SELECT to_regclass(%s) IS NULL", (pg_ident(schema, index).as_string(conn),)
                )
                missing = cur.fetchone()
                if missing and missing[0]:
                    cur.execute(definition)
                    built.append(index)
            if self.on_chunk is not None:  # keeps a daemon's watchdog and heartbeat fed
                self.on_chunk(table, 0, 0, 0)
        with conn.transaction(), conn.cursor() as cur:
            checkpoint.delete_meta(cur, self.schema, key)
        self.log.info(
            "indexes_rebuilt",
            table=table,
            indexes=built,
            seconds=round(time.monotonic() - started, 3),
        )

    def finish(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plans: Sequence[TablePlan],
        created: set[str],
        summary: SnapshotSummary,
    ) -> None:
        """Indexes left out of the copy; secondary indexes and foreign keys of created
        tables; then sequences."""
        # Normally rebuilt as each table's copy ends; these are from a run that died
        # in between (or a table not planned this time).
        self.rebuild_deferred(conn)
        for plan in plans:
            if plan.name not in created:
                continue
            for what, stmt in post_load_sql(plan, plans):
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.execute(stmt)
                    summary.post_load.append(f"{plan.name}: {what}")
                except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                    msg = f"{plan.name}: {what} could not be completed: {first_line(exc)}"
                    summary.warnings.append(msg)
                    self.log.warning("post_load_failed", table=plan.name, what=what, error=msg)
        # Fresh statistics, as pgloader does: until autovacuum gets there, the
        # planner would otherwise choose plans for empty tables.
        with conn.cursor() as cur:
            for plan in plans:
                cur.execute(sql.SQL("ANALYZE {}").format(plan.table))
        summary.sequences_set += advance_sequences(conn, source, plans)
