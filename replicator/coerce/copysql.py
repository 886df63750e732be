"""The converters' SQLite twins: expressions that put a value in PostgreSQL's COPY text form.

A snapshot of a large table spends most of its time turning each value into a
Python object, converting it and formatting it again. For the values that
are already in the form PostgreSQL reads (an integer, ``'2024-05-01
12:00:00'``, JSON text SQLite's ``json_valid()`` accepts) SQLite's own C code
can give the text PostgreSQL parses, and Python only moves bytes.

:func:`copy_text_expr` gives, for a column of a target type, an SQLite
expression over the source value that yields:

- :data:`MARK_NULL` for NULL;
- :data:`MARK_VALUE` followed by the value's text, for a value the column's
  converter (:func:`replicator.coerce.converter_for`) takes, to the very value
  PostgreSQL reads back from that text;
- SQL NULL for any other value: the row is converted in Python instead.

The conditions are narrow on purpose. They accept only shapes whose meaning
both sides agree on, and where PostgreSQL could read a text the converter
refuses (hour 24, year 0, a leap second, an instant outside the range once in
UTC) they send the value to Python. What is left for PostgreSQL to refuse
(an impossible date such as February 30, an offset beyond 15:59) the
converter refuses as well: such a COPY fails, and the snapshot then converts
those rows in Python, where the value gets the converter's verdict. Text
values come out unescaped: the caller escapes the whole chunk at once and checks
it for what only it can see (NUL, invalid UTF-8, jsonb's ``\\u0000``).

Reals (``real``) are left out: PostgreSQL rounds a double's text to float4 in
its own way. So are numeric, time, uuid, character(n) and the other kinds.
"""

from __future__ import annotations

from replicator.coerce.types import JSON_KINDS, Kind, PgType

MARK_NULL = "\x1c"  # (file separator) before nothing: the value is NULL
MARK_VALUE = "\x1f"  # (unit separator) before each value's text
# The first column's marks, which also start the row: SQLite joins rows with nothing
# between them, and each row starts with exactly one of these.
ROW_NULL = "\x1d"  # (group separator)
ROW_VALUE = "\x1e"  # (record separator)
_MARKS = (MARK_NULL, MARK_VALUE, ROW_NULL, ROW_VALUE)

# The marks as SQL literals (a literal, not char(): no function call per value).
_NULL = f"'{MARK_NULL}'"
_VALUE = f"'{MARK_VALUE}'"

_INT_BOUNDS = {Kind.SMALLINT: (-(2**15), 2**15 - 1), Kind.INTEGER: (-(2**31), 2**31 - 1)}
_EXACT_IN_DOUBLE = 2**53  # every integer up to this is a double exactly
_BIG = "9.9e99"  # (below 1e100, whatever the rounding of the literal)

# ISO-8601 shapes, as GLOB patterns (anchored at both ends). GLOB only checks
# characters; the ranges GLOB cannot say are checked apart (hour below 24, the year).
_DATE = "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]"
_TIME = "[0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
_MILLI = ".[0-9][0-9][0-9]"
_MICRO = ".[0-9][0-9][0-9][0-9][0-9][0-9]"
_OFFSET = "[+-][0-2][0-9]:[0-5][0-9]"
_ZERO_OFFSETS = ("Z", "+00:00", "-00:00")


def _case(ref: str, *branches: str) -> str:
    return f"CASE WHEN {ref} IS NULL THEN {_NULL} {' '.join(branches)} END"


def _integer(ref: str, kind: Kind, always: bool) -> str:
    if always:  # an INTEGER PRIMARY KEY: SQLite holds nothing but an integer there
        return f"{_VALUE} || {ref}"
    bounds = _INT_BOUNDS.get(kind)
    within = f" AND {ref} BETWEEN {bounds[0]} AND {bounds[1]}" if bounds else ""
    return _case(ref, f"WHEN typeof({ref}) = 'integer'{within} THEN {_VALUE} || {ref}")


def _double(ref: str, signed_zero: bool) -> str:
    # printf's '%!.20e' gives 21 significant digits computed in long double: within
    # far less than half a unit in the last place of the double, so PostgreSQL's
    # strtod() reads that very double back. Not from 1e100 up: SQLite scales those by
    # the double nearest 1e100, which is off by up to half a unit itself; nor below
    # 1e-300 (subnormals near). Those go to Python. SQLite's printf drops the sign of
    # -0.0; atan2(z, -1) is pi for 0.0 and -pi for -0.0 (when SQLite has its math
    # functions).
    zero = ""
    if signed_zero:
        zero = (
            f"WHEN typeof({ref}) = 'real' AND {ref} = 0 THEN {_VALUE} || "
            f"CASE WHEN atan2({ref}, -1) > 0 THEN '0' ELSE '-0' END "
        )
    return _case(
        ref,
        f"WHEN typeof({ref}) = 'real' AND ({ref} BETWEEN 1e-300 AND {_BIG} OR {ref} "
        f"BETWEEN -{_BIG} AND -1e-300) THEN {_VALUE} || printf('%!.20e', {ref}) {zero}"
        f"WHEN typeof({ref}) = 'integer' AND {ref} BETWEEN -{_EXACT_IN_DOUBLE} "
        f"AND {_EXACT_IN_DOUBLE} THEN {_VALUE} || {ref}",
    )


def _boolean(ref: str) -> str:
    return _case(
        ref,
        f"WHEN typeof({ref}) = 'integer' AND {ref} IN (0, 1) "
        f"THEN CASE WHEN {ref} = 1 THEN '{MARK_VALUE}t' ELSE '{MARK_VALUE}f' END",
    )


