"""Verify's fast path: each database digests its own chunks, both at once.

A thread reads the source's chunks (the row texts built in SQLite, see
:mod:`replicator.plan.digest`) and digests them, a couple of chunks ahead,
while the calling thread asks PostgreSQL for the digest of the same key range:
the SQLite work and Python's share run on one core while PostgreSQL computes on
the other. A chunk whose digests or row counts differ is handed back to the
caller, which compares its rows the exact way.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from replicator.plan.digest import DigestPlan
from replicator.plan.rows import Refused as _Refused
from replicator.plan.rows import convert_key
from replicator.plan.tables import TablePlan
from replicator.source.reader import ChunkReader
from replicator.target.connection import Connection

Key = tuple[Any, ...]
AHEAD = 3  # source chunks digested ahead of PostgreSQL


@dataclass(frozen=True, slots=True)
class SourceChunk:
    rows: int  # 0: the source has no more rows
    last_key: Key | None  # the source key of its last row
    upper: Key | None  # the target key of its last row whose key converts
    digest: str | None


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """One chunk compared by digest: the key ranges it covered on both sides."""

    after_source: Key | None
    source: SourceChunk
    after_target: Key | None
    target_rows: int
    matched: bool


def _upper(plan: TablePlan, dplan: DigestPlan, rows: list[Any]) -> Key | None:
    for r in reversed(rows):
        key = convert_key(plan, r[: dplan.key_width])
        if not isinstance(key, _Refused):
            return tuple(key)
    return None


def _put(q: queue.Queue[Any], item: object, stop: threading.Event) -> bool:
    """Hand ``item`` on, waiting while the queue is full; False once told to stop."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _read(
    open_source: Callable[[], sqlite3.Connection],
    plan: TablePlan,
    dplan: DigestPlan,
    chunk_rows: int,
    out: queue.Queue[list[Any] | BaseException],
    stop: threading.Event,
) -> None:
    """The source's chunks of row texts, in key order (an empty one at the end).
    SQLite builds the texts without holding the GIL, so this overlaps the digests."""
    try:
        conn = open_source()
    except BaseException as exc:  # handed to the caller's thread, raised there
        _put(out, exc, stop)
        return
    try:
        reader = ChunkReader(conn, plan)
        after: Key | None = None
        while True:
            rows = reader.read_select(dplan.source_select, after, chunk_rows)
            if not _put(out, rows, stop) or not rows:
                return
            after = tuple(rows[-1][: dplan.key_width])
    except BaseException as exc:
        _put(out, exc, stop)
    finally:
        conn.close()


def _produce(
    open_source: Callable[[], sqlite3.Connection],
    plan: TablePlan,
    dplan: DigestPlan,
    chunk_rows: int,
    out: queue.Queue[SourceChunk | BaseException],
    stop: threading.Event,
) -> None:
    """The source's chunks digested (Python's share of the text: doubles, jsonb)."""
    rows_q: queue.Queue[list[Any] | BaseException] = queue.Queue(maxsize=AHEAD)
    reader = threading.Thread(
        target=_read,
        args=(open_source, plan, dplan, chunk_rows, rows_q, stop),
        name=f"verify-read-{plan.source.name}",
        daemon=True,
    )
    reader.start()
    try:
        while not stop.is_set():
            try:
                rows = rows_q.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(rows, BaseException):
                _put(out, rows, stop)
                return
            if not rows:
                _put(out, SourceChunk(0, None, None, None), stop)
                return
            last = tuple(rows[-1][: dplan.key_width])
            chunk = SourceChunk(
                len(rows), last, _upper(plan, dplan, rows), dplan.chunk_digest(rows)
            )
            if not _put(out, chunk, stop):
                return
    except BaseException as exc:
        _put(out, exc, stop)
    finally:
        stop.set()  # the reader stops too (the caller sets it as well when done)
        reader.join(timeout=10)


def _target_range(
    plan: TablePlan, dplan: DigestPlan, after: Key | None, upto: Key | None
) -> tuple[sql.Composable, tuple[Any, ...]]:
    keys = dplan.target_order
    marks = sql.SQL(", ").join(sql.Placeholder() for _ in plan.target_key)
    parts: list[sql.Composable] = []
    params: list[Any] = []
    if after is not None:
        parts.append(sql.SQL("({}) > ({})").format(keys, marks))
        params += after
    if upto is not None:
        parts.append(sql.SQL("({}) <= ({})").format(keys, marks))
        params += upto
    where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
    return where, tuple(params)


def compare_chunks(
    open_source: Callable[[], sqlite3.Connection],
    conn: Connection,
    plan: TablePlan,
    dplan: DigestPlan,
    chunk_rows: int,
) -> Iterator[ChunkOutcome]:
    """Every chunk of the table compared by digest, in key order; the last one
    (source rows 0) covers the target's rows past the source's last key."""
    out: queue.Queue[SourceChunk | BaseException] = queue.Queue(maxsize=AHEAD)
    stop = threading.Event()
    worker = threading.Thread(
        target=_produce,
        args=(open_source, plan, dplan, chunk_rows, out, stop),
        name=f"verify-source-{plan.source.name}",
        daemon=True,
    )
    worker.start()
    after_source: Key | None = None
    after_target: Key | None = None
    try:
        while True:
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            if item.rows and item.upper is None:
                # No key of this chunk can be in the target: nothing of it to digest there.
                count, digest = 0, None
            else:
                upto = item.upper if item.rows else None
                where, params = _target_range(plan, dplan, after_target, upto)
                with conn.cursor() as cur:
                    cur.execute(dplan.target_digest_query(plan, where), params)
                    row = cur.fetchone()
                assert row is not None
                count, digest = int(row[0]), row[1]
            matched = count == item.rows and digest == item.digest
            yield ChunkOutcome(after_source, item, after_target, count, matched)
            if not item.rows:
                return
            after_source = item.last_key
            after_target = item.upper or after_target
    finally:
        stop.set()
        worker.join(timeout=10)
