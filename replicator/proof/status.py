"""``replicator status``: how far behind PostgreSQL is, whether or not the daemon runs.

Everything comes from the state schema in PostgreSQL (position, per-table
stats, the daemon's heartbeat, dead letters), the advisory lock, and the
SQLite file (row counts, the change log's head). The SQLite file is opened
read-only and each read is a short transaction.

When PostgreSQL cannot be read, or the daemon's heartbeat there has stopped
(it cannot write one while the target is unreachable), the daemon's own
health endpoint (``metrics.address``) is asked how it is doing: ``retrying``
with its last error, or ``paused``.

Exit codes: 0 in sync; 1 behind, stalled or not started; 2 state unreadable.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from replicator.config import Config, parse_address
from replicator.errors import ConfigError, ReplicatorError, SourceError
from replicator.identifiers import pg_ident, sqlite_ident
from replicator.plan.tables import select_tables
from replicator.source import changelog, consumers
from replicator.source.sqlite import list_tables, open_source, read_transaction
from replicator.state import reverse as reverse_state
from replicator.state import verifymarks
from replicator.state.checkpoint import (
    consumer_id,
    count_cursor_tables,
    load_cursor_states,
    load_progress,
)
from replicator.state.deadletter import count_open, count_waiting
from replicator.state.heartbeat import load_daemon, load_rates
from replicator.state.lock import lock_holder, pair_id
from replicator.state.migrations import current_revision, head_revision
from replicator.state.position import load_position, load_table_stats
from replicator.state.shapes import load_holds
from replicator.target.connection import Connection, Cursor, connect, first_line

STALE_AFTER = 15.0  # seconds without a heartbeat before a "running" daemon is called stale
# Caught up, but rows are held in dead letters: not "in sync", and not "behind" either.
EXIT_HELD = 7


class StateUnreadable(ReplicatorError):
    exit_code = 2


@dataclass
class TableStatus:
    table: str
    mode: str
    source_rows: int | None
    target_rows: int | None
    snapshot: str
    lag_changes: int
    lag_seconds: float
    last_applied_at: datetime | None
    per_second: float
    dead_letters: int
    paused: str | None = None  # why its changes are not applied (a schema change)


@dataclass
class DaemonStatus:
    state: str  # running (streaming/snapshot/retrying/standby), stopped, stale, never started
    host: str | None = None
    pid: int | None = None
    since: datetime | None = None
    heartbeat_age: float | None = None
    last_error: str | None = None
    lock_holder: str | None = None


@dataclass
class ConsumerStatus:
    """A target fed from this source's change log (replicator/source/consumers.py)."""

    consumer: str
    target: str  # redacted DSN
    state_schema: str
    position: int
    behind: int | None  # changes in the log after its position (the head minus it)
    seen_ago: float  # seconds since its replicator last touched its row
    this_target: bool
    stale: bool  # not seen for consumers.STALE_AFTER: maybe gone for good


@dataclass
class Status:
    daemon: DaemonStatus
    tables: list[TableStatus] = field(default_factory=list)
    applied_position: int | None = None
    source_position: int | None = None
    verdict: str = "not started"
    eta_seconds: float | None = None
    exit_code: int = 1
    source_error: str | None = None  # the SQLite file could not be read (truncated, gone...)
    held: int = 0  # rows in open dead letters: not in the target as the source has them
    waiting: int = 0  # of those, rows refused for a missing parent (they heal when it comes)
    unreconciled: list[str] = field(default_factory=list)  # cursor tables never reconciled
    consumers: list[ConsumerStatus] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reverse: str | None = None  # the reverse direction, once `replicator reverse init` ran
    # The change log kept past what the targets applied, for `verify --changed`.
    log_kept: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["lag_changes"] = sum(t.lag_changes for t in self.tables)
        out["lag_seconds"] = max((t.lag_seconds for t in self.tables), default=0.0)
        return out


