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

import fnmatch
import hashlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
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
from replicator.identifiers import PG_MAX_IDENTIFIER_BYTES, pg_ident, pg_truncate, sqlite_ident
from replicator.source.sqlite import (
    ROWID,
    RowLayout,
    SourceTable,
    affinity,
    describe_table,
    list_tables,
    read_transaction,
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


def _index_name(table: str, columns: Sequence[str], suffix: str) -> str:
    name = f"{table}_{'_'.join(columns)}_{suffix}"
    if len(name.encode()) <= PG_MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
    return pg_truncate(name)[: PG_MAX_IDENTIFIER_BYTES - 9] + "_" + digest


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
                pg = (
                    PgType.parse(cc.type)
                    if cc and cc.type
                    else PgType.from_sqlite_decl(col.decl_type)
                )
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


# --- DDL for tables we create ----------------------------------------------


def create_table_sql(plan: TablePlan) -> sql.Composed:
    """CREATE TABLE with columns and primary key only; the rest comes after the load."""
    parts: list[sql.Composable] = []
    identity_col = plan.source.rowid_alias
    for col in plan.columns:
        piece = sql.SQL("{} {}").format(pg_ident(col.target), sql.SQL(col.type.ddl()))
        src_col = None if col.source == ROWID else plan.source.column(col.source)
        if col.source == identity_col and col.type.kind in (Kind.BIGINT, Kind.INTEGER):
            piece = sql.SQL("{} GENERATED BY DEFAULT AS IDENTITY").format(piece)
        if src_col is not None and src_col.not_null:
            piece = sql.SQL("{} NOT NULL").format(piece)
        parts.append(piece)
    parts.append(
        sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(pg_ident(k) for k in plan.target_key))
    )
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        plan.table, sql.SQL(", ").join(parts)
    )


def add_column_sql(
    schema: str, table: str, column: str, pg: PgType, *, default: sql.Composable | None
) -> list[sql.Composed]:
    """Add a column a source table gained to its target table.

    With a constant ``default`` (SQLite's, converted), existing rows get it the
    way they do in SQLite (PostgreSQL stores it once, no table rewrite), then
    the default is dropped again: every value the stream writes is explicit,
    as in tables we create.
    """
    target = pg_ident(schema, table)
    name = pg_ident(column)
    add = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(target, name, sql.SQL(pg.ddl()))
    if default is None:
        return [add]
    return [
        add + sql.SQL(" DEFAULT {}").format(default),
        sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(target, name),
    ]


def post_load_sql(plan: TablePlan, planned: Sequence[TablePlan]) -> list[tuple[str, sql.Composed]]:
    """Secondary indexes and foreign keys of a created table, built after its load.

    Returns (description, statement) pairs; every statement is idempotent.
    Partial and expression indexes are not translated (their SQL is SQLite's).
    """
    out: list[tuple[str, sql.Composed]] = []
    targets = {c.source: c.target for c in plan.columns}
    for idx in plan.source.indexes:
        if idx.origin == "pk" or idx.partial or idx.expression or not idx.columns:
            continue
        if idx.unique and tuple(idx.columns) == tuple(plan.key):
            continue  # the primary key already is this index
        if any(c not in targets for c in idx.columns):
            continue
        cols = [targets[c] for c in idx.columns]
        name = (
            idx.name
            if not idx.name.startswith("sqlite_autoindex")
            else _index_name(plan.name, cols, "key")
        )
        stmt = sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.SQL("UNIQUE " if idx.unique else ""),
            pg_ident(pg_truncate(name)),
            plan.table,
            sql.SQL(", ").join(pg_ident(c) for c in cols),
        )
        out.append((f"index {name}", stmt))
    by_source = {p.source.name: p for p in planned}
    for fk in plan.source.foreign_keys:
        parent = by_source.get(fk.ref_table)
        if parent is None or any(c not in targets for c in fk.columns):
            continue
        parent_cols = {c.source: c.target for c in parent.columns}
        if any(c not in parent_cols for c in fk.ref_columns):
            continue
        name = _index_name(plan.name, [targets[c] for c in fk.columns], "fkey")
        action = {
            "CASCADE": "CASCADE",
            "SET NULL": "SET NULL",
            "SET DEFAULT": "SET DEFAULT",
            "RESTRICT": "RESTRICT",
        }.get(fk.on_delete.upper(), "NO ACTION")
        body = sql.SQL(
            "BEGIN "
            "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {name_lit} "
            "AND conrelid = {rel_lit}::regclass) THEN "
            "ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({cols}) "
            "REFERENCES {parent} ({pcols}) ON DELETE {action} NOT VALID; "
            "END IF; END"
        ).format(
            name_lit=sql.Literal(name),
            rel_lit=sql.Literal(plan.table.as_string(None)),
            table=plan.table,
            name=pg_ident(name),
            cols=sql.SQL(", ").join(pg_ident(targets[c]) for c in fk.columns),
            parent=parent.table,
            pcols=sql.SQL(", ").join(pg_ident(parent_cols[c]) for c in fk.ref_columns),
            action=sql.SQL(action),
        )
        # Quoted names may hold "$$": pick a dollar-quote tag the body does not contain.
        text = body.as_string(None)
        tag, n = "$replicator$", 0
        while tag in text:
            n += 1
            tag = f"$replicator{n}$"
        stmt = sql.SQL("DO {tag} {body} {tag}").format(tag=sql.SQL(tag), body=body)
        out.append((f"foreign key {name}", stmt))
        validate = sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
            plan.table, pg_ident(name)
        )
        out.append((f"validate {name}", validate))
    return out


