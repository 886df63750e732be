"""The cursor half of the daemon: poll every cursor table, apply, keep positions.

Which tables are followed by a cursor is decided once at start-up (per table
``capture``, else ``capture.mode``; ``auto`` means triggers when the source is
writable, cursor when it is not). When every table is a cursor table the
source is opened read-only (SQLite ``mode=ro``) and nothing is ever written
to it.

One poll reads every cursor table in one SQLite read transaction (so parents
and children are seen at the same moment) and applies what it found through
the same :class:`~replicator.stream.apply.Applier` as the trigger stream (coalescing,
foreign-key order, dead letters, healing), in one PostgreSQL transaction that
also writes each table's new cursor position. Reconciliation steps are
interleaved with the polls.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from replicator import metrics
from replicator.config import Config
from replicator.errors import SchemaError, SourceError
from replicator.logs import get_logger
from replicator.plan.tables import TablePlan, select_tables
from replicator.source.cursor import (
    CursorKind,
    CursorPosition,
    CursorReader,
    CursorSpec,
    Poll,
    choose_cursor,
)
from replicator.source.sqlite import (
    describe_table,
    list_tables,
    open_source,
    read_transaction,
)
from replicator.state import checkpoint
from replicator.stream.apply import Applier
from replicator.stream.batch import BatchResult
from replicator.stream.reconcile import Reconciler
from replicator.target.connection import Connection, Cursor

Specs = dict[str, CursorSpec | None]  # table -> its cursor, or None for triggers


def source_writable(config: Config) -> bool:
    """Whether triggers could be installed: not configured read-only, and the file
    and its folder (for -wal/-shm/-journal) are writable (false on a read-only mount)."""
    if config.source.readonly:
        return False
    path = config.require_source()
    return os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)


def with_capture(config: Config, mode: Literal["triggers", "cursor"]) -> Config:
    """``config`` with every table captured by ``mode`` (``run --capture``)."""
    tables = {name: replace(t, capture=None) for name, t in config.table.items()}
    return replace(config, capture=replace(config.capture, mode=mode), table=tables)


def capture_specs(
    config: Config, source: sqlite3.Connection, *, writable: bool, force: str | None = None
) -> Specs:
    """Each selected table's capture: its cursor, or None when triggers capture it."""
    default = force or config.capture.mode
    if default == "auto":
        default = "triggers" if writable else "cursor"
    names = select_tables(list_tables(source), config.tables.include, config.tables.exclude)
    specs: Specs = {}
    problems: list[str] = []
    for name in names:
        tconf = config.table_config(name)
        mode = (tconf.capture if force is None else None) or default
        if mode == "triggers":
            specs[name] = None
            continue
        table = describe_table(source, name)
        try:
            column = tconf.cursor
            chosen = choose_cursor(table, column, None)
            col_conf = tconf.columns.get(chosen.column)
            if col_conf is not None and col_conf.epoch:
                chosen = choose_cursor(table, chosen.column, col_conf.epoch)
            specs[name] = chosen
        except SchemaError as exc:
            problems.append(str(exc))
    if problems:
        raise SchemaError("cannot follow these tables by cursor:\n  - " + "\n  - ".join(problems))
    triggers = sorted(n for n, s in specs.items() if s is None)
    if triggers and not writable:
        raise SourceError(
            f"the source is read-only, so change-capture triggers cannot be installed for "
            f'{", ".join(triggers)}: use capture = "cursor" for them '
            '(or [capture] mode = "cursor", or replicator run --capture cursor)'
        )
    return specs


def open_for_capture(
    config: Config, *, force: str | None = None
) -> tuple[sqlite3.Connection, Specs, bool]:
    """Open the source (read-only when every table is a cursor table).

    Returns (connection, capture per table, opened read-only).
    """
    path: Path = config.require_source()
    writable = source_writable(config)
    busy = config.source.busy_timeout_ms
    source = open_source(path, readonly=True, busy_timeout_ms=busy)
    try:
        with read_transaction(source):
            specs = capture_specs(config, source, writable=writable, force=force)
    except BaseException:
        source.close()
        raise
    if all(s is not None for s in specs.values()):
        return source, specs, True
    source.close()
    return open_source(path, busy_timeout_ms=busy), specs, False