def _q(conn: Connection, query: sql.SQL | sql.Composed, params: tuple[Any, ...] = ()) -> list[Any]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def read_status(config: Config) -> Status:
    dsn = config.require_target()
    schema = config.target.state_schema
    try:
        conn = connect(dsn, autocommit=True, connect_timeout=config.target.connect_timeout)
    except ReplicatorError as exc:
        live = ask_daemon(config)
        if live is None:
            raise StateUnreadable(str(exc)) from None
        return _daemon_only(live, str(exc))
    try:
        with conn:
            return _read(conn, config, schema)
    except psycopg.Error as exc:
        raise StateUnreadable(
            f"cannot read the state schema {schema!r}: {first_line(exc)}"
        ) from None


def _read(conn: Connection, config: Config, schema: str) -> Status:
    revision = current_revision(conn, schema)
    if revision is None:
        return Status(daemon=DaemonStatus(state="never started"), verdict="not started")
    if revision != head_revision():
        raise StateUnreadable(
            f"the state schema {schema!r} is at revision {revision}, this replicator needs "
            f"{head_revision()}: run `replicator init`"
        )
    daemon = _daemon(conn, schema)
    if daemon.state == "stale heartbeat":
        # Maybe running but unable to reach the target: it says so itself.
        live = ask_daemon(config)
        if live is not None:
            daemon.state = f"running ({live['state']})"
            daemon.pid = int(live["pid"]) if live.get("pid") else daemon.pid
            daemon.last_error = str(live.get("last_error") or daemon.last_error or "") or None
    with conn.cursor() as cur:
        position = load_position(cur, schema)
        progress = load_progress(cur, schema)
        stats = load_table_stats(cur, schema)
        # The reverse direction's letters are rows SQLite refused: not held from the target.
        dead = count_open(cur, schema, direction="forward")
        way_back = _reverse_line(conn, cur, schema)
        hold = verifymarks.log_hold(cur, schema, config.stream.verify_keep_seconds)
        waiting = count_waiting(cur, schema)
        cursors = load_cursor_states(cur, schema) if count_cursor_tables(cur, schema) else {}
        me = consumer_id(cur, schema, create=False)
    applied = position.seq if position is not None else None
    rates = load_rates(conn, schema)
    held = dict(sorted(load_holds(conn, schema).items()))
    status = Status(
        daemon=daemon,
        applied_position=applied,
        held=sum(dead.values()),
        waiting=waiting,
        unreconciled=sorted(n for n, c in cursors.items() if c.reconciled_at is None),
        reverse=way_back,
    )
    if hold is not None and applied is not None and hold[0] < applied:
        status.log_kept = (
            f"kept from position {hold[0]} (not pruned) for `replicator verify --changed`: "
            f"an identical verify at {hold[1]:%Y-%m-%d %H:%M:%S %Z}; pruned again "
            f"stream.verify_keep_seconds ({config.stream.verify_keep_seconds:g} s) after it"
        )

    path = config.require_source()
    names: list[str] = []
    triggers: set[str] = set()
    head: int | None = None
    lag: dict[str, tuple[int, float | None]] = {}
    counts: dict[str, int] = {}
    registered: list[consumers.Consumer] = []
    try:
        source = open_source(path, readonly=True, busy_timeout_ms=config.source.busy_timeout_ms)
        try:
            with read_transaction(source):
                names = select_tables(
                    list_tables(source), config.tables.include, config.tables.exclude
                )
                has_log = changelog.changelog_exists(source)
                triggers = set(changelog.installed_triggers(source).values()) if has_log else set()
                head = changelog.head_position(source) if has_log else None
                if has_log and applied is not None:
                    lag = changelog.lag_by_table(source, applied)
                if status.log_kept and hold is not None and head is not None:
                    # Pruned while the hold was off (a shorter keep): nothing is kept.
                    status.log_kept = (
                        None if changelog.pruned_past(source, hold[0], head) else status.log_kept
                    )
                registered = consumers.registered(source)
                counts = {
                    n: int(source.execute(f"SELECT count(*) FROM {sqlite_ident(n)}").fetchone()[0])
                    for n in names
                }
        finally:
            source.close()
    except (SourceError, sqlite3.Error) as exc:
        # A truncated or vanished file is exactly when status must still answer.
        status.source_error = f"{path}: {exc}"
    status.source_position = head
    now = time.time()
    # A target that streams from the log has a position past 0 (one a cursor follows
    # alone stays at 0): only such a target has something to lose by not being registered.
    _consumers(status, registered, me, now, followed=bool(applied))
    for name in [*names, *(n for n in held if n not in names)]:
        target_rows = _target_count(
            conn, config.target.schema, config.table_config(name).target or name
        )
        snap = progress.get(name)
        if snap is None:
            snapshot = "not started"
        elif snap.done:
            snapshot = "done"
        else:
            total = snap.rows_total or 0
            snapshot = f"{100 * snap.rows_written / total:.0f}%" if total else "running"
        count, oldest = lag.get(name, (0, None))
        mode = "triggers" if name in triggers else "cursor" if name in cursors else "none"
        if name in held:
            mode = held[name].state  # "paused", or "resync" while it is compared and repaired
        status.tables.append(
            TableStatus(
                table=name,
                mode=mode,
                source_rows=counts.get(name),
                target_rows=target_rows,
                snapshot=snapshot,
                lag_changes=count,
                lag_seconds=round(max(0.0, now - oldest), 3) if oldest is not None else 0.0,
                last_applied_at=stats.get(name, (0, None))[1],
                per_second=float(rates.get(name, 0.0)),
                dead_letters=dead.get(name, 0),
                paused=held[name].reason if name in held else None,
            )
        )
    _verdict(status)
    return status


