"""Porting help: the PostgreSQL form of a SQLite query, suggested, run and judged.

A query given only in its SQLite form runs on PostgreSQL as written; when
that fails or differs, the team needs a PostgreSQL form. sqlglot (a SQL
transpiler with SQLite and PostgreSQL dialects) writes one: it renames
functions (``group_concat`` -> ``STRING_AGG``, ``ifnull`` -> ``COALESCE``),
keeps SQLite's NULL order with explicit ``NULLS FIRST/LAST`` and SQLite's
``x / 0 = NULL`` with ``NULLIF``. The checker runs that suggestion on every
parameter set and reports whether it matches SQLite's answers.

What sqlglot cannot see is the data: it reads SQL text, not the column's
affinity, collation or the way timestamps are stored. :data:`CAVEATS` lists
those differences; each has a detector over the SQLite text (and the source's
declared column types), and the same list renders the "port it as" table of
``docs/queries.md`` (:func:`port_table_markdown`), so the documentation and
the checker cannot drift apart.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from replicator.errors import SourceError
from replicator.queries.report import CaseResult
from replicator.queries.spec import ParamSet, QuerySpec
from replicator.queries.sqltext import code_spans, to_postgres_placeholders
from replicator.source.sqlite import affinity, describe_table, list_tables

__all__ = [
    "CAVEATS",
    "Caveat",
    "PortResult",
    "caveats_for",
    "port_table_markdown",
    "run_port",
    "source_columns",
    "suggest_postgres",
]

# column name (lower case) -> declared types and collations of that name in the
# source tables the query mentions, as ("TEXT", "NOCASE") pairs
Columns = Mapping[str, list[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Caveat:
    key: str
    difference: str
    sqlite: str
    postgres: str
    port_as: str
    sqlglot: str  # what the suggested form does about it
    detect: Callable[[str, Columns], bool]


def _code(text: str) -> str:
    """The SQL code only: strings, quoted names and comments blanked out."""
    out = [" "] * len(text)
    for a, b in code_spans(text, "sqlite"):
        out[a:b] = text[a:b]
    return "".join(out)


def _has(pattern: str) -> Callable[[str, Columns], bool]:
    rx = re.compile(pattern, re.IGNORECASE)
    return lambda code, _cols: rx.search(code) is not None


_NUMBER_CMP = re.compile(
    r"\b([A-Za-z_]\w*)\s*(?:=|==|<>|!=|<=|>=|<|>)\s*-?\d|-?\d[\d.]*\s*(?:=|==|<>|!=|<=|>=|<|>)"
    r"\s*([A-Za-z_]\w*)\b"
)


def _text_vs_number(code: str, cols: Columns) -> bool:
    for m in _NUMBER_CMP.finditer(code):
        name = (m.group(1) or m.group(2) or "").lower()
        if any(affinity(decl) == "TEXT" for decl, _ in cols.get(name, [])):
            return True
    return False


def _numeric_division(code: str, cols: Columns) -> bool:
    if "/" not in code:
        return False
    for m in re.finditer(r"\b([A-Za-z_]\w*)\s*/|/\s*([A-Za-z_]\w*)\b", code):
        name = (m.group(1) or m.group(2) or "").lower()
        if any(affinity(decl) == "NUMERIC" for decl, _ in cols.get(name, [])):
            return True
    return False


def _nocase(code: str, cols: Columns) -> bool:
    if re.search(r"\bCOLLATE\s+NOCASE\b", code, re.IGNORECASE):
        return True
    words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", code)}
    return any(coll.upper() == "NOCASE" for w in words for _, coll in cols.get(w, []))


def _text_order(code: str, cols: Columns) -> bool:
    m = re.search(r"\bORDER\s+BY\b(.*)", code, re.IGNORECASE | re.DOTALL)
    if m is None:
        return False
    words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", m.group(1))}
    return any(affinity(decl) == "TEXT" for w in words for decl, _ in cols.get(w, []))


CAVEATS: tuple[Caveat, ...] = (
    Caveat(
        "like_case",
        "`LIKE` case",
        "ignores ASCII case (only ASCII)",
        "case-sensitive",
        "`ILIKE` (which folds non-ASCII too: include such terms) or `lower()` on both",
        "keeps `LIKE`: case-sensitive",
        _has(r"(?<!I)\bLIKE\b"),
    ),
    Caveat(
        "null_order",
        "NULL order",
        "NULLs first ascending, last descending",
        "the reverse",
        "`NULLS FIRST/LAST`, or exclude NULLs",
        "adds `NULLS FIRST/LAST` to keep SQLite's order; `DESC NULLS LAST` cannot use a "
        "plain index read backwards",
        _has(r"\bORDER\s+BY\b"),
    ),
    Caveat(
        "integer_division",
        "integer division",
        "a `NUMERIC` column keeps `3` as an integer: `3 / 2 = 1`",
        "`numeric`: `1.5`",
        "divide by `2.0` on both sides",
        "adds `NULLIF(divisor, 0)` (SQLite's `x / 0` is NULL) but cannot know the column "
        "holds integers",
        _numeric_division,
    ),
    Caveat(
        "affinity",
        "text vs number",
        "`text_col > 50` compares text (`'9' > '50'`)",
        "error: no `text > integer` operator",
        "`CAST(col AS INTEGER)` / `col::integer`",
        "keeps the comparison: it fails on PostgreSQL",
        _text_vs_number,
    ),
    Caveat(
        "nocase",
        "`NOCASE` collation",
        "`COLLATE NOCASE` (declared or in the query) folds ASCII case",
        "no such collation",
        "`lower(col)` on both sides, `ILIKE`, or a nondeterministic ICU collation",
        "keeps `COLLATE NOCASE`: an error on PostgreSQL",
        _nocase,
    ),
    Caveat(
        "collation",
        "collation",
        "`BINARY` (code point)",
        "the column's collation (`C.UTF-8`, ICU, ...)",
        '`COLLATE "C"` in PostgreSQL',
        "cannot see the target's collation",
        _text_order,
    ),
    Caveat(
        "timestamps",
        "timestamps as text",
        "text order of two styles",
        "instants",
        "compare `julianday()` in SQLite, the column in PostgreSQL (see above)",
        "keeps text comparisons of timestamp columns as they are",
        _has(r"\b(julianday|datetime|unixepoch)\s*\("),
    ),
    Caveat(
        "date_functions",
        "date functions",
        "`date()`, `strftime()` on text",
        "`::date`, `date_trunc()`, `to_char()`",
        "check both with a date-valued result",
        "writes `TO_CHAR` for `strftime` but leaves `julianday()`/`datetime()`, which "
        "PostgreSQL lacks",
        _has(r"\b(date|time|strftime)\s*\("),
    ),
    Caveat(
        "json",
        "JSON access",
        "`json_extract` returns SQL values",
        "`->` jsonb, `->>` text",
        "either; results are normalised by type",
        "writes `JSON_EXTRACT_PATH_TEXT`, for `json` only: on `jsonb` use `->>` or "
        "`jsonb_extract_path_text`",
        _has(r"\bjson_extract\s*\(|->"),
    ),
)


def caveats_for(sqlite_text: str, columns: Columns) -> list[Caveat]:
    """The caveats that apply to this SQLite text, given the source's declared columns."""
    code = _code(sqlite_text)
    return [c for c in CAVEATS if c.detect(code, columns)]


