"""Reading the parts of SQLite's schema text that no PRAGMA reports.

``PRAGMA table_xinfo`` and ``index_xinfo`` say which columns are generated and
which indexes are partial or on expressions, but not the expressions
themselves, and nothing reports CHECK constraints. Those are read from the
``CREATE`` statements SQLite keeps in ``sqlite_schema``, with a tokenizer
that knows SQLite's quoting and comments. Nothing here judges or translates
an expression; it only cuts the statement into its parts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# One token: a comment, a string, a blob, a quoted or bare name, a number, an operator.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))
  | (?P<blob>[xX]'[0-9a-fA-F]*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_\u0080-\U0010ffff][\w$\u0080-\U0010ffff]*)
  | (?P<op>\|\||<=|>=|==|!=|<>|<<|>>|[-+*/%<>=(),.;~&|?:@$])
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # blob, string, quoted, number, name, op
    text: str

    @property
    def word(self) -> str:
        """The upper-cased text of a bare name (keywords, functions), else ''."""
        return self.text.upper() if self.kind == "name" else ""

    @property
    def ident(self) -> str | None:
        """The identifier this token names (quotes removed), or None."""
        if self.kind == "name":
            return self.text
        if self.kind == "quoted":
            body, first = self.text[1:-1], self.text[0]
            return body if first == "[" else body.replace(first * 2, first)
        if self.kind == "string":  # SQLite accepts 'name' where a name is expected
            return self.text[1:-1].replace("''", "'")
        return None


class SqlSyntaxError(ValueError):
    """The schema text could not be cut into its parts."""


def tokenize(text: str) -> list[Token]:
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SqlSyntaxError(f"cannot read {text[pos : pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "space":
            out.append(Token(kind, m.group()))
    return out


def render(tokens: Sequence[Token]) -> str:
    """Tokens back to text, single-spaced (for reports and SQLite evaluation)."""
    text = ""
    previous: Token | None = None
    for tok in tokens:
        call = tok.text == "(" and previous is not None and _is_function(previous)
        glue = text and not text.endswith("(") and tok.text not in (")", ",") and not call
        text += (" " if glue else "") + tok.text
        previous = tok
    return text


# Words that may stand before "(" without calling a function.
_BEFORE_PARENTHESES = frozenset({"IN", "AND", "OR", "NOT", "WHEN", "THEN", "ELSE", "IS", "AS"})


def _is_function(tok: Token) -> bool:
    return tok.kind == "name" and tok.word not in _BEFORE_PARENTHESES


def _closing(tokens: Sequence[Token], start: int) -> int:
    """Index of the ')' matching the '(' at ``start``."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].text == "(":
            depth += 1
        elif tokens[i].text == ")":
            depth -= 1
            if depth == 0:
                return i
    raise SqlSyntaxError("unbalanced parentheses")


def split_top(tokens: Sequence[Token]) -> list[list[Token]]:
    """Split on commas outside parentheses."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        if tok.text == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(tok)
    return [p for p in parts if p]


@dataclass(frozen=True, slots=True)
class CheckClause:
    name: str | None  # CONSTRAINT name, when given
    column: str | None  # the column it is declared on; None: a table constraint
    expression: tuple[Token, ...]


@dataclass(frozen=True, slots=True)
class TableText:
    checks: tuple[CheckClause, ...]
    generated: tuple[tuple[str, tuple[Token, ...]], ...]  # (column, its AS (...) expression)
    strict: bool
    problem: str = ""  # why the statement could not be read (then nothing else was)

    def generated_by(self, column: str) -> tuple[Token, ...] | None:
        return next((expr for name, expr in self.generated if name == column), None)


def _groups(part: Sequence[Token], keyword: str) -> list[tuple[str | None, tuple[Token, ...]]]:
    """Every ``[CONSTRAINT name] KEYWORD ( ... )`` at the top level of ``part``."""
    found: list[tuple[str | None, tuple[Token, ...]]] = []
    i = 0
    while i < len(part):
        tok = part[i]
        if tok.text == "(":
            i = _closing(part, i) + 1
            continue
        if tok.word == keyword and i + 1 < len(part) and part[i + 1].text == "(":
            end = _closing(part, i + 1)
            name = part[i - 1].ident if i >= 2 and part[i - 2].word == "CONSTRAINT" else None
            found.append((name, tuple(part[i + 2 : end])))
            i = end + 1
            continue
        i += 1
    return found


_TABLE_CONSTRAINTS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})


def parse_create_table(text: str) -> TableText:
    """The CHECK clauses, generated-column expressions and STRICT option of a table."""
    tokens = tokenize(text)
    start = next((i for i, t in enumerate(tokens) if t.text == "("), None)
    if start is None:
        return TableText((), (), strict=False)  # CREATE TABLE ... AS SELECT
    end = _closing(tokens, start)
    options = {t.word for t in tokens[end + 1 :]}
    checks: list[CheckClause] = []
    generated: list[tuple[str, tuple[Token, ...]]] = []
    for part in split_top(tokens[start + 1 : end]):
        column = None if part[0].word in _TABLE_CONSTRAINTS else part[0].ident
        for name, expr in _groups(part, "CHECK"):
            checks.append(CheckClause(name, column, expr))
        if column is not None:
            for _name, expr in _groups(part, "AS"):
                generated.append((column, expr))
    return TableText(tuple(checks), tuple(generated), strict="STRICT" in options)


@dataclass(frozen=True, slots=True)
class IndexText:
    elements: tuple[tuple[Token, ...], ...]  # each indexed term, COLLATE/ASC/DESC included
    where: tuple[Token, ...]  # the partial index's condition, or ()


def parse_create_index(text: str) -> IndexText:
    """The indexed terms and the WHERE condition of a CREATE INDEX statement."""
    tokens = tokenize(text)
    on = next((i for i, t in enumerate(tokens) if t.word == "ON"), None)
    if on is None:
        raise SqlSyntaxError("no ON in CREATE INDEX")
    start = next(i for i in range(on, len(tokens)) if tokens[i].text == "(")
    end = _closing(tokens, start)
    rest = tokens[end + 1 :]
    where: tuple[Token, ...] = ()
    if rest and rest[0].word == "WHERE":
        where = tuple(t for t in rest[1:] if t.text != ";")
    return IndexText(tuple(tuple(p) for p in split_top(tokens[start + 1 : end])), where)
