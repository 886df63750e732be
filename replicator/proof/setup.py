"""Setting the replicator up, and taking change capture away again.

:func:`initialise` is ``replicator init``: the state schema in PostgreSQL is
created or upgraded, then change capture is installed in the source for the
tables that triggers capture. :func:`remove_capture` is ``replicator
uninstall``. Both are safe to run again.

Several targets may be fed from one source (replicator/source/consumers.py):
``uninstall`` then removes only this target's registration while others are
registered, unless told to remove everything, and ``uninstall --consumer ID``
forgets another target that is gone for good.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from replicator.config import Config
from replicator.dsn import redact_dsn
from replicator.errors import ConfigError, ReplicatorError
from replicator.plan.tables import select_tables
from replicator.proof.status import consumer_line
from replicator.source import changelog, consumers
from replicator.source.cursor import suggest
from replicator.source.sqlite import (
    SourceTable,
    describe_table,
    list_tables,
    open_source,
    read_transaction,
)
from replicator.state.checkpoint import consumer_id
from replicator.state.migrations import current_revision, migrate
from replicator.stream.cursor import Specs, capture_specs, source_writable
from replicator.target.connection import connect


def initialise(config: Config, *, triggers: bool = True, out: Callable[[str], None]) -> None:
    """Migrate the state schema, then (with ``triggers`` and a source configured)
    suggest a capture mode per table and install triggers where they capture.

    Each step is told to ``out`` as soon as it is done, not at the end: when a
    later one fails (the source missing, a table that cannot be followed by a
    cursor) the user still sees what was done, and the suggestions that help
    to fix the configuration.
    """
    dsn = config.require_target()
    connect(dsn, connect_timeout=config.target.connect_timeout).close()
    schema = config.target.state_schema
    before, after = migrate(dsn, schema)
    if before == after:
        out(f"state schema {schema!r} is up to date (revision {after})")
    else:
        out(f"state schema {schema!r} migrated from {before or 'nothing'} to {after}")
    if config.source.path is not None and triggers:
        _install_capture(config, out)


def _install_capture(config: Config, out: Callable[[str], None]) -> None:
    writable = source_writable(config)
    source = open_source(
        config.require_source(),
        readonly=not writable,
        busy_timeout_ms=config.source.busy_timeout_ms,
    )
    try:
        by_trigger, specs = _install_triggers(config, source, writable, out)
    finally:
        source.close()
    if by_trigger:
        out(f"change capture installed on {len(by_trigger)} table(s) in {config.source.path}")
    cursor_tables = [f"{n} ({s.column})" for n, s in specs.items() if s is not None]
    if cursor_tables:
        out(f"followed by a cursor, nothing installed: {', '.join(cursor_tables)}")


def _install_triggers(
    config: Config, source: sqlite3.Connection, writable: bool, out: Callable[[str], None]
) -> tuple[list[SourceTable], Specs]:
    """Suggest a mode per selected table, then install triggers on those they capture.

    Returns those tables and every table's capture.
    """
    names = select_tables(list_tables(source), config.tables.include, config.tables.exclude)
    tables = [describe_table(source, n) for n in names]
    out("capture per table (suggested; set [table.NAME] capture/cursor):")
    for table in tables:
        out("  " + suggest(table, writable=writable).render())
    specs = capture_specs(config, source, writable=writable)
    by_trigger = [t for t in tables if specs.get(t.name) is None]
    if by_trigger:
        changelog.install(source, by_trigger)
    return by_trigger, specs


@dataclass
class Removal:
    """What ``replicator uninstall`` did."""

    triggers: int = 0  # triggers dropped
    had_log: bool = False  # the change log was there and is gone now
    dropped: consumers.Consumer | None = None  # the registration removed, if any
    kept_for: list[consumers.Consumer] = field(default_factory=list)  # still fed
    everything: bool = False  # every trigger and the log were removed


def remove_capture(
    config: Config, *, consumer: str | None = None, everything: bool = False
) -> Removal:
    """Take change capture away from the source, leaving the application's tables alone.

    With ``consumer`` (an id, or the start of one, as ``status`` shows it), only
    forget that target. Otherwise forget this target; the triggers and the log
    go too unless other targets are registered (``everything`` removes them anyway).
    """
    source = open_source(config.require_source(), busy_timeout_ms=config.source.busy_timeout_ms)
    try:
        with read_transaction(source):
            registered = consumers.registered(source)
        if consumer is not None:
            return _forget(source, _one(registered, consumer), registered)
        me = _mine(config, registered)
        others = [c for c in registered if c is not me]
        if others and not everything:
            return _forget(source, me, registered) if me else Removal(kept_for=others)
        triggers, had_log = changelog.uninstall(source)
        return Removal(triggers, had_log, me, everything=True)
    finally:
        source.close()


def _forget(
    source: sqlite3.Connection,
    who: consumers.Consumer | None,
    registered: list[consumers.Consumer],
) -> Removal:
    if who is None:
        return Removal(kept_for=registered)
    _, triggers = changelog.unregister(source, who.consumer)
    return Removal(triggers, False, who, [c for c in registered if c is not who])


def _one(registered: list[consumers.Consumer], wanted: str) -> consumers.Consumer:
    found = [c for c in registered if c.consumer.startswith(wanted)]
    if len(found) == 1:
        return found[0]
    known = ", ".join(f"{c.consumer} {c.label}" for c in registered) or "none"
    why = "matches several" if found else "is not registered"
    raise ConfigError(f"consumer {wanted!r} {why}; registered: {known}")


def _mine(config: Config, registered: list[consumers.Consumer]) -> consumers.Consumer | None:
    """This configuration's target among ``registered``: by the id in its state schema,
    or, when that cannot be read, by its (redacted) DSN and state schema."""
    schema = config.target.state_schema
    found = None
    if config.target.url is not None:
        found = _read_id(config.target.url.reveal(), schema, config.target.connect_timeout)
    if found is not None:
        return next((c for c in registered if c.consumer == found), None)
    shown = redact_dsn(config.target.url.reveal()) if config.target.url is not None else None
    return next((c for c in registered if (c.target, c.state_schema) == (shown, schema)), None)


def _read_id(dsn: str, schema: str, timeout: int) -> str | None:
    try:
        with connect(dsn, autocommit=True, connect_timeout=timeout) as conn:
            if current_revision(conn, schema) is None:
                return None
            with conn.cursor() as cur:
                return consumer_id(cur, schema, create=False)
    except (ReplicatorError, psycopg.Error):
        return None


def describe_removal(removal: Removal, path: str) -> str:
    """What ``replicator uninstall`` did, in words."""
    if removal.everything:
        log_note = "and the change log" if removal.had_log else "(no change log was present)"
        return f"removed {removal.triggers} trigger(s) {log_note} from {path}"
    who = removal.dropped
    lines = [
        f"forgot consumer {who.consumer}: {who.label}"
        if who is not None
        else "this target is not registered in the source: nothing to forget"
    ]
    if removal.triggers:
        lines.append(f"dropped {removal.triggers} trigger(s) no registered target captures with")
    if removal.kept_for:
        lines.append(f"kept the change capture in {path} for {len(removal.kept_for)} target(s):")
        lines += ["  " + consumer_line(c) for c in removal.kept_for]
        lines.append("(`replicator uninstall --all` removes the triggers and change log anyway)")
    else:
        lines.append(
            "no target is registered any more, but the triggers still fill the change log: "
            "`replicator uninstall` removes them (or the next `replicator run` registers again)"
        )
    return "\n".join(lines)
