"""Applying changes made in PostgreSQL to the SQLite file, with exactly-once effect.

A batch is the oldest captured changes. The current row of each changed key is
read from its PostgreSQL table (after the changes were read, so it is at least
as new as every change in the batch); a key whose row is gone is deleted in
SQLite, the others are written (UPDATE by key, else INSERT) in the column forms
the SQLite file uses (replicator/plan/reverse.py). All of it, and the position
naming the consumed changes, commit in one SQLite write transaction during
which the forward change log does not record (``changelog.begin_foreign_write``).
Only then are the consumed changes deleted in PostgreSQL; see
replicator/reverse/position.py for why a crash in between is harmless.

A row SQLite refuses (a NOT NULL, CHECK or UNIQUE constraint of its own, a value
SQLite cannot hold) is not written: it becomes a dead letter with
``direction = 'reverse'``, and the rest of the batch is applied.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from replicator.errors import ConfigError
from replicator.identifiers import sqlite_ident
from replicator.plan.reverse import (
    ReversePlan,
    SqliteRow,
    convert_target_key,
    convert_target_row,
)
from replicator.plan.rows import Refused
from replicator.reverse import position as rpos
from replicator.reverse.position import ReversePosition
from replicator.source import changelog
from replicator.state import reverse as state
from replicator.state.deadletter import DeadLetter
from replicator.state.reverse import ReverseChange
from replicator.target.connection import Connection

STAGE = "reverse"


@dataclass
class ReverseBatch:
    """What one batch did."""

    changes: int = 0
    written: Counter[str] = field(default_factory=Counter)
    deleted: Counter[str] = field(default_factory=Counter)
    letters: list[DeadLetter] = field(default_factory=list)
    oldest_captured: float | None = None
    seconds: float = 0.0

    # Keys whose SQLite row now is PostgreSQL's (written, or deleted as it is gone
    # there): their open reverse letters are healed.
    keys: dict[str, list[SqliteRow]] = field(default_factory=dict)
    by_table: Counter[str] = field(default_factory=Counter)  # changes consumed per table

    @property
    def per_table(self) -> Counter[str]:
        return self.written + self.deleted

    def note_written(self, table: str, key: SqliteRow) -> None:
        self.written[table] += 1
        self.keys.setdefault(table, []).append(key)

    def note_deleted(self, table: str, key: SqliteRow) -> None:
        self.deleted[table] += 1
        self.keys.setdefault(table, []).append(key)


def _pg_json(value: object) -> object:
    """A PostgreSQL value as JSON for a dead letter (its text when JSON has no type
    for it: timestamps, numerics, NaN)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


def _letter_dict(d: DeadLetter) -> dict[str, Any]:
    return {
        "table": d.table,
        "key": [_pg_json(k) for k in d.key],
        "column": d.column,
        "raw_value": _pg_json(d.raw_value),
        "error": d.error,
        "sqlstate": d.sqlstate,
        "change": d.change,
        "position": d.position,
    }


def _letter_from(d: dict[str, Any]) -> DeadLetter:
    return DeadLetter(
        table=d["table"],
        key=tuple(d["key"]),
        column=d["column"],
        raw_value=d["raw_value"],
        error=d["error"],
        sqlstate=d["sqlstate"],
        stage=STAGE,
        change=d["change"],
        position=d["position"],
    )