def _reverse_line(conn: Connection, cur: Cursor, schema: str) -> str | None:
    """One line on the way back (PostgreSQL -> SQLite), when its capture is installed;
    the details are `replicator reverse status`."""
    captured = len(reverse_state.captured_tables(cur))
    if not captured:
        return None
    pending, oldest = reverse_state.depth(cur, schema)
    age = f" (oldest {max(0.0, time.time() - oldest.timestamp()):.1f}s)" if oldest else ""
    daemon = "running" if reverse_state.lock_held(conn, schema) else "not running"
    letters = reverse_state.count_open_letters(cur, schema)
    return (
        f"{pending} change(s) made in PostgreSQL not yet in SQLite{age}; reverse daemon "
        f"{daemon}; {letters} open reverse dead letter(s) ({captured} table(s) captured)"
    )


def _consumers(
    status: Status,
    registered: list[consumers.Consumer],
    me: str | None,
    now: float,
    *,
    followed: bool,
) -> None:
    """The targets fed from this source, and what about them needs an operator."""
    head = status.source_position
    for c in registered:
        behind = max(0, head - c.position) if head is not None else None
        status.consumers.append(
            ConsumerStatus(
                c.consumer,
                c.target,
                c.state_schema,
                c.position,
                behind,
                round(c.seen_ago(now), 1),
                c.consumer == me,
                c.stale(now),
            )
        )
        if c.stale(now):
            status.warnings.append(
                f"target {c.label} (consumer {c.consumer}) has not been seen for "
                f"{_duration(c.seen_ago(now))} and keeps {_n(behind)} change(s) in the log; "
                f"if it is gone for good: replicator uninstall --consumer {c.consumer}"
            )
    if followed and registered and all(c.consumer != me for c in registered):
        status.warnings.append(
            "this target is not registered in the source, so other targets' replicators "
            "may prune changes it has not applied: its next `replicator run` registers it "
            "(and re-syncs its tables if changes were pruned meanwhile)"
        )


def consumer_line(c: consumers.Consumer) -> str:
    """One registered target, as ``uninstall`` shows it."""
    return _line(c.consumer, c.label, c.position, None, c.seen_ago(), c.stale(), this=False)


