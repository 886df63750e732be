"""Chunk digests each database computes itself: verify's fast path.

A row becomes one text on each side, the source's in SQLite (and, for a double
or a jsonb column, in Python), the target's in PostgreSQL, and a chunk of rows
(in key order) becomes the md5 of their texts run together. Only a chunk whose
digests differ is read row by row and compared the exact way
(:mod:`replicator.plan.compare`: the plan's converter, then ``canonical()``).

The rule that keeps this honest: **equal texts imply equal rows** under that
normalisation. Each field is written so that its text determines the value:

- every field ends with ``,``; a NULL is ``~``; a source value the SQL form does
  not handle (a number in a text column, an epoch in a timestamp, a text with an
  offset other than UTC...) is ``?``. No target field starts with ``~`` or
  ``?``, so such a row never matches and the exact path decides;
- text is length-prefixed (``5:hello,``), so no character in it can fake a
  boundary; everything else has a form that cannot contain ``,`` or is JSON,
  which ends where its own grammar says;
- a timestamp is ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (all six digits: a
  microsecond counts); the source's text is rewritten in SQL only from the plain
  ISO forms the converter reads the same way (a date, ``HH:MM[:SS[.f{1,6}]]``,
  ``T`` or a space, no offset or ``+00:00`` / ``Z``; or ``HH:MM:SS[.f{1,6}]``
  with an offset, moved to UTC by SQLite for a valid date and time only);
  anything else is ``?``;
- a double is its shortest round-trip text (Python's ``repr`` on the source,
  PostgreSQL's with ``extra_float_digits = 3``), which determines the double;
- jsonb is PostgreSQL's own text of it, and on the source the JSON is parsed
  and written in that form: keys by (byte length, bytes), ``", "`` and
  ``": "``, strings escaped as PostgreSQL escapes them, and each number as the
  exact text the source wrote (a ``1.0``, ``1e3`` or ``-0`` that jsonb prints
  otherwise only costs a trip through the exact path);
- char(n) is compared without trailing spaces on both sides, as ``canonical()``
  does, but only for source text that fits ``n`` (longer text the converter
  refuses is ``?``).

A form may be stricter than ``canonical()`` (``1.0`` vs ``1`` in jsonb, a
timestamp written with an offset): that costs a chunk on the exact path, never
a wrong verdict. Kinds without such a form (numeric, real, time, json, other)
send their whole table to the exact path: :func:`digest_plan` returns None.
"""

from __future__ import annotations

import hashlib
import json
import json.scanner
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import sql

from replicator.coerce import Kind
from replicator.identifiers import pg_ident, sqlite_ident
from replicator.plan.compare import target_key_order
from replicator.plan.tables import TablePlan
from replicator.source.sqlite import ROWID

NULL = "~"
UNHANDLED = "?"
_INT_KINDS = (Kind.SMALLINT, Kind.INTEGER, Kind.BIGINT)
_TEXT_KINDS = (Kind.TEXT, Kind.VARCHAR)
_SQL_KINDS = frozenset(
    {
        *_INT_KINDS,
        *_TEXT_KINDS,
        Kind.CHAR,
        Kind.BOOLEAN,
        Kind.TIMESTAMP,
        Kind.TIMESTAMPTZ,
        Kind.DATE,
        Kind.BYTEA,
        Kind.UUID,
    }
)
_PY_KINDS = frozenset({Kind.DOUBLE, Kind.JSONB})
# Keys whose order is the same in both databases (text in the "C" collation).
_KEY_KINDS = frozenset({*_INT_KINDS, *_TEXT_KINDS})
FAST_KINDS = _SQL_KINDS | _PY_KINDS
# One `||` chain of this many SQL-built fields stays well inside SQLite's expression
# depth limit (1000, reached near 700 fields); a wider table is compared exactly.
MAX_SQL_FIELDS = 300

