"""``replicator cutover``: a scripted go / no-go for switching the app to PostgreSQL.

Each step is a named check with its evidence; the first failing check makes
the verdict no-go (later checks still run where they can, so the report is
complete). With ``--dry-run`` nothing is written: sequences are not moved and
the cutover is not recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replicator.config import Config
from replicator.plan.ddl import advance_sequences, target_sequences
from replicator.plan.tables import build_plans
from replicator.proof.status import read_status
from replicator.proof.verify import Verifier
from replicator.source import changelog
from replicator.source.sqlite import open_source, read_transaction
from replicator.state import checkpoint
from replicator.state.position import load_position
from replicator.target.connection import Connection, connect, first_line


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class GateReport:
    """A go / no-go: every check passed, or not; `cutover` and `rollback` are both one."""

    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False

    @property
    def go(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "go": self.go}

    def render(self) -> str:
        lines = [f"[{'PASS' if c.ok else 'FAIL'}] {c.name:<28} {c.detail}" for c in self.checks]
        mode = " (dry run: nothing written)" if self.dry_run else ""
        lines.append(f"verdict: {'GO' if self.go else 'NO-GO'}{mode}")
        return "\n".join(lines)


@dataclass
class CutoverReport(GateReport):
    position: int | None = None


def run_check(
    report: GateReport,
    name: str,
    fn: Callable[[], tuple[bool, str]],
    out: Callable[[str], None],
) -> bool:
    """Run one check into ``report``; an exception is a failed check with its reason,
    never a crash of the gate."""
    started = time.monotonic()
    try:
        ok, detail = fn()
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {first_line(exc)}"
    report.checks.append(Check(name, ok, detail, round(time.monotonic() - started, 2)))
    out(f"[{'PASS' if ok else 'FAIL'}] {name:<28} {detail}")
    return ok


class Cutover:
    def __init__(
        self,
        config: Config,
        *,
        dry_run: bool = False,
        quiet_seconds: float = 0.0,
        timeout: float = 300.0,
        queries: Path | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.config = config
        self.dry_run = dry_run
        self.quiet_seconds = quiet_seconds
        self.timeout = timeout
        self.queries = queries
        self.out = out
        self.schema = config.target.state_schema

    def _step(self, report: CutoverReport, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        return run_check(report, name, fn, self.out)

    def run(self) -> CutoverReport:
        report = CutoverReport(dry_run=self.dry_run)
        running = self._step(report, "daemon running", self._daemon_running)
        if self.quiet_seconds > 0:
            self._step(report, f"source quiet {self.quiet_seconds:.0f}s", self._quiet)
        if running:
            self._step(report, "tail applied (lag zero)", lambda: self._tail(report))
        else:
            self._step(report, "tail applied (lag zero)", self._lag_now)
        self._step(report, "verify", self._verify)
        if self.queries is not None:
            self._step(report, "query parity", self._queries)
        if self.dry_run:
            self._step(report, "sequences ahead", self._sequences_dry)
        elif report.go:
            self._step(report, "sequences reset", self._sequences)
        else:
            self.out("[SKIP] sequences reset             nothing is written on a no-go")
        if not self.dry_run and report.go:
            self._record(report)
        return report

    # -- checks ---------------------------------------------------------------

    def _daemon_running(self) -> tuple[bool, str]:
        status = read_status(self.config)
        d = status.daemon
        ok = d.state.startswith("running") and "retrying" not in d.state
        return ok, f"{d.state}" + (f" ({d.lock_holder})" if d.lock_holder else "")

    def _head(self) -> int:
        source = open_source(self.config.require_source(), readonly=True)
        try:
            with read_transaction(source):
                return changelog.head_position(source)
        finally:
            source.close()

    def _applied(self) -> int | None:
        with connect(self.config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
            position = load_position(cur, self.schema)
        return position.seq if position is not None else None

    def _quiet(self) -> tuple[bool, str]:
        deadline = time.monotonic() + self.timeout
        head = self._head()
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.quiet_seconds / 4))
            now_head = self._head()
            if now_head != head:
                head, quiet_since = now_head, time.monotonic()
            elif time.monotonic() - quiet_since >= self.quiet_seconds:
                return True, f"no change captured for {self.quiet_seconds:.0f}s (head {head})"
        return False, f"the source kept changing for {self.timeout:.0f}s (head {head})"

    def _tail(self, report: CutoverReport) -> tuple[bool, str]:
        head = self._head()
        deadline = time.monotonic() + self.timeout
        applied = self._applied()
        while time.monotonic() < deadline:
            applied = self._applied()
            if applied is not None and applied >= head:
                report.position = applied
                return True, f"applied position {applied} reached the source head {head}"
            time.sleep(0.2)
        return False, f"applied {applied}, source head {head}: not caught up in {self.timeout:.0f}s"

    def _lag_now(self) -> tuple[bool, str]:
        head, applied = self._head(), self._applied()
        ok = applied is not None and applied >= head
        return ok, f"applied {applied}, source head {head} (daemon not running to apply more)"

    def _verify(self) -> tuple[bool, str]:
        result = Verifier(self.config).run()
        diffs = sum(t.differences for t in result.tables)
        detail = (
            f"{sum(t.source_rows for t in result.tables)} rows in {len(result.tables)} tables; "
            f"{diffs} difference(s), {result.open_dead_letters} open dead letter(s), "
            f"{len(result.orphans)} orphan constraint(s), "
            f"{len(result.sequences_behind)} sequence(s) behind"
        )
        if result.open_reverse_dead_letters:
            # Writes made in PostgreSQL that SQLite refused before a rollback: the rows
            # themselves are compared above; the letters stay listed until discarded.
            detail += (
                f"; {result.open_reverse_dead_letters} open reverse dead letter(s), not blocking"
            )
        # Sequences are reset by the next step; everything else must be clean.
        ok = (
            diffs == 0
            and result.open_dead_letters == 0
            and not result.orphans
            and not result.json_invalid
        )
        return ok, detail

    def _queries(self) -> tuple[bool, str]:
        from replicator.queries.checker import check_queries

        assert self.queries is not None
        result = check_queries(self.config, self.queries)
        return bool(result.ok), f"{self.queries}: {result.summary()}"

    def _sequence_plans(self) -> tuple[Connection, list[Any]]:
        conn = connect(self.config.require_target(), autocommit=True)
        source = open_source(self.config.require_source(), readonly=True)
        try:
            plans = build_plans(source, conn, self.config)
        finally:
            source.close()
        return conn, plans

    def _sequences_dry(self) -> tuple[bool, str]:
        conn, plans = self._sequence_plans()
        with conn:
            count = sum(len(target_sequences(conn, p)) for p in plans)
        return True, f"{count} sequence(s) would be set past their largest id"

    def _sequences(self) -> tuple[bool, str]:
        conn, plans = self._sequence_plans()
        source = open_source(self.config.require_source(), readonly=True)
        try:
            with conn:
                moved = advance_sequences(conn, source, plans)
        finally:
            source.close()
        return True, f"{moved} sequence(s) set past the largest id in either database"

    def _record(self, report: CutoverReport) -> None:
        with (
            connect(self.config.require_target(), autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            checkpoint.save_meta(
                cur, self.schema, "cutover", json.loads(json.dumps(report.to_json(), default=str))
            )
