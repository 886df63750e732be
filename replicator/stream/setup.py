"""Planning the stream on a connection, and following the source's schema as it moves.

:func:`setup` runs when the daemon connects (``startup``) and again whenever
the source's schema changes: it plans the tables, installs the capture
triggers, records the stream position before a first snapshot, runs that
snapshot, and builds the applier. A change it cannot follow alone pauses one
table (:func:`hold`); new tables and re-synced ones are brought in by
:func:`follow_drift` once the stream has passed the new triggers' start.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from replicator import metrics
from replicator.dsn import redact_dsn
from replicator.errors import ConfigError
from replicator.plan.tables import TablePlan, require_includes
from replicator.snapshot import Snapshotter
from replicator.source import changelog, consumers
from replicator.source.sqlite import SourceGuard, list_tables, read_transaction
from replicator.state import checkpoint
from replicator.state.migrations import ensure_state
from replicator.state.position import init_position, load_position, save_position
from replicator.state.shapes import Hold
from replicator.stream import drift
from replicator.stream.apply import Applier
from replicator.stream.cursor import CursorStream, open_for_capture
from replicator.stream.reconcile import Reconciler
from replicator.target.connection import connect
from replicator.target.writer import TableWriter

if TYPE_CHECKING:
    from replicator.stream.daemon import Daemon


def setup(d: Daemon, *, startup: bool) -> None:
    """Plan, install the triggers, build the appliers; at start-up also record the
    position and snapshot.

    A source schema change runs it again (``startup`` false): the tables the
    change touched are planned again, re-synced or paused (replicator/drift.py);
    the others keep their plans, and the stream its position.
    """
    assert d.source is not None and d.conn is not None
    source, conn = d.source, d.conn
    previous = {} if startup else {p.source.name: p for p in d.plans}
    if startup:
        with read_transaction(source):
            require_includes(list_tables(source), d.config.tables.include)
    with conn.cursor() as cur:
        position = load_position(cur, d.schema)
        progress = checkpoint.load_progress(cur, d.schema)
    if d.consumer is None:
        d.consumer = identity(d)
    while True:
        found = drift.survey(source, d.config)
        later = capture_new(d, found)
        decision = drift.decide(
            source,
            conn,
            d.config,
            found,
            d.watch,
            previous,
            cursor_tables=[n for n, s in d.specs.items() if s is not None],
            leave_out=later,
            startup=startup,
            go_ahead=startup and not d.ready_sent,  # not after a mere reconnect
        )
        trigger_plans = [p for p in decision.plans if d.specs.get(p.source.name) is None]
        installed: changelog.Installed | None = None
        try:
            if trigger_plans or (not startup and d.triggers):
                installed = changelog.install_triggers(
                    source,
                    [p.source for p in trigger_plans],
                    expect_version=found.version,
                    consumer=d.consumer,
                    position=position.seq if position is not None else None,
                    since=d.tail.confirmed,
                )
        except changelog.SchemaChanged:
            continue  # changed again while we planned: plan again
        break
    d.plans = decision.plans
    metrics.declare_tables([p.source.name for p in d.plans])
    d.triggers = bool(trigger_plans)
    d.watch.version = installed.schema_version if installed else found.version
    d.tail.consumer = None  # not registered: prunes nothing
    if installed is not None:
        d.log.info("triggers_installed", tables=len(installed.tables))
        d.tail.consumer = d.consumer.consumer
        d.tail.confirmed = installed.registered_at
        if installed.lost:
            lost(d, decision, trigger_plans, position.seq if position is not None else None)
    elif startup and changelog.installed_triggers(source):
        d.log.warning(
            "triggers_left_installed",
            reason="every table is followed by a cursor, but change-capture triggers of an "
            "earlier run still fill the change log: `replicator uninstall` removes them",
        )
    for name, columns in decision.added.items():
        metrics.SCHEMA_CHANGES.labels(name, "column_added").inc(len(columns))
        d.log.info("columns_added", table=name, columns=columns)
    if not startup:
        # A changed plan may have new columns: the session's staging tables go.
        for plan in d.plans:
            if previous.get(plan.source.name) is not plan:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(TableWriter(plan.shape).stage)
                )
    cursors = CursorStream(d.config, d.plans, d.specs)
    d.cursors = cursors if cursors.tables else None
    restart = False
    if position is None:
        head = changelog.head_position(d.source) if d.triggers else 0
        if progress:
            # A snapshot taken without a recorded position cannot be streamed
            # from: copy again (upserting over what is there) from here.
            restart = True
            d.log.warning("snapshot_restarted", reason="no stream position was recorded")
        with conn.transaction(), conn.cursor() as cur:
            position = init_position(cur, d.schema, head)
        d.log.info("position_recorded", position=head)
    d.position = position
    hold(d, decision, installed.head if installed else 0, position.seq)
    if installed is not None and installed.lost:
        # The lost changes are replaced by the re-sync recorded just above: the
        # stream goes on from the head the triggers were registered at.
        with conn.transaction(), conn.cursor() as cur:
            save_position(cur, d.schema, installed.head, 0)
    fresh = [p for p in d.plans if p.source.name in decision.fresh]
    if fresh:
        # Created now (the stream may write to them at once), copied once the
        # stream has caught up with the new triggers (see _follow_drift).
        with conn.transaction(), conn.cursor() as cur:
            checkpoint.forget_progress(cur, d.schema, [p.source.name for p in fresh])
        Snapshotter(d.config).create_missing(conn, fresh)
        for plan in fresh:
            metrics.SCHEMA_CHANGES.labels(plan.source.name, "table_added").inc()
            d.log.info("table_added", table=plan.source.name)
    if d.cursors is not None:
        # Like the log head above: recorded before the copy starts.
        d.cursors.record_start(d.source, conn, keep=decision.pause)
    if startup and (
        restart
        or not all(
            progress.get(p.source.name, None) and progress[p.source.name].done for p in d.plans
        )
    ):
        d.state = "snapshot"
        d.notifier.status("snapshot")
        d.health.tick(connected=True, lag_seconds=float("inf"), state="snapshot")
        d.beat(force=True)
        summary = Snapshotter(d.config, on_chunk=d.snapshot_chunk).run_plans(
            d.source, conn, d.plans, restart=restart
        )
        d.log.info(
            "snapshot_done",
            rows=sum(t.rows_written for t in summary.tables),
            dead_letters=summary.dead_letters,
        )
    if startup:
        # Indexes a copy left out (snapshot.defer_indexes) and a killed run did
        # not get to build again: back before anything is streamed.
        Snapshotter(d.config, on_chunk=d.snapshot_chunk).rebuild_deferred(conn)
    applier = Applier(
        trigger_plans,
        d.schema,
        stop_on_error=d.config.snapshot.on_error == "stop",
        source=d.source,
    )
    applier.load_open_dead_letters(conn)
    applier.load_sequences(conn)
    applier.load_waiting(conn, d.source)
    d.applier = applier
    if d.cursors is not None:
        d.cursors.start(d.source, conn)
        assert d.cursors.reconciler is not None
        for name in decision.resync:
            if d.specs.get(name) is not None:
                d.cursors.reconciler.request(name, "schema_changed")
    d.drift_snapshot = fresh
    d.drift_after = installed.head if installed else 0
    d.resync = None
    with conn.cursor() as cur:
        d.position = load_position(cur, d.schema)
    assert d.position is not None
    metrics.APPLIED_POSITION.set(d.position.seq)
    metrics.UP.set(1)
    d.state = "streaming"
    if d.watch.paused:  # not ready for a cutover from this moment on
        d.health.tick(connected=True, lag_seconds=float("inf"), state="streaming")
    # Publish the new state now: the throttled heartbeat would leave `status`
    # saying "snapshot" until the first batch (maybe a long backlog) is applied.
    d.beat(force=True)
    if startup:
        d.log.info("streaming", position=d.position.seq, tables=len(d.plans))
    if not d.ready_sent:
        d.notifier.ready(f"streaming from position {d.position.seq}")
        d.ready_sent = True


def identity(d: Daemon) -> consumers.Identity:
    """This target as a consumer of the source's change log (its id made on first use)."""
    assert d.conn is not None
    with d.conn.transaction(), d.conn.cursor() as cur:
        found = checkpoint.consumer_id(cur, d.schema, create=True)
    assert found is not None
    return consumers.Identity(found, redact_dsn(d.dsn), d.schema)


