"""What a created table carries beyond columns, keys and plain indexes.

Generated columns, CHECK constraints, and partial or expression indexes are
written in SQLite's SQL; each is translated (see
:mod:`replicator.plan.translate`) or left out with the reason. One
:class:`Extra` per object says which, and carries the statement that makes
it: the DDL runs them, the schema report lists them, from the same place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from replicator.coerce import Kind
from replicator.identifiers import PG_MAX_IDENTIFIER_BYTES, pg_ident, pg_truncate
from replicator.plan.tables import TablePlan, created_type
from replicator.plan.translate import Untranslatable, translate_expr
from replicator.source.sqlite import SourceIndex
from replicator.source.sqlsyntax import SqlSyntaxError, Token, parse_create_index, render


@dataclass(frozen=True, slots=True)
class Extra:
    kind: str  # "generated column", "check", "index"
    name: str
    source: str  # SQLite's text for it
    stmt: sql.Composed | None  # None: nothing to make (see target) or not translated
    target: str = ""  # its PostgreSQL text, or what already holds it, when translated
    reason: str = ""  # why it was not, when not


def _columns(plan: TablePlan) -> dict[str, str]:
    """Source -> target names of every column an expression may name."""
    names = {c.source: c.target for c in plan.columns}
    for column, _expr in plan.source.text.generated:
        names.setdefault(column, pg_truncate(column))
    return names


def generated_columns(plan: TablePlan) -> list[Extra]:
    """SQLite's generated columns as PostgreSQL ``GENERATED ALWAYS AS (...) STORED``."""
    out: list[Extra] = []
    stored = {c.source: c.target for c in plan.columns}
    hidden = {c.name for c in plan.source.columns if c.hidden in (2, 3)}
    for column, expr in plan.source.text.generated:
        if column not in hidden:
            continue  # not what SQLite calls a generated column: nothing to make
        text = render(expr)
        try:
            pg_expr = translate_expr(expr, stored)
        except Untranslatable as exc:
            out.append(Extra("generated column", column, text, None, reason=str(exc)))
            continue
        decl = plan.source.column(column).decl_type
        stmt = sql.SQL(
            "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {} GENERATED ALWAYS AS ({}) STORED"
        )
        out.append(
            Extra(
                "generated column",
                column,
                text,
                stmt.format(
                    plan.table,
                    pg_ident(pg_truncate(column)),
                    sql.SQL(created_type(plan.source, decl).ddl()),
                    sql.SQL(pg_expr),
                ),
                target=f"GENERATED ALWAYS AS ({pg_expr}) STORED",
            )
        )
    return out


def constraint_name(table: str, parts: Sequence[str], suffix: str) -> str:
    """``table_parts_suffix``, shortened with a digest to fit PostgreSQL's 63 bytes."""
    name = f"{table}_{'_'.join(parts)}_{suffix}"
    if len(name.encode()) <= PG_MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
    return pg_truncate(name)[: PG_MAX_IDENTIFIER_BYTES - 9] + "_" + digest


def once(plan: TablePlan, name: str, add: sql.Composable) -> sql.Composed:
    """A DO block that runs ``add`` (ADD CONSTRAINT ``name``) unless the table has it."""
    body = sql.SQL(
        "BEGIN "
        "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = {name_lit} "
        "AND conrelid = {rel_lit}::regclass) THEN {add}; "
        "END IF; END"
    ).format(
        name_lit=sql.Literal(name),
        rel_lit=sql.Literal(plan.table.as_string(None)),
        add=add,
    )
    # Quoted names may hold "$$": pick a dollar-quote tag the body does not contain.
    text = body.as_string(None)
    tag, n = "$replicator$", 0
    while tag in text:
        n += 1
        tag = f"$replicator{n}$"
    return sql.SQL("DO {tag} {body} {tag}").format(tag=sql.SQL(tag), body=body)


