"""The schema report: every part of the source's schema, and what it became.

For each table: the table, its columns, primary key, indexes, foreign keys,
CHECK constraints, defaults and triggers, each with an outcome:

- ``created``: made in PostgreSQL with the same meaning (a table, a column of
  the mapped type, a key, a plain index, a foreign key);
- ``translated``: made from SQLite SQL translated to PostgreSQL (a default, a
  CHECK constraint, a generated column, a partial or expression index);
- ``kept``: the target table already existed, and its own definition is the
  truth (nothing of it is changed);
- ``skipped``: not carried over, with the reason.

``replicator check`` shows it before anything is written, the snapshot
summary after the tables are made (with what PostgreSQL refused then).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from replicator.plan.ddl import fk_action, fk_parent, is_identity
from replicator.plan.extras import (
    Extra,
    checks,
    constraint_name,
    generated_columns,
    translated_indexes,
)
from replicator.plan.tables import ROWID_COLUMN, TablePlan
from replicator.plan.translate import translate_default
from replicator.source.sqlite import ROWID, ForeignKey, SourceIndex

OUTCOMES = ("created", "translated", "kept", "skipped")


@dataclass(frozen=True, slots=True)
class Landing:
    table: str  # the source table
    kind: str  # table, column, primary key, index, foreign key, check, default, trigger...
    name: str
    source: str  # SQLite's text for it
    outcome: str  # one of OUTCOMES
    target: str = ""  # what it became in PostgreSQL
    reason: str = ""  # why, when skipped or kept

    def line(self) -> str:
        what = f"{self.kind} {self.name}".strip()
        text = f"{self.outcome:<10} {what}"
        if self.source:
            text += f": {self.source}"
        if self.target:
            text += f" -> {self.target}"
        if self.reason:
            text += f" ({self.reason})"
        return text

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def schema_report(
    plans: Sequence[TablePlan],
    ours: set[str] | None = None,
    refused: Mapping[tuple[str, str], str] | None = None,
) -> list[Landing]:
    """The report for ``plans``. ``ours``: target tables the replicator made (default:
    those it is about to make); ``refused``: (table, what) -> PostgreSQL's error,
    for objects it did not accept when they were made."""
    made = ours if ours is not None else {p.name for p in plans if not p.exists}
    out: list[Landing] = []
    for plan in plans:
        items = _created(plan, plans) if plan.name in made else _kept(plan)
        out.extend(_refusals(items, plan.name, refused or {}))
    return out


def render_report(items: Sequence[Landing], *, only: Sequence[str] = OUTCOMES) -> list[str]:
    """The report as indented lines, one per item whose outcome is in ``only``, and
    the counts of every outcome."""
    lines: list[str] = []
    table = None
    for item in items:
        if item.outcome not in only:
            continue
        if item.table != table:
            table = item.table
            lines.append(f"  {table}:")
        lines.append(f"    {item.line()}")
    counts = {o: sum(1 for i in items if i.outcome == o) for o in OUTCOMES}
    lines.append("  " + ", ".join(f"{n} {o}" for o, n in counts.items()))
    return lines


def _refusals(
    items: Iterator[Landing], table: str, refused: Mapping[tuple[str, str], str]
) -> Iterator[Landing]:
    for item in items:
        error = refused.get((table, f"{item.kind} {item.name}")) or refused.get(
            (table, f"validate {item.name}")
        )
        if error is None:
            yield item
        else:
            yield replace(item, outcome="skipped", reason=f"PostgreSQL refused it: {error}")


def _kept(plan: TablePlan) -> Iterator[Landing]:
    why = "the target table exists; its own definition is kept as it is"
    name = plan.source.name
    yield Landing(name, "table", name, "", "kept", f"{plan.schema}.{plan.name}", why)
    for col in plan.columns:
        yield Landing(name, "column", col.source, "", "kept", f"{col.target} {col.type.name}")
    filled = {c.source for c in plan.columns}
    for src in plan.source.columns:
        if src.name not in filled:
            reason = (
                "generated in SQLite, never copied; the target's own column, if any, is kept"
                if src.hidden
                else "not in the target table"
            )
            yield Landing(name, "column", src.name, src.decl_type, "skipped", reason=reason)
    for trig, _sql in plan.source.triggers:
        yield _trigger(name, trig)


def _created(plan: TablePlan, plans: Sequence[TablePlan]) -> Iterator[Landing]:
    name = plan.source.name
    yield Landing(name, "table", name, "", "created", f"{plan.schema}.{plan.name}")
    if plan.source.text.problem:
        why = f"{plan.source.text.problem}; its CHECKs and generated columns are not carried"
        yield Landing(name, "schema text", name, "", "skipped", reason=why)
    yield from _columns(plan)
    yield from _key(plan)
    yield from _indexes(plan)
    yield from (_extra(name, e) for e in translated_indexes(plan))
    yield from (_foreign_key(plan, fk, plans) for fk in plan.source.foreign_keys)
    yield from (_extra(name, e) for e in checks(plan))
    for trig, _sql in plan.source.triggers:
        yield _trigger(name, trig)


def _columns(plan: TablePlan) -> Iterator[Landing]:
    name = plan.source.name
    for col in plan.columns:
        if col.source == ROWID:
            target = f"{ROWID_COLUMN} {col.type.ddl()} GENERATED BY DEFAULT AS IDENTITY"
            why = "the table has no primary key: its rowid is the key"
            yield Landing(name, "column", "rowid", "(implicit)", "created", target, why)
            continue
        src = plan.source.column(col.source)
        target = f"{col.target} {col.type.ddl()}"
        target += " GENERATED BY DEFAULT AS IDENTITY" if is_identity(plan, col) else ""
        target += " NOT NULL" if src.not_null else ""
        strict_any = plan.source.text.strict and src.decl_type.upper() == "ANY"
        why = "a STRICT table's ANY column holds every type: text" if strict_any else ""
        yield Landing(name, "column", col.source, src.decl_type, "created", target, why)
        if src.default is None:
            continue
        if is_identity(plan, col):
            yield Landing(name, "default", col.source, src.default, "skipped", reason="an identity")
            continue
        found = translate_default(src.default, src.decl_type, col.type, col.convert)
        if found.sql is not None:
            yield Landing(name, "default", col.source, src.default, "translated", found.text)
        elif found.reason:
            yield Landing(name, "default", col.source, src.default, "skipped", reason=found.reason)
        else:
            yield Landing(name, "default", col.source, src.default, "created", "NULL")
    for extra in generated_columns(plan):
        yield _extra(name, extra)
    read = {column for column, _expr in plan.source.text.generated}
    for src in plan.source.columns:
        if src.hidden == 1:
            why = "a virtual table's hidden column"
            yield Landing(name, "column", src.name, src.decl_type, "skipped", reason=why)
        elif src.hidden in (2, 3) and src.name not in read:
            why = "generated, and its expression was not found in the CREATE TABLE"
            yield Landing(name, "generated column", src.name, "", "skipped", reason=why)


def _key(plan: TablePlan) -> Iterator[Landing]:
    name = plan.source.name
    keys = ", ".join(plan.target_key)
    source = ", ".join(plan.source.primary_key) or "rowid"
    yield Landing(name, "primary key", "", source, "created", f"PRIMARY KEY ({keys})")
    if plan.source.autoincrement:
        yield Landing(
            name,
            "autoincrement",
            plan.source.rowid_alias or "",
            "AUTOINCREMENT",
            "translated",
            "identity sequence set past sqlite_sequence's mark",
            "at the end of the snapshot and at cutover",
        )


def _indexes(plan: TablePlan) -> Iterator[Landing]:
    targets = {c.source: c.target for c in plan.columns}
    for idx in plan.source.indexes:
        if idx.origin == "pk" or idx.partial or idx.expression:
            continue
        yield _plain_index(plan, idx, targets)


def _plain_index(plan: TablePlan, idx: SourceIndex, targets: dict[str, str]) -> Landing:
    name = plan.source.name
    cols = ", ".join(idx.columns)
    if idx.unique and tuple(idx.columns) == tuple(plan.key):
        return Landing(name, "index", idx.name, cols, "created", "the primary key")
    missing = [c for c in idx.columns if c not in targets]
    if missing or not idx.columns:
        why = f"column(s) {', '.join(missing)} not created" if missing else "no columns"
        return Landing(name, "index", idx.name, cols, "skipped", reason=why)
    pg_cols = [targets[c] for c in idx.columns]
    if idx.name.startswith("sqlite_autoindex"):  # a UNIQUE constraint's own index
        index_name = constraint_name(plan.name, pg_cols, "key")
    else:
        index_name = idx.name
    what = "UNIQUE INDEX" if idx.unique else "INDEX"
    target = f"{what} ({', '.join(pg_cols)})"
    return Landing(name, "index", index_name, cols, "created", target, "after the load")


def _foreign_key(plan: TablePlan, fk: ForeignKey, plans: Sequence[TablePlan]) -> Landing:
    name = plan.source.name
    actions = f"ON DELETE {fk_action(fk.on_delete)} ON UPDATE {fk_action(fk.on_update)}"
    source = f"({', '.join(fk.columns)}) REFERENCES {fk.ref_table} ({', '.join(fk.ref_columns)})"
    parent = fk_parent(plan, fk, plans)
    if parent is None:
        why = f"table {fk.ref_table!r} or a column of the key is not replicated"
        return Landing(name, "foreign key", "", source, "skipped", reason=why)
    targets = {c.source: c.target for c in plan.columns}
    key_name = constraint_name(plan.name, [targets[c] for c in fk.columns], "fkey")
    target = f"FOREIGN KEY {actions}, after the load, then validated"
    return Landing(name, "foreign key", key_name, source, "created", target)


def _extra(table: str, extra: Extra) -> Landing:
    if extra.stmt is None and not extra.target:
        return Landing(table, extra.kind, extra.name, extra.source, "skipped", reason=extra.reason)
    return Landing(table, extra.kind, extra.name, extra.source, "translated", extra.target)


def _trigger(table: str, name: str) -> Landing:
    why = "a SQLite trigger's body is not translated: recreate it in PostgreSQL before cutover"
    return Landing(table, "trigger", name, "", "skipped", reason=why)


def report_json(items: Sequence[Landing]) -> list[dict[str, Any]]:
    return [i.to_json() for i in items]
