"""Table plans: how each source table maps onto its PostgreSQL target.

When the target table already exists (the application's own migrations made
it), its column types are the truth and every value is coerced to them. When
it does not, we create it from the SQLite declaration with the mapping in
``docs/type-mapping.md``: the table and its primary key before the load,
secondary indexes and foreign keys after it (the way pgloader does it).

Every problem found while planning is collected and reported at once, before
anything is written.
"""

from __future__ import annotations

import difflib
import fnmatch
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from replicator.coerce import (
    ColumnRule,
    Converter,
    Kind,
    PgType,
    converter_for,
    json_valid_converter,
)
from replicator.config import Config
from replicator.errors import ConfigError, SchemaError, SourceError
from replicator.identifiers import PG_MAX_IDENTIFIER_BYTES, pg_ident, pg_truncate
from replicator.source.sqlite import (
    ROWID,
    RowLayout,
    SourceTable,
    affinity,
    describe_table,
    list_tables,
)
from replicator.target.catalog import describe_target
from replicator.target.writer import TableShape

ROWID_COLUMN = "_replicator_rowid"


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    source: str  # source column name, or "rowid"
    target: str
    type: PgType
    convert: Converter = field(compare=False, repr=False)
    # For a json/jsonb column: the conversion of text the source found valid JSON.
    convert_valid: Converter | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "convert_valid", json_valid_converter(self.type))


@dataclass(frozen=True, slots=True)
class TablePlan:
    source: SourceTable
    schema: str
    name: str
    columns: tuple[ColumnPlan, ...]
    key: tuple[str, ...]  # source names of the key columns (may be "rowid")
    exists: bool  # the target table existed before this run planned it
    parents: tuple[str, ...]  # source names of tables this one references
    newer_column: str | None = None  # target column compared by conflict = "newer_wins"

    @property
    def table(self) -> sql.Identifier:
        return pg_ident(self.schema, self.name)

    @property
    def target_key(self) -> tuple[str, ...]:
        by_source = {c.source: c.target for c in self.columns}
        return tuple(by_source[k] for k in self.key)

    @property
    def key_positions(self) -> tuple[int, ...]:
        names = [c.source for c in self.columns]
        return tuple(names.index(k) for k in self.key)

    @property
    def layout(self) -> RowLayout:
        """How the source's rows of this table are read."""
        return RowLayout(self.source.name, tuple(c.source for c in self.columns), self.key)

    def source_select_list(self) -> str:
        return self.layout.select_list()

    def target_column_list(self) -> sql.Composed:
        return sql.SQL(", ").join(pg_ident(c.target) for c in self.columns)

    @property
    def shape(self) -> TableShape:
        """The target table as the writer sees it."""
        return TableShape(
            schema=self.schema,
            name=self.name,
            columns=tuple(c.target for c in self.columns),
            kinds=tuple(c.type.kind for c in self.columns),
            key=self.target_key,
            newer_column=self.newer_column,
        )


# --- planning --------------------------------------------------------------


def unknown_includes(available: Sequence[str], include: Sequence[str]) -> list[str]:
    """A sentence for each name in ``tables.include`` that is neither a pattern nor a
    table of the source (a typo would otherwise replicate nothing, silently)."""
    out = []
    for name in include:
        if any(ch in name for ch in "*?[") or name in available:
            continue
        close = difflib.get_close_matches(name, list(available), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        out.append(f"tables.include names {name!r}, which is not a table of the source{hint}")
    return out


def require_includes(available: Sequence[str], include: Sequence[str]) -> None:
    """Refuse to start on a ``tables.include`` name the source does not have."""
    if problems := unknown_includes(available, include):
        raise ConfigError("; ".join(problems))


def select_tables(
    names: Iterable[str], include: Sequence[str], exclude: Sequence[str]
) -> list[str]:
    chosen = []
    for name in names:
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in include):
            chosen.append(name)
    return chosen


def created_type(table: SourceTable, decl: str) -> PgType:
    """The type of a column the replicator creates: ``docs/type-mapping.md``. A STRICT
    table's ``ANY`` column keeps every value as it was given (an integer, a real,
    text or a blob, side by side), which only text holds in one column."""
    if table.text.strict and decl.strip().upper() == "ANY":
        return PgType.of(Kind.TEXT)
    return PgType.from_sqlite_decl(decl)


_NUMERIC_KINDS = {Kind.SMALLINT, Kind.INTEGER, Kind.BIGINT, Kind.NUMERIC, Kind.REAL, Kind.DOUBLE}
_TIME_KINDS = {Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DATE}


