"""Applying a batch of captured changes to PostgreSQL with exactly-once effect.

A batch is coalesced per row (only the last image of a key counts), then
applied in one transaction in an order the target's foreign keys accept:
children's deletes before parents', parents' upserts before children's. The
stream position is written in the same transaction, so whatever kills the
process, a restart re-reads exactly the changes whose effect is not committed.

When the coalesced fast path hits a row-level error (a bad value, a foreign
key or unique conflict that only the original order resolves), the batch is
replayed change by change in log order, each in a savepoint. A change a
constraint refuses there is tried again after the changes behind it (a source
with foreign keys off writes a parent's new key before re-pointing its
children), and a unique value a silent REPLACE left taken is freed from the
source (stream/conflicts.py); what still fails goes to the dead-letter table
and the rest is applied. Rows refused for a missing parent wait for it
(stream/waiting.py) and are written in the batch that writes it.

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
from dataclasses import replace
from typing import Any

from psycopg import sql
from psycopg.abc import Transformer

from replicator.coerce import json_safe
from replicator.errors import DataError
from replicator.identifiers import pg_ident
from replicator.plan.ddl import target_sequences
from replicator.plan.nullkeys import NOT_NULL_VIOLATION, nullable_key, sync_null_keys
from replicator.plan.rows import Refused, convert_key, convert_row
from replicator.plan.tables import TablePlan
from replicator.source.changelog import Change
from replicator.source.sqlite import ROWID
from replicator.state import deadletter
from replicator.state.deadletter import FOREIGN_KEY_VIOLATION, DeadLetter
from replicator.state.position import save_position, save_table_stats
from replicator.stream.batch import BatchResult, Prepared, Row
from replicator.stream.conflicts import free_unique_value
from replicator.stream.orphans import Cascade, kept_children, load_cascades
from replicator.stream.waiting import Waiting
from replicator.target.connection import Connection, Cursor, first_line, is_row_error
from replicator.target.writer import STAGE_THRESHOLD, TableWriter, copy_payload


def _constraint(exc: BaseException) -> bool:
    """An integrity constraint refused the row (class 23): another order may pass."""
    return str(getattr(exc, "sqlstate", None) or "").startswith("23")


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
        # The source: where the rows of NULL keys are read (without it, each change is
        # a letter), read too when a waiting child's parent arrives (load_waiting) and
        # to free a unique value a silent REPLACE left taken (stream/conflicts.py).
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
        self.waiting = Waiting(self.plans)
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
            self.open_dead = Counter(deadletter.count_open(cur, self.schema, "forward"))

    def load_waiting(self, conn: Connection, source: sqlite3.Connection) -> None:
        """Rows waiting for a parent (see stream/waiting.py), indexed from the open dead
        letters and ``source``, which the apply reads them from when the parent arrives."""
        self.source = source
        self.waiting.load_links(conn)
        self.waiting.load(conn, source, self.schema)

    def tick_waiting(self, conn: Connection) -> int:
        """Waiting rows whose parent reached the target another way, written now (at
        most every 30 s). Returns how many dead letters that resolved."""
        if self.source is None:
            return 0
        return self._count_resolved(self.waiting.tick(conn, self.source, self.schema))

    def _count_resolved(self, resolved: Counter[str]) -> int:
        for table, count in resolved.items():
            self.open_dead[table] = max(0, self.open_dead[table] - count)
        return sum(resolved.values())

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

    def _key_row(self, plan: TablePlan, change: Change) -> Row | None:
        """The target key a delete removes; None when the target cannot hold the key
        (a blob, a NUL in a text key...): it holds no such row, there is nothing to
        delete, and the row's own dead letters are resolved with the batch (_heal)."""
        key = convert_key(plan, change.key)
        return None if isinstance(key, Refused) else key

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
            if row is None:
                continue  # a delete of a row the target cannot have held
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
                result.reset()
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
                for table, key, row in result.waiting:
                    self.waiting.add(table, key, row)
                self._heal(cur, relevant, result)
                self._kept_children(cur, relevant, result)
            self._release_waiting(conn, result)
            with conn.cursor() as cur:
                if save is None:
                    save_position(cur, self.schema, result.last_seq, len(changes))
                else:
                    save(cur, result)
                save_table_stats(cur, self.schema, result.per_table(), result.last_seq)
        result.seconds = time.monotonic() - started
        return result

    def _release_waiting(self, conn: Connection, result: BatchResult) -> None:
        """Rows waiting for a parent this batch wrote, written now in its transaction;
        deletes a child held back, tried again once a batch changed a child table."""
        if self.source is None:
            return
        children = set()
        for table, rows in result.written.items():
            children |= self.waiting.arrived(table, rows)
        touched = {t for t, _op in result.applied}
        while children:
            resolved = self.waiting.retry(conn, self.source, self.schema, children)
            result.released += self._count_resolved(resolved)
            # Rows written now may be parents others wait on (grandchildren), and
            # what held a delete back: each turn writes some, so this ends.
            written = {t for t, n in resolved.items() if n}
            touched |= written
            children = self.waiting.present(conn, written) if written else set()
        blocked = self.waiting.unblocked(touched)
        if blocked:
            resolved = self.waiting.retry(conn, self.source, self.schema, blocked)
            result.released += self._count_resolved(resolved)

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
                    self._note_written(table, upserts[table], result)
                for absent, rows in partial.get(table, {}).items():
                    self._upsert_partial(cur, table, absent, rows)
                    result.applied[(table, "upsert")] += len(rows)
                    self._note_ids(table, rows, result)
                    self._note_written(table, rows, result)

    def _apply_in_order(
        self, conn: Connection, changes: Sequence[Change], result: BatchResult
    ) -> None:
        """Replay change by change in log order, each in a savepoint.

        A change a constraint refuses is tried again after the changes behind it
        (a source with foreign keys off re-points a child after its parent's key
        changed; a later change frees a unique value), for as long as that makes
        progress; then a unique value a silent REPLACE left taken is freed from the
        source (stream/conflicts.py). Only what still fails is dead-lettered."""
        last = {(c.table, c.key): c.seq for c in changes}
        failed: list[tuple[Change, Row, BaseException]] = []
        for change in changes:
            if self.null_key(change):
                continue  # never written (see _sync_null_keys)
            plan = self.plans[change.table]
            row = self._key_row(plan, change) if change.is_delete else self._convert(plan, change)
            if row is None:
                continue  # a delete of a row the target cannot have held
            if isinstance(row, DeadLetter):
                result.dead_letters.append(row)
                continue
            error = self._write_one(conn, change, row, result)
            if error is not None:
                failed.append((change, row, error))
        freed: set[int] = set()
        while failed:
            still = []
            for change, row, error in failed:
                # Only the last change of a key decides its row: an earlier one stays failed.
                decides = last[(change.table, change.key)] == change.seq
                again: BaseException | None = error
                if decides and _constraint(error):
                    again = self._write_one(conn, change, row, result)
                if again is not None:
                    still.append((change, row, again))
            progress = len(still) < len(failed)
            failed = still
            deciding = [f for f in failed if last[(f[0].table, f[0].key)] == f[0].seq]
            if not progress and not self._free_unique_values(conn, deciding, freed):
                break
        for change, row, error in failed:
            self._failed(change, row, error, result)

    def _write_one(
        self, conn: Connection, change: Change, row: Row, result: BatchResult
    ) -> BaseException | None:
        """One change in its savepoint; the row error that refused it, if one did."""
        table = change.table
        try:
            with conn.transaction(), conn.cursor() as cur:
                absent = () if change.is_delete else self._absent(self.plans[table], change)
                if change.is_delete:
                    self.writers[table].delete(cur, [row])
                elif absent:
                    self._upsert_partial(cur, table, absent, [row])
                else:
                    self.writers[table].upsert(cur, [row])
        except Exception as exc:
            if not is_row_error(exc):
                raise
            return exc
        if not change.is_delete:
            self._note_ids(table, [row], result)
            self._note_written(table, [row], result)
        result.applied[(table, "delete" if change.is_delete else "upsert")] += 1
        return None

    def _free_unique_values(
        self, conn: Connection, failed: Sequence[tuple[Change, Row, BaseException]], freed: set[int]
    ) -> bool:
        """Free, from the source, a unique value the target holds under a key the source
        let go of silently: for the first change in log order that can, each change at
        most once (the rows after it may wait on the row it writes). True when freed."""
        if self.source is None:
            return False
        for change, row, error in failed:
            if change.is_delete or change.seq in freed or not _constraint(error):
                continue
            if free_unique_value(conn, self.source, self.plans[change.table], row, error):
                freed.add(change.seq)
                return True
        return False

    def _failed(self, change: Change, row: Row, exc: BaseException, result: BatchResult) -> None:
        plan = self.plans[change.table]
        state = getattr(exc, "sqlstate", None)
        diag = getattr(exc, "diag", None)
        column = diag.column_name if diag is not None else None
        raw = (change.image or {}).get(column) if column else None
        result.dead_letters.append(self._letter(plan, change, column, raw, first_line(exc), state))
        if state == FOREIGN_KEY_VIOLATION:
            if change.is_delete:
                self.waiting.block((change.table, change.key))
            else:
                result.waiting.append((change.table, change.key, row))

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

    def _note_written(self, table: str, rows: Sequence[Row], result: BatchResult) -> None:
        if self.waiting.wanted and table in self.waiting.parents:
            result.written.setdefault(table, []).extend(rows)

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
            for key in table_keys:
                self.waiting.discard((table, key))
