"""The initial copy: every table, chunk by chunk, resumable at any point.

Each chunk is read by primary key (keyset pagination) in its own short SQLite
read transaction, converted to the target types, and written to PostgreSQL in
one transaction together with the progress checkpoint. A process killed at any
moment (SIGKILL included) resumes after the last committed chunk: no row twice,
no row missed. Rows that cannot be written go to the dead-letter table.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from psycopg import sql

from replicator import metrics
from replicator.coerce import json_safe
from replicator.config import Config
from replicator.logs import get_logger, json_lines
from replicator.plan.copytext import CopyText, row_text_sql
from replicator.plan.ddl import (
    SCHEMA_REFUSALS,
    advance_sequences,
    create_table_sql,
    generated_sql,
    post_load_sql,
)
from replicator.plan.landing import schema_report
from replicator.plan.nullkeys import nullable_key, sync_null_keys
from replicator.plan.tables import TablePlan, build_plans, require_includes
from replicator.snapshot import indexes
from replicator.snapshot.chunks import ChunkWriter, Prefetcher, Rereader, TextPlan
from replicator.snapshot.jobs import ChunkHook, ChunkReport, TableJob
from replicator.snapshot.orphans import KEPT, name_source_orphans
from replicator.snapshot.parallel import copy_parallel
from replicator.snapshot.summary import ProgressDisplay, SnapshotSummary, TableResult
from replicator.source.reader import ChunkReader
from replicator.source.sqlite import list_tables, open_source, read_transaction, table_bytes
from replicator.state import checkpoint, deadletter
from replicator.state.checkpoint import PartProgress, SnapshotProgress
from replicator.state.migrations import ensure_state
from replicator.target.connection import Connection, connect, first_line

CREATED_TABLES_KEY = "created_tables"


class Snapshotter:
    """Copies the planned tables, resuming where the state schema says an earlier
    run stopped; ``on_chunk`` is told of every committed chunk (and may stop the
    copy by raising)."""

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
        # Of the current run_plans(): every plan, and the tables we created.
        self._plans: Sequence[TablePlan] = ()
        self._started = time.monotonic()  # of the current run_plans()
        self._created: set[str] = set()

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
            require_includes(list_tables(source), self.config.tables.include)
            ensure_state(conn, self.dsn, self.schema)
            plans = build_plans(source, conn, self.config, only=only)
            return self.run_plans(source, conn, plans, restart=restart)
        finally:
            conn.close()
            source.close()

    def run_plans(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plans: Sequence[TablePlan],
        *,
        restart: bool = False,
    ) -> SnapshotSummary:
        summary = SnapshotSummary()
        created = self.create_missing(conn, plans, summary)
        self._plans, self._created = plans, created
        with conn.cursor() as cur:
            if restart:
                checkpoint.reset_progress(cur, self.schema)
            progress = checkpoint.load_progress(cur, self.schema)
        try:
            todo = [p for p in plans if not self._done(progress.get(p.source.name))]
            metrics.declare_tables([p.source.name for p in plans])
            metrics.SNAPSHOT_TABLES_REMAINING.set(len(todo))
            self._started = time.monotonic()
            workers = self.config.snapshot.parallel_tables
            if workers <= 1 or not todo:
                for plan in plans:
                    summary.tables.append(
                        self.copy_table(source, conn, plan, progress.get(plan.source.name))
                    )
            else:
                results = copy_parallel(self, source, conn, plans, progress, workers)
                summary.tables.extend(results[p.source.name] for p in plans)
        finally:
            self.display.close()
        for table in summary.tables:  # pgloader's "bytes": what each table took at the source
            table.bytes = table_bytes(source, table.table)
        self.finish(source, conn, plans, created, summary)
        summary.schema = schema_report(plans, created, summary.refused)
        metrics.SNAPSHOT_TABLES_REMAINING.set(0)
        metrics.SNAPSHOT_DURATION.set(time.monotonic() - self._started)
        report = summary.to_json()
        if not json_lines():  # a person reads the table the command prints: totals here
            report = {"total": report["total"], "tables": len(summary.tables)}
        self.log.info("snapshot_summary", **report)
        return summary

    @staticmethod
    def _done(progress: SnapshotProgress | None) -> bool:
        return progress is not None and progress.done

    def create_missing(
        self, conn: Connection, plans: Sequence[TablePlan], summary: SnapshotSummary | None = None
    ) -> set[str]:
        """Create tables that do not exist yet, with their generated columns; return
        every table we ever created. A generated column PostgreSQL refuses is left
        out (it is not copied either) and reported in ``summary``."""
        with conn.transaction(), conn.cursor() as cur:
            kept = checkpoint.load_meta(cur, self.schema, CREATED_TABLES_KEY)
            created: set[str] = set(kept) if kept is not None else set()
            for plan in plans:
                if not plan.exists:
                    cur.execute(create_table_sql(plan))
                    for column, stmt in generated_sql(plan):
                        try:
                            with conn.transaction():  # a savepoint
                                cur.execute(stmt)
                        except SCHEMA_REFUSALS as exc:
                            self._refused(summary, plan, f"generated column {column}", exc)
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
            return TableResult.done_earlier(progress)
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
        reader = ChunkReader(source, plan)
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
            supersede = deadletter.count_open(cur, self.schema, "forward").get(name, 0) > 0
        progress = self._null_keys(source, conn, plan, progress)
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

    def _null_keys(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        progress: SnapshotProgress,
    ) -> SnapshotProgress:
        """Rows whose key holds NULL (no key range reaches them): each a dead letter,
        counted as read and dead-lettered with the table's progress."""
        if not nullable_key(plan):
            return progress
        with conn.transaction(), conn.cursor() as cur:
            synced = sync_null_keys(source, cur, self.schema, plan, "snapshot")
            if synced.recorded:
                progress = replace(
                    progress,
                    rows_read=progress.rows_read + synced.recorded,
                    dead_letters=progress.dead_letters + synced.recorded,
                )
                checkpoint.save_progress(cur, self.schema, progress)
        if synced.rows:
            self.log.warning(
                "null_key_rows",
                table=plan.source.name,
                rows=synced.rows,
                columns=list(nullable_key(plan)),
                reason="NULL in a primary-key column: dead-lettered, PostgreSQL cannot hold it",
            )
        return progress

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
    ) -> None:
        """Copy one key range of a table (the whole table when it is not split)."""
        job.begin()
        reader = ChunkReader(source, job.plan, check_json=True)
        reader.upper = part.key_to if part.key_to is not None else job.upper
        snap = self.config.snapshot
        again = Rereader(self.path, self.config.source.busy_timeout_ms, job.plan)
        text = self._text_plan(source, conn, job, again)
        prefetch = Prefetcher(
            reader, job.plan, part.after, snap.chunk_rows, snap.chunk_bytes, text=text
        )
        try:
            writer = ChunkWriter(conn, job, self.schema, stop=snap.on_error == "stop", text=text)
            writer.copy(part, prefetch, report)
        finally:
            prefetch.close()
            again.close()
        # (After the read-ahead thread is done with the source connection.)
        if name_source_orphans(source, conn, self.schema, job.plan):
            self.log.warning("source_orphans", table=job.name, reason=KEPT + " is not in SQLite")

    def _text_plan(
        self, source: sqlite3.Connection, conn: Connection, job: TableJob, again: Rereader
    ) -> TextPlan | None:
        """How to read this table's rows as COPY text (snapshot.sql_conversion), when
        they are copied straight into the empty table and every column has an SQLite
        expression; None: converted in Python."""
        if (
            not self.config.snapshot.sql_conversion
            or job.progress.method != "copy"
            or job.supersede  # (each chunk's keys are needed to supersede dead letters)
            or conn.info.encoding != "utf-8"
        ):
            return None
        row_sql = row_text_sql(job.plan, source)
        if row_sql is None:
            return None
        return TextPlan(row_sql, CopyText(job.plan), again)

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
        if not found or not found.done:  # copied in this run: one table fewer to go
            metrics.SNAPSHOT_TABLES_REMAINING.dec()
        metrics.SNAPSHOT_DURATION.set(time.monotonic() - self._started)
        indexes.rebuild_indexes(conn, self.schema, job.plan, self.on_chunk)
        if job.plan.name in self._created:
            indexes.build_indexes(conn, job.plan, self._plans)
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

    # -- secondary indexes left out of the copy (snapshot.defer_indexes) ---------

    def _refused(
        self, summary: SnapshotSummary | None, plan: TablePlan, what: str, exc: Exception
    ) -> None:
        msg = f"{plan.name}: {what} could not be completed: {first_line(exc)}"
        self.log.warning("post_load_failed", table=plan.name, what=what, error=msg)
        if summary is not None:
            summary.warnings.append(msg)
            summary.refused[(plan.name, what)] = first_line(exc)

    def defer_indexes(self, conn: Connection, plan: TablePlan) -> None:
        """Drop ``plan``'s plain secondary indexes, keeping their definitions in the
        state schema (see :mod:`replicator.snapshot.indexes`)."""
        indexes.defer_indexes(conn, self.schema, plan)

    def rebuild_deferred(self, conn: Connection) -> None:
        """Build every index still recorded as deferred, whatever table it is on.
        The daemon calls this before it streams."""
        indexes.rebuild_deferred(conn, self.schema, self.on_chunk)

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
                except SCHEMA_REFUSALS as exc:
                    self._refused(summary, plan, what, exc)
        # Fresh statistics, as pgloader does: until autovacuum gets there, the
        # planner would otherwise choose plans for empty tables.
        with conn.cursor() as cur:
            for plan in plans:
                cur.execute(sql.SQL("ANALYZE {}").format(plan.table))
        summary.sequences_set += advance_sequences(conn, source, plans)