_NOCASE_COLUMN = re.compile(r"[\"`\[]?(\w+)[\"`\]]?\s+[^,()]*?\bCOLLATE\s+NOCASE\b", re.IGNORECASE)


def source_columns(conn: sqlite3.Connection, sqlite_text: str) -> Columns:
    """Declared type and collation of each column of the source tables the query names."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", _code(sqlite_text))}
    out: dict[str, list[tuple[str, str]]] = {}
    for table in list_tables(conn):
        if table.lower() not in words:
            continue
        try:
            described = describe_table(conn, table)
        except SourceError:
            continue
        row = conn.execute(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        nocase = {m.lower() for m in _NOCASE_COLUMN.findall(str(row[0] or "") if row else "")}
        for col in described.columns:
            coll = "NOCASE" if col.name.lower() in nocase else "BINARY"
            out.setdefault(col.name.lower(), []).append((col.decl_type, coll))
    return out


def port_table_markdown() -> str:
    """The "port it as" table of docs/queries.md, from :data:`CAVEATS`."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| difference | SQLite | PostgreSQL | port it as | the suggested form (sqlglot) |",
        "|---|---|---|---|---|",
    ]
    for c in CAVEATS:
        lines.append(
            f"| {cell(c.difference)} | {cell(c.sqlite)} | {cell(c.postgres)} | "
            f"{cell(c.port_as)} | {cell(c.sqlglot)} |"
        )
    return "\n".join(lines)