def _timestamp_seconds(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.strptime(value, "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC).timestamp()


class CursorStream:
    """Polls the cursor tables of one daemon run."""

    def __init__(self, config: Config, plans: Sequence[TablePlan], specs: Specs) -> None:
        self.config = config
        self.schema = config.target.state_schema
        self.plans = [p for p in plans if specs.get(p.source.name) is not None]
        self.specs: dict[str, CursorSpec] = {
            p.source.name: s for p in self.plans if (s := specs[p.source.name]) is not None
        }
        self.readers = {
            p.source.name: CursorReader(p.layout, self.specs[p.source.name]) for p in self.plans
        }
        self.positions: dict[str, CursorPosition] = {}
        self.applier: Applier | None = None
        self.reconciler: Reconciler | None = None
        self.log = get_logger()
        self.lag_seconds = 0.0
        self._reconciled_before = False  # every table passed reconciliation in an earlier run
        self._switched: list[str] = []
        self._next = 0  # round-robin start, so no table waits behind a busy one

    @property
    def tables(self) -> list[str]:
        return [p.source.name for p in self.plans]

    @property
    def reconciled(self) -> bool:
        """Every cursor table has been through a reconciliation pass (in this run or an
        earlier one): before that, deletes a cursor cannot see may be missing."""
        done = self.reconciler is not None and self.reconciler.last_summary is not None
        return self._reconciled_before or done

    # -- start-up -----------------------------------------------------------------

    def record_start(
        self, source: sqlite3.Connection, conn: Connection, *, keep: Collection[str] = ()
    ) -> None:
        """Record each new cursor's current end BEFORE the snapshot copies its table,
        so whatever is committed while it copies is read by the first polls.

        Cursors of tables no longer followed are dropped, except those in ``keep``
        (paused by a schema change: they go on from there when resumed)."""
        with conn.cursor() as cur:
            states = checkpoint.load_cursor_states(cur, self.schema)
            progress = checkpoint.load_progress(cur, self.schema)
        with read_transaction(source):
            tops = {
                name: reader.top(source)
                for name, reader in self.readers.items()
                if not self._same_cursor(states.get(name), self.specs[name])
            }
        with conn.transaction(), conn.cursor() as cur:
            for name, top in tops.items():
                spec = self.specs[name]
                checkpoint.init_cursor(
                    cur, self.schema, name, spec.kind, spec.column, top.to_json()
                )
                done = progress.get(name)
                if done is not None and done.done:
                    # Copied under another capture (or another cursor) before: what
                    # changed in between is only found by comparing.
                    self._switched.append(name)
            for name, state in states.items():
                if name not in self.specs and name not in keep:
                    checkpoint.drop_cursor(cur, self.schema, name)
                    self.log.warning(
                        "cursor_dropped",
                        table=name,
                        reason="no longer captured by a cursor; run `replicator verify "
                        f"--repair --table {name}` once the stream has caught up",
                        was=f"{state.kind} cursor on {state.column}",
                    )
        for name, spec in self.specs.items():
            self.log.info(
                "cursor_selected",
                table=name,
                kind=str(spec.kind),
                column=spec.column,
                indexed=spec.indexed,
                chosen="automatically" if spec.automatic else "configured",
                cannot_see=spec.blind_spots,
            )

    @staticmethod
    def _same_cursor(state: checkpoint.CursorState | None, spec: CursorSpec) -> bool:
        return state is not None and state.kind == spec.kind and state.column == spec.column

    def start(self, source: sqlite3.Connection, conn: Connection) -> None:
        """After the snapshot: load positions, prepare the applier and reconciliation."""
        with conn.cursor() as cur:
            states = checkpoint.load_cursor_states(cur, self.schema)
        self.positions = {
            name: CursorPosition.from_json(states[name].position) for name in self.specs
        }
        applier = Applier(
            self.plans,
            self.schema,
            stop_on_error=self.config.snapshot.on_error == "stop",
            source=source,
        )
        applier.load_open_dead_letters(conn)
        applier.load_sequences(conn)
        applier.load_waiting(conn, source)
        self.applier = applier
        completed = [
            s.reconciled_at for n, s in states.items() if n in self.specs and s.reconciled_at
        ]
        self.reconciler = Reconciler(
            self.config,
            self.plans,
            applier,
            {n: r for n, r in self.readers.items() if r.spec.kind == CursorKind.TIMESTAMP},
            last_completed=min(completed) if len(completed) == len(self.specs) else None,
        )
        self._reconciled_before = len(completed) == len(self.specs)
        with read_transaction(source):
            for name, reader in self.readers.items():
                reader.check_formats(source)
                nulls, unorderable = reader.missing_values(source)
                metrics.CURSOR_NULL_ROWS.labels(name).set(nulls + unorderable)
                if nulls or unorderable:
                    self.log.warning(
                        "cursor_values_missing",
                        table=name,
                        column=reader.spec.column,
                        null=nulls,
                        not_a_timestamp=unorderable,
                        examples=[repr(e) for e in reader.unorderable_examples(source)],
                        note="these rows are kept right by reconciliation only"
                        + (" (and re-copied on each pass)" if self._copy_nulls else ""),
                    )
        for name in self._switched:
            self.reconciler.request(name, "capture_changed")
        self._switched = []

    @property
    def _copy_nulls(self) -> bool:
        return self.config.capture.null_cursor == "copy"

    # -- the loop -----------------------------------------------------------------------

    def step(self, source: sqlite3.Connection, conn: Connection) -> bool:
        """Poll every cursor table once, apply, and take a reconciliation step when due.

        Returns True when more work is waiting (a poll hit its limit, or a
        reconciliation pass is under way), so the loop should not sleep.
        """
        assert self.applier is not None and self.reconciler is not None
        stream = self.config.stream
        limit = stream.batch_max_changes
        lookback = self.config.capture.lookback_seconds
        names = self.tables
        if not names:
            return False
        start = self._next % len(names)
        order = names[start:] + names[:start]
        self._next += 1
        polls: dict[str, Poll] = {}
        total = 0
        captured_at = time.time()
        with read_transaction(source):
            for name in order:
                if total >= limit:
                    break
                polls[name] = self.readers[name].poll(
                    source,
                    self.positions[name],
                    limit=limit - total,
                    lookback=lookback,
                    captured_at=captured_at,
                )
                total += len(polls[name].changes)
        changes = [c for name in names if name in polls for c in polls[name].changes]
        moved = {n: p for n, p in polls.items() if p.position != self.positions[n]}
        if changes:
            result = self.applier.apply(conn, changes, save=lambda cur, _r: self._save(cur, polls))
            self._record(result, polls)
        elif moved:
            with conn.transaction(), conn.cursor() as cur:
                self._save(cur, moved)
        for name, poll in polls.items():
            self.positions[name] = poll.position
            if poll.reconcile:
                self.reconciler.request(name, poll.reconcile)
        waiting = any(p.full for p in polls.values()) or len(polls) < len(names)
        self._lag(polls, waiting)
        reconciling = False
        if self.reconciler.due():
            self.reconciler.step(source, conn)
            reconciling = self.reconciler.current is not None
        return waiting or reconciling

    def _save(self, cur: Cursor, polls: Mapping[str, Poll]) -> None:
        for name, poll in polls.items():
            if poll.changes or poll.position != self.positions[name]:
                checkpoint.save_cursor_position(
                    cur, self.schema, name, poll.position.to_json(), len(poll.changes)
                )

    def _record(self, result: BatchResult, polls: Mapping[str, Poll]) -> None:
        now = time.time()
        metrics.BATCHES.inc()
        metrics.BATCH_DURATION.observe(result.seconds)
        metrics.BATCH_SIZE.observe(result.changes)
        for (table, op), count in result.applied.items():
            metrics.CHANGES_APPLIED.labels(table, op).inc(count)
            metrics.LAST_APPLIED.labels(table).set(now)
        for name, poll in polls.items():
            if poll.forward:
                metrics.CURSOR_ROWS.labels(name, "forward").inc(poll.forward)
            if poll.lookback:
                metrics.CURSOR_ROWS.labels(name, "lookback").inc(poll.lookback)
        for letter in result.dead_letters:
            metrics.DEAD_LETTERS.labels(letter.table).inc()
            self.log.warning("dead_letter", stage="cursor", reason=letter.describe())
        self.log.debug(
            "cursor_batch_applied",
            changes=result.changes,
            rows=sum(result.applied.values()),
            lookback=sum(p.lookback for p in polls.values()),
            ms=round(result.seconds * 1000, 2),
        )

    def _lag(self, polls: Mapping[str, Poll], waiting: bool) -> None:
        now = time.time()
        overall = 0.0
        for name, poll in polls.items():
            lag = 0.0
            if poll.full:
                seen = _timestamp_seconds(poll.position.value)
                lag = max(0.0, now - seen) if seen is not None else 0.0
            metrics.LAG_SECONDS.labels(name).set(lag)
            metrics.LAG_CHANGES.labels(name).set(0 if not poll.full else poll.forward)
            overall = max(overall, lag)
        self.lag_seconds = overall if waiting else 0.0
