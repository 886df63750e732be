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
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.string import TextLoader

from replicator.coerce import JSON_KINDS, Kind
from replicator.config import Config
from replicator.identifiers import pg_ident
from replicator.plan.compare import (
    canonical,
    key_text,
    row_digest,
    source_row_map,
    target_chunk_queries,
)
from replicator.plan.ddl import sequence_sql, target_sequences
from replicator.plan.rows import Refused, chunk_upper_key, convert_key
from replicator.plan.tables import TablePlan, build_plans
from replicator.proof.explain import null_key_rows_named, source_orphans
from replicator.source import changelog
from replicator.source.reader import ChunkReader
from replicator.source.sqlite import open_source, read_transaction
from replicator.state import deadletter
from replicator.state.migrations import ensure_state
from replicator.state.position import load_position
from replicator.stream.repair import rewrite_keys, source_row_by_key, target_by_key_sql
from replicator.target.connection import Connection, connect

Key = tuple[Any, ...]
MAX_LISTED = 50  # differing keys listed per table (all are counted)


@dataclass
class TableVerdict:
    table: str
    source_rows: int = 0
    target_rows: int = 0
    chunks: int = 0
    mismatched_chunks: int = 0
    missing: int = 0  # in the source, not in the target
    extra: int = 0  # in the target, not in the source
    different: int = 0  # in both, with different values
    dead_lettered: int = 0  # of the above, explained by an open dead letter
    null_key: int = 0  # of the missing: rows whose key holds NULL (PostgreSQL cannot hold them)
    orphaned: int = 0  # differing, no dead letter: source orphans (their parent is not in SQLite)
    in_flight: int = 0  # differed, then matched once the stream caught up
    repaired: int = 0
    # What --repair did per row (the first MAX_LISTED): key, problem, action, and for a
    # row it could not repair, why.
    repairs: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return self.missing + self.extra + self.different

    @property
    def ok(self) -> bool:
        return self.differences == 0


