"""Setting the reverse direction up and down, and reading where it stands.

``replicator reverse init`` migrates the state schema and installs a capture
trigger on every replicated PostgreSQL table (the tables the forward plans
name); ``replicator reverse uninstall`` removes them. ``replicator reverse
status`` reads the change table, the SQLite file's reverse position and the
daemon's lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from replicator.config import Config
from replicator.errors import ConfigError, LockHeldError, SourceError, TargetError
from replicator.plan.tables import TablePlan, build_plans
from replicator.reverse import position as rpos
from replicator.source import changelog
from replicator.source.sqlite import open_source
from replicator.state import reverse as state
from replicator.state.migrations import ensure_state
from replicator.target.connection import Connection, connect


def captured(plans: list[TablePlan]) -> list[state.CapturedTable]:
    return [state.CapturedTable(p.source.name, p.schema, p.name, p.target_key) for p in plans]


def plan_tables(config: Config, conn: Connection, source: sqlite3.Connection) -> list[TablePlan]:
    """The forward plans, each of a table PostgreSQL already has (the reverse
    direction follows a snapshot and cutover; it creates nothing there)."""
    plans = build_plans(source, conn, config)
    if missing := [f"{p.schema}.{p.name}" for p in plans if not p.exists]:
        raise TargetError(
            f"PostgreSQL has no table {missing[0]} ({len(missing)} missing): the reverse "
            "direction follows `replicator run` and `replicator cutover`, which create them"
        )
    return plans


def require_captured(cur: psycopg.Cursor[Any], schema: str, plans: list[TablePlan]) -> None:
    """Refuse to run while the capture triggers and the plans disagree (the
    configuration or the SQLite file changed since ``reverse init``): a captured
    table without a plan would have its changes consumed with nowhere to go, a
    planned table without a trigger would never see its writes."""
    have = set(state.captured_tables(cur))
    planned = {(p.schema, p.name) for p in plans}
    names = {p.source.name for p in plans}
    stray = sorted(f"{s}.{t}" for s, t in have - planned)
    stray += [f"changes of {t}" for t in state.waiting_tables(cur, schema) if t not in names]
    uncaptured = sorted(f"{s}.{t}" for s, t in planned - have)
    if stray or uncaptured:
        what = "; ".join(
            part
            for part in (
                f"captured, not replicated: {', '.join(stray)}" if stray else "",
                f"replicated, not captured: {', '.join(uncaptured)}" if uncaptured else "",
            )
            if part
        )
        raise ConfigError(
            f"the reverse capture does not match the tables this configuration replicates "
            f"({what}): run `replicator reverse init` again with it"
        )


def require_guarded_source(source: sqlite3.Connection) -> None:
    """Refuse to write to a source whose forward triggers would log the writes back."""
    if unguarded := changelog.unguarded_triggers(source):
        raise SourceError(
            f"the source's change-capture triggers predate the reverse direction "
            f"({len(unguarded)}, e.g. {unguarded[0]}): they would send its writes back to "
            "PostgreSQL; run `replicator init` (it recreates them) first"
        )


def reverse_init(config: Config, *, out: Callable[[str], None]) -> int:
    """Migrate the state schema and (re)install the capture triggers; returns how many."""
    dsn = config.require_target()
    schema = config.target.state_schema
    source = open_source(config.require_source(), busy_timeout_ms=config.source.busy_timeout_ms)
    try:
        with connect(dsn, connect_timeout=config.target.connect_timeout) as conn:
            ensure_state(conn, dsn, schema)
            require_guarded_source(source)
            plans = plan_tables(config, conn, source)
            with conn.transaction(), conn.cursor() as cur:
                count = state.install_capture(cur, schema, captured(plans))
                dropped = state.forget_uncaptured(cur, schema, [p.source.name for p in plans])
        # The position table now, not at the first batch: a schema change of the file
        # while a forward daemon runs (dual writes) is one it would have to look at.
        source.execute("BEGIN IMMEDIATE")
        rpos.ensure(source)
        source.execute("COMMIT")
    finally:
        source.close()
    out(f"reverse capture installed on {count} PostgreSQL table(s) (state schema {schema!r})")
    if dropped:
        out(f"forgot {dropped} waiting change(s) of tables this configuration no longer replicates")
    return count


def reverse_uninstall(config: Config, *, out: Callable[[str], None]) -> int:
    """Remove the capture triggers and function, and the SQLite reverse position (and
    the origin table, unless forward triggers still read it)."""
    dsn = config.require_target()
    schema = config.target.state_schema
    with connect(dsn, connect_timeout=config.target.connect_timeout) as conn:
        if state.lock_held(conn, schema):
            # Its next batch would create the position table again in the file.
            raise LockHeldError(
                f"a reverse daemon is running on state schema {schema!r}: stop it "
                "(SIGTERM) first, then uninstall"
            )
        conn.commit()
        with conn.transaction(), conn.cursor() as cur:
            count = state.remove_capture(cur, schema)
    if config.source.path is not None:
        source = open_source(config.require_source())
        try:
            source.execute("BEGIN IMMEDIATE")
            rpos.drop(source)
            changelog.drop_origin_if_unused(source)
            source.execute("COMMIT")
        finally:
            source.close()
    out(f"reverse capture removed from {count} PostgreSQL table(s)")
    return count


@dataclass
class ReverseStatus:
    """Where the reverse direction stands."""

    capture_tables: int = 0
    pending: int = 0
    oldest_age_seconds: float | None = None
    pending_by_table: dict[str, int] = field(default_factory=dict)
    daemon_running: bool = False
    batches: int = 0
    changes_applied: int = 0
    last_applied_at: float | None = None
    open_dead_letters: int = 0
    # Why the captured tables are not the replicated ones (None: they are, or
    # not looked at): a write to a replicated table without a trigger is never seen.
    capture_mismatch: str | None = None

    @property
    def in_sync(self) -> bool:
        return (
            self.capture_tables > 0
            and self.capture_mismatch is None
            and self.pending == 0
            and self.open_dead_letters == 0
        )

    @property
    def verdict(self) -> str:
        if self.capture_tables == 0:
            return "not set up: no capture trigger in PostgreSQL (replicator reverse init)"
        if self.capture_mismatch is not None:
            return self.capture_mismatch
        if self.open_dead_letters:
            return f"{self.open_dead_letters} row(s) SQLite refused (open reverse dead letters)"
        if self.pending:
            return f"{self.pending} change(s) not yet applied to SQLite"
        return "in sync: every change made in PostgreSQL is in SQLite"

    def render(self) -> str:
        age = f"{self.oldest_age_seconds:.1f}s" if self.oldest_age_seconds is not None else "-"
        lines = [
            f"capture triggers   {self.capture_tables} table(s)",
            f"reverse daemon     {'running' if self.daemon_running else 'not running'}",
            f"pending changes    {self.pending} (oldest {age})",
            f"applied            {self.changes_applied} change(s) in {self.batches} batch(es)",
            f"open dead letters  {self.open_dead_letters}",
        ]
        for table, count in sorted(self.pending_by_table.items()):
            lines.append(f"  {table:<20} {count} pending")
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def read_reverse_status(config: Config, *, check_capture: bool = False) -> ReverseStatus:
    """Where the reverse direction stands; with ``check_capture``, also whether
    the captured tables are the ones the configuration replicates (it plans them)."""
    schema = config.target.state_schema
    status = ReverseStatus()
    with connect(config.require_target(), autocommit=True) as conn, conn.cursor() as cur:
        status.capture_tables = len(state.captured_tables(cur))
        status.pending, oldest = state.depth(cur, schema)
        if oldest is not None:
            status.oldest_age_seconds = max(0.0, time.time() - oldest.timestamp())
        status.pending_by_table = {t: n for t, (n, _) in state.depth_by_table(cur, schema).items()}
        status.daemon_running = state.lock_held(conn, schema)
        if status.capture_tables:
            status.open_dead_letters = state.count_open_letters(cur, schema)
        source = open_source(config.require_source(), readonly=True)
        try:
            if check_capture and status.capture_tables:
                try:
                    require_captured(cur, schema, plan_tables(config, conn, source))
                except (ConfigError, TargetError) as exc:
                    status.capture_mismatch = str(exc)
        finally:
            source.close()
    source = open_source(config.require_source(), readonly=True)
    try:
        pos = rpos.load(source)
    finally:
        source.close()
    status.batches, status.changes_applied = pos.batches, pos.changes
    status.last_applied_at = pos.applied_at
    return status
