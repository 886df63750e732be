"""What a snapshot shows: its progress while it copies, and its summary at the end."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from replicator.logs import get_logger, live_console
from replicator.plan.landing import Landing, render_report
from replicator.state.checkpoint import SnapshotProgress


@dataclass
class TableResult:
    table: str
    rows_read: int = 0
    rows_written: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    skipped: bool = False  # already complete from an earlier run
    bytes: int | None = None  # the table's size in the SQLite file (None: not measured)

    @classmethod
    def done_earlier(cls, progress: SnapshotProgress) -> TableResult:
        """The result of a table an earlier run copied completely."""
        return cls(
            table=progress.table,
            rows_read=progress.rows_read,
            rows_written=progress.rows_written,
            dead_letters=progress.dead_letters,
            skipped=True,
        )


@dataclass
class SnapshotSummary:
    tables: list[TableResult] = field(default_factory=list)
    sequences_set: int = 0
    post_load: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (target table, what) -> PostgreSQL's error, for schema objects it refused
    refused: dict[tuple[str, str], str] = field(default_factory=dict)
    schema: list[Landing] = field(default_factory=list)  # what the source's schema became

    @property
    def dead_letters(self) -> int:
        return sum(t.dead_letters for t in self.tables)

    @property
    def bytes(self) -> int | None:
        sizes = [t.bytes for t in self.tables]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    def to_json(self) -> dict[str, object]:
        """The end-of-load report as one structured record (the JSON log form of
        :meth:`render`): per table and in total, and what of the schema was skipped."""
        return {
            "tables": [
                {
                    "table": t.table,
                    "rows_read": t.rows_read,
                    "rows_written": t.rows_written,
                    "dead_letters": t.dead_letters,
                    "seconds": round(t.seconds, 3),
                    "bytes": t.bytes,
                    "done_earlier": t.skipped,
                }
                for t in self.tables
            ],
            "total": {
                "rows_read": sum(t.rows_read for t in self.tables),
                "rows_written": sum(t.rows_written for t in self.tables),
                "dead_letters": self.dead_letters,
                "bytes": self.bytes,
                "seconds": round(sum(t.seconds for t in self.tables), 3),
            },
            "schema_skipped": [
                {"table": s.table, "kind": s.kind, "name": s.name, "reason": s.reason}
                for s in self.schema
                if s.outcome == "skipped"
            ],
            "sequences_set": self.sequences_set,
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        head = f"{'table':<28} {'read':>10} {'written':>10} {'dead':>6} {'MB':>8} {'seconds':>8}"
        lines = [head, "-" * len(head)]
        for t in self.tables:
            note = "  (done earlier)" if t.skipped else ""
            lines.append(
                f"{t.table[:28]:<28} {t.rows_read:>10} {t.rows_written:>10} "
                f"{t.dead_letters:>6} {_mb(t.bytes):>8} {t.seconds:>8.1f}{note}"
            )
        total_r = sum(t.rows_read for t in self.tables)
        total_w = sum(t.rows_written for t in self.tables)
        secs = sum(t.seconds for t in self.tables)
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<28} {total_r:>10} {total_w:>10} {self.dead_letters:>6} "
            f"{_mb(self.bytes):>8} {secs:>8.1f}"
        )
        if self.dead_letters:
            lines.append(
                f"{self.dead_letters} row(s) went to the dead-letter table: "
                "see `replicator dead-letters list`."
            )
        if self.schema:
            # What was not carried over; `replicator check` shows the whole report.
            lines.append("schema (SQLite -> PostgreSQL), what was skipped:")
            lines.extend(render_report(self.schema, only=("skipped",)))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _mb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1_048_576:.1f}"


class ProgressDisplay:
    """A progress bar per table on a terminal (rich, which redraws log lines above
    the bars); structured log lines otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.log = get_logger()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}  # table -> its bar

    def _bars(self) -> Progress:
        if self._progress is None:
            console = Console(file=self.stream)
            self._progress = Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(),
                TaskProgressColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9.0f} rows/s"),
                TimeRemainingColumn(),
                console=console,
            )
            self._progress.start()
            live_console(console)  # log lines go above the bars while they show
        return self._progress

    def chunk(self, table: str, done: int, total: int | None, started: float, rows: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = done / elapsed
        if not self.tty:
            self.log.info(
                "snapshot_chunk",
                table=table,
                rows=rows,
                copied=done,
                total=total,
                rows_per_s=round(rate),
            )
            return
        with self._lock:
            bars = self._bars()
            task = self._tasks.get(table)
            if task is None:
                task = bars.add_task(table[:28], total=total, rate=rate)
                self._tasks[table] = task
            bars.update(task, completed=done, total=total, rate=rate)

    def table_done(self, table: str, result: TableResult) -> None:
        if self.tty:
            with self._lock:
                task = self._tasks.pop(table, None)
                if task is not None or not result.skipped:
                    rate = result.rows_read / result.seconds if result.seconds > 0 else 0.0
                    line = (
                        f"{table[:28]:<28} done {result.rows_read:>10} rows "
                        f"{rate:>9.0f} rows/s  {result.seconds:6.1f}s"
                    )
                    if self._progress is not None:
                        if task is not None:
                            self._progress.remove_task(task)
                        self._progress.console.print(line, markup=False, highlight=False)
                    else:
                        self.stream.write(line + "\n")
                        self.stream.flush()
                if not self._tasks:
                    self.close()
        self.log.info(
            "snapshot_table_done",
            table=table,
            rows_read=result.rows_read,
            rows_written=result.rows_written,
            dead_letters=result.dead_letters,
            seconds=round(result.seconds, 3),
        )

    def close(self) -> None:
        """Take the bars off the terminal (log lines go straight to it again)."""
        if self._progress is not None:
            live_console(None)
            self._progress.stop()
            self._progress = None