def _line(
    consumer: str,
    label: str,
    position: int,
    behind: int | None,
    seen_ago: float,
    stale: bool,
    *,
    this: bool,
) -> str:
    how_far = f", {behind} behind" if behind is not None else ""
    gone = " — NOT SEEN: gone for good?" if stale else ""
    return (
        f"{'*' if this else ' '} {consumer}  {label}  position {position}{how_far}, "
        f"seen {_duration(seen_ago)} ago{gone}"
    )


def _target_count(conn: Connection, schema: str, table: str) -> int | None:
    try:
        rows = _q(conn, sql.SQL("SELECT count(*) FROM {}").format(pg_ident(schema, table)))
    except psycopg.errors.UndefinedTable:
        return None
    return int(rows[0][0])


def _daemon(conn: Connection, schema: str) -> DaemonStatus:
    row = load_daemon(conn, schema)
    holder = lock_holder(conn, schema)
    if row is None:
        return DaemonStatus(state="never started", lock_holder=holder)
    age_s = row.heartbeat_age
    if row.stopped_at is not None and holder is None:
        shown = "stopped"
    elif holder is None or (age_s is not None and age_s > STALE_AFTER):
        shown = "stale heartbeat"
    else:
        shown = f"running ({row.state})"
    return DaemonStatus(
        state=shown,
        host=row.host,
        pid=row.pid,
        since=row.stopped_at if shown == "stopped" else row.started_at,
        heartbeat_age=round(age_s, 1) if age_s is not None else None,
        last_error=row.last_error,
        lock_holder=holder,
    )


