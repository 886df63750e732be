"""Schema drift: the source's schema changing under a running replicator.

SQLite bumps ``PRAGMA schema_version`` on every schema change, so the daemon
reads it on every loop (inside the transaction that reads the change log, so a
batch is never applied with plans older than the schema it was captured
under). When it moved, each replicated table is described again and compared
with the *shape* it was last planned with (stored columns with their declared
types, and the key), which is kept in the state schema so the comparison also
spans restarts.

What a difference means is decided here; what to do about it (DDL on the
target, new plans, triggers, re-syncs, pauses) is the daemon's.

- A column added: the target gets it (``schema_drift.add_columns``) and the
  table is re-synced.
- Declared types changed, or our triggers gone while the shape is the same (the
  table was rebuilt: create, copy, drop, rename): the table is re-synced.
- A column dropped or renamed, the key changed, the table gone: the table is
  paused while the daemon runs (the target probably needs a decision); the next
  start takes the source as it is then and re-syncs it, if it can be planned.

A *re-sync* compares the table with the source chunk by chunk and repairs what
differs (the reconciliation of cursor capture), while the stream skips the
table's log entries captured before its new triggers: those may lack a column
or predate a gap in capture, and the re-sync reads the table later than all of
them.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.coerce import ColumnRule, PgType, converter_for
from replicator.config import Config
from replicator.errors import CoercionError, ConfigError, SchemaError
from replicator.identifiers import pg_truncate
from replicator.plan.ddl import add_column_sql
from replicator.plan.tables import (
    TablePlan,
    build_plans,
    created_type,
    order_by_dependencies,
    plan_table,
    select_tables,
)
from replicator.source import changelog
from replicator.source.sqlite import (
    SourceColumn,
    SourceTable,
    describe_table,
    list_tables,
    read_transaction,
    schema_version,
)
from replicator.state import shapes
from replicator.state.shapes import Hold
from replicator.target.catalog import describe_target
from replicator.target.connection import Connection, Cursor


@dataclass(frozen=True, slots=True)
class Shape:
    """What a table looked like when it was planned: what a schema change is measured against."""

    columns: tuple[tuple[str, str], ...]  # stored columns: (name, declared type)
    key: tuple[str, ...]  # the primary key, or ("rowid",)

    @classmethod
    def of(cls, table: SourceTable) -> Shape:
        return cls(tuple((c.name, c.decl_type) for c in table.stored_columns), table.key)

    @property
    def names(self) -> list[str]:
        return [name for name, _decl in self.columns]

    def to_json(self) -> dict[str, Any]:
        return {"columns": [list(c) for c in self.columns], "key": list(self.key)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Shape:
        return cls(
            tuple((str(c[0]), str(c[1])) for c in data["columns"]),
            tuple(str(k) for k in data["key"]),
        )


@dataclass(frozen=True, slots=True)
class Drift:
    """How a table differs from its known shape."""

    gone: bool = False
    added: tuple[str, ...] = ()  # columns the source table gained, in table order
    pause: str | None = None  # a change the target may need a decision for
    resync: str | None = None  # a change the table can be re-synced through
    key_changed: bool = False

    @property
    def changed(self) -> bool:
        return self.gone or bool(self.added) or self.pause is not None or self.resync is not None


def _names(names: Iterable[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _key(key: Sequence[str]) -> str:
    return "(" + ", ".join(key) + ")"


def compare(old: Shape, table: SourceTable | None, *, triggers: bool | None) -> Drift:
    """What changed since ``old``: ``table`` as it is now (None: gone); ``triggers``
    whether our three triggers are on it (None for a table a cursor follows)."""
    if table is None:
        return Drift(gone=True, pause="the table was dropped (or renamed)")
    new = Shape.of(table)
    old_names, new_names = old.names, new.names
    removed = [n for n in old_names if n not in new_names]
    added = tuple(n for n in new_names if n not in old_names)
    problems: list[str] = []
    if new.key != old.key:
        problems.append(f"the primary key changed from {_key(old.key)} to {_key(new.key)}")
    if (
        len(removed) == 1
        and len(added) == 1
        and (old_names.index(removed[0]) == new_names.index(added[0]))
    ):
        problems.append(f'column "{removed[0]}" was renamed to "{added[0]}"')
    elif removed:
        word = "column" if len(removed) == 1 else "columns"
        problems.append(f"{word} {_names(removed)} dropped")
        if added:
            problems.append(f"{_names(added)} added")
    if problems:
        return Drift(pause="; ".join(problems), key_changed=new.key != old.key)
    reasons: list[str] = []
    if added:
        word = "column" if len(added) == 1 else "columns"
        reasons.append(f"{word} {_names(added)} added")
    old_types = dict(old.columns)
    for name, decl in new.columns:
        if name in old_types and old_types[name] != decl:
            reasons.append(
                f'column "{name}" changed type from {old_types[name] or "none"} to {decl or "none"}'
            )
    if triggers is False:
        reasons.append("its change-capture triggers were gone (the table was rebuilt)")
    return Drift(added=added, resync="; ".join(reasons) if reasons else None)


@dataclass(frozen=True, slots=True)
class Survey:
    """The selected source tables as they are now, read in one transaction."""

    version: int
    tables: dict[str, SourceTable]
    triggered: frozenset[str]  # tables whose three triggers are all in place


def survey(source: sqlite3.Connection, config: Config) -> Survey:
    with read_transaction(source):
        version = schema_version(source)
        names = select_tables(list_tables(source), config.tables.include, config.tables.exclude)
        tables = {n: describe_table(source, n) for n in names}
        installed = (
            changelog.installed_triggers(source) if changelog.changelog_exists(source) else {}
        )
    triggered = frozenset(
        n for n in names if all(installed.get(t) == n for t in changelog.trigger_names(n).values())
    )
    return Survey(version, tables, triggered)


@dataclass
class Watch:
    """The daemon's memory of the source schema: version, shapes, holds."""

    version: int | None = None
    shapes: dict[str, Shape] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)

    def changed(self, source: sqlite3.Connection) -> bool:
        """One cheap read of the schema cookie (outside any transaction)."""
        return self.version is not None and schema_version(source) != self.version

    @property
    def paused(self) -> list[str]:
        return sorted(n for n, h in self.holds.items() if h.state == "paused")

    def skip_through(self) -> dict[str, int]:
        return {n: h.position for n, h in self.holds.items() if h.state == "resync"}

    def load(self, conn: Connection, schema: str) -> None:
        self.shapes = {n: Shape.from_json(s) for n, s in shapes.load_shapes(conn, schema).items()}
        self.holds = shapes.load_holds(conn, schema)

    def save(
        self,
        cur: Cursor,
        schema: str,
        shapes_now: Mapping[str, Shape],
        holds: Mapping[str, Hold],
    ) -> None:
        """Replace the stored shapes and holds with these (one transaction, the caller's)."""
        shapes.save_shapes(cur, schema, {n: s.to_json() for n, s in shapes_now.items()})
        self.shapes = dict(shapes_now)
        shapes.save_holds(cur, schema, holds)
        self.holds = dict(holds)

    def release(self, conn: Connection, schema: str, tables: Iterable[str]) -> None:
        """Re-synced: these tables stream again."""
        done = set(tables)
        holds = {n: h for n, h in self.holds.items() if n not in done}
        with conn.transaction(), conn.cursor() as cur:
            shapes.save_holds(cur, schema, holds)
        self.holds = holds