def target_sequences(
    conn: psycopg.Connection[Any], plan: TablePlan
) -> list[tuple[str, tuple[str, str]]]:
    """(column, sequence) for every serial/identity column this plan fills."""
    table = describe_target(conn, plan.schema, plan.name)
    if table is None:
        return []
    filled = {c.target for c in plan.columns}
    return [(c.name, c.sequence) for c in table.columns if c.sequence and c.name in filled]


def source_max_ids(source: sqlite3.Connection, plan: TablePlan) -> dict[str, int]:
    """Largest integer value per column in the source, for the columns that have a
    sequence in the target: sequences must pass ids that exist in the source too,
    including rows that were dead-lettered and so never reached the target."""
    out: dict[str, int] = {}
    for col in plan.columns:
        if col.source == ROWID or col.type.kind not in (Kind.SMALLINT, Kind.INTEGER, Kind.BIGINT):
            continue
        row = source.execute(
            f"SELECT max({sqlite_ident(col.source)}) FROM {sqlite_ident(plan.source.name)} "
            f"WHERE typeof({sqlite_ident(col.source)}) = 'integer'"
        ).fetchone()
        if row and row[0] is not None:
            out[col.target] = int(row[0])
    return out


def sequence_sql(
    plan: TablePlan,
    sequences: Sequence[tuple[str, tuple[str, str]]],
    floors: Mapping[str, int] | None = None,
) -> list[sql.Composed]:
    """Move each sequence past the largest id in the target (and ``floors``, the
    source's largest ids); never backwards."""
    stmts = []
    for column, (seq_schema, seq_name) in sequences:
        seqrel = pg_ident(seq_schema, seq_name)
        floor = int((floors or {}).get(column, 0))
        stmts.append(
            sql.SQL(
                "SELECT setval(to_regclass({seqtext}), v, true) FROM (SELECT GREATEST("
                "(SELECT max({col}) FROM {table}), "
                "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {seqrel}), "
                "{floor}) AS v) AS s WHERE v >= 1"
            ).format(
                seqtext=sql.Literal(seqrel.as_string(None)),
                col=pg_ident(column),
                table=plan.table,
                seqrel=seqrel,
                floor=sql.Literal(floor),
            )
        )
    return stmts


def advance_sequences(
    conn: psycopg.Connection[Any], source: sqlite3.Connection, plans: Sequence[TablePlan]
) -> int:
    """Set every sequence of ``plans`` past the largest id in the target and in the
    source, in one transaction; returns how many sequences were set."""
    moved = 0
    with conn.transaction(), conn.cursor() as cur:
        for plan in plans:
            sequences = target_sequences(conn, plan)
            if not sequences:
                continue
            with read_transaction(source):
                floors = source_max_ids(source, plan)
            for stmt in sequence_sql(plan, sequences, floors):
                cur.execute(stmt)
                moved += 1
    return moved