_D = "[0-9]"
_DATE_GLOB = f"{_D * 4}-{_D * 2}-{_D * 2}"
_HM_GLOB = f"{_DATE_GLOB}[ T]{_D * 2}:{_D * 2}"
_HMS_GLOB = f"{_HM_GLOB}:{_D * 2}"
_OFFSET_GLOB = "[+-][01][0-9]:[0-5][0-9]"  # every one of these Python reads
_HEX = "[0-9a-fA-F]"
_UUID_GLOB = f"{_HEX * 8}-{_HEX * 4}-{_HEX * 4}-{_HEX * 4}-{_HEX * 12}"


def _sq_field(kind: Kind, c: str, length: int | None) -> str:
    """SQLite: the field text of source column ``c`` (already quoted). Each form is
    chosen by ``typeof()`` first: a blob holding the bytes of a date is no date."""
    if kind in _INT_KINDS:
        return f"CASE typeof({c}) WHEN 'integer' THEN {c} || ',' WHEN 'null' THEN '~,' ELSE '?' END"
    if kind in _TEXT_KINDS:
        text = f"length({c}) || ':' || {c} || ','"
        return f"CASE typeof({c}) WHEN 'text' THEN {text} WHEN 'null' THEN '~,' ELSE '?' END"
    if kind is Kind.CHAR:
        trimmed = f"rtrim({c}, ' ')"
        text = f"length({trimmed}) || ':' || {trimmed} || ','"
        if length is not None:
            text = f"CASE WHEN length({c}) <= {int(length)} THEN {text} ELSE '?' END"
    elif kind is Kind.BOOLEAN:
        return (
            f"CASE typeof({c}) WHEN 'integer' THEN CASE {c} WHEN 1 THEN 't,' WHEN 0 THEN 'f,' "
            f"ELSE '?' END WHEN 'null' THEN '~,' ELSE '?' END"
        )
    elif kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        text = _sq_timestamp(c)
    elif kind is Kind.DATE:
        text = f"CASE WHEN {c} GLOB '{_DATE_GLOB}' THEN {c} || ',' ELSE '?' END"
    elif kind is Kind.BYTEA:
        return (
            f"CASE typeof({c}) WHEN 'null' THEN '~,' WHEN 'blob' THEN lower(hex({c})) || ',' "
            f"WHEN 'text' THEN lower(hex({c})) || ',' ELSE '?' END"
        )
    elif kind is Kind.UUID:
        text = f"CASE WHEN {c} GLOB '{_UUID_GLOB}' THEN lower({c}) || ',' ELSE '?' END"
    else:  # pragma: no cover - digest_plan admits only the kinds above
        raise ValueError(kind)
    return f"CASE typeof({c}) WHEN 'text' THEN {text} WHEN 'null' THEN '~,' ELSE '?' END"


