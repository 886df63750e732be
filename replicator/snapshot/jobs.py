"""The units of a snapshot's work: a table's copy, shared by the workers that copy
its key ranges, and what those workers report."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from replicator.plan.tables import TablePlan
from replicator.state.checkpoint import PartProgress, SnapshotProgress

DONE = -1  # WorkerEvent.part of a table's completion (its indexes built, its result given)

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