# --- columns added in the source ----------------------------------------------------

# The constants SQLite accepts as the default of an added column: numbers, strings,
# blobs, NULL, TRUE/FALSE (an expression or CURRENT_TIME... is refused by ADD COLUMN).
_CONSTANT = re.compile(
    r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|'(?:[^']|'')*'|[xX]'[0-9a-fA-F]*'"
    r"|NULL|TRUE|FALSE",
    re.IGNORECASE,
)


def default_value(source: sqlite3.Connection, column: SourceColumn) -> tuple[bool, object]:
    """(known, value): the value rows that predate the column read for it in SQLite."""
    text = (column.default or "NULL").strip()
    if not _CONSTANT.fullmatch(text):
        return False, None
    # Only a constant matched above reaches SQLite, which parses it exactly as it did.
    row = source.execute(f"SELECT {text}").fetchone()
    return True, row[0]


def add_columns(
    source: sqlite3.Connection,
    conn: Connection,
    config: Config,
    table: SourceTable,
    names: Sequence[str],
) -> list[str]:
    """Add the columns ``names`` of source ``table`` that its target table lacks.

    Existing target rows get SQLite's default for the column (what the source
    rows that predate it read); when that default cannot be carried, NULL (the
    re-sync that follows copies the real values). Returns the columns added.
    """
    tconf = config.table_config(table.name)
    schema = config.target.schema
    target_name = pg_truncate(tconf.target or table.name)
    added: list[str] = []
    with conn.transaction(), conn.cursor() as cur:
        existing = describe_target(conn, schema, target_name)
        if existing is None:
            return []  # planning creates it, or says why it cannot
        for name in names:
            column = table.column(name)
            if existing.column(pg_truncate(name)) is not None:
                continue
            cc = tconf.columns.get(name)
            try:
                pg = (
                    PgType.parse(cc.type)
                    if cc and cc.type
                    else created_type(table, column.decl_type)
                )
                convert = converter_for(pg, ColumnRule(epoch=cc.epoch if cc else None))
            except (ValueError, ConfigError):
                continue  # planning reports the column's problem
            default: sql.Composable | None = None
            known, raw = default_value(source, column)
            if known and raw is not None:
                try:
                    literal = sql.Literal(convert(raw)).as_string(conn)
                    default = sql.SQL("{}::{}").format(sql.SQL(literal), sql.SQL(pg.ddl()))
                except (CoercionError, psycopg.Error, TypeError, ValueError):
                    default = None  # NULL for now; the re-sync copies the real values
            for stmt in add_column_sql(schema, target_name, pg_truncate(name), pg, default=default):
                cur.execute(stmt)
            added.append(name)
    return added


