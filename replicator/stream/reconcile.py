"""Reconciliation of cursor tables: what a cursor cannot see, found periodically.

A cursor sees rows whose cursor value moves forward. Deletes, primary-key
changes, updates that leave the cursor column alone and rows committed later
than the look-back window are invisible to it. A reconciliation pass compares
source and target in primary-key chunks, the way ``replicator verify`` does
(the same chunk queries, the same canonical values and checksums), and
repairs through the stream's own apply path: rows the source no longer has
are deleted, rows missing or different in the target are copied again.

A pass runs in two phases so that foreign keys accept every step: first the
key sets of every table, children before parents, deleting what the source
no longer has; then the checksums, parents before children, copying what
differs. It is cut into steps of at most ``capture.reconcile_max_chunks``
chunks, interleaved with the stream, so the stream never waits for a whole
pass. Each chunk is one short SQLite read and one PostgreSQL transaction.

Rows with an open dead letter are not re-copied on every pass (they would only
fail again): they are retried once their source row has changed. Rows waiting
for their parent (23503) are the exception: a pass copies them again (once per
run while they keep failing), and the applier writes them when the parent
arrives (stream/waiting.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from replicator import metrics
from replicator.coerce import decode_key, json_key
from replicator.config import Config
from replicator.logs import get_logger
from replicator.plan.compare import (
    canonical,
    key_text,
    row_digest,
    source_key_text,
    source_row_map,
    target_chunk_queries,
    target_row_map,
)
from replicator.plan.nullkeys import nullable_key, sync_null_keys
from replicator.plan.rows import chunk_upper_key
from replicator.plan.tables import TablePlan
from replicator.source.changelog import Change
from replicator.source.cursor import CursorReader, to_change
from replicator.source.reader import ChunkReader
from replicator.source.sqlite import read_transaction
from replicator.state import checkpoint, deadletter
from replicator.state.deadletter import FOREIGN_KEY_VIOLATION
from replicator.stream.apply import Applier
from replicator.stream.batch import BatchResult
from replicator.target.connection import Connection, Cursor

Key = tuple[Any, ...]
RawRow = tuple[Any, ...]


@dataclass
class TableTally:
    """One table's share of a pass."""

    chunks: int = 0
    mismatched: int = 0
    rows: int = 0
    deleted: int = 0
    copied: int = 0
    skipped: int = 0  # differing rows left alone: open dead letter, source unchanged
    seconds: float = 0.0


@dataclass
class PassSummary:
    started_at: float
    tables: dict[str, TableTally] = field(default_factory=dict)
    reason: str = "scheduled"
    finished_at: float | None = None

    @property
    def repaired(self) -> int:
        return sum(t.deleted + t.copied for t in self.tables.values())


@dataclass
class _Chunk:
    raw_rows: list[RawRow]
    target_rows: list[tuple[Any, ...]]
    last_key: Key | None


@dataclass
class _Pass:
    summary: PassSummary
    steps: list[tuple[str, str]]  # (phase, table): "delete" children first, then "copy"
    index: int = 0
    chunks: Iterator[_Chunk] | None = None
    dead: dict[str, set[str]] = field(default_factory=dict)


def _raw_key_text(values: Sequence[Any]) -> str:
    return json.dumps(json_key(values), sort_keys=True, default=str)