def lost(
    d: Daemon, decision: drift.Decision, trigger_plans: list[TablePlan], needed: int | None
) -> None:
    """The log no longer holds every change after ``needed``: re-sync every table the
    triggers capture (compared with the source and repaired, deletes included)."""
    reason = (
        f"the change log no longer held the changes after position {needed}: another "
        "target's replicator pruned them while this target was not registered (forgotten "
        "with `replicator uninstall --consumer`)"
    )
    d.log.warning("changes_lost_from_log", position=needed, reason=reason, action="resync")
    for plan in trigger_plans:
        decision.resync.setdefault(plan.source.name, reason)


def capture_new(d: Daemon, found: drift.Survey) -> list[str]:
    """Capture of tables this run has not seen: triggers when the source takes them;
    the others are left for the next start (which picks their cursor). Returns those."""
    later = []
    for name in found.tables:
        if name in d.specs:
            continue
        tconf = d.config.table_config(name)
        mode = tconf.capture or d.config.capture.mode
        if mode == "auto":
            mode = "triggers" if d.writable else "cursor"
        if mode == "triggers" and d.writable and d.config.schema_drift.new_tables:
            d.specs[name] = None
        else:
            later.append(name)
    for name in later:
        if name not in d.announced_later:
            d.announced_later.add(name)
            d.log.info(
                "table_left_for_restart",
                table=name,
                reason="schema_drift.new_tables is off"
                if not d.config.schema_drift.new_tables
                else "followed by a cursor: picked up at the next start",
            )
    return later