def incompatibility(decl: str, target: PgType, rule: ColumnRule) -> str | None:
    """Why a source column of this declaration can never fill ``target``, if it can't.

    Values are still checked one by one; this only refuses combinations that
    are wrong for every value (a BLOB column into an integer, say).
    """
    aff = affinity(decl)
    if aff == "BLOB" and decl and target.kind in (_NUMERIC_KINDS | _TIME_KINDS | {Kind.BOOLEAN}):
        return f"BLOB column cannot fill {target.name}"
    if aff in ("INTEGER", "REAL") and target.kind in _TIME_KINDS and rule.epoch is None:
        kind = "integer" if aff == "INTEGER" else "real"
        # Tolerated when the declaration says it is a date (SQLite 'DATETIME' has NUMERIC affinity).
        if "DATE" not in decl.upper() and "TIME" not in decl.upper():
            return (
                f'{kind} column into {target.name} needs epoch = "s" (or "ms"/"us") '
                "in its [table.<name>.columns.<column>] settings"
            )
    if aff in ("INTEGER", "REAL") and target.kind == Kind.BYTEA:
        return f"{aff.lower()} column cannot fill bytea"
    return None


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if self.items:
            body = "\n".join(f"  - {p}" for p in self.items)
            noun = "problem" if len(self.items) == 1 else "problems"
            raise SchemaError(
                f"{len(self.items)} schema {noun} found, nothing was written:\n{body}"
            )


def build_plans(
    source: sqlite3.Connection,
    target: psycopg.Connection[Any],
    config: Config,
    *,
    only: Sequence[str] | None = None,
) -> list[TablePlan]:
    """Plan every selected table, in foreign-key order (parents first)."""
    available = list_tables(source)
    names = select_tables(available, config.tables.include, config.tables.exclude)
    problems = _Problems()
    for name in config.table:
        if name not in available:
            problems.add(f"table {name!r} is configured in [table.{name}] but not in the source")
    if only:
        missing = [n for n in only if n not in available]
        for n in missing:
            problems.add(f"table {n!r} does not exist in the source")
        names = [n for n in names if n in only]
    clash_check = [(config.table_config(n).target or n) for n in names]
    seen: dict[str, str] = {}
    for n, t in zip(names, clash_check, strict=True):
        stored = pg_truncate(t)
        if stored in seen:
            problems.add(
                f"tables {seen[stored]!r} and {n!r} both become {stored!r} in PostgreSQL "
                f"(identifiers are cut to {PG_MAX_IDENTIFIER_BYTES} bytes)"
            )
        seen[stored] = n

    plans: list[TablePlan] = []
    for name in names:
        try:
            table = describe_table(source, name)
        except SourceError as exc:
            problems.add(str(exc))
            continue
        plan = _plan_table(table, target, config, problems)
        if plan is not None:
            plans.append(plan)
    problems.raise_if_any()
    return order_by_dependencies(plans)


def plan_table(
    source: sqlite3.Connection, target: psycopg.Connection[Any], config: Config, name: str
) -> TablePlan:
    """Plan one table on its own (schema drift: the others keep their plans).

    Raises :class:`SchemaError` listing this table's problems.
    """
    problems = _Problems()
    plan: TablePlan | None = None
    try:
        table = describe_table(source, name)
    except SourceError as exc:
        problems.add(str(exc))
    else:
        plan = _plan_table(table, target, config, problems)
    problems.raise_if_any()
    assert plan is not None
    return plan


