"""One key range of a table, chunk by chunk: read ahead and converted in a thread,
written in PostgreSQL transactions that each carry their checkpoint."""

from __future__ import annotations

import contextlib
import itertools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from replicator import metrics
from replicator.errors import DataError
from replicator.logs import get_logger
from replicator.plan.copytext import CopyText
from replicator.plan.rows import Converted, convert_rows, failures_to_letters
from replicator.plan.tables import TablePlan
from replicator.snapshot.jobs import ChunkReport, TableJob
from replicator.source.reader import ChunkReader, RawRow
from replicator.source.sqlite import open_source
from replicator.state import checkpoint, deadletter
from replicator.state.checkpoint import PartProgress, SnapshotProgress
from replicator.state.deadletter import FOREIGN_KEY_VIOLATION, DeadLetter
from replicator.target.connection import Connection, first_line, is_row_error
from replicator.target.writer import TableWriter, write_isolating

CHUNK_ATTEMPTS = 5  # a chunk rolled back by a deadlock between two ranges is tried again
SIZE_SAMPLE = 64  # rows of a chunk whose size sets the next chunk's (snapshot.chunk_bytes)
MOSTLY_TEXT = 20  # a chunk read as text is a miss when more than 1/20 of it goes to Python
TEXT_COPIES = 2  # a chunk read as text takes about twice its text in memory
WIDE_ROW = 1024  # bytes of text a row from which a range goes on in Python
TEXT_MISSES = 0.25  # a range goes on in Python once more than this share of chunks miss