def hold(d: Daemon, decision: drift.Decision, head: int, position: int) -> None:
    """Record paused and re-syncing tables, and the shapes the plans were made from."""
    assert d.conn is not None
    watch = d.watch
    holds: dict[str, Hold] = {}
    for name, reason in decision.pause.items():
        old = watch.holds.get(name)
        if old is not None and old.state == "paused":
            holds[name] = replace(old, reason=reason)  # paused since then, maybe for more
            if name not in d.announced_paused or reason != old.reason:
                d.log.warning("table_paused", table=name, reason=reason, since=old.position)
        else:
            holds[name] = Hold(name, "paused", reason, position)
            metrics.SCHEMA_CHANGES.labels(name, "paused").inc()
            d.log.warning("table_paused", table=name, reason=reason, position=position)
        d.announced_paused.add(name)
        metrics.TABLE_PAUSED.labels(name).set(1)
    for name, reason in decision.resync.items():
        if d.specs.get(name) is None:
            holds[name] = Hold(name, "resync", reason, head)
            metrics.SCHEMA_CHANGES.labels(name, "resync").inc()
            d.log.info("table_resync_planned", table=name, reason=reason, skip_through=head)
    for name in list(d.announced_paused):
        if name not in decision.pause:
            d.announced_paused.discard(name)
            metrics.TABLE_PAUSED.labels(name).set(0)
    for name in sorted(decision.forget):
        d.log.info("table_forgotten", table=name, reason="no longer in the source")
    shapes = {n: s for n, s in watch.shapes.items() if n in decision.pause}
    shapes.update({p.source.name: drift.Shape.of(p.source) for p in d.plans})
    with d.conn.transaction(), d.conn.cursor() as cur:
        watch.save(cur, d.schema, shapes, holds)
        checkpoint.forget_progress(cur, d.schema, sorted(decision.forget))
    d.skip = watch.skip_through()