@dataclass
class VerifyReport:
    tables: list[TableVerdict] = field(default_factory=list)
    orphans: list[dict[str, Any]] = field(default_factory=list)
    sequences_behind: list[dict[str, Any]] = field(default_factory=list)
    json_invalid: list[dict[str, Any]] = field(default_factory=list)
    open_dead_letters: int = 0
    # Rows SQLite refused in the reverse direction: shown, not a difference of this
    # direction (a row they concern that still differs is counted by the comparison).
    open_reverse_dead_letters: int = 0
    position: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            all(t.ok for t in self.tables)
            and not self.orphans
            and not self.sequences_behind
            and not self.json_invalid
            and self.open_dead_letters == 0
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for t, verdict in zip(out["tables"], self.tables, strict=True):
            t["ok"] = verdict.ok
            t["differences"] = verdict.differences
        return out

    def render(self) -> str:
        head = (
            f"{'table':<26} {'source':>9} {'target':>9} {'missing':>7} {'extra':>6} "
            f"{'differ':>6} {'dead':>5} {'flight':>6} {'repair':>6}  ok"
        )
        lines = [head, "-" * len(head)]
        for t in self.tables:
            lines.append(
                f"{t.table[:26]:<26} {t.source_rows:>9} {t.target_rows:>9} {t.missing:>7} "
                f"{t.extra:>6} {t.different:>6} {t.dead_lettered:>5} {t.in_flight:>6} "
                f"{t.repaired:>6}  {_ok_word(t)}"
            )
        for t in self.tables:
            if t.repairs:
                lines.extend(_repair_lines(t))
                continue
            for ex in t.examples[:5]:
                lines.append(f"  {t.table}: {ex['problem']} key {ex['key']}{ex.get('detail', '')}")
        for o in self.orphans:
            lines.append(f"orphans: {o['rows']} row(s) of {o['table']} break {o['constraint']}")
        for s in self.sequences_behind:
            lines.append(
                f"sequence behind: {s['table']}.{s['column']} is at {s['last_value']}, "
                f"max id is {s['max']}"
            )
        for j in self.json_invalid:
            lines.append(
                f"json: {j['rows']} value(s) of {j['table']}.{j['column']} are JSON text "
                "wrapped in a string (double-encoded)"
            )
        if self.open_dead_letters:
            lines.append(
                f"{self.open_dead_letters} open dead letter(s): rows the target does not hold "
                "(see `replicator dead-letters list`)"
            )
        if self.open_reverse_dead_letters:
            lines.append(
                f"{self.open_reverse_dead_letters} open reverse dead letter(s): writes made in "
                "PostgreSQL that SQLite refused (not a difference by themselves; "
                "`replicator dead-letters list`, then fix or discard them)"
            )
        differences = sum(t.differences for t in self.tables)
        lettered = sum(t.dead_lettered for t in self.tables)
        orphaned = sum(t.orphaned for t in self.tables)
        others = self.orphans or self.sequences_behind or self.json_invalid
        if self.ok:
            verdict = "IDENTICAL"
        elif differences == lettered + orphaned and not others:
            named = f"the {lettered} dead-lettered row(s)"
            if orphaned:
                named += f" and {orphaned} source orphan(s) (rows whose parent SQLite deleted)"
            verdict = f"DIFFERENT only by {named}: every other row is identical"
        else:
            verdict = "DIFFERENT"
        where = f" at stream position {self.position}" if self.position is not None else ""
        lines.append(f"verdict: {verdict}{where} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _ok_word(t: TableVerdict) -> str:
    """'held' where every difference is a row held in a dead letter: not a surprise."""
    if t.ok:
        return "yes"
    return "held" if t.differences == t.dead_lettered else "NO"


def _repair_lines(t: TableVerdict) -> list[str]:
    """One line per row --repair handled: what it did, or why it could not."""
    lines = []
    for r in t.repairs:
        done = {"upserted": "copied from the source", "deleted": "deleted (not in the source)"}
        if r["action"] in done:
            lines.append(f"  {t.table}: {r['problem']} key {r['key']}: {done[r['action']]}")
        else:
            column = f" column {r['column']}" if r.get("column") else ""
            lines.append(
                f"  {t.table}: {r['problem']} key {r['key']}: NOT repaired{column}: {r['reason']}"
            )
    if t.repaired + sum(r["action"] == "failed" for r in t.repairs) > len(t.repairs):
        lines.append(f"  {t.table}: ... (the first {len(t.repairs)} rows are listed)")
    return lines


def _rows_cursor(conn: Connection) -> psycopg.Cursor[Any]:
    """A cursor for the target's rows that gives json and jsonb as their text, as
    the source holds them: parsed, the JSON string "1" would come back as the
    Python str '1', which canonical() reads as the number 1."""
    cur = conn.cursor()
    for json_type in ("json", "jsonb"):
        cur.adapters.register_loader(json_type, TextLoader)
    return cur


class Verifier:
    def __init__(self, config: Config, *, chunk_rows: int = 5000, settle_timeout: float = 30.0):
        self.config = config
        self.chunk_rows = chunk_rows
        self.settle_timeout = settle_timeout
        self.schema = config.target.state_schema

    def run(self, *, repair: bool = False, only: Sequence[str] | None = None) -> VerifyReport:
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
            dead = self._open_dead_letters(conn)
            for plan in plans:
                report.tables.append(
                    self.verify_table(source, conn, plan, dead.get(plan.source.name, set()), repair)
                )
            report.orphans = self.orphans(conn, plans)
            report.sequences_behind = self.sequences(conn, plans, repair)
            report.json_invalid = self.json_columns(conn, plans)
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
    ) -> TableVerdict:
        started = time.monotonic()
        verdict = TableVerdict(table=plan.source.name)
        reader = ChunkReader(source, plan)
        kinds = [c.type.kind for c in plan.columns]
        keypos = plan.key_positions
        first_sql, between_sql, tail_sql = self._target_select(plan)
        differing: dict[str, tuple[Key, str]] = {}  # key text -> (source key, problem)
        last_source_key: Key | None = None
        last_target_key: tuple[Any, ...] | None = None
        while True:
            raw_rows = reader.read(last_source_key, self.chunk_rows)
            with _rows_cursor(conn) as cur:
                if not raw_rows:
                    if last_target_key is None:
                        cur.execute(
                            sql.SQL("SELECT {} FROM {}").format(
                                plan.target_column_list(), plan.table
                            )
                        )
                    else:
                        cur.execute(tail_sql, last_target_key)
                    target_rows = cur.fetchall()
                else:
                    upper = chunk_upper_key(plan, raw_rows)
                    if upper is None:  # no key of this chunk can be in the target
                        target_rows = []
                    elif last_target_key is None:
                        cur.execute(first_sql, upper)
                        target_rows = cur.fetchall()
                    else:
                        cur.execute(between_sql, (*last_target_key, *upper))
                        target_rows = cur.fetchall()
                    last_target_key = upper or last_target_key
            verdict.source_rows += len(raw_rows)
            verdict.target_rows += len(target_rows)
            if not raw_rows and not target_rows:
                break
            verdict.chunks += 1
            src = self._source_map(plan, raw_rows, kinds)
            tgt = {
                key_text([canonical(kinds[i], r[i]) for i in keypos]): tuple(
                    canonical(k, v) for k, v in zip(kinds, r, strict=True)
                )
                for r in target_rows
            }
            if row_digest(src[k][1] for k in sorted(src)) != row_digest(
                tgt[k] for k in sorted(tgt)
            ):
                verdict.mismatched_chunks += 1
                for k, (key, row) in src.items():
                    if k not in tgt:
                        differing[k] = (key, "missing")
                    elif tgt[k] != row:
                        differing[k] = (key, "different")
                for k, row in tgt.items():
                    if k not in src:
                        differing[k] = (tuple(row[i] for i in keypos), "extra")
            if not raw_rows:
                break
            last_source_key = tuple(raw_rows[-1][i] for i in keypos)
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

    # -- whole-database checks ------------------------------------------------------

    def orphans(self, conn: Connection, plans: Sequence[TablePlan]) -> list[dict[str, Any]]:
        """Rows whose foreign key points at nothing (valid or NOT VALID constraints)."""
        out = []
        names = [p.name for p in plans]
        with conn.cursor() as cur:
            cur.execute(
                "SELECT con.conname, c.relname, pc.relname, "
                " ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)"
                "       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n"
                "       ORDER BY k.o),"
                " ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)"
                "       JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n"
                "       ORDER BY k.o)"
                " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN pg_class pc ON pc.oid = con.confrelid"
                " WHERE con.contype = 'f' AND n.nspname = %s AND c.relname = ANY(%s)",
                (self.config.target.schema, names),
            )
            constraints = cur.fetchall()
            schema = self.config.target.schema
            for name, child, parent, cols, pcols in constraints:
                match = sql.SQL(" AND ").join(
                    sql.SQL("p.{} = c.{}").format(pg_ident(pc), pg_ident(cc))
                    for cc, pc in zip(cols, pcols, strict=True)
                )
                not_null = sql.SQL(" AND ").join(
                    sql.SQL("c.{} IS NOT NULL").format(pg_ident(cc)) for cc in cols
                )
                cur.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {} AS c WHERE {} AND NOT EXISTS "
                        "(SELECT 1 FROM {} AS p WHERE {})"
                    ).format(pg_ident(schema, child), not_null, pg_ident(schema, parent), match)
                )
                row = cur.fetchone()
                if row and row[0]:
                    out.append({"constraint": name, "table": child, "rows": int(row[0])})
        return out

    def sequences(
        self, conn: Connection, plans: Sequence[TablePlan], repair: bool
    ) -> list[dict[str, Any]]:
        behind = []
        for plan in plans:
            sequences = target_sequences(conn, plan)
            for column, (seq_schema, seq_name) in sequences:
                with conn.cursor() as cur:
                    cur.execute(
                        sql.SQL(
                            "SELECT (SELECT max({col}) FROM {table}),"
                            " (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END"
                            " FROM {seq})"
                        ).format(
                            col=pg_ident(column),
                            table=plan.table,
                            seq=pg_ident(seq_schema, seq_name),
                        )
                    )
                    row = cur.fetchone()
                assert row is not None
                top, last = row
                if top is not None and last < top:
                    behind.append(
                        {"table": plan.name, "column": column, "last_value": last, "max": top}
                    )
            if repair and sequences:
                with conn.transaction(), conn.cursor() as cur:
                    for stmt in sequence_sql(plan, sequences):
                        cur.execute(stmt)
        if repair:
            return [b for b in behind if not self._sequence_fixed(conn, plans, b)]
        return behind

    def _sequence_fixed(
        self, conn: Connection, plans: Sequence[TablePlan], item: dict[str, Any]
    ) -> bool:
        plan = next(p for p in plans if p.name == item["table"])
        for column, (seq_schema, seq_name) in target_sequences(conn, plan):
            if column != item["column"]:
                continue
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT last_value FROM {}").format(pg_ident(seq_schema, seq_name))
                )
                row = cur.fetchone()
            return bool(row and row[0] >= item["max"])
        return False

    def json_columns(self, conn: Connection, plans: Sequence[TablePlan]) -> list[dict[str, Any]]:
        """JSON columns must hold JSON documents, not JSON text wrapped in a string.

        json/jsonb values always parse (PostgreSQL validates them on input);
        the classic migration bug is double encoding: an object stored as a
        JSON *string* holding the object's text. Count those.
        """
        out = []
        for plan in plans:
            for col in plan.columns:
                if col.type.kind not in JSON_KINDS:
                    continue
                cast = sql.SQL("::jsonb") if col.type.kind == Kind.JSON else sql.SQL("")
                with conn.cursor() as cur:
                    cur.execute(
                        sql.SQL(
                            "SELECT count(*) FROM {t} WHERE jsonb_typeof({c}{cast}) = 'string'"
                            " AND ({c}{cast} #>> '{{}}') ~ '^\\s*[\\[{{]'"
                        ).format(t=plan.table, c=pg_ident(col.target), cast=cast)
                    )
                    row = cur.fetchone()
                if row and row[0]:
                    out.append({"table": plan.name, "column": col.target, "rows": int(row[0])})
        return out