def _sq_timestamp(c: str) -> str:
    """Text (typeof checked by the caller) the converter reads as this wall time in
    UTC, as 'YYYY-MM-DD HH:MM:SS.ffffff'.

    Invalid dates or times that match the patterns (2024-02-30, 25:00) become a
    text PostgreSQL never prints, so they cannot match either. The usual form
    ('YYYY-MM-DD HH:MM:SS') is tried first: one GLOB for most values."""
    # The text without a '+00:00' or 'Z' after a time of day (a date alone takes no offset).
    body = (
        f"(CASE WHEN {c} GLOB '{_HM_GLOB}*+00:00' THEN substr({c}, 1, length({c}) - 6) "
        f"WHEN {c} GLOB '{_HM_GLOB}*Z' THEN substr({c}, 1, length({c}) - 1) ELSE {c} END)"
    )
    day = f"substr({body}, 1, 10) || ' '"
    # Another offset: the whole seconds to UTC by SQLite (offsets are whole minutes, so
    # the fraction stays), only for a date and time SQLite reads back unchanged once
    # normalised ('+0 seconds' rolls 2024-02-30 and 24:00 over; :60 gives NULL), in
    # a year from 1 on: dates Python refuses never become a valid UTC text.
    valid = (
        f"substr({c}, 1, 4) <> '0000' AND strftime('%Y-%m-%d %H:%M:%S', substr({c}, 1, 19), "
        f"'+0 seconds') = substr({c}, 1, 10) || ' ' || substr({c}, 12, 8)"
    )
    utc = f"strftime('%Y-%m-%d %H:%M:%S', substr({c}, 1, 19) || substr({c}, -6))"
    frac = f"substr({c}, 21, length({c}) - 26)"
    return (
        f"CASE WHEN {c} GLOB '{_DATE_GLOB} {_D * 2}:{_D * 2}:{_D * 2}' THEN {c} || '.000000,' "
        f"WHEN {c} GLOB '{_DATE_GLOB}' THEN {c} || ' 00:00:00.000000,' "
        f"WHEN {c} GLOB '{_HMS_GLOB}{_OFFSET_GLOB}' AND {valid} "
        f"THEN coalesce({utc}, '?') || '.000000,' "
        f"WHEN {c} GLOB '{_HMS_GLOB}.[0-9]*{_OFFSET_GLOB}' AND length({c}) <= 32 "
        f"AND {frac} NOT GLOB '*[^0-9]*' AND {valid} "
        f"THEN coalesce({utc}, '?') || '.' || substr({frac} || '000000', 1, 6) || ',' "
        f"WHEN {body} GLOB '{_HMS_GLOB}' THEN {day} || substr({body}, 12) || '.000000,' "
        f"WHEN {body} GLOB '{_HM_GLOB}' THEN {day} || substr({body}, 12) || ':00.000000,' "
        f"WHEN {body} GLOB '{_HMS_GLOB}.[0-9]*' AND length({body}) <= 26 "
        f"AND substr({body}, 21) NOT GLOB '*[^0-9]*' "
        f"THEN {day} || substr(substr({body}, 12) || '000000', 1, 15) || ',' "
        f"ELSE '?' END"
    )


def _pg_field(kind: Kind, col: sql.Composable) -> sql.Composable:
    """PostgreSQL: the field text of target column ``col``, as the source's is written."""
    if kind in _INT_KINDS or kind is Kind.DOUBLE or kind is Kind.UUID:
        body: sql.Composable = sql.SQL("{}::text || ','").format(col)
    elif kind in _TEXT_KINDS:
        body = sql.SQL("length({c}) || ':' || {c} || ','").format(c=col)
    elif kind is Kind.CHAR:
        body = sql.SQL("length(rtrim({c}, ' ')) || ':' || rtrim({c}, ' ') || ','").format(c=col)
    elif kind is Kind.BOOLEAN:
        body = sql.SQL("CASE WHEN {} THEN 't,' ELSE 'f,' END").format(col)
    elif kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        wall = sql.SQL("({} AT TIME ZONE 'UTC')").format(col) if kind is Kind.TIMESTAMPTZ else col
        # Outside years 1..9999 (BC years print like AD ones) the source holds nothing.
        body = sql.SQL(
            "CASE WHEN {w} >= '0001-01-01' AND {w} < '10000-01-01' "
            "THEN to_char({w}, 'YYYY-MM-DD HH24:MI:SS.US') || ',' ELSE '!,' END"
        ).format(w=wall)
    elif kind is Kind.DATE:
        body = sql.SQL(
            "CASE WHEN {c} >= '0001-01-01' AND {c} < '10000-01-01' "
            "THEN to_char({c}, 'YYYY-MM-DD') || ',' ELSE '!,' END"
        ).format(c=col)
    elif kind is Kind.BYTEA:
        body = sql.SQL("encode({}, 'hex') || ','").format(col)
    elif kind is Kind.JSONB:
        body = sql.SQL("{}::text || ','").format(col)
    else:  # pragma: no cover
        raise ValueError(kind)
    return sql.SQL("CASE WHEN {} IS NULL THEN '~,' ELSE {} END").format(col, body)


# --- the Python-written fields (source side) ---------------------------------