def follow_drift(d: Daemon) -> bool:
    """Once the stream has passed the start of the new triggers: copy tables new to
    this run, then re-sync the tables that need it, a few chunks per loop.
    True while such work remains (the loop does not sleep)."""
    assert d.source is not None and d.conn is not None and d.position is not None
    if not d.drift_snapshot and d.resync is None and not d.skip:
        return False
    if d.triggers and d.position.seq < d.drift_after:
        return True  # the log up to the new triggers first (parents before children)
    if d.drift_snapshot:
        plans, d.drift_snapshot = d.drift_snapshot, []
        summary = Snapshotter(d.config, on_chunk=d.snapshot_chunk).run_plans(
            d.source, d.conn, plans
        )
        d.health.tick(connected=True, lag_seconds=d.lagger.lag, state="streaming")
        for table in summary.tables:
            d.log.info("table_streaming", table=table.table, rows=table.rows_written)
    assert d.applier is not None
    pending = [n for n, h in d.watch.holds.items() if h.state == "resync"]
    unknown = [n for n in pending if n not in d.applier.plans]
    if unknown:  # never expected; released rather than waited for forever
        d.watch.release(d.conn, d.schema, unknown)
        pending = [n for n in pending if n not in unknown]
        d.skip = d.watch.skip_through()
    if d.resync is None and pending:
        capture = replace(d.config.capture, reconcile_checksums=True)
        d.resync = Reconciler(
            replace(d.config, capture=capture),
            list(d.applier.plans.values()),
            d.applier,
            {},
            last_completed=float("inf"),  # never a scheduled pass: only these tables
        )
        for name in pending:
            d.resync.request(name, "schema_drift")
    if d.resync is None:
        d.skip = {}
        return False
    if not d.resync.step(d.source, d.conn):
        return True
    passed = d.resync.last_summary
    assert passed is not None
    d.resync = None
    d.watch.release(d.conn, d.schema, list(passed.tables))
    for name, tally in passed.tables.items():
        d.log.info("table_resynced", table=name, deleted=tally.deleted, copied=tally.copied)
    d.skip = d.watch.skip_through()
    return bool(d.skip)


class StopRequested(Exception):
    """A stop request while waiting for the pair lock: nothing started, nothing to finish."""


def prepare(d: Daemon) -> None:
    """Connect, lock, plan, install triggers, record the position, snapshot."""
    if d.source is None:
        # Read-only (SQLite mode=ro) when every table is followed by a cursor.
        d.source, d.specs, readonly = open_for_capture(d.config)
        d.guard = SourceGuard(d.path, own_writes=d.tail.pruning)
        d.writable = d.tail.writable = not readonly
        d.tail.worker()
        d.log.info(
            "source_opened",
            readonly=readonly,
            cursor_tables=sum(1 for s in d.specs.values() if s is not None),
            trigger_tables=sum(1 for s in d.specs.values() if s is None),
        )
    acquire_lock(d)
    try:
        conn = connect(d.dsn, autocommit=True, connect_timeout=d.config.target.connect_timeout)
    except ConfigError as exc:
        # The lock's connection to this very target has just succeeded: the
        # server went away in between, which is worth a retry, not an exit.
        raise psycopg.OperationalError(str(exc)) from exc
    d.conn = conn
    # A Transformer of this connection (its adapters and encoding), for the
    # read-ahead thread's use only: it formats large upserts as COPY text.
    d.formatter = psycopg.adapt.Transformer(conn)
    ensure_state(conn, d.dsn, d.schema)
    d.watch.load(conn, d.schema)
    setup(d, startup=True)


def acquire_lock(d: Daemon) -> None:
    """The pair lock, waited for as a standby; StopRequested when asked to stop first."""
    if d.lock.alive():
        return

    def standing_by(holder: str) -> None:
        if d.state != "standby":
            d.log.info("standby", holder=holder)
            d.state = "standby"
        d.health.tick(connected=True, lag_seconds=float("inf"), state="standby")

    if not d.lock.acquire(d.stop, standby=d.standby, waiting=standing_by):
        raise StopRequested
    d.log.info("lock_acquired", key=d.lock.key)