class ReverseApplier:
    """Applies batches of PostgreSQL changes to one SQLite file."""

    def __init__(self, plans: dict[str, ReversePlan], state_schema: str) -> None:
        self.plans = plans
        self.schema = state_schema
        self.position = ReversePosition()
        self._update = {n: p.update_sql() for n, p in plans.items()}
        self._insert = {n: p.insert_sql() for n, p in plans.items()}
        self._delete = {n: p.delete_sql() for n, p in plans.items()}

    # -- the PostgreSQL side ----------------------------------------------------------

    def finish(self, conn: Connection) -> int:
        """Delete the last committed batch's changes in PostgreSQL and record its dead
        letters, unless done already (then its changes are gone). Idempotent."""
        pos = self.position
        if not pos.consumed:
            return 0
        with conn.transaction(), conn.cursor() as cur:
            gone = state.delete_changes(cur, self.schema, pos.consumed)
            if gone and pos.letters:
                state.record_letters(cur, self.schema, [_letter_from(d) for d in pos.letters])
        return gone

    def read(self, conn: Connection, limit: int) -> list[ReverseChange]:
        with conn.cursor() as cur:
            return state.read_changes(cur, self.schema, limit)

    def _current_rows(
        self, conn: Connection, changes: Sequence[ReverseChange]
    ) -> dict[str, list[tuple[bool, tuple[Any, ...], tuple[Any, ...]]]]:
        """Per table, for each changed key (once, in the order of its last change):
        (row present, key as target values, row as target values)."""
        keys: dict[str, dict[str, tuple[Any, ...]]] = {}
        for ch in changes:
            if ch.op == "T":
                continue
            per = keys.setdefault(ch.table, {})
            text = json.dumps(list(ch.key))
            per.pop(text, None)  # re-insert: the order of the last change
            per[text] = ch.key
        out = {}
        for table, per in keys.items():
            rplan = self.plans[table]
            nkey = len(rplan.plan.key)
            with conn.cursor() as cur:
                cur.execute(rplan.read_rows_sql(), (Jsonb([list(k) for k in per.values()]),))
                rows = cur.fetchall()
            out[table] = [(bool(r[1]), tuple(r[2 : 2 + nkey]), tuple(r[2 + nkey :])) for r in rows]
        return out

    # -- one batch --------------------------------------------------------------------

    def apply(
        self, conn: Connection, source: sqlite3.Connection, changes: Sequence[ReverseChange]
    ) -> ReverseBatch:
        """Apply ``changes`` to SQLite in one write transaction with the position.
        The caller calls :meth:`finish` next."""
        if unknown := sorted({c.table for c in changes} - set(self.plans)):
            # Consumed, they would be lost: stop instead (a restart plans again).
            raise ConfigError(
                f"changes captured for {', '.join(unknown)}, which this reverse daemon "
                "does not replicate (`reverse init` ran again with another configuration?): "
                "restart it"
            )
        started = time.monotonic()
        batch = ReverseBatch(changes=len(changes), by_table=Counter(c.table for c in changes))
        if changes:
            batch.oldest_captured = min(c.captured_at.timestamp() for c in changes)
        rows = self._current_rows(conn, changes)
        last = changes[-1].seq if changes else None
        source.execute("BEGIN IMMEDIATE")
        try:
            changelog.begin_foreign_write(source)
            rpos.ensure(source)
            # A TRUNCATE empties the table first; every key the batch names is then
            # written as PostgreSQL has it now (a row there now was inserted after it).
            for table in sorted({c.table for c in changes if c.op == "T"} & set(self.plans)):
                cur = source.execute(f"DELETE FROM {sqlite_ident(table)}")
                batch.deleted[table] += max(cur.rowcount, 0)
            for table in self._table_order(rows):
                self._write_table(source, self.plans[table], rows[table], batch, last)
            changelog.end_foreign_write(source)
            after = rpos.save(
                source,
                self.position,
                [c.seq for c in changes],
                [_letter_dict(d) for d in batch.letters],
            )
            source.execute("COMMIT")
        except BaseException:
            source.execute("ROLLBACK")
            raise
        self.position = after
        batch.seconds = time.monotonic() - started
        return batch

    def _table_order(self, rows: dict[str, Any]) -> list[str]:
        """Parents first (the plans' order): the order a reader of the file expects,
        though the apply's connection leaves SQLite's foreign keys off."""
        return [t for t in self.plans if t in rows]

    def _write_table(
        self,
        source: sqlite3.Connection,
        rplan: ReversePlan,
        rows: Sequence[tuple[bool, tuple[Any, ...], tuple[Any, ...]]],
        batch: ReverseBatch,
        last: int | None,
    ) -> None:
        """Write each changed key; a row SQLite refused is tried again after the
        others while that helps. A key change in PostgreSQL (5 -> 105, then 4 -> 5)
        arrives in the order of each key's last change, so the new row 105 can
        meet the old row 5, not yet rewritten, on a UNIQUE column of SQLite's;
        once row 5 is written, 105 fits. Rows refused in a whole pass that wrote
        nothing stay refused (a cycle, such as two rows swapping a unique value,
        or a constraint PostgreSQL does not have): dead letters."""
        pending = list(rows)
        while True:
            again: list[tuple[bool, tuple[Any, ...], tuple[Any, ...]]] = []
            letters: list[DeadLetter] = []
            for item in pending:
                letter = self._write_row(source, rplan, item, batch, last)
                if letter is None:
                    continue
                letters.append(letter)
                if letter.column is None:  # SQLite refused it, not the conversion
                    again.append(item)
            if not again or len(letters) == len(pending):
                batch.letters.extend(letters)
                return
            batch.letters.extend(x for x in letters if x.column is not None)
            pending = again

    def _write_row(
        self,
        source: sqlite3.Connection,
        rplan: ReversePlan,
        item: tuple[bool, tuple[Any, ...], tuple[Any, ...]],
        batch: ReverseBatch,
        last: int | None,
    ) -> DeadLetter | None:
        """Write one key as PostgreSQL has it; the dead letter when it cannot be."""
        name = rplan.name
        present, key, values = item
        skey = convert_target_key(rplan, key)
        if isinstance(skey, Refused):
            return self._refused(rplan, key, skey, values, last)
        if not present:
            cur = self._run(source, rplan, self._delete[name], skey, skey, values, last)
            if isinstance(cur, DeadLetter):
                return cur
            batch.note_deleted(name, skey)
            return None
        row = convert_target_row(rplan, values)
        if isinstance(row, Refused):
            return self._refused(rplan, skey, row, values, last)
        update = self._update[name]
        if update is not None:
            params = rplan.update_values(row)
            cur = self._run(source, rplan, update, params, skey, values, last)
            if isinstance(cur, DeadLetter):
                return cur
            if cur.rowcount > 0:
                batch.note_written(name, skey)
                return None
        cur = self._run(source, rplan, self._insert[name], row, skey, values, last)
        if isinstance(cur, DeadLetter):
            return cur
        batch.note_written(name, skey)
        return None

    def _run(
        self,
        source: sqlite3.Connection,
        rplan: ReversePlan,
        statement: str,
        params: Sequence[object],
        key: SqliteRow,
        values: Sequence[object],
        last: int | None,
    ) -> sqlite3.Cursor | DeadLetter:
        """Run one statement; a row SQLite refuses is a dead letter (the statement
        alone is undone: SQLite's default ABORT keeps the transaction)."""
        try:
            return source.execute(statement, tuple(params))
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
            return DeadLetter(
                table=rplan.name,
                key=tuple(key),
                column=None,
                raw_value=None,
                error=f"SQLite refused the row: {exc}",
                sqlstate=None,
                stage=STAGE,
                change=self._image(rplan, values),
                position=last,
            )

    def _refused(
        self,
        rplan: ReversePlan,
        key: Sequence[object],
        refused: Refused,
        values: Sequence[object],
        last: int | None,
    ) -> DeadLetter:
        return DeadLetter(
            table=rplan.name,
            key=tuple(key),
            column=refused.column,
            raw_value=_pg_json(refused.value),
            error=refused.reason,
            sqlstate=None,
            stage=STAGE,
            change=self._image(rplan, values),
            position=last,
        )

    @staticmethod
    def _image(rplan: ReversePlan, values: Sequence[object]) -> dict[str, Any]:
        return {c.source: _pg_json(v) for c, v in zip(rplan.columns, values, strict=True)}

    def heal(self, conn: Connection, batch: ReverseBatch) -> int:
        """Resolve open reverse letters of keys this batch wrote or deleted (after
        :meth:`finish`; skipped by a crash, a letter stays open: rollback then says
        no-go, the safe way)."""
        if not batch.keys:
            return 0
        healed = 0
        with conn.transaction(), conn.cursor() as cur:
            for table, keys in batch.keys.items():
                healed += state.resolve_letters(cur, self.schema, table, keys)
        return healed
