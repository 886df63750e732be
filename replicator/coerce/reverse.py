"""The reverse conversion: a PostgreSQL value back into the SQLite column's own form.

The application wrote its SQLite file in representations of its own (a
timestamp as ``2025-11-12 08:15:30`` in one column and ``2025-11-12T08:15:30Z``
in another, booleans as 0/1 or as ``'true'``): a row copied back must read the
way the app wrote it. Each column's form is detected from values already in it
(:func:`detect`), and :func:`to_sqlite` writes a value in that form.

What is not kept: a timestamp with a zone is written in UTC (the instant is
kept, the offset the app once wrote is not); a timestamp more precise than the
column's fraction (microseconds where the app wrote milliseconds) keeps all its
digits rather than lose some; JSON is jsonb's text (its key order and spacing,
not the app's original text).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Literal

from replicator.coerce.types import Kind, PgType
from replicator.errors import CoercionError

Storage = Literal["integer", "real", "text", "blob", "null"]


@dataclass(frozen=True, slots=True)
class TimeText:
    """How a column writes a timestamp as text."""

    sep: str = " "  # between date and time: " " or "T"
    # The numbers of fractional digits the column's values have (0: none), e.g.
    # (3,) for milliseconds always, (0, 6) for Python's isoformat(), which leaves
    # out a zero fraction.
    fractions: tuple[int, ...] = (0,)
    offset: str = ""  # "", "Z" or "+00:00" (after UTC conversion)
    date_only: bool = False

    def render(self, dt: datetime) -> str:
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
        if self.date_only:
            return dt.date().isoformat()
        text = f"{dt.date().isoformat()}{self.sep}{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        micros = f"{dt.microsecond:06d}"
        needed = len(micros.rstrip("0"))
        # The fewest digits the column uses that hold the value; more precise than
        # every form the column has (PostgreSQL's now() has microseconds where the app
        # wrote milliseconds): every digit is kept, never cut.
        digits = min((c for c in self.fractions if c >= needed), default=needed)
        if digits:
            text += "." + micros[:digits]
        return text + self.offset


@dataclass(frozen=True, slots=True)
class ColumnForm:
    """What a SQLite column held: the storage class most of its values had, and
    for text timestamps or booleans, their spelling."""

    storage: Storage = "null"
    time_text: TimeText | None = None
    bool_text: tuple[str, str] | None = None  # (true, false) as the column spells them
    epoch_scale: int = 1  # epoch numbers: 1 (s), 1000 (ms), 1_000_000 (us)


def _time_text(samples: list[str]) -> TimeText:
    seps = [s[10] for s in samples if len(s) > 10]
    sep = "T" if seps and seps.count("T") * 2 >= len(seps) else " "
    fractions = []
    offsets = []
    for s in samples:
        body = s[19:] if len(s) >= 19 else ""
        digits = ""
        if body[:1] in (".", ","):
            digits = body[1:]
            digits = digits[: len(digits) - len(digits.lstrip("0123456789"))]
            body = body[1 + len(digits) :]
        fractions.append(len(digits))
        offsets.append(body)
    # Most common kind of offset; an explicit one is written as UTC in its style.
    zulu = sum(1 for o in offsets if o in ("Z", "z"))
    numeric = sum(1 for o in offsets if o[:1] in ("+", "-"))
    plain = len(offsets) - zulu - numeric
    offset = ""
    if zulu >= max(numeric, plain) and zulu:
        offset = "Z"
    elif numeric > plain:
        offset = "+00:00"
    date_only = bool(samples) and all(len(s) == 10 for s in samples)
    return TimeText(sep, tuple(sorted(set(fractions))) or (0,), offset, date_only)


_BOOL_SPELLINGS = (
    ("true", "false"),
    ("TRUE", "FALSE"),
    ("True", "False"),
    ("t", "f"),
    ("T", "F"),
    ("yes", "no"),
    ("y", "n"),
    ("1", "0"),
)


def detect(kind: Kind, samples: Iterable[object]) -> ColumnForm:
    """The form of a column from some of its non-NULL values (any number, even none)."""
    values = [v for v in samples if v is not None]
    if not values:
        return ColumnForm()
    classes: dict[Storage, int] = {}
    for v in values:
        c: Storage = (
            "integer"
            if isinstance(v, int)
            else "real"
            if isinstance(v, float)
            else "blob"
            if isinstance(v, bytes)
            else "text"
        )
        classes[c] = classes.get(c, 0) + 1
    storage = max(classes, key=lambda c: classes[c])
    form = ColumnForm(storage)
    texts = [v for v in values if isinstance(v, str)]
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DATE) and storage == "text":
        return ColumnForm(storage, time_text=_time_text(texts))
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ, Kind.DATE) and storage in ("integer", "real"):
        biggest = max(abs(float(v)) for v in values if isinstance(v, int | float))
        scale = 1_000_000 if biggest > 1e14 else 1000 if biggest > 1e11 else 1
        return ColumnForm(storage, epoch_scale=scale)
    if kind is Kind.BOOLEAN and storage == "text":
        seen = set(texts)
        for true, false in _BOOL_SPELLINGS:
            if seen <= {true, false}:
                return ColumnForm(storage, bool_text=(true, false))
        return ColumnForm(storage, bool_text=("true", "false"))
    return form


def default_form(kind: Kind, affinity: str) -> ColumnForm:
    """The form of a column with no value to learn from: what SQLite's affinity
    would make of the value, and SQLite's own ``datetime('now')`` style for times."""
    if kind in (Kind.TIMESTAMP, Kind.TIMESTAMPTZ):
        return ColumnForm("text", time_text=TimeText())
    if kind is Kind.DATE:
        return ColumnForm("text", time_text=TimeText(date_only=True))
    if affinity == "TEXT":
        return ColumnForm("text")
    if affinity == "REAL":
        return ColumnForm("real")
    return ColumnForm("null")