def double_field(v: object) -> str:
    """A double as PostgreSQL prints it (shortest round trip), or '?' when the
    source value is not one the SQL form can speak for."""
    if type(v) is float:
        if math.isfinite(v):
            r = repr(v)
            return (r[:-2] if r.endswith(".0") else r) + ","
        return ("Infinity," if v > 0 else "-Infinity,") if not math.isnan(v) else "?"
    if v is None:
        return "~,"
    if type(v) is int and -(2**53) <= v <= 2**53:
        return f"{v},"
    return "?"


_EXACT_WHOLE = 2.0**53


def _float(text: str) -> float:
    """A JSON number with a fraction or exponent, as Python's float, written back with
    ``repr`` (exact: the shortest text of that double). Refused when that text could
    stand for another value than the source's under ``canonical()``: a whole number
    too large for a double to hold exactly (9007199254740993.0)."""
    f = float(text)
    if f.is_integer() and abs(f) >= _EXACT_WHOLE:
        raise ValueError("a whole number a double does not hold exactly")
    return f


def _refuse(_token: str) -> object:
    raise ValueError("NaN and Infinity are not JSON")


def _unknown(o: object) -> object:
    raise ValueError(f"not JSON: {type(o).__name__}")


_decoder = json.JSONDecoder(parse_float=_float, parse_constant=_refuse)
# The decoder's scanner called directly (JSONDecoder.decode wraps it in two Python
# frames and two regular-expression matches per value).
_scan = json.scanner.make_scanner(_decoder)  # type: ignore[arg-type]  # (typeshed)
_JSON_SPACE = " \t\n\r"


def _decode(text: str) -> Any:
    """``text`` as one JSON value, as json.loads reads it (ValueError when it is not)."""
    try:
        obj, end = _scan(text, 0)
    except StopIteration:  # leading white space, or not JSON at all
        return _decoder.decode(text)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ValueError("extra data after the JSON value")
    return obj


# PostgreSQL's jsonb text: ", " and ": ", non-ASCII as is, control characters escaped
# (json's C encoder, made once: JSONEncoder.encode makes one per call).
_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    None
    if _make_encoder is None
    else _make_encoder(
        None, _unknown, json.encoder.encode_basestring, None, ": ", ", ", False, False, False
    )
)
_py_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(", ", ": "), check_circular=False, allow_nan=False
).encode


def _encode(obj: Any) -> str:
    if _c_encode is not None:
        return "".join(_c_encode(obj, 0))
    return _py_encode(obj)  # pragma: no cover - CPython has the C encoder


def _pg_len(key: str) -> int:
    return len(key.encode("utf-8", "surrogatepass"))


_ORDERS: dict[tuple[str, ...], list[str]] = {}  # an object's keys -> jsonb's order of them
_CONTAINERS = (dict, list)


def _order_of(given: tuple[str, ...]) -> list[str]:
    """jsonb's order of an object's keys: shorter (in UTF-8 bytes) first, then by bytes,
    which is code point order. Rows of a table mostly share their keys: kept."""
    keys = _ORDERS.get(given)
    if keys is None:
        keys = sorted(given)  # by code point, then (stable) by length
        keys.sort(key=len if "".join(given).isascii() else _pg_len)
        if len(_ORDERS) >= 4096:
            _ORDERS.clear()
        _ORDERS[given] = keys
    return keys


def _pg_order(v: Any) -> Any:
    """``v`` with every object's keys in jsonb's order (dicts keep insertion order)."""
    if type(v) is dict:
        out = {}
        for k in _order_of(tuple(v)):
            x = v[k]
            out[k] = _pg_order(x) if type(x) in _CONTAINERS else x
        return out
    if type(v) is list:
        return [_pg_order(x) if type(x) in _CONTAINERS else x for x in v]
    return v


def _slow_text(v: Any) -> str:
    """As the C encoder writes ``v`` (already in jsonb's key order), but a number
    Python would write with a negative exponent as jsonb does, in positional
    notation (6.3e-05 as 0.000063): the same value, exactly."""
    t = type(v)
    if t is float:
        r = repr(v)
        return format(Decimal(r), "f") if "e-" in r else r
    if t is dict:
        return "{" + ", ".join(f"{_encode(k)}: {_slow_text(x)}" for k, x in v.items()) + "}"
    if t is list:
        return "[" + ", ".join([_slow_text(x) for x in v]) + "]"
    return _encode(v)


