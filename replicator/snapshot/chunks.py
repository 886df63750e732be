"""One key range of a table, chunk by chunk: read ahead and converted in a thread,
written in PostgreSQL transactions that each carry their checkpoint."""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg

from replicator import metrics
from replicator.errors import DataError
from replicator.logs import get_logger
from replicator.plan.rows import Converted, convert_rows, failures_to_letters
from replicator.plan.tables import TablePlan
from replicator.snapshot.jobs import ChunkReport, TableJob
from replicator.source.reader import ChunkReader, RawRow
from replicator.state import checkpoint, deadletter
from replicator.state.checkpoint import PartProgress
from replicator.state.deadletter import FOREIGN_KEY_VIOLATION, DeadLetter
from replicator.target.connection import Connection, first_line
from replicator.target.writer import TableWriter, write_isolating

CHUNK_ATTEMPTS = 5  # a chunk rolled back by a deadlock between two ranges is tried again
SIZE_SAMPLE = 64  # rows of a chunk whose size sets the next chunk's (snapshot.chunk_bytes)

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


def stop_on_first(letters: Sequence[DeadLetter]) -> None:
    """Raise on the first of ``letters``, if any (snapshot.on_error = "stop")."""
    if letters:
        first = letters[0]
        shown = repr(first.raw_value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        value = f" value {shown}" if first.column else ""
        raise DataError(f'{first.describe()}{value} (on_error = "stop")')


class ChunkWriter:
    """Writes the chunks of one key range of a table, each in one transaction with
    its dead letters and its checkpoint."""

    def __init__(self, conn: Connection, job: TableJob, schema: str, *, stop: bool) -> None:
        self.conn = conn
        self.job = job
        self.schema = schema
        self.stop = stop  # snapshot.on_error = "stop": the first dead letter ends the copy
        self.log = get_logger(table=job.name)
        writer = TableWriter(job.plan.shape)
        self.write = writer.copy if job.progress.method == "copy" else writer.upsert
        self.columns = writer.column_names()

    def copy(self, part: PartProgress, prefetch: Prefetcher, report: ChunkReport) -> None:
        """Write every chunk ``prefetch`` reads of ``part``, telling ``report`` of each."""
        conn, job, log = self.conn, self.job, self.log
        name, keypos = job.name, job.plan.key_positions
        while True:
            chunk = prefetch.get()
            if chunk is None:
                if job.split:  # the table is done when every part is (complete())
                    with conn.transaction(), conn.cursor() as cur:
                        checkpoint.save_part(cur, self.schema, replace(part, done=True), (0, 0, 0))
                return
            raw_rows, (good, good_raw, found) = chunk
            if self.stop:
                stop_on_first(found)
            last_key = tuple(raw_rows[-1][i] for i in keypos)
            for attempt in itertools.count(1):
                letters = list(found)
                try:
                    written = self._commit(part, raw_rows, good, good_raw, letters, last_key)
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
            metrics.DEAD_LETTERS.labels(name).inc(len(letters))
            with job.lock:  # ranges of one table report in the order they count
                read, written_all, total = job.add(len(raw_rows), written)
                if total:
                    metrics.SNAPSHOT_PROGRESS.labels(name).set(min(1.0, read / total))
                report(name, read, written_all, total, job.started, len(raw_rows))

    def _commit(
        self,
        part: PartProgress,
        raw_rows: list[RawRow],
        good: list[tuple[object, ...]],
        good_raw: list[RawRow],
        letters: list[DeadLetter],
        last_key: tuple[Any, ...],
    ) -> int:
        """Write one chunk, its dead letters and its checkpoint in one transaction;
        ``letters`` gets the rows PostgreSQL refused. Returns the rows written."""
        conn, job = self.conn, self.job
        plan, name, keypos = job.plan, job.name, job.plan.key_positions
        with conn.transaction():
            # The chunk and its checkpoint commit together or not at all either
            # way; not waiting for the WAL flush can only lose the newest chunks
            # in a server crash, and then their checkpoint with them: the next
            # run copies them again. (The stream's commits stay synchronous, and
            # its first one flushes every chunk before it.)
            conn.execute("SET LOCAL synchronous_commit = off")
            failures = write_isolating(conn, good, self.write, self.columns)
            if failures:
                failed = failures_to_letters(plan, good_raw, failures, "snapshot")
                if self.stop:
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