def _epoch(dt: datetime, scale: int, storage: Storage) -> int | float:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if storage == "integer" and (micros * scale) % 1_000_000 == 0:
        return micros * scale // 1_000_000
    return micros * scale / 1_000_000


def _decimal(value: Decimal, form: ColumnForm) -> object:
    if not value.is_finite():
        return str(value) if form.storage == "text" else float(value)
    if form.storage == "text":
        return str(value)
    if form.storage == "real":
        return float(value)
    if value == value.to_integral_value():
        return int(value)
    # float(Decimal) is the nearest double: printed back it is the same short
    # decimal (19.99, not 19.989999999999998), no spurious digits.
    return float(value)


def to_sqlite(pg: PgType, form: ColumnForm, value: object) -> object:
    """``value`` (as psycopg returns it for ``pg``; JSON columns read as text) in
    the form the SQLite column uses. Raises CoercionError for a value SQLite cannot
    hold faithfully (a float NaN: SQLite stores NULL)."""
    if value is None:
        return None
    kind = pg.kind
    if isinstance(value, bool):
        if form.bool_text is not None:
            return form.bool_text[0] if value else form.bool_text[1]
        return 1 if value else 0
    if isinstance(value, datetime):
        if form.time_text is None and form.storage in ("integer", "real"):
            return _epoch(value, form.epoch_scale, form.storage)
        return (form.time_text or TimeText()).render(value)
    if isinstance(value, date):
        if form.storage in ("integer", "real"):
            return _epoch(datetime(value.year, value.month, value.day), form.epoch_scale, "integer")
        if form.time_text is not None and not form.time_text.date_only:
            return form.time_text.render(datetime(value.year, value.month, value.day))
        return value.isoformat()
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _decimal(value, form)
    if isinstance(value, float):
        if math.isnan(value):
            raise CoercionError("NaN cannot be stored in SQLite (it would read back as NULL)")
        if form.storage == "text":
            return repr(value)
        return value
    if isinstance(value, int):
        if form.storage == "text" and kind not in (Kind.BOOLEAN,):
            return str(value)
        return value
    if isinstance(value, uuid.UUID):
        return value.bytes if form.storage == "blob" else str(value)
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, bytes | str):
        return value
    # Anything else psycopg hands back (ranges, arrays, network types) as its text.
    return str(value)