class PortError(Exception):
    """sqlglot could not read or write the query."""


def suggest_postgres(sqlite_text: str) -> str:
    """sqlglot's PostgreSQL form of a SQLite query, with its ``:name`` placeholders kept."""
    import sqlglot  # imported here: only queries without a PostgreSQL form need it
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    try:
        tree = sqlglot.parse_one(sqlite_text, read="sqlite")
        for ph in list(tree.find_all(exp.Placeholder)):
            if ph.name and ph.name != "?":
                ph.replace(exp.var(":" + ph.name))
        return str(tree.sql(dialect="postgres", pretty=False))
    except SqlglotError as exc:
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        raise PortError(first[0] if first else type(exc).__name__) from exc


@dataclass
class PortCase:
    index: int
    params: dict[str, Any]
    equal: bool = False
    summary: str | None = None
    error: str | None = None


@dataclass
class PortResult:
    """The suggested form, whether it matched on every parameter set, and the caveats."""

    suggested: str | None
    changed: bool  # sqlglot wrote something other than the SQLite text
    cases: list[PortCase] = field(default_factory=list)
    caveats: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None  # sqlglot could not port it

    @property
    def verdict(self) -> str:
        """``matches``, ``differs``, ``fails`` (on PostgreSQL), or ``not ported``."""
        if self.error is not None or self.suggested is None:
            return "not ported"
        if any(c.error for c in self.cases):
            return "fails"
        if self.cases and all(c.equal for c in self.cases):
            return "matches"
        return "differs"

    def lines(self, name: str) -> list[str]:
        if self.error is not None:
            return [f"{name}: port: sqlglot could not port it: {self.error}"]
        out = [f"{name}: port: suggested PostgreSQL form (sqlglot), {self.verdict}:"]
        out.append(f"      {self.suggested}")
        if not self.changed:
            out.append("    (the same text as the SQLite form)")
        for c in self.cases:
            if c.error or not c.equal:
                params = ", ".join(f"{k}={v!r}" for k, v in c.params.items()) or "no parameters"
                out.append(f"    [{params}]: {c.error or c.summary}")
        for cav in self.caveats:
            out.append(f"    caveat ({cav['difference']}): {cav['advice']}")
        return out


def caveat_notes(found: list[Caveat]) -> list[dict[str, str]]:
    return [
        {
            "key": c.key,
            "difference": c.difference.replace("`", ""),
            "advice": f"SQLite: {c.sqlite}; PostgreSQL: {c.postgres}. Port it as "
            f"{c.port_as}. sqlglot {c.sqlglot}".replace("`", ""),
        }
        for c in found
    ]


def run_port(
    spec: QuerySpec,
    columns: Columns,
    check_case: Callable[[QuerySpec, ParamSet], CaseResult],
) -> PortResult:
    """Suggest the PostgreSQL form, run it on every parameter set, attach the caveats.

    ``check_case`` is the checker's own comparison of one parameter set, so
    the suggestion is judged exactly as a PostgreSQL form written by hand.
    """
    found = caveat_notes(caveats_for(spec.sqlite_sql, columns))
    try:
        suggested = suggest_postgres(spec.sqlite_sql)
    except PortError as exc:
        return PortResult(None, False, caveats=found, error=str(exc))
    pg_sql, order = to_postgres_placeholders(suggested)
    unknown = sorted(set(order) - {p.name for p in spec.params})
    result = PortResult(
        suggested,
        changed=" ".join(suggested.split()).lower() != " ".join(spec.sqlite_sql.split()).lower(),
        caveats=found,
    )
    if unknown:
        result.error = f"the suggestion uses :{', :'.join(unknown)}, which params does not give"
        return result
    ported = replace(
        spec, postgres_sql=pg_sql, postgres_text=suggested, postgres_form=True, postgres_order=order
    )
    for ps in ported.param_sets():
        case = check_case(ported, ps)
        summary = case.difference.summary if case.difference is not None else None
        result.cases.append(PortCase(ps.index, dict(ps.shown), case.equal, summary, case.error))
    return result
