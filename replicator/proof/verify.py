"""Proof that the target holds what the source holds.

Per table: row counts, then a checksum of normalised row values in primary-key
chunks. Both sides are typed the same way before hashing: source values go
through the very converters replication uses, target values come back from
PostgreSQL, and both are reduced to one canonical form (JSON parsed and
key-sorted, REAL rounded to float4, CHAR(n) unpadded ...). Chunks whose
checksums differ are narrowed down to the differing keys.

It runs against a live source without stopping the application: each chunk is
one short SQLite read transaction, and a key that differs while the stream has
unapplied changes is re-checked once the stream has caught up to where the
source was, so changes in flight are reported as such, not as differences.

``--repair`` re-copies the differing rows through the normal apply path
(upsert or delete by key) and sets sequences ahead.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from replicator.coerce import Kind
from replicator.config import Config
from replicator.plan.compare import (
    canonical,
    key_text,
    row_digest,
    source_key_text_of,
    source_row_map,
    target_chunk_queries,
    target_row_map,
)
from replicator.plan.digest import DigestPlan, digest_plan
from replicator.plan.rows import Refused, chunk_upper_key, convert_key
from replicator.plan.tables import TablePlan, build_plans
from replicator.proof import dbchecks
from replicator.proof.chunkdigests import compare_chunks
from replicator.proof.explain import null_key_rows_named, source_orphans
from replicator.proof.incremental import scope, table_shape
from replicator.proof.verdicts import MAX_LISTED, TableVerdict, VerifyReport
from replicator.source import changelog
from replicator.source.reader import ChunkReader
from replicator.source.sqlite import open_source, read_transaction
from replicator.state import deadletter, verifymarks
from replicator.state.migrations import ensure_state
from replicator.state.position import load_position
from replicator.state.verifymarks import VerifyMark
from replicator.stream.repair import rewrite_keys, source_row_by_key, target_by_key_sql
from replicator.target.connection import Connection, connect

Key = tuple[Any, ...]
__all__ = ["TableVerdict", "Verifier", "VerifyReport"]


def _name_differences(
    plan: TablePlan,
    src: dict[str, tuple[Key, tuple[Any, ...]]],
    tgt: dict[str, tuple[Any, ...]],
    differing: dict[str, tuple[Key, str]],
) -> None:
    """Each key of one chunk that is missing, extra or different (exact comparison)."""
    keypos = plan.key_positions
    for k, (key, row) in src.items():
        if k not in tgt:
            differing[k] = (key, "missing")
        elif tgt[k] != row:
            differing[k] = (key, "different")
    for k, row in tgt.items():
        if k not in src:
            differing[k] = (tuple(row[i] for i in keypos), "extra")


def _rows_cursor(conn: Connection) -> psycopg.Cursor[Any]:
    """A cursor for the target's rows that gives json and jsonb as their text, as
    the source holds them: parsed, the JSON string "1" would come back as the
    Python str '1', which canonical() reads as the number 1."""
    cur = conn.cursor()
    for json_type in ("json", "jsonb"):
        cur.adapters.register_loader(json_type, TextLoader)
    return cur


class Verifier:
    def __init__(
        self,
        config: Config,
        *,
        chunk_rows: int = 5000,
        settle_timeout: float = 30.0,
        digests: bool = True,
    ):
        self.config = config
        self.chunk_rows = chunk_rows
        self.settle_timeout = settle_timeout
        self.schema = config.target.state_schema
        self.digests = digests  # False: every table the exact way (to compare the two)
        self._fast = False  # set per run: the digest path's preconditions hold

    def _open_reader(self) -> sqlite3.Connection:
        """A second read-only connection to the source, for the digest thread."""
        return open_source(
            self.config.require_source(),
            readonly=True,
            busy_timeout_ms=self.config.source.busy_timeout_ms,
        )

    def _digests_usable(self, source: sqlite3.Connection, conn: Connection) -> bool:
        """Both databases write text as UTF-8 (the digests hash UTF-8 bytes, and
        SQLite's hex() of text gives the file's encoding), and PostgreSQL prints
        doubles exactly (shortest round trip, extra_float_digits > 0)."""
        if not self.digests:
            return False
        encoding = source.execute("PRAGMA encoding").fetchone()
        with conn.cursor() as cur:
            cur.execute("SET extra_float_digits = 3")
            cur.execute("SELECT current_setting('server_encoding')")
            server = cur.fetchone()
        return bool(encoding and encoding[0] == "UTF-8" and server and server[0] == "UTF8")

    def run(
        self,
        *,
        repair: bool = False,
        only: Sequence[str] | None = None,
        changed: bool = False,
    ) -> VerifyReport:
        """Compare every table (``only`` some); with ``changed``, only the rows the
        change log names since each table's last verify, where that can be done
        (:mod:`replicator.proof.incremental`)."""
        started = time.monotonic()
        path = self.config.require_source()
        dsn = self.config.require_target()
        source = open_source(
            path, readonly=True, busy_timeout_ms=self.config.source.busy_timeout_ms
        )
        conn = connect(dsn, autocommit=True, connect_timeout=self.config.target.connect_timeout)
        report = VerifyReport()
        try:
            ensure_state(conn, dsn, self.schema)
            plans = build_plans(source, conn, self.config, only=only)
            self._fast = self._digests_usable(source, conn)
            dead = self._open_dead_letters(conn)
            report.changed = changed
            with conn.cursor() as cur:
                marks = verifymarks.load_marks(cur, self.schema)
            for plan in plans:
                name = plan.source.name
                covers = scope(source, plan, marks.get(name), changed=changed)
                verdict = self.verify_table(
                    source, conn, plan, dead.get(name, set()), repair, covers.keys
                )
                verdict.scope_note = verdict.scope_note or covers.note
                report.tables.append(verdict)
                if covers.head is not None:
                    mark = VerifyMark(
                        name, covers.head, table_shape(plan), verdict.ok, verdict.source_rows
                    )
                    with conn.cursor() as cur:
                        verifymarks.save_mark(cur, self.schema, mark)
            report.orphans = dbchecks.orphans(conn, self.config.target.schema, plans)
            report.sequences_behind = dbchecks.sequences(conn, plans, repair)
            report.json_invalid = dbchecks.json_columns(conn, plans)
            with conn.cursor() as cur:
                report.open_dead_letters = sum(
                    deadletter.count_open(cur, self.schema, "forward").values()
                )
                report.open_reverse_dead_letters = sum(
                    deadletter.count_open(cur, self.schema, "reverse").values()
                )
                position = load_position(cur, self.schema)
            report.position = position.seq if position else None
        finally:
            conn.close()
            source.close()
        report.seconds = time.monotonic() - started
        return report

    def _open_dead_letters(self, conn: Connection) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with conn.cursor() as cur:
            for table, key in deadletter.open_keys(cur, self.schema):
                out.setdefault(table, set()).add(key_text(key))
        return out

    # -- per table -------------------------------------------------------------

    def _target_select(self, plan: TablePlan) -> tuple[sql.Composed, sql.Composed, sql.Composed]:
        return target_chunk_queries(plan)

    def verify_table(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        dead_keys: set[str],
        repair: bool,
        keys: Sequence[Key] | None = None,
    ) -> TableVerdict:
        """One table's rows compared: all of them, or with ``keys`` (an incremental
        verify) only those, then settled, explained and (``repair``) repaired."""
        started = time.monotonic()
        verdict = TableVerdict(table=plan.source.name)
        kinds = [c.type.kind for c in plan.columns]
        if keys is not None:
            differing = self._compare_keys(source, conn, plan, kinds, keys, verdict)
        else:
            differing = self._scan(source, conn, plan, kinds, verdict)
        if differing:
            differing = self._settle(source, conn, plan, kinds, differing, verdict)
        orphans = source_orphans(source, plan, kinds) if differing else set()
        for k, (key, problem) in differing.items():
            detail = ""
            if k in dead_keys:
                verdict.dead_lettered += 1
            elif k in orphans and problem != "extra":
                verdict.orphaned += 1
                detail = (
                    " (source orphan: SQLite keeps this row though its parent is gone, "
                    "PostgreSQL's foreign key removed or refused it)"
                )
            setattr(verdict, problem, getattr(verdict, problem) + 1)
            if len(verdict.examples) < MAX_LISTED:
                verdict.examples.append({"problem": problem, "key": list(key), "detail": detail})
        nulls = null_key_rows_named(source, conn, self.schema, plan, repair)
        verdict.source_rows += nulls.rows
        verdict.missing += nulls.rows
        verdict.null_key += nulls.rows
        verdict.dead_lettered += nulls.lettered
        verdict.examples += nulls.examples[: max(0, MAX_LISTED - len(verdict.examples))]
        if repair and differing:
            verdict.repaired = self._repair(
                source, conn, plan, list(differing.values()), verdict.repairs
            )
            if verdict.repaired:
                remaining = self._recheck(source, conn, plan, kinds, differing)
                verdict.missing = verdict.null_key + sum(
                    1 for p in remaining.values() if p[1] == "missing"
                )
                verdict.extra = sum(1 for p in remaining.values() if p[1] == "extra")
                verdict.different = sum(1 for p in remaining.values() if p[1] == "different")
        verdict.seconds = time.monotonic() - started
        return verdict

    def _exact_scan(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        kinds: Sequence[Kind],
        verdict: TableVerdict,
        differing: dict[str, tuple[Key, str]],
    ) -> None:
        """Every chunk read from both sides and compared in Python (the exact path)."""
        reader = ChunkReader(source, plan)
        keypos = plan.key_positions
        last_source_key: Key | None = None
        last_target_key: tuple[Any, ...] | None = None
        while True:
            raw_rows = reader.read(last_source_key, self.chunk_rows)
            upper = chunk_upper_key(plan, raw_rows) if raw_rows else None
            target_rows = self._target_rows(conn, plan, last_target_key, upper, bool(raw_rows))
            last_target_key = upper or last_target_key
            verdict.source_rows += len(raw_rows)
            verdict.target_rows += len(target_rows)
            if not raw_rows and not target_rows:
                break
            verdict.chunks += 1
            src = self._source_map(plan, raw_rows, kinds)
            tgt = target_row_map(plan, target_rows, kinds)
            if row_digest(src[k][1] for k in sorted(src)) != row_digest(
                tgt[k] for k in sorted(tgt)
            ):
                verdict.mismatched_chunks += 1
                _name_differences(plan, src, tgt, differing)
            if not raw_rows:
                break
            last_source_key = tuple(raw_rows[-1][i] for i in keypos)

    def _digest_scan(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        dplan: DigestPlan,
        kinds: Sequence[Kind],
        verdict: TableVerdict,
        differing: dict[str, tuple[Key, str]],
    ) -> None:
        """Chunks compared by the digests each database computes (the fast path);
        the rows of a chunk whose digests differ are read and compared exactly."""
        reader = ChunkReader(source, plan)
        for chunk in compare_chunks(self._open_reader, conn, plan, dplan, self.chunk_rows):
            verdict.source_rows += chunk.source.rows
            verdict.target_rows += chunk.target_rows
            if not chunk.source.rows and not chunk.target_rows:
                break
            verdict.chunks += 1
            if chunk.matched:
                continue
            verdict.mismatched_chunks += 1
            verdict.exact_rows += chunk.source.rows + chunk.target_rows
            raw_rows: list[Any] = []
            if chunk.source.rows:
                # The same key range, as the source holds it now (-1: no LIMIT).
                raw_rows = reader.read_select(
                    plan.source_select_list(), chunk.after_source, -1, chunk.source.last_key
                )
            target_rows = self._target_rows(
                conn, plan, chunk.after_target, chunk.source.upper, bool(chunk.source.rows)
            )
            src = self._source_map(plan, raw_rows, kinds)
            tgt = target_row_map(plan, target_rows, kinds)
            _name_differences(plan, src, tgt, differing)

    def _target_rows(
        self,
        conn: Connection,
        plan: TablePlan,
        after: Key | None,
        upper: Key | None,
        bounded: bool,
    ) -> list[tuple[Any, ...]]:
        """The target's rows of a chunk: keys in (``after``, ``upper``], or with
        ``bounded`` false every key after ``after`` (the tail past the source's last
        key). A chunk none of whose keys converts (``upper`` None) holds none."""
        first_sql, between_sql, tail_sql = self._target_select(plan)
        if bounded and upper is None:
            return []
        with _rows_cursor(conn) as cur:
            if not bounded:
                if after is None:
                    cur.execute(
                        sql.SQL("SELECT {} FROM {}").format(plan.target_column_list(), plan.table)
                    )
                else:
                    cur.execute(tail_sql, after)
            elif after is None:
                cur.execute(first_sql, upper)
            else:
                assert upper is not None
                cur.execute(between_sql, (*after, *upper))
            return cur.fetchall()

    def _compare_keys(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        kinds: Sequence[Kind],
        keys: Sequence[Key],
        verdict: TableVerdict,
    ) -> dict[str, tuple[Key, str]]:
        """The rows of ``keys`` (an incremental verify's), compared the exact way,
        with both tables' row counts, which must add up with what differs."""
        verdict.method = "changed"
        verdict.exact_rows = len(keys)
        named = {source_key_text_of(plan, kinds, key): (key, "changed") for key in keys}
        differing = self._recheck(source, conn, plan, kinds, named)
        with read_transaction(source):
            verdict.source_rows = ChunkReader(source, plan).count_keyed()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(plan.table))
            row = cur.fetchone()
        verdict.target_rows = int(row[0]) if row else 0
        problems = [p for _key, p in differing.values()]
        expected = verdict.source_rows - problems.count("missing") + problems.count("extra")
        if expected != verdict.target_rows:
            verdict.scope_note = (
                f"full verify: row counts do not add up ({verdict.source_rows} in the "
                f"source, {verdict.target_rows} in the target, {len(differing)} of the "
                "changed rows differ), so something changed that the log does not name"
            )
            verdict.method = "exact"
            verdict.source_rows = verdict.target_rows = verdict.exact_rows = 0
            return self._scan(source, conn, plan, kinds, verdict)
        return differing

    def _scan(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        kinds: Sequence[Kind],
        verdict: TableVerdict,
    ) -> dict[str, tuple[Key, str]]:
        """The whole table: by digests where its kinds have text forms, else exactly."""
        differing: dict[str, tuple[Key, str]] = {}  # key text -> (source key, problem)
        dplan = digest_plan(plan) if self._fast else None
        if dplan is not None:
            verdict.method = "digest"
            self._digest_scan(source, conn, plan, dplan, kinds, verdict, differing)
        else:
            verdict.method = "exact"
            self._exact_scan(source, conn, plan, kinds, verdict, differing)
            verdict.exact_rows = verdict.source_rows + verdict.target_rows
        return differing

    def _source_map(
        self, plan: TablePlan, raw_rows: Sequence[tuple[Any, ...]], kinds: Sequence[Kind]
    ) -> dict[str, tuple[Key, tuple[Any, ...]]]:
        return source_row_map(plan, raw_rows, kinds)

    def _settle(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        kinds: Sequence[Kind],
        differing: dict[str, tuple[Key, str]],
        verdict: TableVerdict,
    ) -> dict[str, tuple[Key, str]]:
        """Wait for the stream to reach the source's head, then re-check the keys.

        Again while keys still differ and the source has moved on since: a key the
        application changed once more after the head waited for (a live writer's
        busy rows) is still in flight, not a difference. A key that differs once
        the source stood still is one. Bounded by ``settle_timeout``.
        """
        if not changelog.changelog_exists(source):
            return differing
        with read_transaction(source):
            head = changelog.head_position(source)
        deadline = time.monotonic() + self.settle_timeout
        remaining = differing
        while True:
            position = None
            while time.monotonic() < deadline:
                with conn.cursor() as cur:
                    position = load_position(cur, self.schema)
                if position is None or position.seq >= head:
                    break
                time.sleep(0.2)
            remaining = self._recheck(source, conn, plan, kinds, remaining)
            if not remaining or position is None or time.monotonic() >= deadline:
                break
            with read_transaction(source):
                moved_to = changelog.head_position(source)
            if moved_to == head:
                break
            head = moved_to
        verdict.in_flight += len(differing) - len(remaining)
        return remaining

    def _recheck(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        kinds: Sequence[Kind],
        differing: dict[str, tuple[Key, str]],
    ) -> dict[str, tuple[Key, str]]:
        still: dict[str, tuple[Key, str]] = {}
        tgt_sql = target_by_key_sql(plan)
        for k, (key, _problem) in differing.items():
            raw = source_row_by_key(source, plan, key)
            converted = convert_key(plan, key)
            trow = None  # a key that does not convert (NUL, not UTF-8, a blob) is not there
            if not isinstance(converted, Refused):
                with _rows_cursor(conn) as cur:
                    cur.execute(tgt_sql, converted)
                    trow = cur.fetchone()
            if raw is None and trow is None:
                continue
            if raw is None:
                still[k] = (key, "extra")
                continue
            if trow is None:
                still[k] = (key, "missing")
                continue
            srow = self._source_map(plan, [tuple(raw)], kinds)
            tvals = tuple(canonical(kd, v) for kd, v in zip(kinds, trow, strict=True))
            if next(iter(srow.values()))[1] != tvals:
                still[k] = (key, "different")
        return still

    def _repair(
        self,
        source: sqlite3.Connection,
        conn: Connection,
        plan: TablePlan,
        items: Sequence[tuple[Key, str]],
        report: list[dict[str, Any]],
    ) -> int:
        """Re-copy differing rows through the normal write path; delete extras. Each
        row's outcome goes to ``report``: what was wrong, what was done, or why not."""
        done = rewrite_keys(source, conn, plan, [key for key, _problem in items])
        for (_key, problem), r in zip(items, done, strict=True):
            if len(report) >= MAX_LISTED:
                break
            entry: dict[str, Any] = {"key": list(r.key), "problem": problem, "action": r.action}
            if r.action == "failed":
                entry["reason"] = r.error
                entry["column"] = r.column
            report.append(entry)
        return sum(1 for r in done if r.action != "failed")