def _plan_table(
    table: SourceTable,
    target: psycopg.Connection[Any],
    config: Config,
    problems: _Problems,
) -> TablePlan | None:
    tconf = config.table_config(table.name)
    target_name = pg_truncate(tconf.target or table.name)
    schema = config.target.schema
    existing = describe_target(target, schema, target_name)
    for configured in tconf.columns:
        if not any(c.name == configured for c in table.columns):
            problems.add(
                f"column {configured!r} is configured for {table.name!r} but not in the source"
            )
    stored = table.stored_columns
    col_names = [c.name for c in stored]
    seen: dict[str, str] = {}
    for c in col_names:
        t = pg_truncate(c)
        if t in seen:
            problems.add(
                f"columns {seen[t]!r} and {c!r} of {table.name!r} both become {t!r} in PostgreSQL"
            )
        seen[t] = c

    columns: list[ColumnPlan] = []
    parents = {fk.ref_table for fk in table.foreign_keys if fk.ref_table != table.name}
    if existing is None:
        if not config.snapshot.create_tables:
            problems.add(
                f"target table {schema}.{target_name} does not exist and snapshot.create_tables "
                "is false"
            )
            return None
        if table.uses_rowid_key:
            pg = PgType.parse("bigint")
            columns.append(ColumnPlan(ROWID, ROWID_COLUMN, pg, converter_for(pg)))
        for col in stored:
            cc = tconf.columns.get(col.name)
            rule = ColumnRule(epoch=cc.epoch if cc else None)
            try:
                pg = PgType.parse(cc.type) if cc and cc.type else created_type(table, col.decl_type)
            except ValueError as exc:
                problems.add(f"{table.name}.{col.name}: {exc}")
                continue
            if pg.kind == Kind.OTHER and cc and cc.type:
                problems.add(f"{table.name}.{col.name}: type {cc.type!r} is not supported")
            try:
                convert = converter_for(pg, rule)
            except ConfigError as exc:
                problems.add(f"{table.name}.{col.name}: {exc}")
                continue
            columns.append(ColumnPlan(col.name, pg_truncate(col.name), pg, convert))
        key = table.key
    else:
        if not existing.primary_key:
            problems.add(
                f"target table {schema}.{target_name} has no primary key; one is needed to "
                "apply updates and deletes"
            )
            return None
        by_name = {c.name: c for c in stored}
        key_list: list[str] = []
        for pk_col in existing.primary_key:
            if pk_col in by_name:
                key_list.append(pk_col)
            elif pk_col == ROWID_COLUMN and table.uses_rowid_key:
                key_list.append(ROWID)
            else:
                problems.add(
                    f"primary key column {pk_col!r} of {schema}.{target_name} is not a column "
                    f"of source table {table.name!r}"
                )
        key = tuple(key_list)
        if ROWID in key:
            rowid_col = existing.column(ROWID_COLUMN)
            assert rowid_col is not None
            columns.append(
                ColumnPlan(ROWID, ROWID_COLUMN, rowid_col.type, converter_for(rowid_col.type))
            )
        for col in stored:
            tcol = existing.column(col.name)
            if tcol is None:
                problems.add(
                    f"column {table.name}.{col.name} has no column of that name in "
                    f"{schema}.{target_name}"
                )
                continue
            cc = tconf.columns.get(col.name)
            rule = ColumnRule(epoch=cc.epoch if cc else None)
            why = incompatibility(col.decl_type, tcol.type, rule)
            if why:
                problems.add(f"{table.name}.{col.name} ({col.decl_type or 'no type'}): {why}")
                continue
            try:
                convert = converter_for(tcol.type, rule)
            except ConfigError as exc:
                problems.add(f"{table.name}.{col.name}: {exc}")
                continue
            columns.append(ColumnPlan(col.name, tcol.name, tcol.type, convert))
        source_names = {c.name for c in stored}
        for tcol in existing.columns:
            missing = tcol.name not in source_names and tcol.name != ROWID_COLUMN
            if missing and tcol.not_null and not tcol.has_default:
                problems.add(
                    f"{schema}.{target_name}.{tcol.name} is NOT NULL without a default and "
                    f"source table {table.name!r} has no such column"
                )
        # Target foreign keys order the apply too (they are what PostgreSQL enforces).
        parents |= set(existing.parents)
    newer_column = None
    if tconf.conflict == "newer_wins":
        by_source = {c.source: c.target for c in columns}
        newer_column = by_source.get(tconf.version_column or "")
        if newer_column is None:
            problems.add(
                f"{table.name}: version_column {tconf.version_column!r} (for conflict = "
                '"newer_wins") is not a replicated column'
            )
    return TablePlan(
        source=table,
        schema=schema,
        name=target_name,
        columns=tuple(columns),
        key=key,
        newer_column=newer_column,
        exists=existing is not None,
        parents=tuple(sorted(parents)),
    )


def order_by_dependencies(plans: list[TablePlan]) -> list[TablePlan]:
    """Parents before children (Kahn's algorithm); cycles keep their source order."""
    by_source = {p.source.name: p for p in plans}
    by_target = {p.name: p.source.name for p in plans}

    def deps(p: TablePlan) -> set[str]:
        out = set()
        for parent in p.parents:
            name = parent if parent in by_source else by_target.get(parent)
            if name and name != p.source.name:
                out.add(name)
        return out

    remaining = {p.source.name: deps(p) for p in plans}
    ordered: list[TablePlan] = []
    while remaining:
        ready = sorted(n for n, d in remaining.items() if not d)
        if not ready:  # a cycle: take the first remaining one, in name order
            ready = [sorted(remaining)[0]]
        for n in ready:
            ordered.append(by_source[n])
            del remaining[n]
        for d in remaining.values():
            d.difference_update(ready)
    return ordered
