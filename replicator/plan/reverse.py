"""Reverse plans: how a PostgreSQL row goes back into its SQLite table.

The mirror of :mod:`replicator.plan.rows` for the reverse direction, and the
one place a target row or key turns into SQLite values (each column by the
form :func:`replicator.coerce.reverse.detect` learned from the column's
values). It also holds the two statements the reverse apply runs per table: the
PostgreSQL query that reads the current rows of a set of changed keys, and the
SQLite statements that write them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from replicator.coerce import JSON_KINDS, Kind, PgType
from replicator.coerce.reverse import ColumnForm, default_form, detect, to_sqlite
from replicator.errors import CoercionError
from replicator.identifiers import pg_ident, sqlite_ident
from replicator.plan.rows import Refused
from replicator.plan.tables import TablePlan
from replicator.source.samples import column_samples
from replicator.source.sqlite import ROWID, affinity

SqliteRow = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class ReverseColumn:
    source: str  # the SQLite column, or "rowid"
    target: str
    type: PgType
    form: ColumnForm

    @property
    def read_as_text(self) -> bool:
        """JSON is read as PostgreSQL's text of it (jsonb's key order and spacing);
        types psycopg has no Python class for, as their text too."""
        return self.type.kind in JSON_KINDS or self.type.kind is Kind.OTHER


@dataclass(frozen=True, slots=True)
class ReversePlan:
    plan: TablePlan
    columns: tuple[ReverseColumn, ...]

    @property
    def name(self) -> str:
        return self.plan.source.name

    @property
    def key_positions(self) -> tuple[int, ...]:
        return self.plan.key_positions

    def read_rows_sql(self) -> sql.Composed:
        """The current rows of the keys in ``%s`` (a JSON array of target keys):
        one row per key, with the key cast back to its types and the row's
        columns, NULL when the row is gone."""
        by_target = {c.target: c for c in self.columns}
        key_cols = self.plan.target_key
        keys = [
            sql.SQL("(k.key ->> {})::{}").format(sql.Literal(i), sql.SQL(by_target[c].type.name))
            for i, c in enumerate(key_cols)
        ]
        join = sql.SQL(" AND ").join(
            sql.SQL("t.{} = {}").format(pg_ident(c), keys[i]) for i, c in enumerate(key_cols)
        )
        cols = [
            sql.SQL("t.{}::text").format(pg_ident(c.target))
            if c.read_as_text
            else sql.SQL("t.{}").format(pg_ident(c.target))
            for c in self.columns
        ]
        return sql.SQL(
            "SELECT k.ord, t.{first} IS NOT NULL, {keys}, {cols} "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS k(key, ord) "
            "LEFT JOIN {table} t ON {join} ORDER BY k.ord"
        ).format(
            first=pg_ident(key_cols[0]),
            keys=sql.SQL(", ").join(keys),
            cols=sql.SQL(", ").join(cols),
            table=self.plan.table,
            join=join,
        )

    # -- SQLite statements --------------------------------------------------------

    def _name(self, column: str) -> str:
        return ROWID if column == ROWID else sqlite_ident(column)

    def _where(self) -> str:
        return " AND ".join(f"{self._name(k)} = ?" for k in self.plan.key)

    def update_sql(self) -> str | None:
        """UPDATE of a row by its key (None when every column is in the key)."""
        keyset = set(self.plan.key)
        sets = [c.source for c in self.columns if c.source not in keyset and c.source != ROWID]
        if not sets:
            return None
        assignments = ", ".join(f"{sqlite_ident(c)} = ?" for c in sets)
        return f"UPDATE {sqlite_ident(self.name)} SET {assignments} WHERE {self._where()}"

    def update_values(self, row: SqliteRow) -> tuple[object, ...]:
        keyset = set(self.plan.key)
        sets = [
            v
            for c, v in zip(self.columns, row, strict=True)
            if c.source not in keyset and c.source != ROWID
        ]
        return (*sets, *(row[i] for i in self.key_positions))

    def insert_sql(self) -> str:
        names = ", ".join(self._name(c.source) for c in self.columns)
        marks = ", ".join("?" for _ in self.columns)
        return f"INSERT INTO {sqlite_ident(self.name)} ({names}) VALUES ({marks})"

    def delete_sql(self) -> str:
        return f"DELETE FROM {sqlite_ident(self.name)} WHERE {self._where()}"


def build_reverse_plans(
    conn: sqlite3.Connection, plans: Sequence[TablePlan]
) -> dict[str, ReversePlan]:
    """A reverse plan per table, each column's form learned from its values now."""
    out = {}
    for plan in plans:
        decls = {c.name: c.decl_type for c in plan.source.columns}
        columns = []
        for c in plan.columns:
            if c.source == ROWID:
                form = ColumnForm("integer")
            else:
                samples = column_samples(conn, plan.source, c.source)
                form = (
                    detect(c.type.kind, samples)
                    if samples
                    else default_form(c.type.kind, affinity(decls.get(c.source, "")))
                )
            columns.append(ReverseColumn(c.source, c.target, c.type, form))
        out[plan.source.name] = ReversePlan(plan, tuple(columns))
    return out


def convert_values(
    columns: Sequence[ReverseColumn], values: Sequence[object]
) -> SqliteRow | Refused:
    """Target values (in ``columns`` order) as the SQLite table's own forms."""
    out = []
    for col, value in zip(columns, values, strict=True):
        try:
            out.append(to_sqlite(col.type, col.form, value))
        except CoercionError as exc:
            return Refused(col.source, value, exc.reason)
    return tuple(out)


def convert_target_row(rplan: ReversePlan, values: Sequence[object]) -> SqliteRow | Refused:
    return convert_values(rplan.columns, values)


def convert_target_key(rplan: ReversePlan, key: Sequence[object]) -> SqliteRow | Refused:
    by_source = {c.source: c for c in rplan.columns}
    return convert_values([by_source[k] for k in rplan.plan.key], key)