def ask_daemon(config: Config) -> dict[str, Any] | None:
    """The daemon's /healthz answer at ``metrics.address``: None when nothing answers
    there, or something that is not the replicator of this source and state schema."""
    if not config.metrics.address:
        return None
    try:
        host, port = parse_address(config.metrics.address)
    except ConfigError:
        return None
    if port == 0:
        return None  # a port chosen at start-up: only the daemon's log knows it
    if host in ("", "0.0.0.0"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    elif ":" in host:  # IPv6
        host = "[::1]" if host == "::" else f"[{host}]"
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:  # 503: alive but stuck, still an answer
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        found = json.loads(body)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("pair") != pair_id(config):
        return None
    return found if "state" in found else None


def _daemon_only(live: dict[str, Any], unreadable: str) -> Status:
    """What can be told while PostgreSQL cannot be read: the daemon's own word."""
    state = str(live["state"])
    error = str(live.get("last_error") or "")
    daemon = DaemonStatus(
        state=f"running ({state})",
        pid=int(live["pid"]) if live.get("pid") else None,
        heartbeat_age=float(live.get("last_tick_age_s") or 0.0),
        last_error=error or None,
    )
    if state in ("retrying", "paused"):
        because = f": {error}" if error else ""
        verdict, code = f"stalled — {state}{because} (target unreadable here: {unreadable})", 1
    else:
        verdict, code = f"unknown — the daemon reports {state}, but {unreadable}", 2
    return Status(daemon=daemon, verdict=verdict, exit_code=code)


def _verdict(status: Status) -> None:
    lag = sum(t.lag_changes for t in status.tables)
    rate = sum(t.per_second for t in status.tables)
    snapshot_done = all(t.snapshot == "done" for t in status.tables)
    running = status.daemon.state.startswith("running")
    if status.applied_position is None and all(t.snapshot == "not started" for t in status.tables):
        status.verdict, status.exit_code = "not started", 1
    elif "retrying" in status.daemon.state or "paused" in status.daemon.state:
        word = "retrying" if "retrying" in status.daemon.state else "paused"
        error = f": {status.daemon.last_error}" if status.daemon.last_error else ""
        status.verdict, status.exit_code = f"stalled — {word}{error}", 1
    elif status.source_error:
        status.verdict = f"stalled — the source cannot be read: {status.source_error}"
        status.exit_code = 1
    elif not snapshot_done:
        status.verdict = (
            "catching up — snapshot in progress" if running else "stalled — snapshot unfinished"
        )
        status.exit_code = 1
    elif paused := [t for t in status.tables if t.mode == "paused"]:
        more = f" (and {len(paused) - 1} more)" if len(paused) > 1 else ""
        status.verdict = f"paused — {paused[0].table}: {paused[0].paused}{more}"
        status.exit_code = 1
    elif status.unreconciled:
        # A cursor sees no deletes: until a reconciliation pass has compared the
        # table with its source, nobody can say the target holds what it holds.
        doing = "catching up" if running else "stalled"
        status.verdict = (
            f"{doing} — not yet reconciled (cursor capture): {', '.join(status.unreconciled)}"
        )
        status.exit_code = 1
    elif lag == 0:
        note = "" if running else f" (daemon {status.daemon.state})"
        if status.held:
            waiting = f", {status.waiting} waiting for a parent" if status.waiting else ""
            status.verdict = (
                f"in sync except {status.held} row(s) held{waiting}: "
                f"see `replicator dead-letters list`{note}"
            )
            status.exit_code = EXIT_HELD
        else:
            status.verdict, status.exit_code = f"in sync{note}", 0
    elif running and rate > 0:
        status.eta_seconds = round(lag / rate, 1)
        status.verdict, status.exit_code = f"catching up — ETA {_duration(status.eta_seconds)}", 1
    else:
        status.verdict, status.exit_code = "stalled", 1


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    delta = (datetime.now(UTC) - moment).total_seconds()
    return f"{_duration(max(0.0, delta))} ago"


def render(status: Status) -> str:
    d = status.daemon
    lines = []
    who = f" on {d.host} pid {d.pid}" if d.host else ""
    since = f", since {d.since:%Y-%m-%d %H:%M:%S %Z}" if d.since else ""
    beat = f", heartbeat {d.heartbeat_age:.0f}s ago" if d.heartbeat_age is not None else ""
    lines.append(f"daemon: {d.state}{who}{since}{beat}")
    if d.lock_holder:
        lines.append(f"lock:   held by {d.lock_holder}")
    if d.last_error:
        lines.append(f"last error: {d.last_error}")
    if status.source_error:
        lines.append(f"source: cannot be read: {status.source_error}")
    lines.append(f"position: applied {_n(status.applied_position)} of {_n(status.source_position)}")
    head = (
        f"{'table':<26} {'mode':<8} {'source':>9} {'target':>9} {'snapshot':>9} {'lag':>7} "
        f"{'lag s':>7} {'last applied':>13} {'/s':>7} {'dead':>5}"
    )
    lines += [head, "-" * len(head)]
    for t in status.tables:
        lines.append(
            f"{t.table[:26]:<26} {t.mode:<8} {_n(t.source_rows):>9} {_n(t.target_rows):>9} "
            f"{t.snapshot:>9} {t.lag_changes:>7} {t.lag_seconds:>7.1f} "
            f"{_ago(t.last_applied_at):>13} {t.per_second:>7.1f} {t.dead_letters:>5}"
        )
    for t in status.tables:
        if t.paused is not None:
            lines.append(f"{t.mode}: {t.table} — {t.paused}")
    if len(status.consumers) > 1:
        lines.append(
            f"targets fed from this source: {len(status.consumers)} "
            "(the change log is kept down to the slowest; * is this one)"
        )
        for c in status.consumers:
            label = f"{c.target} (state schema {c.state_schema!r})"
            lines.append(
                _line(
                    c.consumer, label, c.position, c.behind, c.seen_ago, c.stale, this=c.this_target
                )
            )
    lines += [f"warning: {w}" for w in status.warnings]
    if status.log_kept:
        lines.append(f"change log: {status.log_kept}")
    if status.reverse:
        lines.append(f"reverse: {status.reverse}")
    lines.append(f"verdict: {status.verdict}")
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