def checks(plan: TablePlan) -> list[Extra]:
    """CHECK constraints, added after the load; adding one checks every copied row, so
    a constraint the source's rows break is not added (and is reported)."""
    out: list[Extra] = []
    columns = _columns(plan)
    for n, clause in enumerate(plan.source.text.checks, start=1):
        text = render(clause.expression)
        name = pg_truncate(
            clause.name or constraint_name(plan.name, [clause.column or "row", str(n)], "check")
        )
        if _boolean_domain(plan, clause.expression):
            out.append(Extra("check", name, text, None, target="the boolean type itself"))
            continue
        try:
            pg_expr = translate_expr(clause.expression, columns)
        except Untranslatable as exc:
            out.append(Extra("check", name, text, None, reason=str(exc)))
            continue
        add = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
            plan.table, pg_ident(name), sql.SQL(pg_expr)
        )
        out.append(Extra("check", name, text, once(plan, name, add), target=f"CHECK ({pg_expr})"))
    return out


def _boolean_domain(plan: TablePlan, expr: Sequence[Token]) -> bool:
    """``CHECK (c IN (0, 1))`` on a column created as boolean (SQLite's way, and
    Django's, of declaring a boolean): the type already holds only those two
    values, and PostgreSQL would refuse to compare a boolean with 0 and 1."""
    words = [t.text.upper() for t in expr]
    if len(words) != 7 or words[1:3] != ["IN", "("] or words[-1] != ")":
        return False
    if sorted(words[3:6]) != [",", "0", "1"] or words[4] != ",":
        return False
    name = (expr[0].ident or "").lower()
    kinds = {c.source.lower(): c.type.kind for c in plan.columns}
    return kinds.get(name) is Kind.BOOLEAN


_ORDER = frozenset({"ASC", "DESC"})


def _element(tokens: Sequence[Token], columns: dict[str, str]) -> str:
    """One indexed term: a column, or an expression in parentheses; ASC/DESC kept,
    COLLATE BINARY dropped (equality is byte equality in both)."""
    terms = list(tokens)
    order = ""
    if terms and terms[-1].word in _ORDER:
        order = " " + terms.pop().word
    if len(terms) >= 2 and terms[-2].word == "COLLATE" and terms[-1].word == "BINARY":
        terms = terms[:-2]
    expr = translate_expr(terms, columns)
    if len(terms) == 1 and terms[0].kind in ("name", "quoted"):
        return expr + order
    return f"({expr})" + order


def translated_indexes(plan: TablePlan) -> list[Extra]:
    """Partial and expression indexes (the plain ones are built from their columns)."""
    out: list[Extra] = []
    columns = _columns(plan)
    for idx in plan.source.indexes:
        if not (idx.partial or idx.expression) or not idx.sql:
            continue
        out.append(_translated_index(plan, idx, columns))
    return out


def _translated_index(plan: TablePlan, idx: SourceIndex, columns: dict[str, str]) -> Extra:
    try:
        parsed = parse_create_index(idx.sql)
    except SqlSyntaxError as exc:
        return Extra("index", idx.name, idx.sql, None, reason=f"cannot be read: {exc}")
    source = ", ".join(render(e) for e in parsed.elements)
    if parsed.where:
        source += " WHERE " + render(parsed.where)
    try:
        elements = [_element(e, columns) for e in parsed.elements]
        where = translate_expr(parsed.where, columns) if parsed.where else ""
    except Untranslatable as exc:
        return Extra("index", idx.name, source, None, reason=str(exc))
    target = ", ".join(elements) + (f" WHERE {where}" if where else "")
    stmt = sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {} ({}){}").format(
        sql.SQL("UNIQUE " if idx.unique else ""),
        pg_ident(pg_truncate(idx.name)),
        plan.table,
        sql.SQL(", ").join(sql.SQL(e) for e in elements),
        sql.SQL(f" WHERE {where}" if where else ""),
    )
    return Extra("index", idx.name, source, stmt, target=target)
