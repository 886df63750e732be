"""Verdicts beyond "equal or not": what the query file may accept, order, empty answers.

Equal values are not the whole answer the application sees. Two results can
hold the same rows in a different order when nothing fixes the order (no
ORDER BY, or ties on its keys): the application then sees a different first
page, which the multiset comparison alone would pass. Two empty results are
equal and prove nothing: the sample data does not exercise the query. And
the PostgreSQL session's settings (``TimeZone`` above all) change what
``now()`` and ``timestamptz`` text mean, so they are the application's own,
given in the query file, and reported.

This module parses the query-file keys for those (``accept``,
``float_tolerance``, ``[session]``) and holds the order checks; the type
checks are :mod:`replicator.queries.drift`, dead letters
:mod:`replicator.queries.letters`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from replicator.errors import ConfigError
from replicator.queries.compare import Row, same_row
from replicator.queries.params import did_you_mean
from replicator.queries.sqltext import Dialect, code_spans

__all__ = [
    "ACCEPTABLE",
    "EXTRA_QUERY_KEYS",
    "VERDICTS",
    "implied_order_key",
    "parse_accept",
    "parse_session",
    "same_sequence",
    "suggest_order_by",
]

# Query keys this module reads (both file formats).
EXTRA_QUERY_KEYS = ("accept", "float_tolerance")

# What a query may accept: shown in the report, not failed.
ACCEPTABLE = ("type_drift", "order", "vacuous")

# Every verdict a query can get, most serious first (the first that applies wins).
VERDICTS = (
    "error",
    "different",
    "type_drift",
    "order_not_guaranteed",
    "vacuous",
    "slow",
    "near_target",
    "same",
)

_COLUMN_NAME = re.compile(r"[^\s,]+")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_GUC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def parse_accept(value: object, where: str) -> frozenset[str]:
    """``accept = ["type_drift", "type_drift:code", "order", "vacuous"]``."""
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{where}: 'accept' must be a list of verdict names")
    out: set[str] = set()
    for item in items:
        name, sep, column = item.strip().partition(":")
        name = name.strip()
        if name not in ACCEPTABLE:
            raise ConfigError(
                f"{where}: 'accept' takes {', '.join(ACCEPTABLE)} (or type_drift:COLUMN), "
                f"not {item!r}{did_you_mean(name, ACCEPTABLE)}"
            )
        if sep and (name != "type_drift" or not _COLUMN_NAME.fullmatch(column.strip())):
            raise ConfigError(f"{where}: only type_drift takes a column ('type_drift:COLUMN')")
        out.add(f"{name}:{column.strip().lower()}" if sep else name)
    return frozenset(out)


def parse_session(raw: object, where: str) -> tuple[tuple[str, str], ...]:
    """``[session]``: PostgreSQL settings for the check's session, as the app sets them."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a table of PostgreSQL settings (TimeZone = ...)")
    out: list[tuple[str, str]] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _GUC_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a PostgreSQL setting name")
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise ConfigError(f"{where}: {name} must be text, a number or a boolean")
        out.append((name, text))
    return tuple(out)


# --------------------------------------------------------------------------- order


def same_sequence(a: Sequence[Row], b: Sequence[Row], tolerance: float) -> bool:
    """Whether two results that hold the same rows also hold them in the same order."""
    return len(a) == len(b) and all(same_row(x, y, tolerance) for x, y in zip(a, b, strict=True))


_ORDER_BY = re.compile(r"[()]|\b(order\s+by|limit|offset|fetch)\b", re.IGNORECASE)
_ITEM_TAIL = re.compile(
    r"\s+(collate\s+\S+|asc|desc|nulls\s+first|nulls\s+last)\s*$", re.IGNORECASE
)
_PLAIN_NAME = re.compile(r'(?:[A-Za-z_][\w$]*\.)?("(?:[^"]|"")+"|[A-Za-z_][\w$]*)')


def _top_level_order_by(text: str, dialect: Dialect) -> str | None:
    """The text of the outermost ORDER BY list, or None when there is none."""
    depth = 0
    start = end = None
    for a, b in code_spans(text, dialect):
        for m in _ORDER_BY.finditer(text, a, b):
            tok = m.group(0).lower()
            if tok == "(":
                depth += 1
            elif tok == ")":
                depth = max(0, depth - 1)
            elif depth == 0 and tok.startswith("order"):
                start, end = m.end(), None
            elif depth == 0 and start is not None and end is None:
                end = m.start()
    if start is None:
        return None
    return text[start:end]


def _split_top_level(text: str) -> list[str]:
    items, depth, last = [], 0, 0
    quoted = False
    for i, ch in enumerate(text):
        if ch in "\"'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            items.append(text[last:i])
            last = i + 1
    items.append(text[last:])
    return [i.strip() for i in items]


def implied_order_key(text: str, names: Sequence[str]) -> list[int] | None:
    """Result column positions the SQLite form's ORDER BY sorts on, when every
    item is a result column (by name, ``t.name`` or position); None when an item
    is an expression the result does not show."""
    body = _top_level_order_by(text, "sqlite")
    if body is None:
        return None
    lowered = [n.lower() for n in names]
    out: list[int] = []
    for written in _split_top_level(body):
        item = written
        while (m := _ITEM_TAIL.search(item)) is not None:
            item = item[: m.start()].rstrip()
        if item.isdigit() and 1 <= int(item) <= len(names):
            out.append(int(item) - 1)
            continue
        m = _PLAIN_NAME.fullmatch(item)
        if m is None:
            return None
        name = m.group(1)
        name = name[1:-1].replace('""', '"') if name.startswith('"') else name
        if name.lower() not in lowered:
            return None
        out.append(lowered.index(name.lower()))
    return out or None


def _shown_name(name: str, position: int) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else str(position + 1)


def _unique(rows: Sequence[Sequence[Any]], idx: Sequence[int]) -> bool:
    seen: set[str] = set()
    for row in rows:
        values = [row[i] for i in idx]
        if any(v is None for v in values):
            return False
        text = repr(values)
        if text in seen:
            return False
        seen.add(text)
    return True


def suggest_order_by(
    names: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    keys: Sequence[str] = (),
    first: Sequence[int] = (),
    query: str | None = None,
) -> str:
    """An ORDER BY that makes the order total on these results.

    ``first`` are the positions already sorted on (kept in front); then the
    first of ``keys`` (key columns of the tables the query reads) or of the
    result's columns that is unique, without NULLs, in the rows at hand; else
    every column. Uniqueness in a sample is a hint, not a proof: the report
    says so. When ``query`` (the SQLite form) has a top-level ORDER BY, its
    items are kept as written (``DESC``, expressions and all) and the
    tie-breakers follow them: the suggestion must not reverse the order.
    """
    lowered = [n.lower() for n in names]
    candidates = [lowered.index(k.lower()) for k in keys if k.lower() in lowered]
    candidates += [i for i in range(len(names)) if i not in candidates]
    chosen: list[int] = list(first)
    for i in candidates:
        if i not in chosen and _unique(rows, [*first, i]):
            chosen.append(i)
            break
    else:
        chosen += [i for i in range(len(names)) if i not in chosen]
    written = _top_level_order_by(query, "sqlite") if query is not None else None
    if written is not None:
        written = " ".join(_COMMENT.sub(" ", written).split())  # one line, no comments
    if written:
        extra = [_shown_name(names[i], i) for i in chosen if i not in first]
        return "ORDER BY " + ", ".join([written, *extra])
    return "ORDER BY " + ", ".join(_shown_name(names[i], i) for i in chosen)