def _text(ref: str, limit: int | None) -> str:
    # (NUL and invalid UTF-8 are found in the chunk's bytes; length() of such text
    # is not what Python counts, but such a chunk is converted in Python anyway.)
    within = f" AND length({ref}) <= {limit}" if limit is not None else ""
    return _case(ref, f"WHEN typeof({ref}) = 'text'{within} THEN {_VALUE} || {ref}")


def _timestamp(ref: str, aware: bool) -> str:
    # Years from 1000 (9998 when there is an offset) and offsets PostgreSQL takes (up
    # to 15:59) keep every instant inside the converter's range once in UTC; other
    # years go to Python. substr(): the column's affinity would make a text literal
    # compared with the column itself a number.
    hour = f"substr({ref}, 12, 2) < '24'"
    naive_as = f"{_VALUE} || {ref} || '+00'" if aware else f"{_VALUE} || {ref}"
    day, zoned_day = f"[1-9]{_DATE[5:]}", f"[1-8]{_DATE[5:]}"
    naive = [f"{day} {_TIME}", f"{day}T{_TIME}"]
    naive += [f"{day}{sep}{_TIME}{frac}" for frac in (_MICRO, _MILLI) for sep in "T "]
    # PostgreSQL takes an offset into a timestamp without time zone by ignoring it:
    # right only when it is zero.
    offsets = [_OFFSET, "Z"] if aware else list(_ZERO_OFFSETS)
    zoned = [
        f"{zoned_day}{sep}{_TIME}{frac}{off}"
        for frac in (_MICRO, "", _MILLI)
        for off in offsets
        for sep in "T "
    ]
    text = f"typeof({ref}) = 'text'"
    zoned_any = " OR ".join(f"{ref} GLOB '{p}'" for p in zoned)
    naive_any = " OR ".join(f"{ref} GLOB '{p}'" for p in naive[1:])
    return _case(
        ref,
        f"WHEN {text} AND {ref} GLOB '{naive[0]}' AND {hour} THEN {naive_as}",
        f"WHEN {text} AND ({zoned_any}) AND {hour} THEN {_VALUE} || {ref}",
        f"WHEN {text} AND ({naive_any}) AND {hour} THEN {naive_as}",
        # a date alone: its midnight (UTC)
        f"WHEN {text} AND {ref} GLOB '{day}' THEN {_VALUE} || {ref} || "
        + ("' 00:00:00+00'" if aware else "' 00:00:00'"),
    )


def _date(ref: str) -> str:
    return _case(
        ref,
        f"WHEN typeof({ref}) = 'text' AND {ref} GLOB '{_DATE}' "
        f"AND substr({ref}, 1, 4) >= '0001' THEN {_VALUE} || {ref}",
    )


def _json(ref: str) -> str:
    # As the snapshot's converter trusts json_valid() (coerce.text.convert_valid);
    # jsonb's \u0000 and lone surrogate escapes are looked for in the chunk's bytes.
    return _case(ref, f"WHEN typeof({ref}) = 'text' AND json_valid({ref}) THEN {_VALUE} || {ref}")


def _bytea(ref: str) -> str:
    # The backslash is doubled with the rest of the chunk's text: COPY then reads \x.
    return _case(ref, f"WHEN typeof({ref}) = 'blob' THEN {_VALUE} || '\\x' || hex({ref})")


def copy_text_expr(
    t: PgType,
    ref: str,
    *,
    json_valid: bool = True,
    signed_zero: bool = False,
    rowid_alias: bool = False,
    first: bool = False,
) -> str | None:
    """The SQLite expression giving ``ref``'s value (an SQLite column reference, quoted)
    in COPY text form for a column of type ``t`` (see the module's docstring); None when
    values of that type are always converted in Python.

    ``json_valid`` and ``signed_zero`` say whether this SQLite has ``json_valid()``
    and ``atan2()``: without them, JSON columns have no expression, and a double's
    zero goes to Python. ``rowid_alias``: ``ref`` is the table's INTEGER PRIMARY KEY.
    ``first``: the row's first column, marked with :data:`ROW_NULL` and
    :data:`ROW_VALUE` instead."""
    if any(m in ref for m in _MARKS):
        return None  # (a column name holding a mark: not worth a special case)
    expr = _expr(t, ref, json_valid, signed_zero, rowid_alias)
    if expr is None or not first:
        return expr
    return expr.replace(MARK_NULL, ROW_NULL).replace(MARK_VALUE, ROW_VALUE)


def _expr(
    t: PgType, ref: str, json_valid: bool, signed_zero: bool, rowid_alias: bool
) -> str | None:
    kind = t.kind
    if kind in (Kind.SMALLINT, Kind.INTEGER, Kind.BIGINT):
        return _integer(ref, kind, rowid_alias and kind is Kind.BIGINT)
    if kind is Kind.DOUBLE:
        return _double(ref, signed_zero)
    if kind is Kind.BOOLEAN:
        return _boolean(ref)
    if kind is Kind.TEXT:
        return _text(ref, None)
    if kind is Kind.VARCHAR:
        return _text(ref, t.length)
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        if t.precision is not None and t.precision < 6:
            return None  # digits beyond the column's precision are the converter's to judge
        return _timestamp(ref, kind is Kind.TIMESTAMPTZ)
    if kind is Kind.DATE:
        return _date(ref)
    if kind in JSON_KINDS:
        return _json(ref) if json_valid else None
    if kind is Kind.BYTEA:
        return _bytea(ref)
    return None
