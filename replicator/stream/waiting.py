"""Rows waiting for their parent, written again as soon as the parent is.

A row PostgreSQL refuses for a foreign key (23503: its parent is not in the
target, say because the parent itself was dead-lettered) waits in the
dead-letter table. It is indexed here under the parent key it points to, read
from the target's own foreign keys (the ones that refused it), whatever table
either is in. When a batch writes that parent key, the row is written again
from the source as it is then, in the batch's own transaction. The index is
rebuilt at every start from the open dead letters and the source, and the
parent keys still awaited are looked up in the target at start and every
30 s: a parent that arrived some other way (a batch committed just before a
crash, ``dead-letters retry``, ``verify --repair``, an application writing to
PostgreSQL) releases its children too.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from replicator.coerce import decode_key
from replicator.identifiers import pg_ident
from replicator.plan.rows import Refused, convert_row
from replicator.plan.tables import TablePlan
from replicator.source.sqlite import read_transaction
from replicator.state import deadletter
from replicator.state.deadletter import FOREIGN_KEY_VIOLATION
from replicator.stream.repair import rewrite_keys, source_row_by_key
from replicator.target.catalog import foreign_keys
from replicator.target.connection import Connection, is_row_error

Row = tuple[object, ...]
Key = tuple[Any, ...]
Child = tuple[str, Key]  # (source table, source key)
Ref = tuple[str, str, tuple[str, ...]]  # parent (target schema, name, referenced columns)

CHECK_EVERY = 30.0  # seconds between look-ups of the awaited parents in the target
LOOKUP_CHUNK = 500
# How a waiting row's dead letter is resolved, by what writing it again did.
RESOLUTIONS = {"upserted": "parent arrived", "deleted": "gone from the source"}


@dataclass(frozen=True, slots=True)
class _Link:
    ref: Ref
    positions: tuple[int, ...]  # the foreign key's columns in the child's plan


@dataclass
class Waiting:
    """The index of waiting rows of a set of plans (an Applier's)."""

    plans: Mapping[str, TablePlan]
    links: dict[str, list[_Link]] = field(default_factory=dict)  # child table -> its keys
    # parent source table -> (ref, the referenced columns' positions in its plan)
    parents: dict[str, set[tuple[Ref, tuple[int, ...]]]] = field(default_factory=dict)
    wanted: dict[Ref, dict[Row, set[Child]]] = field(default_factory=dict)
    entries: dict[Child, list[tuple[Ref, Row]]] = field(default_factory=dict)
    unlinked: set[Child] = field(default_factory=set)  # waiting on no key we can name
    # Deletes a child still pointing at the row refused (23503 on DELETE): a source
    # with foreign keys off re-points or deletes the child later, maybe in a later batch.
    blocked: set[Child] = field(default_factory=set)
    due: float = 0.0

    def load_links(self, conn: Connection) -> None:
        """The target's foreign keys between the plans' tables (and to any other table)."""
        by_target = {(p.schema, p.name): p for p in self.plans.values()}
        self.links, self.parents = {}, {}
        for name, plan in self.plans.items():
            targets = [c.target for c in plan.columns]
            for fk in foreign_keys(conn, plan.schema, plan.name):
                if any(c not in targets for c in fk.columns):
                    continue
                ref = (fk.parent_schema, fk.parent, fk.parent_columns)
                link = _Link(ref, tuple(targets.index(c) for c in fk.columns))
                self.links.setdefault(name, []).append(link)
                parent = by_target.get((fk.parent_schema, fk.parent))
                ptargets = [c.target for c in parent.columns] if parent else []
                if parent is not None and all(c in ptargets for c in fk.parent_columns):
                    positions = tuple(ptargets.index(c) for c in fk.parent_columns)
                    self.parents.setdefault(parent.source.name, set()).add((ref, positions))

    def load(self, conn: Connection, source: sqlite3.Connection, schema: str) -> None:
        """Index the open 23503 letters of the plans' tables from the source rows now."""
        self.wanted, self.entries, self.unlinked, self.blocked = {}, {}, set(), set()
        if not self.plans:
            return
        with conn.cursor() as cur:
            letters = deadletter.fetch(
                cur, schema, tables=sorted(self.plans), sqlstate=FOREIGN_KEY_VIOLATION
            )
        self.blocked = {
            (x.table, tuple(decode_key(x.key)))
            for x in letters
            if x.stage == "stream" and isinstance(x.change, dict) and x.change.get("op") == "D"
        }
        keys = {(x.table, tuple(decode_key(x.key))) for x in letters} - self.blocked
        reading = nullcontext(source) if source.in_transaction else read_transaction(source)
        with reading:
            for table, key in sorted(keys, key=repr):
                plan = self.plans[table]
                raw = source_row_by_key(source, plan, key)
                row = convert_row(plan, raw) if raw is not None else None
                if row is None or isinstance(row, Refused):
                    self.unlinked.add((table, key))  # gone or changed: one try tells
                else:
                    self.add(table, key, row)
        self.due = 0.0

    def add(self, table: str, key: Key, row: Row) -> None:
        """``row`` (its target values) was refused for a missing parent."""
        child = (table, tuple(key))
        self.discard(child)
        for link in self.links.get(table, []):
            values = tuple(row[i] for i in link.positions)
            if any(v is None for v in values):
                continue  # a NULL in a foreign key is never checked
            self.wanted.setdefault(link.ref, {}).setdefault(values, set()).add(child)
            self.entries.setdefault(child, []).append((link.ref, values))
        if child not in self.entries:
            self.unlinked.add(child)

    def block(self, child: Child) -> None:
        """The delete of ``child`` was refused: a child row still points at it."""
        self.blocked.add((child[0], tuple(child[1])))

    def unblocked(self, touched: set[str]) -> set[Child]:
        """Held-back deletes worth another try: a batch changed one of their child tables."""
        if not self.blocked or not touched:
            return set()
        parents = {link.ref[:2] for table in touched for link in self.links.get(table, [])}
        return {
            (t, k) for t, k in self.blocked if (self.plans[t].schema, self.plans[t].name) in parents
        }

    def discard(self, child: Child) -> None:
        self.unlinked.discard(child)
        self.blocked.discard(child)
        for ref, values in self.entries.pop(child, []):
            waiting = self.wanted.get(ref, {})
            waiting.get(values, set()).discard(child)
            if not waiting.get(values, True):
                del waiting[values]
            if not waiting:
                self.wanted.pop(ref, None)

    def arrived(self, table: str, rows: Iterable[Row]) -> set[Child]:
        """The waiting rows released by ``rows`` written to ``table``."""
        out: set[Child] = set()
        for ref, positions in self.parents.get(table, ()):
            waiting = self.wanted.get(ref)
            if waiting:
                for row in rows:
                    out |= waiting.get(tuple(row[i] for i in positions), set())
        return out

    def present(self, conn: Connection, parents: set[str] | None = None) -> set[Child]:
        """The waiting rows whose parent key is in the target now, however it got there;
        only those waiting on ``parents`` (source tables) when given."""
        targets = None
        if parents is not None:
            targets = {(self.plans[t].schema, self.plans[t].name) for t in parents}
        out: set[Child] = set()
        for ref, waiting in list(self.wanted.items()):
            if targets is not None and ref[:2] not in targets:
                continue
            values = list(waiting)
            for start in range(0, len(values), LOOKUP_CHUNK):
                for found in _existing(conn, ref, values[start : start + LOOKUP_CHUNK]):
                    out |= waiting.get(found, set())
        return out

    def retry(
        self, conn: Connection, source: sqlite3.Connection, schema: str, children: set[Child]
    ) -> Counter[str]:
        """Write ``children`` again from the source; resolves the letters of those that
        went through. Returns how many letters were resolved per table."""
        resolved: Counter[str] = Counter()
        for table in sorted({t for t, _ in children}):
            keys = sorted((k for t, k in children if t == table), key=repr)
            results = rewrite_keys(source, conn, self.plans[table], keys)
            for action, how in RESOLUTIONS.items():
                done = [r.key for r in results if r.action == action]
                if done:
                    with conn.transaction(), conn.cursor() as cur:
                        resolved[table] += deadletter.resolve_keys(cur, schema, table, done, how)
                for key in done:
                    self.discard((table, key))
        return resolved

    def tick(self, conn: Connection, source: sqlite3.Connection, schema: str) -> Counter[str]:
        """Every :data:`CHECK_EVERY` seconds: retry the rows whose parent is there now."""
        now = time.monotonic()
        if now < self.due or not (self.wanted or self.unlinked or self.blocked):
            return Counter()
        self.due = now + CHECK_EVERY
        children = self.present(conn) | self.unlinked | self.blocked
        if not children:
            return Counter()
        with conn.transaction():
            return self.retry(conn, source, schema, children)


def _existing(conn: Connection, ref: Ref, values: Sequence[Row]) -> list[Row]:
    """Which of ``values`` the parent table holds; none when the look-up itself fails
    (a value PostgreSQL cannot compare): those rows wait for a batch to write the parent."""
    try:
        with conn.transaction():
            return _lookup(conn, ref, values)
    except Exception as exc:
        if not is_row_error(exc):
            raise
        return []


def _lookup(conn: Connection, ref: Ref, values: Sequence[Row]) -> list[Row]:
    schema, table, columns = ref
    query = sql.SQL("SELECT DISTINCT {cols} FROM {table} WHERE ({cols}) IN ({values})").format(
        cols=sql.SQL(", ").join(pg_ident(c) for c in columns),
        table=pg_ident(schema, table),
        values=sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() for _ in columns))
            for _ in values
        ),
    )
    with conn.cursor() as cur:
        cur.execute(query, [v for row in values for v in row])
        return [tuple(r) for r in cur.fetchall()]
