"""Applying a batch of captured changes to PostgreSQL with exactly-once effect.

A batch is coalesced per row (only the last image of a key counts), then
applied in one transaction in an order the target's foreign keys accept:
children's deletes before parents', parents' upserts before children's. The
stream position is written in the same transaction, so whatever kills the
process, a restart re-reads exactly the changes whose effect is not committed.

When the coalesced fast path hits a row-level error (a bad value, a foreign
key or unique conflict that only the original order resolves), the batch is
replayed change by change in log order, each in a savepoint; what still fails
goes to the dead-letter table and the rest is applied.

A change of a row whose key holds NULL (SQLite allows it in a non-INTEGER
PRIMARY KEY) is never written: PostgreSQL's key cannot hold it. It makes the
batch bring that table's NULL-key dead letters up to date from the source
instead (``replicator.plan.nullkeys``), in the batch's transaction. A parent
delete that the target's ``ON DELETE CASCADE`` carries to children SQLite kept
names those children in dead letters (``replicator.stream.orphans``).
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from psycopg import sql
from psycopg.abc import Transformer

from replicator.coerce import decode_key, json_safe
from replicator.errors import DataError
from replicator.identifiers import pg_ident
from replicator.plan.ddl import target_sequences
from replicator.plan.nullkeys import NOT_NULL_VIOLATION, nullable_key, sync_null_keys
from replicator.plan.rows import Refused, convert_key, convert_row
from replicator.plan.tables import TablePlan
from replicator.source.changelog import Change
from replicator.source.sqlite import ROWID
from replicator.state import deadletter
from replicator.state.deadletter import DeadLetter
from replicator.state.position import save_position, save_table_stats
from replicator.stream.orphans import Cascade, kept_children, load_cascades
from replicator.stream.repair import rewrite_keys
from replicator.target.connection import Connection, Cursor, first_line, is_row_error
from replicator.target.writer import STAGE_THRESHOLD, RowFailure, TableWriter, copy_payload

Row = tuple[object, ...]
FOREIGN_KEY_VIOLATION = "23503"


@dataclass
class BatchResult:
    first_seq: int
    last_seq: int
    changes: int  # read from the log
    applied: Counter[tuple[str, str]] = field(default_factory=Counter)  # (table, op) -> rows
    dead_letters: list[DeadLetter] = field(default_factory=list)
    null_key_letters: int = 0  # NULL-key rows newly dead-lettered (see plan.nullkeys)
    oldest_captured_at: float = 0.0
    newest_captured_at: float = 0.0
    replayed: bool = False  # the fast path failed and the batch was replayed in order
    max_ids: dict[tuple[str, int], int] = field(default_factory=dict)  # for sequences
    seconds: float = 0.0

    def per_table(self) -> Counter[str]:
        """Rows applied per table, whatever the operation."""
        counts: Counter[str] = Counter()
        for (table, _op), count in self.applied.items():
            counts[table] += count
        return counts


@dataclass
class Prepared:
    """A batch coalesced and converted, ready to write (see :meth:`Applier.prepare`)."""

    relevant: list[Change]  # the batch's changes to replicated tables, in log order
    deletes: dict[str, list[Row]] = field(default_factory=dict)  # table -> keys
    upserts: dict[str, list[Row]] = field(default_factory=dict)  # table -> rows
    partial: dict[str, dict[tuple[int, ...], list[Row]]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)  # values that do not convert
    null_keys: set[str] = field(default_factory=set)  # tables with a change of a NULL key
    # table -> its upserts as COPY text, formatted ahead (large upserts only)
    payloads: dict[str, bytes] = field(default_factory=dict)


class Applier:
    """Applies batches for a fixed set of table plans (in dependency order)."""

    def __init__(
        self,
        plans: Sequence[TablePlan],
        state_schema: str,
        *,
        stop_on_error: bool = False,
        source: sqlite3.Connection | None = None,
    ):
        self.plans = {p.source.name: p for p in plans}
        # Where the rows of NULL keys are read (without it, each change is a letter).
        self.source = source
        # table -> positions in its key of the columns that may hold NULL
        self._nullable = {
            p.source.name: tuple(p.key.index(k) for k in nullable_key(p))
            for p in plans
            if nullable_key(p)
        }
        self.order = [p.source.name for p in plans]
        self.writers = {p.source.name: TableWriter(p.shape) for p in plans}
        self.schema = state_schema
        self.stop_on_error = stop_on_error
        self.open_dead: Counter[str] = Counter()
        self._next_retry: dict[int, float] = {}  # dead letter id -> when to try it again
        # table -> [(column position, sequence)], filled by load_sequences().
        self.sequences: dict[str, list[tuple[int, sql.Identifier]]] = {}
        # parent table -> its cascading foreign keys, filled by load_sequences().
        self.cascades: dict[str, list[Cascade]] = {}
        # Writers for images missing columns, by (table, positions absent).
        self._partial: dict[tuple[str, tuple[int, ...]], TableWriter] = {}
        # The source columns a row image should carry, per table.
        self._imaged = {
            p.source.name: frozenset(c.source for c in p.columns if c.source != ROWID)
            for p in plans
        }

    def load_sequences(self, conn: Connection) -> None:
        """Serial/identity columns to keep ahead of the ids the stream writes, so
        an application writing to PostgreSQL (dual-write) never collides."""
        self.sequences = {}
        # (Children a cascade removes are the same kind of target knowledge.)
        self.cascades = load_cascades(conn, list(self.plans.values()))
        for name, plan in self.plans.items():
            targets = [c.target for c in plan.columns]
            for column, (seq_schema, seq_name) in target_sequences(conn, plan):
                self.sequences.setdefault(name, []).append(
                    (targets.index(column), pg_ident(seq_schema, seq_name))
                )

    def load_open_dead_letters(self, conn: Connection) -> None:
        with conn.cursor() as cur:
            self.open_dead = Counter(deadletter.count_open(cur, self.schema))

    def children_of(self, tables: set[str]) -> set[str]:
        """Replicated tables with a foreign key to any of ``tables`` (source names)."""
        targets = {self.plans[t].name for t in tables if t in self.plans}
        return {
            name
            for name, plan in self.plans.items()
            if any(p in tables or p in targets for p in plan.parents)
        }

    def retry_waiting_children(
        self, conn: Connection, source: sqlite3.Connection, touched: set[str], limit: int = 200
    ) -> int:
        """Rows dead-lettered because their parent was missing (23503) are written
        again, from the source as it is now, once a batch has written to a parent
        table. Returns how many were resolved."""
        children = self.children_of(touched)
        if not children or not any(self.open_dead.get(c) for c in children):
            return 0
        now = time.monotonic()
        with conn.cursor() as cur:
            waiting = [
                x
                for x in deadletter.fetch(
                    cur,
                    self.schema,
                    tables=sorted(children),
                    sqlstate=FOREIGN_KEY_VIOLATION,
                    limit=limit * 5,
                )
                # A row whose parent is still missing is tried again at most every 30 s.
                if self._next_retry.get(x.id, 0.0) <= now
            ][:limit]
        for x in waiting:
            self._next_retry[x.id] = now + 30.0
        resolved = 0
        for table in sorted({x.table for x in waiting}):
            by_key: dict[tuple[Any, ...], list[int]] = {}
            for x in waiting:
                if x.table == table:
                    by_key.setdefault(decode_key(x.key), []).append(x.id)
            results = rewrite_keys(source, conn, self.plans[table], list(by_key))
            done = [i for r in results if r.action != "failed" for i in by_key[r.key]]
            if done:
                with conn.transaction(), conn.cursor() as cur:
                    resolved += deadletter.mark(cur, self.schema, done, "parent arrived")
                self.open_dead[table] = max(0, self.open_dead[table] - len(done))
        return resolved

    # -- conversion ---------------------------------------------------------

    def _raw_row(self, plan: TablePlan, change: Change) -> Row:
        image = change.image or {}
        return tuple(
            change.key[0] if c.source == ROWID else image.get(c.source) for c in plan.columns
        )

    def _absent(self, plan: TablePlan, change: Change) -> tuple[int, ...]:
        """Positions of plan columns the change's image does not carry at all: captured
        before the column existed. Their target values are left alone, never nulled."""
        image = change.image or {}
        if self._imaged[plan.source.name] <= image.keys():
            return ()  # the usual case, one C-level set comparison
        return tuple(
            i for i, c in enumerate(plan.columns) if c.source != ROWID and c.source not in image
        )

    def _upsert_partial(
        self, cur: Cursor, table: str, absent: tuple[int, ...], rows: Sequence[Row]
    ) -> None:
        """Upsert rows without the ``absent`` columns: an insert leaves them to the
        target's default, an update does not touch them."""
        writer = self._partial.get((table, absent))
        if writer is None:
            plan = self.plans[table]
            kept = tuple(c for i, c in enumerate(plan.columns) if i not in absent)
            writer = TableWriter(replace(plan, columns=kept).shape)
            self._partial[(table, absent)] = writer
        # Row by row, never through the staging table (it has every column).
        cur.executemany(
            writer.upsert_sql,
            [tuple(v for i, v in enumerate(row) if i not in absent) for row in rows],
        )

    def _letter(
        self,
        plan: TablePlan,
        change: Change,
        column: str | None,
        raw: object,
        error: str,
        state: str | None,
    ) -> DeadLetter:
        image = None
        if change.image is not None:
            image = {k: json_safe(v) for k, v in change.image.items()}
        return DeadLetter(
            table=plan.source.name,
            key=change.key,
            column=column,
            raw_value=raw,
            error=error,
            sqlstate=state,
            stage="stream",
            change={"op": change.op, "seq": change.seq, "image": image},
            position=change.seq,
        )

    def _convert(self, plan: TablePlan, change: Change) -> Row | DeadLetter:
        """The target row for an upsert, or the dead letter explaining why not."""
        row = convert_row(plan, self._raw_row(plan, change))
        if isinstance(row, Refused):
            return self._letter(plan, change, row.column, row.value, row.reason, None)
        return row

    def _key_row(self, plan: TablePlan, change: Change) -> Row | DeadLetter:
        key = convert_key(plan, change.key)
        if isinstance(key, Refused):
            return self._letter(plan, change, key.column, key.value, key.reason, None)
        return key

    def null_key(self, change: Change) -> bool:
        """Whether the change's row has NULL in its key (see the module docstring)."""
        positions = self._nullable.get(change.table)
        return bool(positions) and any(change.key[i] is None for i in positions or ())

    def _sync_null_keys(self, cur: Cursor, prepared: Prepared, result: BatchResult) -> None:
        """The NULL-key dead letters of the tables such changes came from, made equal
        to the source's rows; without a source, a letter for each change."""
        for table in sorted(prepared.null_keys):
            plan = self.plans[table]
            if self.source is not None:
                synced = sync_null_keys(self.source, cur, self.schema, plan, "stream")
                result.null_key_letters += synced.recorded
                self.open_dead[table] += synced.recorded
                continue
            for change in prepared.relevant:
                if change.table == table and self.null_key(change) and not change.is_delete:
                    column = next(k for k, v in zip(plan.key, change.key, strict=True) if v is None)
                    reason = f"NULL in key column {column!r}: a primary key cannot hold it"
                    result.dead_letters.append(
                        self._letter(plan, change, column, None, reason, NOT_NULL_VIOLATION)
                    )

    # -- applying -------------------------------------------------------------

    def prepare(
        self,
        changes: Sequence[Change],
        skip_through: Mapping[str, int] | None = None,
        *,
        formatter: Transformer | None = None,
    ) -> Prepared:
        """Coalesce ``changes`` per row and convert them to the target's types.

        Pure computation over the plans (no connection), so the daemon runs it on
        its read-ahead thread while the previous batch is being written.
        ``skip_through`` maps a table to a log position: its changes up to there
        are passed over (a re-sync after a schema change reads that table itself,
        later than them). With ``formatter`` (a psycopg Transformer of the target
        connection, used by this thread only), large upserts are also formatted
        as COPY text here, so that writing them is a mere send.
        """
        skip = skip_through or {}
        relevant = [
            c
            for c in changes
            if c.table in self.plans and (c.table not in skip or c.seq > skip[c.table])
        ]
        prepared = Prepared(relevant)
        last: dict[tuple[str, tuple[Any, ...]], Change] = {}
        for change in relevant:
            if self.null_key(change):
                prepared.null_keys.add(change.table)
                continue
            last[(change.table, change.key)] = change
        for (table, _key), change in last.items():
            plan = self.plans[table]
            row = self._key_row(plan, change) if change.is_delete else self._convert(plan, change)
            if isinstance(row, DeadLetter):
                prepared.dead_letters.append(row)
                continue
            absent = () if change.is_delete else self._absent(plan, change)
            if absent:
                prepared.partial.setdefault(table, {}).setdefault(absent, []).append(row)
                continue
            target = prepared.deletes if change.is_delete else prepared.upserts
            target.setdefault(table, []).append(row)
        if formatter is not None:
            for table, rows in prepared.upserts.items():
                if len(rows) >= STAGE_THRESHOLD:
                    payload = copy_payload(formatter, rows)
                    if payload is not None:
                        prepared.payloads[table] = payload
        return prepared

    def apply(
        self,
        conn: Connection,
        changes: Sequence[Change],
        *,
        save: Callable[[Cursor, BatchResult], None] | None = None,
        skip_through: Mapping[str, int] | None = None,
        prepared: Prepared | None = None,
    ) -> BatchResult:
        """Apply ``changes`` (consecutive, in log order) in one transaction.

        The position the batch reaches is written in that same transaction: the
        trigger log's ``seq`` by default, or whatever ``save`` writes (cursor
        positions, reconciliation progress) when given. ``skip_through`` is as
        for :meth:`prepare`; ``prepared`` is what :meth:`prepare` made of these
        very changes with the same ``skip_through``, when it was run already.
        """
        started = time.monotonic()
        result = BatchResult(
            first_seq=changes[0].seq,
            last_seq=changes[-1].seq,
            changes=len(changes),
            oldest_captured_at=min(c.captured_at for c in changes),
            newest_captured_at=max(c.captured_at for c in changes),
        )
        if prepared is None:
            prepared = self.prepare(changes, skip_through)
        relevant = prepared.relevant
        with conn.transaction():
            try:
                with conn.transaction():
                    self._apply_coalesced(conn, prepared, result)
            except Exception as exc:
                if not is_row_error(exc):
                    raise
                result.applied.clear()
                result.dead_letters.clear()
                result.max_ids.clear()
                result.replayed = True
                self._apply_in_order(conn, relevant, result)
            if self.stop_on_error and result.dead_letters:
                first = result.dead_letters[0]
                raise DataError(f'{first.describe()} (on_error = "stop")')
            with conn.cursor() as cur:
                self._sync_null_keys(cur, prepared, result)
                self._advance_sequences(cur, result)
                if result.dead_letters:
                    deadletter.record(cur, self.schema, result.dead_letters)
                # Counted before healing: a letter of this batch can be healed by a
                # later change of the same batch (replay). Counting a batch that then
                # fails to commit only costs a needless resolve query later.
                for letter in result.dead_letters:
                    self.open_dead[letter.table] += 1
                self._heal(cur, relevant, result)
                self._kept_children(cur, relevant, result)
                if save is None:
                    save_position(cur, self.schema, result.last_seq, len(changes))
                else:
                    save(cur, result)
                save_table_stats(cur, self.schema, result.per_table(), result.last_seq)
        result.seconds = time.monotonic() - started
        return result

    def _apply_coalesced(self, conn: Connection, prepared: Prepared, result: BatchResult) -> None:
        result.dead_letters.extend(prepared.dead_letters)
        deletes, upserts, partial = prepared.deletes, prepared.upserts, prepared.partial
        with conn.cursor() as cur:
            for table in reversed(self.order):
                if table in deletes:
                    self.writers[table].delete(cur, deletes[table])
                    result.applied[(table, "delete")] += len(deletes[table])
            for table in self.order:
                if table in upserts:
                    self.writers[table].upsert(
                        cur, upserts[table], payload=prepared.payloads.get(table)
                    )
                    result.applied[(table, "upsert")] += len(upserts[table])
                    self._note_ids(table, upserts[table], result)
                for absent, rows in partial.get(table, {}).items():
                    self._upsert_partial(cur, table, absent, rows)
                    result.applied[(table, "upsert")] += len(rows)
                    self._note_ids(table, rows, result)

    def _apply_in_order(
        self, conn: Connection, changes: Sequence[Change], result: BatchResult
    ) -> None:
        for change in changes:
            if self.null_key(change):
                continue  # never written (see _sync_null_keys)
            plan = self.plans[change.table]
            writer = self.writers[change.table]
            row = self._key_row(plan, change) if change.is_delete else self._convert(plan, change)
            if isinstance(row, DeadLetter):
                result.dead_letters.append(row)
                continue
            try:
                with conn.transaction(), conn.cursor() as cur:
                    absent = () if change.is_delete else self._absent(plan, change)
                    if change.is_delete:
                        writer.delete(cur, [row])
                    elif absent:
                        self._upsert_partial(cur, change.table, absent, [row])
                        self._note_ids(change.table, [row], result)
                    else:
                        writer.upsert(cur, [row])
                        self._note_ids(change.table, [row], result)
            except Exception as exc:
                if not is_row_error(exc):
                    raise
                failure = RowFailure(0, first_line(exc), getattr(exc, "sqlstate", None), None)
                diag = getattr(exc, "diag", None)
                column = diag.column_name if diag is not None else None
                raw = (change.image or {}).get(column) if column else None
                result.dead_letters.append(
                    self._letter(plan, change, column, raw, failure.error, failure.sqlstate)
                )
                continue
            result.applied[(change.table, "delete" if change.is_delete else "upsert")] += 1

    def _kept_children(self, cur: Cursor, changes: Sequence[Change], result: BatchResult) -> None:
        """Dead letters for the children SQLite keeps of the parents this batch deleted
        where the target cascades (see ``replicator.stream.orphans``). A key deleted
        and written again in one batch was deleted in PostgreSQL only by a replay."""
        if not self.cascades or self.source is None:
            return
        last = {(c.table, c.key): c for c in changes}
        deleted: dict[str, list[tuple[tuple[Any, ...], int]]] = {}
        for change in changes:
            if change.table not in self.cascades or not change.is_delete:
                continue
            if result.replayed or last[(change.table, change.key)] is change:
                deleted.setdefault(change.table, []).append((change.key, change.seq))
        letters = kept_children(self.source, self.cascades, deleted) if deleted else []
        if letters:
            deadletter.record(cur, self.schema, letters)
            for letter in letters:
                self.open_dead[letter.table] += 1
            result.dead_letters.extend(letters)

    def _advance_sequences(self, cur: Cursor, result: BatchResult) -> None:
        for (table, column), top in result.max_ids.items():
            pos_seq = dict(self.sequences.get(table, []))
            seq = pos_seq[column]
            cur.execute(
                sql.SQL(
                    "SELECT setval({lit}::regclass, %s) WHERE %s > (SELECT CASE WHEN is_called"
                    " THEN last_value ELSE last_value - 1 END FROM {seq})"
                ).format(lit=sql.Literal(seq.as_string(None)), seq=seq),
                (top, top),
            )

    def _note_ids(self, table: str, rows: Sequence[Row], result: BatchResult) -> None:
        for position, _seq in self.sequences.get(table, []):
            ints = [v for r in rows if isinstance(v := r[position], int)]
            if ints:
                key = (table, position)
                result.max_ids[key] = max(*ints, result.max_ids.get(key, ints[0]))

    def _heal(self, cur: Cursor, changes: Sequence[Change], result: BatchResult) -> None:
        """A later successful write of a dead-lettered key resolves its dead letters."""
        if not self.open_dead:
            return
        # Only a key whose last change in the batch failed stays broken; when a
        # later change of the key succeeded (in-order replay), it heals, this
        # batch's own letter for the key included.
        last = {(c.table, c.key): c.seq for c in changes}
        failed = {
            (d.table, tuple(d.key))
            for d in result.dead_letters
            if d.position == last.get((d.table, tuple(d.key)))
        }
        keys: dict[str, set[tuple[Any, ...]]] = {}
        for change in changes:
            if self.null_key(change):
                continue  # one NULL key is many rows: their letters follow the source
            if self.open_dead.get(change.table) and (change.table, change.key) not in failed:
                keys.setdefault(change.table, set()).add(change.key)
        for table, table_keys in keys.items():
            healed = deadletter.resolve_keys(
                cur, self.schema, table, list(table_keys), "healed by a later change"
            )
            self.open_dead[table] = max(0, self.open_dead[table] - healed)
