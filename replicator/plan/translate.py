"""SQLite expressions as PostgreSQL expressions, where the meaning is the same.

Used for what a created table carries besides its columns: defaults, CHECK
constraints, generated columns, partial-index conditions and index
expressions. The translation is deliberately narrow: a token the two
dialects do not read the same way (``/`` is NULL on a zero divisor in SQLite
and an error in PostgreSQL; ``LIKE`` ignores ASCII case in SQLite only; date
functions, CAST, ``min``/``max`` of several values...) makes the whole
expression untranslated, with that reason, rather than translated into
something that holds different rows. PostgreSQL checks the types when the
object is created; an expression it refuses is reported with its error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from psycopg import sql

from replicator.coerce import Converter, Kind, PgType
from replicator.errors import CoercionError
from replicator.identifiers import pg_ident
from replicator.source.sqlsyntax import SqlSyntaxError, Token, render, tokenize


class Untranslatable(ValueError):
    """The expression has no PostgreSQL equivalent we trust; the message says why."""


# Functions that mean the same in both dialects (SQLite name -> PostgreSQL name).
_FUNCTIONS = {
    "LOWER": "lower",
    "UPPER": "upper",
    "LENGTH": "length",
    "ABS": "abs",
    "COALESCE": "coalesce",
    "IFNULL": "coalesce",
    "NULLIF": "nullif",
    "TRIM": "btrim",
    "LTRIM": "ltrim",
    "RTRIM": "rtrim",
    "REPLACE": "replace",
    "INSTR": "strpos",
}
_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "NULL", "TRUE", "FALSE", "IN", "BETWEEN", "CASE", "WHEN", "THEN"}
    | {"ELSE", "END"}
)
_OPERATORS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">"}
_OPERATORS |= {">=": ">=", "+": "+", "-": "-", "*": "*", "||": "||", "(": "(", ")": ")"}
_OPERATORS |= {",": ","}
_REFUSED = {
    "/": "'/' is NULL for a zero divisor in SQLite and an error in PostgreSQL",
    "%": "'%' is NULL for a zero divisor in SQLite and an error in PostgreSQL",
    "LIKE": "LIKE ignores ASCII case in SQLite and not in PostgreSQL",
    "GLOB": "GLOB has no PostgreSQL equivalent",
    "REGEXP": "REGEXP is an application function in SQLite",
    "CAST": "CAST of text that is not a number gives 0 in SQLite and an error in PostgreSQL",
    "COLLATE": "SQLite collations (NOCASE, RTRIM) have no PostgreSQL equivalent",
}


def translate_expr(tokens: Sequence[Token], columns: Mapping[str, str]) -> str:
    """PostgreSQL text for a SQLite expression over ``columns`` (source -> target name).

    Raises :class:`Untranslatable` with the reason when any part of it has no
    equivalent we trust.
    """
    by_lower = {name.lower(): target for name, target in columns.items()}
    out: list[Token] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        word = tok.word
        if tok.text in _REFUSED or word in _REFUSED:
            raise Untranslatable(_REFUSED.get(tok.text) or _REFUSED[word])
        if word == "IS":
            i, text = _is_operator(tokens, i)
            out.append(Token("op", text))
            continue
        if word in ("ISNULL", "NOTNULL"):
            out.append(Token("op", "IS NULL" if word == "ISNULL" else "IS NOT NULL"))
        elif word in _KEYWORDS:
            out.append(Token("op", word))
        elif tok.kind == "name" and nxt is not None and nxt.text == "(":
            if word not in _FUNCTIONS:
                raise Untranslatable(f"function {tok.text}() is not translated")
            out.append(Token("name", _FUNCTIONS[word]))
        elif tok.kind in ("name", "quoted"):
            out.append(Token("quoted", _column(tok, by_lower)))
        elif tok.kind == "number":
            number = str(int(tok.text, 16)) if tok.text[:2].lower() == "0x" else tok.text
            out.append(Token("number", number))
        elif tok.kind == "string":
            out.append(tok)
        elif tok.kind == "blob":
            out.append(Token("op", f"'\\x{tok.text[2:-1]}'::bytea"))
        elif tok.text in _OPERATORS:
            out.append(Token("op", _OPERATORS[tok.text]))
        else:
            raise Untranslatable(f"{tok.text!r} is not translated")
        i += 1
    if not out:
        raise Untranslatable("empty expression")
    return render(out)


def _column(tok: Token, by_lower: Mapping[str, str]) -> str:
    name = tok.ident or ""
    target = by_lower.get(name.lower())
    if target is None:
        raise Untranslatable(f"{tok.text} is not a column of the table")
    return pg_ident(target).as_string(None)


def _is_operator(tokens: Sequence[Token], i: int) -> tuple[int, str]:
    """SQLite's ``IS [NOT] x`` is PostgreSQL's ``IS [NOT] DISTINCT FROM`` unless x is
    NULL, TRUE or FALSE; returns the index after the operator and its text."""
    negated = i + 1 < len(tokens) and tokens[i + 1].word == "NOT"
    after = i + 2 if negated else i + 1
    operand = tokens[after].word if after < len(tokens) else ""
    if operand in ("NULL", "TRUE", "FALSE"):
        return after, "IS NOT" if negated else "IS"
    return after, "IS DISTINCT FROM" if negated else "IS NOT DISTINCT FROM"


# --- defaults ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DefaultTranslation:
    """What a SQLite column default becomes: ``sql`` (None: no DEFAULT) and, when
    there is something to say, ``text`` (its PostgreSQL form) or ``reason``."""

    sql: sql.Composable | None
    text: str = ""
    reason: str = ""


_UTC_NOW = "(now() AT TIME ZONE 'UTC')"
# SQLite's "now" forms: the SQLite text, and what it is (timestamp, date, time, epoch).
_NOW_FORMS = {
    "CURRENT_TIMESTAMP": "timestamp",
    "DATETIME('now')": "timestamp",
    "CURRENT_DATE": "date",
    "DATE('now')": "date",
    "CURRENT_TIME": "time",
    "TIME('now')": "time",
    "STRFTIME('%s','now')": "epoch",
    "UNIXEPOCH()": "epoch",
    "UNIXEPOCH('now')": "epoch",
}
_TEXT_FORMATS = {"timestamp": "YYYY-MM-DD HH24:MI:SS", "date": "YYYY-MM-DD", "time": "HH24:MI:SS"}
_TEXT_KINDS = frozenset({Kind.TEXT, Kind.VARCHAR})
_INT_KINDS = frozenset({Kind.SMALLINT, Kind.INTEGER, Kind.BIGINT, Kind.NUMERIC})
_DETERMINISTIC = frozenset({"ABS", "LOWER", "UPPER", "LENGTH", "COALESCE", "IFNULL", "HEX"})
_DETERMINISTIC |= {"CHAR", "REPLACE", "TRIM", "LTRIM", "RTRIM", "NULLIF", "ROUND"}
_CONSTANT_WORDS = frozenset({"NULL", "TRUE", "FALSE", "NOT", "AND", "OR"})


def _now_default(what: str, pg: PgType) -> str | None:
    """The PostgreSQL expression giving what SQLite's "now" form would store, or None.

    SQLite's clock forms are UTC text; the converters read such text as UTC,
    so the defaults are UTC too, whatever the session's time zone.
    """
    if what == "epoch":
        return "floor(extract(epoch FROM now()))::bigint" if pg.kind in _INT_KINDS else None
    if pg.kind in _TEXT_KINDS:
        length = pg.length or 0
        fmt = _TEXT_FORMATS[what]
        return f"to_char({_UTC_NOW}, '{fmt}')" if not length or length >= len(fmt) - 2 else None
    exprs = {
        ("timestamp", Kind.TIMESTAMPTZ): "CURRENT_TIMESTAMP",
        ("timestamp", Kind.TIMESTAMP): _UTC_NOW,
        ("date", Kind.DATE): f"{_UTC_NOW}::date",
        ("date", Kind.TIMESTAMPTZ): f"({_UTC_NOW}::date::timestamp AT TIME ZONE 'UTC')",
        ("date", Kind.TIMESTAMP): f"{_UTC_NOW}::date::timestamp",
        ("time", Kind.TIME): f"{_UTC_NOW}::time(0)",
    }
    return exprs.get((what, pg.kind))


def _unwrap(tokens: list[Token]) -> list[Token]:
    while len(tokens) >= 2 and tokens[0].text == "(" and tokens[-1].text == ")":
        depth = 0
        for j, t in enumerate(tokens):
            depth += {"(": 1, ")": -1}.get(t.text, 0)
            if depth == 0 and j < len(tokens) - 1:
                return tokens  # "(a) + (b)": the outer parentheses are not one pair
        tokens = tokens[1:-1]
    return tokens


def _form(tok: Token) -> str:
    """A token as it is written in ``_NOW_FORMS``: names in capitals, 'now' in small
    letters, other strings as they are ('%s' and '%S' differ)."""
    if tok.kind == "name":
        return tok.word
    return "'now'" if tok.text.lower() == "'now'" else tok.text


def translate_default(
    default: str | None, decl: str, pg: PgType, convert: Converter
) -> DefaultTranslation:
    """The DEFAULT of a created column, from SQLite's default text for it."""
    if default is None:
        return DefaultTranslation(None)
    try:
        tokens = _unwrap(tokenize(default))
    except SqlSyntaxError as exc:
        return DefaultTranslation(None, reason=f"cannot be read: {exc}")
    key = "".join(_form(t) for t in tokens)
    what = _NOW_FORMS.get(key)
    if what is not None:
        expr = _now_default(what, pg)
        if expr is None:
            return DefaultTranslation(None, reason=f"the current {what} cannot fill {pg.name}")
        return DefaultTranslation(sql.SQL(expr), text=expr)
    if any(t.kind == "string" and t.text.lower() == "'now'" for t in tokens):
        why = "a clock form other than CURRENT_*, datetime/date/time('now'), strftime('%s','now')"
        return DefaultTranslation(None, reason=why)
    for tok in tokens:
        word = tok.word
        if tok.kind in ("name", "quoted") and word not in _CONSTANT_WORDS | _DETERMINISTIC:
            return DefaultTranslation(None, reason=f"{tok.text} is not a constant we evaluate")
    try:
        raw = _sqlite_stores(default, decl)
    except sqlite3.Error as exc:
        return DefaultTranslation(None, reason=f"SQLite cannot evaluate it: {exc}")
    if raw is None:
        return DefaultTranslation(None, text="NULL")
    try:
        value = convert(raw)
    except (CoercionError, TypeError, ValueError) as exc:
        return DefaultTranslation(None, reason=f"{raw!r} cannot fill {pg.name}: {exc}")
    literal = sql.Literal(value)
    cast = sql.SQL("CAST({} AS {})").format(literal, sql.SQL(pg.ddl()))
    return DefaultTranslation(cast, text=literal.as_string(None).strip())


def _sqlite_stores(default: str, decl: str) -> object:
    """The value SQLite stores for this default in a column of this declared type
    (its affinity applied), computed by SQLite itself in a private database."""
    db = sqlite3.connect(":memory:")
    try:
        db.execute(f"CREATE TABLE t (c {decl} DEFAULT ({default}), k)")
        db.execute("INSERT INTO t (k) VALUES (1)")
        row = db.execute("SELECT c FROM t").fetchone()
    finally:
        db.close()
    return row[0]
