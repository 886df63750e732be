"""The initial copy: every table, chunk by chunk, resumable at any point.

Each chunk is read by primary key (keyset pagination) in its own short SQLite
read transaction, converted to the target types, and written to PostgreSQL in
one transaction together with the progress checkpoint. A process killed at any
moment (SIGKILL included) resumes after the last committed chunk: no row twice,
no row missed. Rows that cannot be written go to the dead-letter table.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import psycopg
from psycopg import sql

from replicator import checkpoint, deadletter, metrics, sink
from replicator.checkpoint import SnapshotProgress
from replicator.config import Config
from replicator.deadletter import DeadLetter, json_safe
from replicator.errors import CoercionError, ConfigError, DataError, SourceError
from replicator.identifiers import pg_ident, sqlite_ident
from replicator.logs import get_logger
from replicator.schema import (
    TablePlan,
    advance_sequences,
    build_plans,
    create_table_sql,
    post_load_sql,
)
from replicator.source.sqlite import ROWID, open_source, read_transaction
from replicator.state import current_revision, head_revision, migrate

RawRow = tuple[Any, ...]
FOREIGN_KEY_VIOLATION = "23503"
CREATED_TABLES_KEY = "created_tables"
DEFERRED_INDEXES_KEY = "deferred_indexes"  # + ":schema.table" -> [[index, definition]]

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


def row_image(plan: TablePlan, raw: RawRow) -> dict[str, Any]:
    """A JSON-safe picture of a source row for the dead-letter table."""
    return {col.source: json_safe(v) for col, v in zip(plan.columns, raw, strict=True)}


def convert_rows(
    plan: TablePlan, raw_rows: Sequence[RawRow], stage: str
) -> tuple[list[tuple[object, ...]], list[RawRow], list[DeadLetter]]:
    """Convert to target types; rows with a value that cannot be converted come back as
    dead letters. Returns (converted rows, their raw rows, dead letters)."""
    convs = [c.convert for c in plan.columns]
    good: list[tuple[object, ...]] = []
    good_raw: list[RawRow] = []
    dead: list[DeadLetter] = []
    keypos = plan.key_positions
    for raw in raw_rows:
        try:
            good.append(tuple([f(v) for f, v in zip(convs, raw, strict=True)]))
            good_raw.append(raw)
        except CoercionError:
            for col, f, v in zip(plan.columns, convs, raw, strict=True):
                try:
                    f(v)
                except CoercionError as exc:
                    dead.append(
                        DeadLetter(
                            table=plan.source.name,
                            key=tuple(raw[i] for i in keypos),
                            column=col.source,
                            raw_value=v,
                            error=exc.reason,
                            sqlstate=None,
                            stage=stage,
                            change=row_image(plan, raw),
                        )
                    )
                    break
    return good, good_raw, dead


def failures_to_letters(
    plan: TablePlan, raw_rows: Sequence[RawRow], failures: Sequence[sink.RowFailure], stage: str
) -> list[DeadLetter]:
    by_target = {c.target: (i, c.source) for i, c in enumerate(plan.columns)}
    keypos = plan.key_positions
    letters = []
    for f in failures:
        raw = raw_rows[f.index]
        column = None
        value: object = None
        if f.column and f.column in by_target:
            i, column = by_target[f.column]
            value = raw[i]
        letters.append(
            DeadLetter(
                table=plan.source.name,
                key=tuple(raw[i] for i in keypos),
                column=column,
                raw_value=value,
                error=f.error,
                sqlstate=f.sqlstate,
                stage=stage,
                change=row_image(plan, raw),
            )
        )
    return letters


def stop_on_first(letters: Sequence[DeadLetter]) -> None:
    if letters:
        first = letters[0]
        shown = repr(first.raw_value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        value = f" value {shown}" if first.column else ""
        raise DataError(f'{first.describe()}{value} (on_error = "stop")')


class ChunkReader:
    """Keyset pagination over one table, one short read transaction per chunk.

    ``upper`` (set by the snapshot to the largest key when a table's copy
    starts) bounds the pages: rows inserted later are the stream's to apply,
    and without the bound a table growing faster than it is copied would
    never finish.
    """

    def __init__(
        self, conn: sqlite3.Connection, plan: TablePlan, lenient: Callable[[], sqlite3.Connection]
    ):
        self.conn = conn
        self.lenient = lenient
        self.table = sqlite_ident(plan.source.name)
        self.keys = ", ".join(ROWID if k == ROWID else sqlite_ident(k) for k in plan.key)
        self.select = plan.source_select_list()
        self.count_sql = f"SELECT count(*) FROM {self.table}"
        descending = ", ".join(f"{ROWID if k == ROWID else sqlite_ident(k)} DESC" for k in plan.key)
        self.max_sql = f"SELECT {self.keys} FROM {self.table} ORDER BY {descending} LIMIT 1"
        self.upper: tuple[Any, ...] | None = None

    def count(self) -> int:
        return int(self.conn.execute(self.count_sql).fetchone()[0])

    def max_key(self) -> tuple[Any, ...] | None:
        row = self._fetch(self.max_sql, ())
        return tuple(row[0]) if row else None

    @staticmethod
    def _bind(key: tuple[Any, ...]) -> tuple[str, list[Any]]:
        """Placeholders and parameters for a key. A key read from text that is not
        valid UTF-8 (lone surrogates) cannot be bound as str: it is bound as its
        original bytes and cast back to TEXT, so it compares exactly as stored."""
        marks: list[str] = []
        params: list[Any] = []
        for value in key:
            if isinstance(value, str) and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    marks.append("CAST(? AS TEXT)")
                    params.append(value.encode("utf-8", "surrogateescape"))
                    continue
            marks.append("?")
            params.append(value)
        return ", ".join(marks), params

    def read(self, after: tuple[Any, ...] | None, limit: int) -> list[RawRow]:
        where: list[str] = []
        params: list[Any] = []
        if after is not None:
            marks, values = self._bind(after)
            where.append(f"({self.keys}) > ({marks})")
            params += values
        if self.upper is not None:
            marks, values = self._bind(self.upper)
            where.append(f"({self.keys}) <= ({marks})")
            params += values
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        query = f"SELECT {self.select} FROM {self.table}{clause} ORDER BY {self.keys} LIMIT ?"
        return self._fetch(query, (*params, limit))

    def _fetch(self, query: str, params: tuple[Any, ...]) -> list[RawRow]:
        try:
            with read_transaction(self.conn):
                return self.conn.execute(query, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise SourceError(f"reading the source failed: {exc}") from exc
        # Some text here is not valid UTF-8: re-read it keeping the bytes.
        lenient = self.lenient()
        with read_transaction(lenient):
            return lenient.execute(query, params).fetchall()


Converted = tuple[list[tuple[object, ...]], list[RawRow], list[DeadLetter]]
Chunk = tuple[list[RawRow], Converted]


class Prefetcher:
    """Reads and converts the next chunk in a thread while the current one is written.

    PostgreSQL parses, indexes and commits a chunk in its own process; without
    this the replicator would sit idle meanwhile, and PostgreSQL would sit idle
    while the next chunk is read and converted. One chunk ahead at most, so
    memory stays bounded.
    """

    def __init__(
        self, reader: ChunkReader, plan: TablePlan, after: tuple[Any, ...] | None, rows: int
    ) -> None:
        self.reader = reader
        self.plan = plan
        self.rows = rows
        self.queue: queue.Queue[Chunk | BaseException | None] = queue.Queue(maxsize=1)
        self.stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(after,), name=f"read:{plan.source.name}", daemon=True
        )
        self.thread.start()

    def _run(self, after: tuple[Any, ...] | None) -> None:
        keypos = self.plan.key_positions
        try:
            while not self.stopping.is_set():
                raw_rows = self.reader.read(after, self.rows)
                if not raw_rows:
                    self._put(None)
                    return
                self._put((raw_rows, convert_rows(self.plan, raw_rows, "snapshot")))
                after = tuple(raw_rows[-1][i] for i in keypos)
        except BaseException as exc:  # handed to the writing thread, raised there
            self._put(exc)

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


def ensure_state(conn: sink.Connection, dsn: str, schema: str) -> None:
    if current_revision(conn, schema) != head_revision():
        migrate(dsn, schema)


ChunkHook = Callable[[str, int, int, int], None]  # table, rows copied, rows written, total
# table, rows copied, rows written, total, when the table started, rows in the chunk
ChunkReport = Callable[[str, int, int, int, float, int], None]


class SnapshotStopped(Exception):
    """A parallel copy was told to stop (after the chunk it had just committed)."""


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
        conn = sink.connect(
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
        conn: sink.Connection,
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
        workers = min(self.config.snapshot.parallel_tables, len(todo))
        if workers <= 1:
            for plan in plans:
                summary.tables.append(
                    self.copy_table(source, conn, plan, progress.get(plan.source.name))
                )
        else:
            results = self._copy_parallel(plans, progress, workers)
            summary.tables.extend(results[p.source.name] for p in plans)
        self.finish(source, conn, plans, created, summary)
        return summary

    @staticmethod
    def _done(progress: SnapshotProgress | None) -> bool:
        return progress is not None and progress.done

    def _copy_parallel(
        self,
        plans: Sequence[TablePlan],
        progress: dict[str, SnapshotProgress],
        workers: int,
    ) -> dict[str, TableResult]:
        """Copy up to ``workers`` tables at once, each on connections of its own.

        This thread schedules, shows progress and calls ``on_chunk`` (which may
        stop the copy by raising); the workers only read, convert and write. A
        table whose target existed before waits for the tables its foreign keys
        point to (PostgreSQL checks them row by row); a table created by us gets
        its foreign keys after the load and waits for nothing.
        """
        names = {p.source.name for p in plans} | {p.name for p in plans}
        results: dict[str, TableResult] = {}
        finished: set[str] = set()
        waiting = list(plans)
        running: dict[str, Future[TableResult]] = {}
        events: queue.Queue[tuple[str, str, tuple[int, int, int, float, int]]] = queue.Queue()
        stop = threading.Event()

        def ready(plan: TablePlan) -> bool:
            if not plan.exists:
                return True
            return all(p in finished or p not in names for p in plan.parents)

        def run(plan: TablePlan) -> TableResult:
            try:
                return self._copy_on_own_connections(
                    plan, progress.get(plan.source.name), events, stop
                )
            finally:
                events.put((plan.source.name, "done", (0, 0, 0, 0.0, 0)))  # wakes the loop

        for plan in list(waiting):
            earlier = progress.get(plan.source.name)
            if earlier is not None and earlier.done:
                waiting.remove(plan)
                results[plan.source.name] = self._skipped(earlier)
                finished.update({plan.source.name, plan.name})
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshot")
        try:
            while waiting or running:
                for plan in list(waiting):
                    if len(running) < workers and ready(plan):
                        waiting.remove(plan)
                        running[plan.source.name] = pool.submit(run, plan)
                if not running:  # a cycle among existing tables: take them in plan order
                    plan = waiting.pop(0)
                    running[plan.source.name] = pool.submit(run, plan)
                name, kind, fig = events.get()
                if kind == "chunk":
                    read, written, total, started, rows = fig
                    self.display.chunk(name, read, total, started, rows)
                    if self.on_chunk is not None:
                        self.on_chunk(name, read, written, total)
                else:  # "done": the worker has returned or raised
                    result = running.pop(name).result()  # a worker's error is raised here
                    results[name] = result
                    finished.update({name, self._plan_named(plans, name).name})
                    self.display.table_done(name, result)
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

    def _copy_on_own_connections(
        self,
        plan: TablePlan,
        progress: SnapshotProgress | None,
        events: queue.Queue[tuple[str, str, tuple[int, int, int, float, int]]],
        stop: threading.Event,
    ) -> TableResult:
        source = open_source(
            self.path, readonly=True, busy_timeout_ms=self.config.source.busy_timeout_ms
        )
        try:
            conn = sink.connect(
                self.dsn, autocommit=True, connect_timeout=self.config.target.connect_timeout
            )
        except ConfigError as exc:
            source.close()
            # The main connection to this very target works: a server gone or full
            # for a moment, worth a retry by the daemon, not a configuration error.
            raise psycopg.OperationalError(str(exc)) from exc
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
            events.put((name, "chunk", (read, written, total, started, rows)))
            if stop.is_set():
                raise SnapshotStopped(name)

        try:
            return self.copy_table(
                source, conn, plan, progress, report=report, lenient=open_lenient, show=False
            )
        finally:
            conn.close()
            source.close()
            for c in lenient:
                c.close()

    def create_missing(self, conn: sink.Connection, plans: Sequence[TablePlan]) -> set[str]:
        """Create tables that do not exist yet; return every table we ever created."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT value FROM {} WHERE key = %s").format(
                    sql.Identifier(self.schema, "meta")
                ),
                (CREATED_TABLES_KEY,),
            )
            row = cur.fetchone()
            created: set[str] = set(row[0]) if row else set()
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
        conn: sink.Connection,
        plan: TablePlan,
        progress: SnapshotProgress | None,
        *,
        report: ChunkReport | None = None,
        lenient: Callable[[], sqlite3.Connection] | None = None,
        show: bool = True,
    ) -> TableResult:
        name = plan.source.name
        result = TableResult(table=name)
        if progress is not None and progress.done:
            return self._skipped(progress)
        reader = ChunkReader(source, plan, lenient or self._lenient_conn)
        writer = sink.TableWriter(plan)
        if progress is None:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(plan.table))
                row = cur.fetchone()
            method = "merge" if row and row[0] else "copy"
            progress = SnapshotProgress(table=name, last_key=None, method=method)
        with read_transaction(source):
            progress = replace(progress, rows_total=reader.count())
        reader.upper = reader.max_key()
        fresh = progress.last_key is None and not progress.rows_read
        if (
            fresh
            and progress.method == "copy"
            and plan.exists
            and self.config.snapshot.defer_indexes
        ):
            self.defer_indexes(conn, plan)
        write = writer.copy if progress.method == "copy" else writer.upsert
        columns = writer.column_names()
        chunk_rows = self.config.snapshot.chunk_rows
        started = time.monotonic()
        before = progress
        log = self.log.bind(table=name)
        with conn.cursor() as cur:
            # Open dead letters of this table (an earlier run, or the stream): a key
            # copied again gets a fresh verdict, so they are superseded, never doubled.
            supersede = deadletter.count_open(cur, self.schema).get(name, 0) > 0
        prefetch = Prefetcher(reader, plan, progress.last_key, chunk_rows)
        try:
            self._copy_chunks(
                conn,
                plan,
                prefetch,
                progress,
                write,
                columns,
                supersede,
                started,
                report or self._report,
            )
        finally:
            prefetch.close()
        with conn.cursor() as cur:
            found = checkpoint.load_progress(cur, self.schema).get(name)
        assert found is not None
        progress = found
        self.rebuild_indexes(conn, plan)
        if plan.name in self._created:
            self._build_indexes(conn, plan)
        result.rows_read = progress.rows_read
        result.rows_written = progress.rows_written
        result.dead_letters = progress.dead_letters
        result.seconds = time.monotonic() - started
        if before.rows_read:
            log.info("snapshot_resumed", from_rows=before.rows_read)
        if show:
            self.display.table_done(name, result)
        return result

    def _report(
        self, name: str, read: int, written: int, total: int, started: float, rows: int
    ) -> None:
        self.display.chunk(name, read, total, started, rows)
        if self.on_chunk is not None:
            self.on_chunk(name, read, written, total)

    def _copy_chunks(
        self,
        conn: sink.Connection,
        plan: TablePlan,
        prefetch: Prefetcher,
        progress: SnapshotProgress,
        write: Callable[[sink.Cursor, Sequence[tuple[object, ...]]], None],
        columns: Sequence[str],
        supersede: bool,
        started: float,
        report: ChunkReport,
    ) -> None:
        name = plan.source.name
        stop = self.config.snapshot.on_error == "stop"
        log = self.log.bind(table=name)
        while True:
            chunk = prefetch.get()
            if chunk is None:
                progress = replace(progress, done=True)
                metrics.SNAPSHOT_PROGRESS.labels(name).set(1.0)
                with conn.transaction(), conn.cursor() as cur:
                    checkpoint.save_progress(cur, self.schema, progress)
                return
            raw_rows, (good, good_raw, letters) = chunk
            if stop:
                stop_on_first(letters)
            keypos = plan.key_positions
            last_key = tuple(raw_rows[-1][i] for i in keypos)
            with conn.transaction():
                # The chunk and its checkpoint commit together or not at all either
                # way; not waiting for the WAL flush can only lose the newest chunks
                # in a server crash, and then their checkpoint with them: the next
                # run copies them again. (The stream's commits stay synchronous, and
                # its first one flushes every chunk before it.)
                conn.execute("SET LOCAL synchronous_commit = off")
                failures = sink.write_isolating(conn, good, write, columns)
                if failures:
                    failed = failures_to_letters(plan, good_raw, failures, "snapshot")
                    if stop:
                        stop_on_first(failed)
                    letters.extend(failed)
                with conn.cursor() as cur:
                    if supersede:
                        chunk_keys = [tuple(r[i] for i in keypos) for r in raw_rows]
                        deadletter.resolve_keys(
                            cur, self.schema, name, chunk_keys, "superseded by a new snapshot copy"
                        )
                    deadletter.record(cur, self.schema, letters)
                    progress = progress.advance(
                        last_key, len(raw_rows), len(good) - len(failures), len(letters)
                    )
                    checkpoint.save_progress(cur, self.schema, progress)
            for letter in letters:
                if letter.sqlstate == FOREIGN_KEY_VIOLATION:
                    # Usually a child whose parent was inserted after the parent
                    # table was copied: the stream replays both and heals it.
                    log.info("waiting_for_parent", stage="snapshot", reason=letter.describe())
                else:
                    log.warning("dead_letter", stage="snapshot", reason=letter.describe())
            metrics.ROWS_COPIED.labels(name).inc(len(good) - len(failures))
            if progress.rows_total:
                metrics.SNAPSHOT_PROGRESS.labels(name).set(
                    min(1.0, progress.rows_read / progress.rows_total)
                )
            report(
                name,
                progress.rows_read,
                progress.rows_written,
                progress.rows_total or 0,
                started,
                len(raw_rows),
            )

    # -- secondary indexes left out of the copy (snapshot.defer_indexes) ---------

    def _deferred_key(self, plan: TablePlan) -> str:
        return f"{DEFERRED_INDEXES_KEY}:{plan.schema}.{plan.name}"

    def defer_indexes(self, conn: sink.Connection, plan: TablePlan) -> None:
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

    def _build_indexes(self, conn: sink.Connection, plan: TablePlan) -> None:
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

    def rebuild_indexes(self, conn: sink.Connection, plan: TablePlan) -> None:
        """Build the indexes :meth:`defer_indexes` dropped from ``plan``'s table."""
        self._rebuild(conn, self._deferred_key(plan))

    def rebuild_deferred(self, conn: sink.Connection) -> None:
        """Build every index still recorded as deferred, whatever table it is on
        (a run killed between a table's last chunk and its rebuild, or a table
        no longer planned). The daemon calls this before it streams."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT key FROM {} WHERE key LIKE %s ORDER BY key").format(
                    pg_ident(self.schema, "meta")
                ),
                (f"{DEFERRED_INDEXES_KEY}:%",),
            )
            keys = [str(r[0]) for r in cur.fetchall()]
        for key in keys:
            self._rebuild(conn, key)

    def _rebuild(self, conn: sink.Connection, key: str) -> None:
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
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE key = %s").format(pg_ident(self.schema, "meta")),
                (key,),
            )
        self.log.info(
            "indexes_rebuilt",
            table=table,
            indexes=built,
            seconds=round(time.monotonic() - started, 3),
        )

    def finish(
        self,
        source: sqlite3.Connection,
        conn: sink.Connection,
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
                    msg = f"{plan.name}: {what} could not be completed: {sink.first_line(exc)}"
                    summary.warnings.append(msg)
                    self.log.warning("post_load_failed", table=plan.name, what=what, error=msg)
        # Fresh statistics, as pgloader does: until autovacuum gets there, the
        # planner would otherwise choose plans for empty tables.
        with conn.cursor() as cur:
            for plan in plans:
                cur.execute(sql.SQL("ANALYZE {}").format(plan.table))
        summary.sequences_set += advance_sequences(conn, source, plans)
