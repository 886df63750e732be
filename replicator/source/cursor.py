"""Cursor capture: following a table the replicator may not write to.

A cursor table is polled instead of logged by triggers. Two kinds of cursor:

* **rowid** (or the INTEGER PRIMARY KEY, which is the rowid): for append-only
  tables. The position is the last rowid read plus a fingerprint of that row.
  A poll first checks the row at the position: gone or different means the
  largest rows were deleted and their ids may be reused (tables without
  AUTOINCREMENT), or VACUUM renumbered the rowids (tables without an INTEGER
  PRIMARY KEY). Either way the cursor re-anchors and asks for a
  reconciliation pass rather than silently missing rows.
* **timestamp** (``updated_at`` and the like): for mutable tables. Values are
  normalised by SQLite itself, ``strftime('%Y-%m-%d %H:%M:%f', value)`` (UTC,
  milliseconds), so ``2025-11-12T08:15:30Z``, ``2025-11-12 08:15:30`` and
  ``2025-11-12T10:15:30+02:00`` order as the instants they are. The position is
  compound, (normalised value, primary key), so any number of rows sharing a
  timestamp is read exactly once across batch boundaries. Every poll also
  re-reads a look-back window before the position; a row found there whose
  content was not applied yet (a late commit with an older timestamp, or a
  row sharing the position's timestamp with a smaller key) is applied.

Values the cursor cannot order (NULL, or text that is not a timestamp) are
counted and reported; reconciliation is what keeps those rows right.

Everything here only reads; the caller holds the read transaction, so one
poll of every cursor table sees one consistent state of the source.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from replicator.coerce import decode_key, json_key
from replicator.errors import SchemaError
from replicator.identifiers import sqlite_ident
from replicator.source.changelog import Change
from replicator.source.reader import batches, fetch, fetch_one
from replicator.source.sqlite import ROWID, RowLayout, SourceTable, affinity

UPDATED_LIKE = re.compile(
    r"^(last_?)?(updated|modified|changed|touched|mtime)(_?(at|on|time|ts|date|datetime))?$",
    re.IGNORECASE,
)
# SQLite's own parse of a date/time, printed as sortable UTC text with milliseconds.
TS_FORMAT = "%Y-%m-%d %H:%M:%f"
_PY_TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
ISO_DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"
EPOCH_DIVISORS = {"s": 1, "ms": 1000, "us": 1_000_000}


class CursorKind(StrEnum):
    ROWID = "rowid"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True, slots=True)
class CursorSpec:
    """Which column a cursor table is followed by, and how its values order."""

    table: str
    kind: CursorKind
    column: str  # the column, or "rowid"
    indexed: bool
    automatic: bool  # chosen by the replicator, not configured
    numeric: bool = False  # plain numbers (a version counter): ordered as numbers
    epoch_divisor: int | None = None  # numbers are unix time, this many per second

    def describe(self) -> str:
        how = "chosen automatically" if self.automatic else "configured"
        index = "indexed" if self.indexed else "not indexed"
        return f"{self.kind} cursor on {self.column} ({index}, {how})"

    @property
    def blind_spots(self) -> str:
        """What this cursor cannot see as it happens (reconciliation finds it)."""
        if self.kind == CursorKind.ROWID:
            return "updates, deletes and primary-key changes (seen at reconciliation)"
        return (
            f"deletes, updates that leave {self.column} unchanged, and rows whose "
            f"{self.column} is NULL or moves backwards beyond the look-back window "
            "(seen at reconciliation)"
        )


def is_indexed(table: SourceTable, column: str) -> bool:
    """An index can serve range reads of ``column`` (it leads a plain index)."""
    if column in (ROWID, table.rowid_alias):
        return not table.without_rowid
    return any(
        ix.columns[:1] == (column,) and not ix.partial and not ix.expression for ix in table.indexes
    )


def updated_like(table: SourceTable) -> list[str]:
    """Columns named like a last-modified timestamp, indexed ones first."""
    names = [c.name for c in table.stored_columns if UPDATED_LIKE.match(c.name)]
    return sorted(names, key=lambda n: (not is_indexed(table, n), names.index(n)))


def choose_cursor(
    table: SourceTable, configured: str | None, epoch: str | None = None
) -> CursorSpec:
    """The cursor of ``table``: the configured one, checked, or the automatic choice:
    an indexed updated_at-like column, else the rowid, else an unindexed one."""
    if configured:
        return _configured(table, configured, epoch)
    candidates = updated_like(table)
    if candidates and is_indexed(table, candidates[0]):
        return _timestamp(table, candidates[0], epoch, automatic=True)
    if not table.without_rowid:
        return CursorSpec(
            table.name, CursorKind.ROWID, table.rowid_alias or ROWID, True, automatic=True
        )
    if candidates:
        return _timestamp(table, candidates[0], epoch, automatic=True)
    raise SchemaError(
        f"table {table.name!r} is WITHOUT ROWID and has no updated_at-like column, so no "
        f"cursor can follow it: set [table.{table.name}] cursor = <a timestamp column>, "
        'or capture = "triggers"'
    )


def _configured(table: SourceTable, name: str, epoch: str | None) -> CursorSpec:
    if name.lower() == ROWID or name == table.rowid_alias:
        if table.without_rowid:
            raise SchemaError(
                f'table {table.name!r} is WITHOUT ROWID: cursor = "{name}" cannot follow it'
            )
        return CursorSpec(
            table.name, CursorKind.ROWID, table.rowid_alias or ROWID, True, automatic=False
        )
    if not any(c.name == name for c in table.stored_columns):
        raise SchemaError(f"cursor column {name!r} is not a column of table {table.name!r}")
    return _timestamp(table, name, epoch, automatic=False)


def _timestamp(
    table: SourceTable, column: str, epoch: str | None, *, automatic: bool
) -> CursorSpec:
    aff = affinity(table.column(column).decl_type)
    numeric = aff in ("INTEGER", "REAL") and epoch is None
    return CursorSpec(
        table.name,
        CursorKind.TIMESTAMP,
        column,
        is_indexed(table, column),
        automatic,
        numeric=numeric,
        epoch_divisor=EPOCH_DIVISORS[epoch] if epoch else None,
    )


@dataclass(frozen=True, slots=True)
class Suggestion:
    table: str
    mode: str  # "triggers" | "cursor"
    cursor: CursorSpec | None
    reason: str

    def render(self) -> str:
        cursor = self.cursor.describe() if self.cursor else "no cursor possible"
        lines = [f"{self.table}: {self.mode} ({self.reason})"]
        lines.append("    triggers: see every insert, update and delete at once")
        if self.cursor is not None:
            lines.append(f"    cursor:   {cursor}; cannot see {self.cursor.blind_spots}")
        else:
            lines.append(f"    cursor:   {cursor}")
        return "\n".join(lines)


def suggest(table: SourceTable, *, writable: bool) -> Suggestion:
    """The capture mode we would pick for ``table``, and what each choice misses."""
    try:
        spec: CursorSpec | None = choose_cursor(table, None)
    except SchemaError:
        spec = None
    if not writable:
        why = "the source is read-only"
        return Suggestion(table.name, "cursor" if spec else "none", spec, why)
    if spec is not None and spec.kind == CursorKind.TIMESTAMP and spec.indexed:
        why = f"writable source; an indexed {spec.column} would also allow cursor mode"
    elif spec is not None and table.autoincrement:
        why = "writable source; looks append-only, so a rowid cursor would also do"
    else:
        why = "writable source; no indexed updated_at-like column"
    return Suggestion(table.name, "triggers", spec, why)


# --------------------------------------------------------------------------
# Positions


def now_text() -> str:
    """The current UTC time as a normalised cursor value."""
    return datetime.now(UTC).strftime(_PY_TS_FORMAT)[:-3]


def shift_text(value: str, seconds: float) -> str | None:
    """A normalised timestamp moved by ``seconds`` (None when out of range)."""
    try:
        moved = datetime.strptime(value, _PY_TS_FORMAT) + timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        return None
    return moved.strftime(_PY_TS_FORMAT)[:-3]


@dataclass(frozen=True, slots=True)
class CursorPosition:
    """Where a cursor stands: every row up to (value, key) has been applied.

    ``value`` None means before any row. For rowid cursors ``value`` is the
    rowid and ``fingerprint`` the digest of that row when it was read.
    """

    value: Any = None
    key: tuple[Any, ...] = ()
    fingerprint: str | None = None

    @property
    def is_zero(self) -> bool:
        return self.value is None

    def __str__(self) -> str:
        if self.value is None:
            return "start"
        return f"{self.value}" + (f" {list(self.key)}" if self.key else "")

    def to_json(self) -> dict[str, Any]:
        return {"v": self.value, "k": json_key(self.key), "fp": self.fingerprint}

    @classmethod
    def from_json(cls, data: Any) -> CursorPosition:
        if not isinstance(data, dict):
            return cls()
        return cls(data.get("v"), decode_key(data.get("k") or []), data.get("fp"))


def fingerprint(raw: Sequence[Any]) -> str:
    """A digest of a raw row, stable across processes (stored with rowid positions)."""
    h = hashlib.blake2b(digest_size=12)
    for v in raw:
        h.update(repr(v).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def to_change(layout: RowLayout, raw: Sequence[Any], captured_at: float) -> Change:
    """An upsert of one source row, as the trigger log would carry it."""
    keypos = layout.key_positions
    image = {c: v for c, v in zip(layout.columns, raw, strict=True) if c != ROWID}
    return Change(0, layout.table, "U", tuple(raw[i] for i in keypos), image, captured_at)


@dataclass
class Poll:
    """What one poll of a cursor table found."""

    changes: list[Change] = field(default_factory=list)
    position: CursorPosition = field(default_factory=CursorPosition)
    forward: int = 0  # rows after the position
    lookback: int = 0  # rows in the look-back window that were new or changed
    full: bool = False  # the forward read hit its limit: more rows are waiting
    reconcile: str | None = None  # why a reconciliation pass is needed now


class CursorReader:
    """Reads one cursor table; keeps what it applied inside the look-back window."""

    def __init__(self, layout: RowLayout, spec: CursorSpec) -> None:
        self.layout = layout
        self.spec = spec
        self.table = sqlite_ident(layout.table)
        self.select = layout.select_list()
        self.keys = [ROWID if k == ROWID else sqlite_ident(k) for k in layout.key]
        self.column = ROWID if spec.kind == CursorKind.ROWID else sqlite_ident(spec.column)
        self.norm = self._norm_expr()
        # key -> (cursor value, hash of the row) of rows applied in the window.
        self.seen: dict[tuple[Any, ...], tuple[Any, int]] = {}
        self.prefilter = False  # set by check_formats(): index range reads are safe

    def _norm_expr(self) -> str:
        c = self.column
        if self.spec.kind == CursorKind.ROWID:
            return ROWID
        if self.spec.numeric:
            return f"(CASE WHEN typeof({c}) IN ('integer', 'real') THEN {c} END)"
        text = f"WHEN typeof({c}) = 'text' THEN strftime('{TS_FORMAT}', {c})"
        if self.spec.epoch_divisor:
            number = (
                f"WHEN typeof({c}) IN ('integer', 'real') "
                f"THEN strftime('{TS_FORMAT}', {c} / {float(self.spec.epoch_divisor)!r}, "
                "'unixepoch')"
            )
            return f"(CASE {number} {text} END)"
        return f"(CASE {text} END)"

    # -- start-up -------------------------------------------------------------

    def top(self, conn: sqlite3.Connection) -> CursorPosition:
        """The cursor's current end: recorded before the snapshot copies the table."""
        if self.spec.kind == CursorKind.ROWID:
            row = fetch_one(
                conn,
                f"SELECT {ROWID}, {self.select} FROM {self.table} ORDER BY {ROWID} DESC LIMIT 1",
            )
            if row is None:
                return CursorPosition(0)
            return CursorPosition(int(row[0]), (), fingerprint(row[1:]))
        keys = ", ".join(self.keys)
        row = fetch_one(
            conn,
            f"SELECT {self.norm} AS n, {keys} FROM {self.table} WHERE n IS NOT NULL "
            f"ORDER BY n DESC, {', '.join(k + ' DESC' for k in self.keys)} LIMIT 1",
        )
        if row is None:
            return CursorPosition()
        return CursorPosition(row[0], tuple(row[1:]))

    def missing_values(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """(rows whose cursor is NULL, rows whose cursor is not an orderable value)."""
        if self.spec.kind == CursorKind.ROWID:
            return 0, 0
        row = conn.execute(
            f"SELECT count(*) FILTER (WHERE {self.column} IS NULL), "
            f"count(*) FILTER (WHERE {self.column} IS NOT NULL AND {self.norm} IS NULL) "
            f"FROM {self.table}"
        ).fetchone()
        return int(row[0]), int(row[1])

    def unorderable_examples(self, conn: sqlite3.Connection, limit: int = 3) -> list[Any]:
        if self.spec.kind == CursorKind.ROWID:
            return []
        rows = fetch(
            conn,
            f"SELECT DISTINCT {self.column} FROM {self.table} "
            f"WHERE {self.column} IS NOT NULL AND {self.norm} IS NULL LIMIT ?",
            (limit,),
        )
        return [r[0] for r in rows]

    def check_formats(self, conn: sqlite3.Connection) -> bool:
        """Whether every orderable value is ISO text (``YYYY-MM-DD...``): then a plain
        text range on the column's index is a safe pre-filter before normalising.
        (Values that do not normalise are never read by a poll anyway.)"""
        if self.spec.kind == CursorKind.ROWID or self.spec.numeric or not self.spec.indexed:
            self.prefilter = False
            return False
        row = conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self.table} WHERE {self.norm} IS NOT NULL "
            f"AND NOT (typeof({self.column}) = 'text' AND {self.column} GLOB ?))",
            (ISO_DATE_GLOB,),
        ).fetchone()
        self.prefilter = not bool(row[0])
        return self.prefilter

    def null_rows(
        self, conn: sqlite3.Connection, after: tuple[Any, ...] | None, limit: int
    ) -> list[tuple[Any, ...]]:
        """Rows the cursor cannot order, by key (for ``null_cursor = "copy"``)."""
        keys = ", ".join(self.keys)
        marks = ", ".join("?" for _ in self.keys)
        where = f"{self.norm} IS NULL"
        params: list[Any] = []
        if after is not None:
            where += f" AND ({keys}) > ({marks})"
            params.extend(after)
        rows = fetch(
            conn,
            f"SELECT {self.select} FROM {self.table} WHERE {where} ORDER BY {keys} LIMIT ?",
            (*params, limit),
        )
        return [tuple(r) for r in rows]

    # -- polling --------------------------------------------------------------

    def poll(
        self,
        conn: sqlite3.Connection,
        position: CursorPosition,
        *,
        limit: int,
        lookback: float,
        captured_at: float,
    ) -> Poll:
        """New and changed rows since ``position`` (the caller holds a read transaction)."""
        if self.spec.kind == CursorKind.ROWID:
            return self._poll_rowid(conn, position, limit, captured_at)
        return self._poll_timestamp(conn, position, limit, lookback, captured_at)

    def _poll_rowid(
        self, conn: sqlite3.Connection, position: CursorPosition, limit: int, captured_at: float
    ) -> Poll:
        poll = Poll(position=position)
        after = int(position.value or 0)
        if after and position.fingerprint is not None:
            row = fetch_one(
                conn, f"SELECT {self.select} FROM {self.table} WHERE {ROWID} = ?", (after,)
            )
            if row is None:
                poll.reconcile = "last_row_gone"
                top = conn.execute(f"SELECT max({ROWID}) FROM {self.table}").fetchone()[0]
                if top is None or int(top) < after:
                    # Ids above the largest rowid may be handed out again: read from there.
                    after = int(top or 0)
                    poll.position = self.top(conn)
                else:
                    poll.position = CursorPosition(after)  # re-anchored by the rows read below
            elif fingerprint(row) != position.fingerprint:
                # The row at our position is not the one we read: its rowid was reused
                # (or VACUUM renumbered the table, or it was updated). Copy it now.
                poll.reconcile = "last_row_changed"
                poll.changes.append(to_change(self.layout, row, captured_at))
                poll.position = CursorPosition(after, (), fingerprint(row))
        rows = fetch(
            conn,
            f"SELECT {ROWID}, {self.select} FROM {self.table} WHERE {ROWID} > ? "
            f"ORDER BY {ROWID} LIMIT ?",
            (after, limit),
        )
        for row in rows:
            poll.changes.append(to_change(self.layout, row[1:], captured_at))
        if rows:
            last = rows[-1]
            poll.position = CursorPosition(int(last[0]), (), fingerprint(last[1:]))
        poll.forward = len(rows)
        poll.full = len(rows) >= limit
        return poll

    def _window_start(self, position: CursorPosition, lookback: float) -> Any:
        if self.spec.numeric:
            return position.value - lookback
        # Relative to the wall clock as well as to the position: a row stamped in
        # the future must not push the window away from rows stamped now.
        base = min(str(position.value), now_text())
        return shift_text(base, -lookback) or base

    def _prefilter(self, window: Any) -> tuple[str, list[Any]]:
        if not self.prefilter:
            return "", []
        # An ISO text value whose instant is >= window starts with a local date at
        # most one day earlier (UTC offsets are under 24 hours).
        floor = shift_text(str(window), -86400.0)
        if floor is None:
            return "", []
        return f"{self.column} >= ? AND ", [floor[:10]]

    def _poll_timestamp(
        self,
        conn: sqlite3.Connection,
        position: CursorPosition,
        limit: int,
        lookback: float,
        captured_at: float,
    ) -> Poll:
        poll = Poll(position=position)
        keys = ", ".join(self.keys)
        marks = ", ".join("?" for _ in self.keys)
        order = f"ORDER BY n, {keys}"
        head = f"SELECT {self.norm} AS n, {self.select} FROM {self.table} WHERE "
        seen = self.seen
        keypos = self.layout.key_positions
        if position.is_zero:
            rows = fetch(conn, f"{head}n IS NOT NULL {order} LIMIT ?", (limit,))
        else:
            window = self._window_start(position, lookback)
            pre, pre_params = self._prefilter(window)
            # Look-back: rows at or before the position, inside the window, whose
            # content we have not applied (late commits, equal timestamps).
            for batch in batches(
                conn,
                f"{head}{pre}n >= ? AND (n, {keys}) <= (?, {marks})",
                (*pre_params, window, position.value, *position.key),
            ):
                for row in batch:
                    raw = row[1:]
                    key = tuple(raw[i] for i in keypos)
                    mark = (row[0], hash(raw))
                    if seen.get(key) != mark:
                        seen[key] = mark
                        poll.changes.append(to_change(self.layout, raw, captured_at))
                        poll.lookback += 1
            for key in [k for k, (v, _h) in seen.items() if v < window]:
                del seen[key]
            rows = fetch(
                conn,
                f"{head}{pre}(n, {keys}) > (?, {marks}) {order} LIMIT ?",
                (*pre_params, position.value, *position.key, limit),
            )
        for row in rows:
            raw = row[1:]
            key = tuple(raw[i] for i in keypos)
            seen[key] = (row[0], hash(raw))
            poll.changes.append(to_change(self.layout, raw, captured_at))
        if rows:
            last = rows[-1]
            poll.position = CursorPosition(last[0], tuple(last[1 + i] for i in keypos))
        poll.forward = len(rows)
        poll.full = len(rows) >= limit
        return poll