def jsonb_field(v: object) -> str:
    """JSON text as PostgreSQL writes the jsonb it makes of it; '?' when not JSON."""
    if type(v) is str:
        try:
            obj = _decode(v)
            if "{" in v:
                obj = _pg_order(obj)
            text = _encode(obj)
            if "e-" in text:  # perhaps a small number (or only text holding "e-")
                text = _slow_text(obj)
            return text + ","
        except (ValueError, RecursionError):
            return "?"
    return "~," if v is None else "?"


_PY_FIELDS = {Kind.DOUBLE: double_field, Kind.JSONB: jsonb_field}


# --- per table -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestPlan:
    """How both sides of one table write their rows' text (see the module docstring)."""

    source_select: str  # key columns, the SQLite-built text, then the Python columns
    key_width: int
    py_fields: tuple[Any, ...]  # one field writer per Python column, in order
    target_row: sql.Composable  # the same text in PostgreSQL
    target_order: sql.Composable  # the key, ordered as SQLite orders it

    def chunk_digest(self, rows: Sequence[Sequence[Any]]) -> str | None:
        """md5 of the chunk's row texts (as PostgreSQL's md5(string_agg(...)) makes
        it); None for no rows, or text that cannot be UTF-8 (never a match)."""
        if not rows:
            return None
        k = self.key_width
        if self.py_fields:
            columns = list(zip(*rows, strict=True))
            written = [columns[k]] + [
                list(map(f, columns[k + 1 + i])) for i, f in enumerate(self.py_fields)
            ]
            parts: Sequence[str] = list(map("".join, zip(*written, strict=True)))
        else:
            parts = [r[k] for r in rows]
        try:
            data = "".join(parts).encode("utf-8")
        except UnicodeEncodeError:
            return "not utf-8"
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def target_digest_query(self, plan: TablePlan, where: sql.Composable) -> sql.Composed:
        """(rows, md5 of their texts in key order) of the target rows ``where`` selects."""
        return sql.SQL(
            "SELECT count(*), md5(string_agg({row}, '' ORDER BY {order})) FROM {t} WHERE {w}"
        ).format(row=self.target_row, order=self.target_order, t=plan.table, w=where)


def digest_plan(plan: TablePlan) -> DigestPlan | None:
    """The fast path's text forms for ``plan``, or None when a column's kind has
    none (the table is then compared row by row)."""
    kinds = [c.type.kind for c in plan.columns]
    if any(k not in FAST_KINDS for k in kinds):
        return None
    if any(kinds[i] not in _KEY_KINDS for i in plan.key_positions):
        return None
    sq_parts: list[str] = []
    pg_sq: list[sql.Composable] = []
    py_cols: list[str] = []
    pg_py: list[sql.Composable] = []
    py_fields: list[Any] = []
    for col in plan.columns:
        kind = col.type.kind
        ref = ROWID if col.source == ROWID else sqlite_ident(col.source)
        pg = _pg_field(kind, pg_ident(col.target))
        if kind in _PY_KINDS:
            py_cols.append(ref)
            pg_py.append(pg)
            py_fields.append(_PY_FIELDS[kind])
        else:
            sq_parts.append(_sq_field(kind, ref, col.type.length))
            pg_sq.append(pg)
    if len(sq_parts) > MAX_SQL_FIELDS:
        return None
    keys = [ROWID if k == ROWID else sqlite_ident(k) for k in plan.key]
    text = " || ".join(f"({p})" for p in sq_parts) if sq_parts else "''"
    select = ", ".join([*keys, text, *py_cols])
    row = sql.SQL(" || ").join([*pg_sq, *pg_py]) if pg_sq or pg_py else sql.SQL("''")
    order = target_key_order(plan)
    return DigestPlan(
        source_select=select,
        key_width=len(keys),
        py_fields=tuple(py_fields),
        target_row=row,
        target_order=sql.SQL(", ").join(order),
    )
