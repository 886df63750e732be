"""``replicator rollback``: the go / no-go for pointing the application back at SQLite.

The mirror of :mod:`replicator.proof.cutover`. Checks: the reverse capture is
installed; every change made in PostgreSQL reached the SQLite file (reverse lag
zero, waiting for the reverse daemon when it runs); ``verify`` finds SQLite and
PostgreSQL identical row by row; no row is held in a reverse dead letter; and
PostgreSQL was not written while the checks ran (a write to a table already
verified would otherwise pass unseen: the mirror of cutover's quiet check). On
GO (and not ``--dry-run``): SQLite's AUTOINCREMENT marks are moved past every id
PostgreSQL handed out, and the rollback is recorded in the state schema with the
steps that remain for the operator.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from psycopg import sql

from replicator.config import Config
from replicator.identifiers import pg_ident
from replicator.plan.ddl import target_sequences
from replicator.plan.tables import TablePlan, build_plans
from replicator.proof.cutover import GateReport, run_check
from replicator.proof.verify import Verifier
from replicator.reverse.setup import read_reverse_status, require_captured
from replicator.source.sqlite import open_source
from replicator.state import reverse as state
from replicator.target.connection import Connection, connect

NEXT_STEPS = (
    "keep the application from writing to PostgreSQL (maintenance mode or read-only role)",
    "run `replicator rollback` again if any write happened after this GO",
    "point the application back at SQLite (DATABASE_PATH) and start it",
    "stop `replicator reverse run` (SIGTERM), then `replicator reverse uninstall`",
    "start `replicator run` again to keep PostgreSQL following SQLite for the next attempt",
)


@dataclass
class RollbackReport(GateReport):
    next_steps: tuple[str, ...] = ()

    def render(self) -> str:
        lines = [super().render()]
        lines.extend(f"  {i}. {s}" for i, s in enumerate(self.next_steps, 1))
        return "\n".join(lines)


class Rollback:
    def __init__(
        self,
        config: Config,
        *,
        dry_run: bool = False,
        timeout: float = 300.0,
        out: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.dry_run = dry_run
        self.timeout = timeout
        self.out = out
        self.schema = config.target.state_schema
        self._head: int | None = None  # capture head when the lag reached zero

    def _step(self, report: RollbackReport, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        return run_check(report, name, fn, self.out)

    def run(self) -> RollbackReport:
        report = RollbackReport(dry_run=self.dry_run)
        self._head = None
        if self._step(report, "reverse capture installed", self._installed):
            self._step(report, "reverse lag zero", self._lag_zero)
        self._step(report, "verify", self._verify)
        self._step(report, "no reverse dead letters", self._letters)
        if self._head is not None:
            self._step(report, "PostgreSQL not written", self._not_written)
        if self.dry_run:
            return report
        if report.go:
            self._step(report, "SQLite ids ahead", self._ids_ahead)
        else:
            self.out("[SKIP] SQLite ids ahead             nothing is written on a no-go")
        if report.go:
            report.next_steps = NEXT_STEPS
            self._record(report)
            for i, s in enumerate(NEXT_STEPS, 1):
                self.out(f"  {i}. {s}")
        return report

    def _installed(self) -> tuple[bool, str]:
        status = read_reverse_status(self.config)
        running = "running" if status.daemon_running else "not running"
        if status.capture_tables == 0:
            return False, f"no table captured; reverse daemon {running}"
        # Every replicated table captured, and nothing else: a write to a table
        # without the trigger would pass the lag and quiet checks unseen.
        conn = connect(self.config.require_target(), autocommit=True)
        source = open_source(self.config.require_source(), readonly=True)
        try:
            with conn, conn.cursor() as cur:
                require_captured(cur, self.schema, build_plans(source, conn, self.config))
        finally:
            source.close()
        return True, f"{status.capture_tables} table(s) captured; reverse daemon {running}"

    def _lag_zero(self) -> tuple[bool, str]:
        deadline = time.monotonic() + self.timeout
        status = read_reverse_status(self.config)
        while status.pending and status.daemon_running and time.monotonic() < deadline:
            time.sleep(0.2)
            status = read_reverse_status(self.config)
        if status.pending:
            why = "" if status.daemon_running else " (reverse daemon not running to apply them)"
            return False, f"{status.pending} change(s) not yet applied to SQLite{why}"
        self._head = self._capture_head()
        return (
            True,
            f"every change made in PostgreSQL is in SQLite ({status.changes_applied} applied)",
        )

    def _capture_head(self) -> int:
        with connect(self.config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
            return state.capture_head(cur, self.schema)

    def _not_written(self) -> tuple[bool, str]:
        """No change captured since the lag reached zero, and none waiting: what
        verify compared is what PostgreSQL holds now."""
        assert self._head is not None
        head = self._capture_head()
        status = read_reverse_status(self.config)
        if head == self._head and not status.pending:
            return True, "no change captured in PostgreSQL while the checks ran"
        return False, (
            f"PostgreSQL was written while the checks ran ({head - self._head} change(s) "
            f"captured, {status.pending} not yet in SQLite): stop the application's writes "
            "to PostgreSQL, then run rollback again"
        )

    def _verify(self) -> tuple[bool, str]:
        result = Verifier(self.config).run()
        diffs = sum(t.differences for t in result.tables)
        rows = sum(t.source_rows for t in result.tables)
        detail = f"{rows} rows in {len(result.tables)} tables; {diffs} difference(s)"
        return diffs == 0 and not result.json_invalid, detail

    def _letters(self) -> tuple[bool, str]:
        with connect(self.config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
            count = state.count_open_letters(cur, self.schema)
        return count == 0, f"{count} open reverse dead letter(s)"

    def _ids_ahead(self) -> tuple[bool, str]:
        conn = connect(self.config.require_target(), autocommit=True)
        source = open_source(self.config.require_source())
        try:
            with conn:
                plans = build_plans(source, conn, self.config)
                moved = sqlite_sequences_ahead(conn, source, plans)
        finally:
            source.close()
        return True, f"{moved} AUTOINCREMENT mark(s) moved past PostgreSQL's sequences"

    def _record(self, report: RollbackReport) -> None:
        with connect(self.config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
            state.save_rollback(cur, self.schema, report.to_json())


def sqlite_sequences_ahead(
    conn: Connection, source: sqlite3.Connection, plans: list[TablePlan]
) -> int:
    """Set each AUTOINCREMENT table's ``sqlite_sequence`` mark to at least the last
    value its PostgreSQL sequence handed out: SQLite then never gives a new row an id
    PostgreSQL used (for a row since deleted, or in a transaction rolled back)."""
    marks: dict[str, int] = {}
    for plan in plans:
        src = plan.source
        if not src.autoincrement or src.rowid_alias is None:
            continue
        for column, (seq_schema, seq_name) in target_sequences(conn, plan):
            by_target = {c.target: c.source for c in plan.columns}
            if by_target.get(column) != src.rowid_alias:
                continue
            row = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(
                    pg_ident(seq_schema, seq_name)
                )
            ).fetchone()
            if row is not None and row[1]:
                marks[src.name] = int(row[0])
    moved = 0
    source.execute("BEGIN IMMEDIATE")
    try:
        for table, value in marks.items():
            cur = source.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = ? AND seq < ?",
                (value, table, value),
            )
            if (
                cur.rowcount == 0
                and not source.execute(
                    "SELECT 1 FROM sqlite_sequence WHERE name = ?", (table,)
                ).fetchone()
            ):
                source.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value)
                )
                moved += 1
            moved += cur.rowcount
        source.execute("COMMIT")
    except BaseException:
        source.execute("ROLLBACK")
        raise
    return moved
