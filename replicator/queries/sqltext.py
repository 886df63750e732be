"""SQL text scanning: where the code is, its ``:name`` placeholders, its top-level clauses.

A query's text is scanned rather than parsed: all the checker needs is to
find placeholders and the outermost ORDER BY and LIMIT without being fooled by
strings, quoted names and comments, and each dialect quotes differently (see
:func:`code_spans`).
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "Dialect",
    "clean_sql",
    "code_spans",
    "find_placeholders",
    "has_top_level",
    "to_postgres_placeholders",
]

Dialect = Literal["sqlite", "postgres"]

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _quoted_end(text: str, start: int, quote: str, *, backslash: bool = False) -> int:
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
            continue
        if ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _block_comment_end(text: str, start: int, *, nested: bool) -> int:
    depth = 0
    i = start
    n = len(text)
    while i < n:
        if text.startswith("/*", i):
            depth = depth + 1 if nested or depth == 0 else depth
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


def code_spans(text: str, dialect: Dialect) -> list[tuple[int, int]]:
    """Where ``text`` is SQL code: not inside a string, quoted name or comment.

    PostgreSQL adds dollar quoting (``$tag$ ... $tag$``), ``E'...'`` strings
    with backslash escapes and nested block comments; SQLite adds ``[name]``
    and backquoted names.
    """
    spans: list[tuple[int, int]] = []
    i = start = 0
    n = len(text)
    pg = dialect == "postgres"
    while i < n:
        ch = text[i]
        end = -1
        if ch == "-" and text.startswith("--", i):
            nl = text.find("\n", i)
            end = n if nl < 0 else nl
        elif ch == "/" and text.startswith("/*", i):
            end = _block_comment_end(text, i, nested=pg)
        elif ch == "'":
            escaped = (
                pg and i > 0 and text[i - 1] in "eE" and (i < 2 or not _ident_char(text[i - 2]))
            )
            end = _quoted_end(text, i, "'", backslash=escaped)
        elif ch == '"':
            end = _quoted_end(text, i, '"')
        elif not pg and ch == "`":
            end = _quoted_end(text, i, "`")
        elif not pg and ch == "[":
            close = text.find("]", i)
            end = n if close < 0 else close + 1
        elif pg and ch == "$" and (i == 0 or not _ident_char(text[i - 1])):
            m = _DOLLAR_TAG.match(text, i)
            if m:
                close = text.find(m.group(0), m.end())
                end = n if close < 0 else close + len(m.group(0))
        if end < 0:
            i += 1
            continue
        if i > start:
            spans.append((start, i))
        i = start = end
    if start < n:
        spans.append((start, n))
    return spans


_PLACEHOLDER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


def find_placeholders(text: str, dialect: Dialect) -> list[tuple[int, int, str]]:
    """``(start, end, name)`` of every ``:name`` placeholder in code (not in strings)."""
    found = []
    for a, b in code_spans(text, dialect):
        for m in _PLACEHOLDER.finditer(text, a, b):
            found.append((m.start(), m.end(), m.group(1)))
    return found


def to_postgres_placeholders(text: str) -> tuple[str, tuple[str, ...]]:
    """``:name`` -> ``$n`` (one number per distinct name); returns the names in ``$n`` order."""
    order: list[str] = []
    pieces: list[str] = []
    last = 0
    for start, end, name in find_placeholders(text, "postgres"):
        if name not in order:
            order.append(name)
        pieces.append(text[last:start])
        pieces.append(f"${order.index(name) + 1}")
        last = end
    pieces.append(text[last:])
    return "".join(pieces), tuple(order)


_TOP_LEVEL = re.compile(r"[()]|\b(order\s+by|limit)\b", re.IGNORECASE)


def has_top_level(text: str, dialect: Dialect, clause: str) -> bool:
    """Whether the outermost statement has ``clause`` (``order by`` or ``limit``).

    Clauses inside parentheses (subqueries, CTE bodies, window definitions)
    do not count: only the outer ORDER BY decides the order the caller sees.
    """
    depth = 0
    want = clause.lower()
    for a, b in code_spans(text, dialect):
        for m in _TOP_LEVEL.finditer(text, a, b):
            tok = m.group(0)
            if tok == "(":
                depth += 1
            elif tok == ")":
                depth = max(0, depth - 1)
            elif depth == 0 and " ".join(tok.lower().split()) == want:
                return True
    return False


def clean_sql(text: str) -> str:
    """The statement without surrounding blanks and trailing semicolons."""
    body = text.strip()
    while body.endswith(";"):
        body = body[:-1].rstrip()
    return body