class Reconciler:
    """Runs reconciliation passes over a set of cursor tables, a step at a time."""

    def __init__(
        self,
        config: Config,
        plans: Sequence[TablePlan],
        applier: Applier,
        readers: Mapping[str, CursorReader],
        *,
        last_completed: float | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.capture
        self.schema = config.target.state_schema
        self.plans = {p.source.name: p for p in plans}
        self.order = [p.source.name for p in plans]
        self.applier = applier
        self.readers = readers
        self.log = get_logger()
        self.requests: dict[str, str] = {}
        self.current: _Pass | None = None
        self.last_summary: PassSummary | None = None
        started = last_completed if last_completed is not None else time.time()
        self.next_due = started + self.cfg.reconcile_interval
        # (table, key text) -> hash of the source row we declined to re-copy.
        self._declined: dict[tuple[str, str], int] = {}
        metrics.RECONCILE_INTERVAL.set(self.cfg.reconcile_interval)

    # -- scheduling -----------------------------------------------------------------

    def request(self, table: str, reason: str) -> None:
        """Ask for a pass over ``table`` ahead of schedule (a cursor saw something)."""
        if table not in self.plans:
            return
        if table not in self.requests:
            metrics.RECONCILE_REQUESTS.labels(table, reason).inc()
            self.log.info("reconcile_requested", table=table, reason=reason)
        self.requests[table] = reason

    def due(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.current is not None or bool(self.requests) or now >= self.next_due

    def step(self, source: sqlite3.Connection, conn: Connection) -> bool:
        """Compare up to ``reconcile_max_chunks`` chunks; True when a pass finished."""
        if self.current is None:
            if not self.due():
                return False
            self._begin(conn)
        assert self.current is not None
        budget = self.cfg.reconcile_max_chunks or None
        done = 0
        while budget is None or done < budget:
            if not self._advance(source, conn):
                self._finish()
                return True
            done += 1
        return False

    def run_pass(
        self, source: sqlite3.Connection, conn: Connection, *, reason: str = "manual"
    ) -> PassSummary:
        """One complete pass over every table, now (tests, and a start-up check)."""
        for table in self.order:
            self.requests.setdefault(table, reason)
        if self.current is None:
            self._begin(conn)
        while self.current is not None and not self._finished_step(source, conn):
            pass
        assert self.last_summary is not None
        return self.last_summary

    def _finished_step(self, source: sqlite3.Connection, conn: Connection) -> bool:
        if self._advance(source, conn):
            return False
        self._finish()
        return True

    def _begin(self, conn: Connection) -> None:
        now = time.time()
        if now >= self.next_due:
            tables = list(self.order)
            reason = "scheduled"
            self.next_due = now + self.cfg.reconcile_interval
        else:
            tables = [t for t in self.order if t in self.requests]
            reason = ",".join(sorted(set(self.requests.values())))
        self.requests = {t: r for t, r in self.requests.items() if t not in tables}
        steps = [("delete", t) for t in reversed(tables)] + [("copy", t) for t in tables]
        summary = PassSummary(started_at=now, reason=reason)
        summary.tables = {t: TableTally() for t in tables}
        self.current = _Pass(summary, steps, dead=self._open_dead_letters(conn, tables))
        with conn.transaction(), conn.cursor() as cur:
            for table in tables:
                checkpoint.reconcile_started(cur, self.schema, table)
        self.log.info("reconcile_started", tables=len(tables), reason=reason)

    def _finish(self) -> None:
        assert self.current is not None
        summary = self.current.summary
        summary.finished_at = time.time()
        self.last_summary = summary
        self.current = None
        self.log.info(
            "reconcile_done",
            tables=len(summary.tables),
            repaired=summary.repaired,
            seconds=round(summary.finished_at - summary.started_at, 3),
        )

    # -- one chunk ------------------------------------------------------------------------

    def _advance(self, source: sqlite3.Connection, conn: Connection) -> bool:
        """Process the next chunk of the pass; False when the pass has no step left."""
        current = self.current
        assert current is not None
        while current.index < len(current.steps):
            phase, table = current.steps[current.index]
            plan = self.plans[table]
            if current.chunks is None:
                current.chunks = self._chunks(source, conn, plan)
            started = time.monotonic()
            chunk = next(current.chunks, None)
            tally = current.summary.tables[table]
            if chunk is None:
                current.chunks = None
                current.index += 1
                if phase == "copy":
                    self._table_done(source, conn, plan, tally)
                tally.seconds += time.monotonic() - started
                metrics.RECONCILE_SECONDS.labels(table).inc(time.monotonic() - started)
                continue
            self._compare(conn, plan, phase, chunk, current.dead.get(table, set()), tally)
            elapsed = time.monotonic() - started
            tally.seconds += elapsed
            metrics.RECONCILE_SECONDS.labels(table).inc(elapsed)
            return True
        return False

    def _chunks(
        self, source: sqlite3.Connection, conn: Connection, plan: TablePlan
    ) -> Iterator[_Chunk]:
        """Source and target rows of consecutive key ranges (as ``verify`` reads them)."""
        reader = ChunkReader(source, plan)
        first_sql, between_sql, tail_sql = target_chunk_queries(plan)
        keypos = plan.key_positions
        limit = self.cfg.reconcile_chunk_rows
        last_source: Key | None = None
        last_target: Key | None = None
        while True:
            raw_rows = [tuple(r) for r in reader.read(last_source, limit)]
            with conn.cursor() as cur:
                if not raw_rows:
                    if last_target is None:
                        cur.execute(
                            sql.SQL("SELECT {} FROM {}").format(
                                plan.target_column_list(), plan.table
                            )
                        )
                    else:
                        cur.execute(tail_sql, last_target)
                elif (upper := chunk_upper_key(plan, raw_rows)) is not None:
                    if last_target is None:
                        cur.execute(first_sql, upper)
                    else:
                        cur.execute(between_sql, (*last_target, *upper))
                    last_target = upper
                # else: no key of this chunk can be in the target; nothing to read there
                target_rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            if not raw_rows:
                if target_rows:
                    yield _Chunk(raw_rows, target_rows, None)
                return
            last_source = tuple(raw_rows[-1][i] for i in keypos)
            yield _Chunk(raw_rows, target_rows, last_source)

    def _compare(
        self,
        conn: Connection,
        plan: TablePlan,
        phase: str,
        chunk: _Chunk,
        dead: set[str],
        tally: TableTally,
    ) -> None:
        table = plan.source.name
        kinds = [c.type.kind for c in plan.columns]
        keypos = plan.key_positions
        tally.chunks += 1
        tally.rows += len(chunk.raw_rows) if phase == "copy" else 0
        if phase == "copy":
            metrics.RECONCILE_ROWS.labels(table).inc(len(chunk.raw_rows))
        src_raw = {source_key_text(plan, kinds, raw): raw for raw in chunk.raw_rows}
        tgt_raw = {
            key_text([canonical(kinds[i], r[i]) for i in keypos]): r for r in chunk.target_rows
        }
        extra = [k for k in tgt_raw if k not in src_raw]
        upsert: list[RawRow] = []
        if phase == "copy":
            missing = [k for k in src_raw if k not in tgt_raw]
            upsert = [src_raw[k] for k in missing]
            if self.cfg.reconcile_checksums:
                src = source_row_map(plan, chunk.raw_rows, kinds)
                tgt = target_row_map(plan, chunk.target_rows, kinds)
                if row_digest(src[k][1] for k in sorted(src)) != row_digest(
                    tgt[k] for k in sorted(tgt)
                ):
                    upsert += [src_raw[k] for k in src if k in tgt and src[k][1] != tgt[k]]
            upsert = self._not_declined(plan, upsert, dead, tally)
        mismatch = bool(extra or upsert)
        metrics.RECONCILE_CHUNKS.labels(table, "mismatch" if mismatch else "match").inc()
        if not mismatch:
            return
        tally.mismatched += 1
        now = time.time()
        changes = [
            Change(0, table, "D", tuple(tgt_raw[k][i] for i in keypos), None, now) for k in extra
        ]
        changes += [to_change(plan.layout, raw, now) for raw in upsert]
        result = self.applier.apply(conn, changes, save=_no_position)
        # (Letters of other tables: children a cascade removed, see stream.orphans.)
        failed = {_raw_key_text(d.key) for d in result.dead_letters if d.table == table}
        for raw in upsert:
            k = _raw_key_text([raw[i] for i in keypos])
            if k in failed:
                self._declined[(table, k)] = hash(raw)
        deleted = result.applied.get((table, "delete"), 0)
        copied = result.applied.get((table, "upsert"), 0)
        tally.deleted += deleted
        tally.copied += copied
        metrics.RECONCILE_REPAIRED.labels(table, "deleted").inc(deleted)
        metrics.RECONCILE_REPAIRED.labels(table, "copied").inc(copied)
        self.log.info(
            "reconcile_repaired",
            table=table,
            phase=phase,
            deleted=deleted,
            copied=copied,
            dead_letters=len(result.dead_letters),
        )

    def _not_declined(
        self, plan: TablePlan, rows: list[RawRow], dead: set[str], tally: TableTally
    ) -> list[RawRow]:
        """Rows with an open dead letter are retried only once their source row changed."""
        if not dead and not self._declined:
            return rows
        table = plan.source.name
        keypos = plan.key_positions
        out = []
        for raw in rows:
            k = _raw_key_text([raw[i] for i in keypos])
            before = self._declined.get((table, k))
            if before is None and k not in dead:
                out.append(raw)
            elif before is None or before == hash(raw):
                # Failed before and unchanged since: it would only fail again.
                self._declined[(table, k)] = hash(raw)
                tally.skipped += 1
            else:
                out.append(raw)  # the source row changed: worth another try
        return out

    def _table_done(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        tally: TableTally,
    ) -> None:
        table = plan.source.name
        reader = self.readers.get(table)
        if reader is not None:
            with read_transaction(source):
                nulls, unorderable = reader.missing_values(source)
                examples = reader.unorderable_examples(source) if unorderable else []
            metrics.CURSOR_NULL_ROWS.labels(table).set(nulls + unorderable)
            if nulls or unorderable:
                self.log.warning(
                    "cursor_values_missing",
                    table=table,
                    column=reader.spec.column,
                    null=nulls,
                    not_a_timestamp=unorderable,
                    examples=[repr(e) for e in examples],
                    copied=self.cfg.null_cursor == "copy",
                )
                if self.cfg.null_cursor == "copy":
                    tally.copied += self._copy_null_rows(source, conn, plan, reader)
        with conn.transaction(), conn.cursor() as cur:
            if nullable_key(plan):  # rows no key range reaches: their letters follow the source
                sync_null_keys(source, cur, self.schema, plan, "reconcile")
            checkpoint.reconcile_finished(cur, self.schema, table, tally.deleted + tally.copied)
        metrics.RECONCILE_PASSES.labels(table).inc()
        metrics.RECONCILE_LAST_PASS.labels(table).set(tally.seconds)
        metrics.RECONCILE_COMPLETED.labels(table).set(time.time())
        self.log.info(
            "reconcile_table_done",
            table=table,
            rows=tally.rows,
            chunks=tally.chunks,
            mismatched_chunks=tally.mismatched,
            deleted=tally.deleted,
            copied=tally.copied,
            skipped=tally.skipped,
            seconds=round(tally.seconds, 3),
        )

    def _copy_null_rows(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        reader: CursorReader,
    ) -> int:
        """``null_cursor = "copy"``: rows the cursor cannot order, copied on every pass."""
        copied = 0
        after: Key | None = None
        keypos = plan.key_positions
        dead = self.current.dead.get(plan.source.name, set()) if self.current else set()
        while True:
            with read_transaction(source):
                rows = reader.null_rows(source, after, self.cfg.reconcile_chunk_rows)
            if not rows:
                return copied
            after = tuple(rows[-1][i] for i in keypos)
            todo = self._not_declined(plan, rows, dead, TableTally())
            if todo:
                now = time.time()
                result = self.applier.apply(
                    conn, [to_change(plan.layout, raw, now) for raw in todo], save=_no_position
                )
                copied += result.applied.get((plan.source.name, "upsert"), 0)

    def _open_dead_letters(self, conn: Connection, tables: Sequence[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with conn.cursor() as cur:
            # A row waiting for its parent is copied again: its parent may be there now.
            for table, key in deadletter.open_keys(
                cur, self.schema, tables, except_sqlstate=FOREIGN_KEY_VIOLATION
            ):
                out.setdefault(table, set()).add(_raw_key_text(decode_key(key)))
        return out


def _no_position(_cur: Cursor, _result: BatchResult) -> None:
    """Reconciliation writes no stream position: its batches only repair rows."""
