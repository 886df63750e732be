"""Setting the replicator up, and taking change capture away again.

:func:`initialise` is ``replicator init``: the state schema in PostgreSQL is
created or upgraded, then change capture is installed in the source for the
tables that triggers capture. :func:`remove_capture` is ``replicator
uninstall``. Both are safe to run again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from replicator.config import Config
from replicator.plan.tables import select_tables
from replicator.source import changelog
from replicator.source.cursor import suggest
from replicator.source.sqlite import SourceTable, describe_table, list_tables, open_source
from replicator.state.migrations import migrate
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


def remove_capture(config: Config) -> tuple[int, bool]:
    """Drop our triggers and the change log from the source, leaving the
    application's tables alone. Returns (triggers dropped, whether a log was there)."""
    source = open_source(config.require_source(), busy_timeout_ms=config.source.busy_timeout_ms)
    try:
        return changelog.uninstall(source)
    finally:
        source.close()