# --- deciding what a change means ------------------------------------------------------


@dataclass
class Decision:
    """What the daemon does about the schema it found."""

    plans: list[TablePlan] = field(default_factory=list)  # in dependency order, none paused
    pause: dict[str, str] = field(default_factory=dict)  # table -> why
    resync: dict[str, str] = field(default_factory=dict)  # table -> why
    forget: set[str] = field(default_factory=set)  # gone at start-up: shape and hold dropped
    added: dict[str, list[str]] = field(default_factory=dict)  # columns added to targets
    fresh: list[str] = field(default_factory=list)  # tables new to a running daemon


def _problem_text(exc: SchemaError) -> str:
    lines = [line.strip(" -") for line in str(exc).splitlines()[1:] if line.strip()]
    return "; ".join(lines) or str(exc)


def decide(
    source: sqlite3.Connection,
    conn: Connection,
    config: Config,
    found: Survey,
    watch: Watch,
    previous: Mapping[str, TablePlan],
    *,
    cursor_tables: Iterable[str],
    leave_out: Iterable[str] = (),
    startup: bool,
    go_ahead: bool,
) -> Decision:
    """Compare what ``found`` says with the known shapes and holds; add the columns
    the targets lack; plan what needs planning.

    ``startup``: plan every table (``previous`` is empty). ``go_ahead``: the
    process has just been started, by an operator or their service manager —
    not merely reconnected. During a run a change the target may need a
    decision for pauses the table; with the go-ahead the table is taken as it
    is, and re-synced, when it can be planned. Tables whose plans fail are
    paused with the planner's words, and so are their children (foreign keys),
    whose rows would otherwise miss their parents. At start-up, problems of
    untouched tables still stop the daemon, as they always have.
    """
    d = Decision()
    cursors = set(cursor_tables)
    skipped = set(leave_out)
    for name, hold in watch.holds.items():
        if name not in found.tables:
            if go_ahead:
                d.forget.add(name)
            else:
                d.pause[name] = hold.reason if hold.state == "paused" else "the table was dropped"
        elif hold.state == "resync":
            d.resync[name] = hold.reason
        elif go_ahead:
            d.resync[name] = f"resumed at start-up; paused because {hold.reason}"
        else:
            d.pause[name] = hold.reason
    key_changed: set[str] = set()
    for name, shape in watch.shapes.items():
        if name in d.pause or name in d.forget:
            continue
        table = found.tables.get(name)
        if table is None and go_ahead:
            d.forget.add(name)
            continue
        triggered = None if name in cursors else name in found.triggered
        change = compare(shape, table, triggers=triggered)
        if not change.changed:
            continue
        if change.pause is not None:
            if not go_ahead:
                d.pause[name] = change.pause
                d.resync.pop(name, None)
                continue
            if change.key_changed:
                key_changed.add(name)
            d.resync.setdefault(name, f"{change.pause} (found at start-up)")
            continue
        assert table is not None
        if change.added and config.schema_drift.add_columns:
            columns = add_columns(source, conn, config, table, change.added)
            if columns:
                d.added[name] = columns
        d.resync.setdefault(name, change.resync or "changed")
    if not startup:
        d.fresh = [
            n
            for n in found.tables
            if n not in watch.shapes
            and n not in watch.holds
            and n not in previous
            and n not in skipped
        ]
    affected = set(d.resync) | set(d.fresh)
    plans: dict[str, TablePlan] = {}
    others: list[str] = []
    for name in found.tables:
        if name in d.pause or name in skipped:
            continue
        if name in affected:
            try:
                plans[name] = plan_table(source, conn, config, name)
            except SchemaError as exc:
                d.pause[name] = _problem_text(exc)
                d.resync.pop(name, None)
        elif not startup and name in previous:
            plans[name] = previous[name]
        else:
            others.append(name)
    if others:
        for plan in build_plans(source, conn, config, only=others):
            plans[plan.source.name] = plan
    for name in sorted(key_changed & plans.keys()):
        plan = plans[name]
        if plan.key != found.tables[name].key:
            d.pause[name] = (
                f"the primary key is now {_key(found.tables[name].key)}, the target's is "
                f"{_key(plan.target_key)}: change the target's primary key, then restart"
            )
            d.resync.pop(name, None)
            del plans[name]
    ordered = order_by_dependencies(list(plans.values()))
    blocked = {
        n for name in d.pause for n in (name, pg_truncate(config.table_config(name).target or name))
    }
    grew = True
    while grew:
        grew = False
        for plan in ordered:
            name = plan.source.name
            if name in d.pause:
                continue
            parents = sorted(p for p in plan.parents if p in blocked)
            if parents:
                d.pause[name] = f'its parent table "{parents[0]}" is paused'
                d.resync.pop(name, None)
                blocked |= {name, plan.name}
                grew = True
    d.plans = [p for p in ordered if p.source.name not in d.pause]
    d.fresh = [n for n in d.fresh if n in plans and n not in d.pause]
    return d