Chunk = tuple[list[RawRow], Converted]


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A chunk read as COPY text (``snapshot.sql_conversion``): most rows as SQLite
    wrote them, the rest converted in Python."""

    after: tuple[Any, ...] | None  # the key the chunk starts after
    last_key: tuple[Any, ...]  # its last row's key
    rows: int  # rows read
    text: bytes  # COPY text of the rows SQLite converted
    converted: Converted  # the other rows, converted in Python (with their dead letters)


@dataclass(frozen=True, slots=True)
class TextPlan:
    """How a range's rows are read as COPY text (``replicator.plan.copytext``)."""

    row_sql: str
    copy_text: CopyText
    # Reads a key range (after, upto] again, converted in Python: for a chunk whose
    # text PostgreSQL refused, so each row gets the converters' (or PostgreSQL's
    # row-by-row) verdict.
    reread: Callable[[tuple[Any, ...] | None, tuple[Any, ...]], Chunk]


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
        text: TextPlan | None = None,
    ) -> None:
        self.reader = reader
        self.plan = plan
        self.rows = rows
        self.max_bytes = max_bytes
        self.text = text
        self.text_chunks = self.text_misses = 0  # chunks read as text, and those mostly not
        self.queue: queue.Queue[Chunk | TextChunk | BaseException | None] = queue.Queue(maxsize=1)
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
                if self.text is not None:
                    item = self._read_text(self.text, after, limit)
                    if item is None:
                        self._put(None)
                        return
                    if isinstance(item, TextChunk):
                        if self.max_bytes:
                            # The text is what the chunk holds; it is copied once or
                            # twice on its way (SQLite's, then the escaped one).
                            per_row = max(1.0, TEXT_COPIES * len(item.text) / item.rows)
                            limit = max(1, min(self.rows, int(self.max_bytes / per_row)))
                        self._put(item)
                        after = item.last_key
                        continue
                    raw_rows, valid = item
                else:
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

    def _read_text(
        self, text: TextPlan, after: tuple[Any, ...] | None, limit: int
    ) -> TextChunk | tuple[list[RawRow], list[int] | None] | None:
        """The next chunk as COPY text; or, when its text cannot be used as it is
        (``CopyText.copy_bytes``), the same rows read to be converted in Python; None at
        the end of the range."""
        try:
            page = self.reader.read_text(after, limit, text.row_sql)
        except sqlite3.DataError:  # "string or blob too big": the chunk's text, joined
            self.text = None
            get_logger(table=self.plan.source.name).info(
                "sql_conversion_off", chunks=self.text_chunks, reason="text too big"
            )
            return self.reader.read_checked(after, limit)
        if not page.rows or page.last_key is None:
            return None
        done = page.rows - len(page.left)
        payload = text.copy_text.copy_bytes(page.text, done) if done else b""
        # Rows SQLite leaves to Python are read twice, a chunk it cannot write is read
        # again whole: when that is the rule rather than the exception (JSON full of
        # surrogate escapes, offsets into a timestamp without time zone), this range
        # goes on in Python alone, which is then the faster way.
        self.text_chunks += 1
        if done and len(page.text) > WIDE_ROW * done:
            # Long values: copying them is the work, not converting them, and binary
            # COPY moves them once, where text is made, escaped and parsed again.
            self.text = None
            get_logger(table=self.plan.source.name).info(
                "sql_conversion_off", chunks=self.text_chunks, reason="wide rows"
            )
        elif payload is None or len(page.left) * MOSTLY_TEXT > page.rows:
            self.text_misses += 1
            if self.text_misses >= 2 and self.text_misses > self.text_chunks * TEXT_MISSES:
                self.text = None
                get_logger(table=self.plan.source.name).info(
                    "sql_conversion_off",
                    chunks=self.text_chunks,
                    reason="too many values left to Python",
                )
        if payload is None:
            return self.reader.read_checked(after, page.rows)
        converted = convert_rows(self.plan, page.left, "snapshot", page.valid)
        return TextChunk(after, page.last_key, page.rows, payload, converted)

    def _limit(self, rows: list[RawRow]) -> int:
        """Rows for the next chunk: ``max_bytes`` over the memory a row of this one
        takes as read (from a sample of its rows; about what Python holds for it)."""
        sample = rows[:: max(1, len(rows) // SIZE_SAMPLE)]
        size = sum(_row_memory(r) for r in sample)
        per_row = max(1.0, size / len(sample))
        return max(1, min(self.rows, int(self.max_bytes / per_row)))

    def _put(self, item: Chunk | TextChunk | BaseException | None) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self) -> Chunk | TextChunk | None:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(queue.Empty):
            self.queue.get_nowait()
        self.thread.join(timeout=30)


class Rereader:
    """Reads a key range of a table again on a source connection of its own (opened
    when first needed), converted in Python: :attr:`TextPlan.reread`."""

    def __init__(self, path: Path, busy_timeout_ms: int, plan: TablePlan) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.plan = plan
        self.source: sqlite3.Connection | None = None

    def __call__(self, after: tuple[Any, ...] | None, upto: tuple[Any, ...]) -> Chunk:
        if self.source is None:
            self.source = open_source(
                self.path, readonly=True, busy_timeout_ms=self.busy_timeout_ms
            )
        reader = ChunkReader(self.source, self.plan, check_json=True)
        reader.upper = upto
        raw_rows, valid = reader.read_checked(after, -1)  # (LIMIT -1: every row up to upto)
        return raw_rows, convert_rows(self.plan, raw_rows, "snapshot", valid)

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source = None


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

    def __init__(
        self,
        conn: Connection,
        job: TableJob,
        schema: str,
        *,
        stop: bool,
        text: TextPlan | None = None,
    ) -> None:
        self.conn = conn
        self.job = job
        self.schema = schema
        self.stop = stop  # snapshot.on_error = "stop": the first dead letter ends the copy
        self.text = text
        self.log = get_logger(table=job.name)
        self.writer = writer = TableWriter(job.plan.shape)
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
            if isinstance(chunk, TextChunk):
                if self.stop:
                    stop_on_first(chunk.converted[2])
                last_key = chunk.last_key
            else:
                raw_rows, (good, good_raw, found) = chunk
                if self.stop:
                    stop_on_first(found)
                last_key = tuple(raw_rows[-1][i] for i in keypos)
            for attempt in itertools.count(1):
                try:
                    if isinstance(chunk, TextChunk):
                        read, written, letters = self._commit_text(part, chunk)
                    else:
                        letters = list(found)
                        written = self._commit(part, raw_rows, good, good_raw, letters, last_key)
                        read = len(raw_rows)
                    break
                except psycopg.errors.TransactionRollback as exc:
                    # Two ranges of one table can deadlock on a value both insert
                    # into a unique index: the chunk is rolled back whole, try again.
                    if attempt >= CHUNK_ATTEMPTS:
                        raise
                    log.info("chunk_retried", attempt=attempt, reason=first_line(exc))
                    time.sleep(0.05 * attempt)
            part = part.advance(last_key, read, written, len(letters))
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
                read_all, written_all, total = job.add(read, written)
                if total:
                    metrics.SNAPSHOT_PROGRESS.labels(name).set(min(1.0, read_all / total))
                report(name, read_all, written_all, total, job.started, read)

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
        with conn.transaction():
            # The chunk and its checkpoint commit together or not at all either
            # way; not waiting for the WAL flush can only lose the newest chunks
            # in a server crash, and then their checkpoint with them: the next
            # run copies them again. (The stream's commits stay synchronous, and
            # its first one flushes every chunk before it.)
            conn.execute("SET LOCAL synchronous_commit = off")
            written = self._write_converted(good, good_raw, letters)
            advanced = self._record(part, raw_rows, last_key, len(raw_rows), written, letters)
        if advanced is not None:  # committed: the table's own position moves on
            job.progress = advanced
        return written

    def _commit_text(
        self, part: PartProgress, chunk: TextChunk
    ) -> tuple[int, int, list[DeadLetter]]:
        """As :meth:`_commit` for a chunk read as COPY text. When PostgreSQL refuses the
        text, the chunk's range is read again and converted in Python, each row then
        getting the verdict it gets that way. Returns the rows read, written, and the
        dead letters."""
        conn, job = self.conn, self.job
        assert self.text is not None
        rows = chunk.rows
        good, good_raw, found = chunk.converted
        with conn.transaction():
            conn.execute("SET LOCAL synchronous_commit = off")  # (see _commit)
            done = rows - len(good_raw) - len(found)
            try:
                if chunk.text:
                    with conn.transaction(), conn.cursor() as cur:
                        self.writer.copy_text(cur, chunk.text)
            except Exception as exc:
                if not is_row_error(exc):
                    raise
                self.log.info("chunk_converted_again", reason=first_line(exc))
                raw_rows, (good, good_raw, found) = self.text.reread(chunk.after, chunk.last_key)
                if self.stop:
                    stop_on_first(found)
                rows, done = len(raw_rows), 0
            letters = list(found)
            written = done + self._write_converted(good, good_raw, letters)
            advanced = self._record(part, None, chunk.last_key, rows, written, letters)
        if advanced is not None:
            job.progress = advanced
        return rows, written, letters

    def _write_converted(
        self, good: list[tuple[object, ...]], good_raw: list[RawRow], letters: list[DeadLetter]
    ) -> int:
        """Write rows converted in Python, adding those PostgreSQL refuses to ``letters``;
        returns the rows written."""
        failures = write_isolating(self.conn, good, self.write, self.columns)
        if failures:
            failed = failures_to_letters(self.job.plan, good_raw, failures, "snapshot")
            if self.stop:
                stop_on_first(failed)
            letters.extend(failed)
        return len(good) - len(failures)

    def _record(
        self,
        part: PartProgress,
        raw_rows: list[RawRow] | None,
        last_key: tuple[Any, ...],
        read: int,
        written: int,
        letters: list[DeadLetter],
    ) -> SnapshotProgress | None:
        """The chunk's dead letters and checkpoint, in its transaction; the table's
        progress as advanced (None for a range of a split table)."""
        job = self.job
        with self.conn.cursor() as cur:
            if job.supersede:
                assert raw_rows is not None  # (no text chunks then: see copy_part)
                keypos = job.plan.key_positions
                chunk_keys = [tuple(r[i] for i in keypos) for r in raw_rows]
                deadletter.resolve_keys(
                    cur, self.schema, job.name, chunk_keys, "superseded by a new snapshot copy"
                )
            deadletter.record(cur, self.schema, letters)
            added = (read, written, len(letters))
            if job.split:
                checkpoint.save_part(cur, self.schema, part.advance(last_key, *added), added)
                return None
            advanced = job.progress.advance(last_key, *added)
            checkpoint.save_progress(cur, self.schema, advanced)
            return advanced
