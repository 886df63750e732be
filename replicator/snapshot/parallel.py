"""Several tables, or key ranges of a large table, copied at once (snapshot.parallel_tables).

The thread that runs the snapshot schedules; each worker copies one range, or
completes one table, on connections of its own, so that their reads and
transactions run side by side.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import psycopg

from replicator.errors import ConfigError
from replicator.plan.tables import TablePlan
from replicator.snapshot.jobs import DONE, SnapshotStopped, TableJob, WorkerEvent
from replicator.snapshot.summary import TableResult
from replicator.source.sqlite import open_source
from replicator.state.checkpoint import PartProgress, SnapshotProgress
from replicator.target.connection import Connection, connect

if TYPE_CHECKING:
    from replicator.snapshot.copy import Snapshotter


def copy_parallel(
    snap: Snapshotter,
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
        job = snap.prepare(source, conn, plan, progress.get(plan.source.name), ways=workers)
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
                return _complete_on_own_connection(snap, job)
            _copy_on_own_connections(snap, job, part, events, stop)
            return None
        finally:
            events.put(WorkerEvent(job.name, number))  # wakes the loop

    for plan in list(waiting):
        earlier = progress.get(plan.source.name)
        if earlier is not None and earlier.done:
            waiting.remove(plan)
            results[plan.source.name] = TableResult.done_earlier(earlier)
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
                snap.display.chunk(event.table, read, total, started, rows)
                if snap.on_chunk is not None:
                    snap.on_chunk(event.table, read, written, total)
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
            finished.update({event.table, _plan_named(plans, event.table).name})
            snap.display.table_done(event.table, result)
    except BaseException:
        stop.set()  # the workers stop after the chunk in hand (committed or not)
        raise
    finally:
        pool.shutdown(wait=True)
    return results


def _plan_named(plans: Sequence[TablePlan], name: str) -> TablePlan:
    return next(p for p in plans if p.source.name == name)


def _connect_worker(snap: Snapshotter) -> Connection:
    try:
        return connect(
            snap.dsn, autocommit=True, connect_timeout=snap.config.target.connect_timeout
        )
    except ConfigError as exc:
        # The main connection to this very target works: a server gone or full
        # for a moment, worth a retry by the daemon, not a configuration error.
        raise psycopg.OperationalError(str(exc)) from exc


def _open_worker_connections(snap: Snapshotter) -> tuple[sqlite3.Connection, Connection]:
    source = open_source(
        snap.path, readonly=True, busy_timeout_ms=snap.config.source.busy_timeout_ms
    )
    try:
        return source, _connect_worker(snap)
    except BaseException:
        source.close()
        raise


def _copy_on_own_connections(
    snap: Snapshotter,
    job: TableJob,
    part: PartProgress,
    events: queue.Queue[WorkerEvent],
    stop: threading.Event,
) -> None:
    source, conn = _open_worker_connections(snap)

    def report(name: str, read: int, written: int, total: int, started: float, rows: int) -> None:
        events.put(WorkerEvent(name, part.part, (read, written, total, started, rows)))
        if stop.is_set():
            raise SnapshotStopped(name)

    try:
        snap.copy_part(source, conn, job, part, report=report)
    finally:
        conn.close()
        source.close()


def _complete_on_own_connection(snap: Snapshotter, job: TableJob) -> TableResult:
    conn = _connect_worker(snap)
    try:
        return snap.complete(conn, job, show=False)
    finally:
        conn.close()
