"""Query parity and latency: do the application's queries answer the same on PostgreSQL?

Equal tables are not enough. A query can mean something else in the other
dialect: LIKE is case-insensitive in SQLite and not in PostgreSQL, NULLs sort
first in SQLite and last in PostgreSQL, text compared with a number is
compared as text in SQLite, timestamps stored as text in two styles compare as
text. So each named query from a query file (:mod:`replicator.queries.spec`) runs
on both sides, for each of its parameter sets, and the answers are compared:

* values are normalised the way replication normalises them, and an ordered
  query (one whose SQLite form has a top-level ORDER BY) is compared row by
  row, or group by group of equal ``order_key`` values; any other query as a
  multiset (:mod:`replicator.queries.compare`);
* both sides are read-only: the source opened ``mode=ro`` with ``query_only``,
  the target in ``READ ONLY`` transactions (and the session default).

While replication streams, the two sides can differ only because changes are
in flight. The comparison reads the source's change-log head in the same
SQLite read transaction as the query, and the target's applied position in
the same PostgreSQL snapshot as the query; a query that differs is run again
once, after the target has caught up with the source's head, before it is
called a difference.

Latency is measured on both sides after a warm-up, per parameter set and in
rounds, as the client sees it (execute and fetch all rows): the worst set and
the spread of its per-round p95 decide ok, near the target or slow
(:mod:`replicator.queries.latency`); with ``clients`` the query also runs from
that many connections per side at once (:mod:`replicator.queries.load`). A
query over or near its target gets an ``EXPLAIN (ANALYZE, BUFFERS)`` summary
with pointers at sequential scans of large tables and indexes SQLite had and
PostgreSQL lacks (:mod:`replicator.queries.plans`); every timed query's plan
is read for advice beyond those (:mod:`replicator.queries.advice`). A query
given only for SQLite also gets sqlglot's PostgreSQL form, run and judged
(:mod:`replicator.queries.port`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, RawCursor, sql

from replicator.coerce import Kind, PgType, converter_for
from replicator.config import Config
from replicator.errors import TargetError
from replicator.identifiers import pg_ident
from replicator.queries.advice import PlanAdvice
from replicator.queries.compare import (
    Difference,
    ResultColumn,
    compare_rows,
    normalise_postgres,
    normalise_sqlite,
)
from replicator.queries.judge import apply_session, judge_case, ties_only
from replicator.queries.latency import LatencyProfile, measure_sets
from replicator.queries.letters import LetterIndex
from replicator.queries.load import LoadResult, run_load, session_settings
from replicator.queries.plans import PlanAdvisor, PlanNode, explain_postgres
from replicator.queries.port import PortResult, run_port, source_columns
from replicator.queries.report import (
    CaseResult,
    Latency,
    PlanSummary,
    QueryReport,
    QueryResult,
)
from replicator.queries.spec import ParamSet, QueryFile, QuerySettings, QuerySpec, load_query_file
from replicator.source import changelog
from replicator.source.reader import fetch_described
from replicator.source.sqlite import open_source, read_transaction
from replicator.state.checkpoint import count_cursor_tables
from replicator.state.position import load_position, position_kept
from replicator.target.connection import Cursor, connect, first_line

__all__ = ["QueryChecker", "QueryError", "check_queries"]

# --------------------------------------------------------------------------- running


class QueryError(Exception):
    """One side could not run a query (syntax, missing function, timeout ...)."""


@dataclass
class _Side:
    names: list[str]
    rows: list[tuple[Any, ...]]


@dataclass
class _Pair:
    sqlite: _Side
    postgres: _Side
    columns: list[ResultColumn]
    source_position: int | None
    target_position: int | None


class QueryChecker:
    """Runs query specs against one source and one target; one instance per check."""

    def __init__(
        self,
        config: Config,
        settings: QuerySettings,
        *,
        measure: bool = True,
        session: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.config = config
        self.settings = settings
        self.measure = measure
        self.schema = config.target.schema
        self.state_schema = config.target.state_schema
        self.source = open_source(
            config.require_source(), readonly=True, busy_timeout_ms=config.source.busy_timeout_ms
        )
        try:
            self.source.execute("PRAGMA query_only = ON")
            self.conn = connect(
                config.require_target(),
                autocommit=True,
                connect_timeout=config.target.connect_timeout,
            )
        except BaseException:
            self.source.close()
            raise
        self._types: dict[int, PgType] = {}
        try:
            self.conn.execute("SET default_transaction_read_only = on")
            self.conn.execute(
                sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(int(settings.statement_timeout_ms))
                )
            )
            self.conn.execute(sql.SQL("SET search_path TO {}").format(pg_ident(self.schema)))
            self.has_changelog = changelog.changelog_exists(self.source)
            with self.conn.cursor() as cur:
                self.has_position = position_kept(cur, self.state_schema)
            self.cursor_tables = self._cursor_tables()
            # The application's own session: the server's defaults (and the
            # DSN's options), then the query file's [session] settings, last
            # so that a search_path of the file's is the one in force, as the
            # report says (the check's own bookkeeping names its schemas).
            self.session = apply_session(self.conn, session)
            self.conn.read_only = True
            self.conn.isolation_level = IsolationLevel.REPEATABLE_READ
        except psycopg.Error as exc:
            self.close()
            raise TargetError(f"cannot prepare the target session: {first_line(exc)}") from exc
        except BaseException:
            self.close()
            raise

    _letters: LetterIndex | None = None

    @property
    def letters(self) -> LetterIndex:
        """The open dead letters, read when the first difference needs them."""
        if self._letters is None:
            try:
                # The dead letters hold timestamps: read them in the ISO
                # styles psycopg parses, whatever the session's are.
                with self.conn.transaction(), self.conn.cursor() as cur:
                    cur.execute("SET LOCAL DateStyle = 'ISO'")
                    cur.execute("SET LOCAL IntervalStyle = 'postgres'")
                    self._letters = LetterIndex.load(cur, self.source, self.state_schema)
            except psycopg.Error as exc:
                raise TargetError(f"cannot read the dead letters: {first_line(exc)}") from exc
        return self._letters

    def close(self) -> None:
        self.conn.close()
        self.source.close()

    def __enter__(self) -> QueryChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- positions ------------------------------------------------------------

    def _cursor_tables(self) -> int:
        """Tables the daemon follows by cursor (no change log, so no single position)."""
        with self.conn.cursor() as cur:
            return count_cursor_tables(cur, self.state_schema)

    @property
    def trigger_stream(self) -> bool:
        """Changes are captured by the source's change log: positions are comparable."""
        return self.has_changelog and self.has_position

    @property
    def streaming(self) -> bool:
        return self.trigger_stream or self.cursor_tables > 0

    def cursor_wait(self) -> float:
        """How long a cursor-captured change may take to arrive: three polls and a second."""
        return min(self.settings.settle_timeout, 3 * self.config.stream.poll_interval + 1.0)

    def source_head(self) -> int | None:
        return changelog.head_position(self.source) if self.has_changelog else None

    def target_position(self, cur: Cursor) -> int | None:
        if not self.has_position:
            return None
        try:
            found = load_position(cur, self.state_schema)
        except psycopg.Error as exc:  # the check's own read: never an internal error
            raise TargetError(f"cannot read the stream position: {first_line(exc)}") from exc
        return found.seq if found else None

    def positions(self) -> tuple[int | None, int | None]:
        with read_transaction(self.source):
            head = self.source_head()
        with self.conn.cursor() as cur:
            return head, self.target_position(cur)

    def wait_for_target(self, head: int | None) -> int | None:
        """Wait until the target has applied everything up to ``head`` (or time runs out)."""
        deadline = time.monotonic() + self.settings.settle_timeout
        while True:
            with self.conn.cursor() as cur:
                pos = self.target_position(cur)
            if head is None or pos is None or pos >= head or time.monotonic() >= deadline:
                return pos
            time.sleep(0.1)

    # -- one execution per side ---------------------------------------------------

    def _sqlite_limit(self) -> Callable[[], int]:
        deadline = time.monotonic() + self.settings.statement_timeout_ms / 1000

        def check() -> int:
            return 1 if time.monotonic() > deadline else 0

        return check

    def run_sqlite(self, text: str, params: Any) -> _Side:
        self.source.set_progress_handler(self._sqlite_limit(), 20_000)
        try:
            names, rows = fetch_described(self.source, text, params)
        except sqlite3.Error as exc:
            reason = str(exc)
            if reason == "interrupted":
                reason = f"cancelled after {self.settings.statement_timeout_ms} ms"
            raise QueryError(f"SQLite: {reason}") from exc
        finally:
            self.source.set_progress_handler(None, 0)
        return _Side(names, [tuple(r) for r in rows])

    def run_postgres(self, text: str, params: Sequence[Any]) -> tuple[_Side, list[int]]:
        try:
            with RawCursor(self.conn) as cur:
                cur.execute(text, params)
                rows = cur.fetchall() if cur.description is not None else []
                desc = cur.description or []
        except psycopg.Error as exc:
            if self.conn.broken or self.conn.closed:
                raise TargetError(f"lost the target connection: {first_line(exc)}") from exc
            raise QueryError(f"PostgreSQL: {first_line(exc)}") from exc
        except NotImplementedError as exc:
            # psycopg reads dates, timestamptz and intervals only in the ISO
            # styles: under the session's DateStyle/IntervalStyle the
            # application's psycopg could not read this result either.
            raise QueryError(f"PostgreSQL: psycopg cannot read the result: {exc}") from exc
        return _Side([c.name for c in desc], [tuple(r) for r in rows]), [
            int(c.type_code) for c in desc
        ]

    def result_columns(self, names: Sequence[str], oids: Sequence[int]) -> list[ResultColumn]:
        missing = sorted({o for o in oids if o not in self._types})
        if missing:
            with self.conn.cursor() as cur:
                cur.execute(
                    "SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)",
                    (missing,),
                )
                for oid, name in cur.fetchall():
                    parsed = PgType.parse(name)
                    # Modifiers of a result column are unknown here and do not
                    # matter for comparing: keep the family only.
                    self._types[oid] = (
                        parsed if parsed.kind is Kind.OTHER else PgType.of(parsed.kind)
                    )
        out = []
        for name, oid in zip(names, oids, strict=True):
            pg_type = self._types.get(oid, PgType(Kind.OTHER, str(oid)))
            out.append(ResultColumn(name, pg_type.kind, converter_for(pg_type)))
        return out

    def run_pair(self, spec: QuerySpec, ps: ParamSet, *, settle: bool = False) -> _Pair:
        """Both sides once, each with the replication position it was read at.

        With ``settle``, the PostgreSQL side waits until the target has applied
        every change the SQLite side could see.
        """
        with read_transaction(self.source):
            head = self.source_head()
            lite = self.run_sqlite(spec.sqlite_sql, dict(ps.sqlite))
        if settle:
            self.wait_for_target(head)
        try:
            with self.conn.transaction():
                with self.conn.cursor() as cur:
                    position = self.target_position(cur)
                pg, oids = self.run_postgres(spec.postgres_sql, ps.postgres)
                columns = self.result_columns(pg.names, oids)
        except psycopg.Error as exc:  # the COMMIT of a read-only transaction
            raise TargetError(f"target transaction failed: {first_line(exc)}") from exc
        return _Pair(lite, pg, columns, head, position)

    # -- comparing ------------------------------------------------------------------

    def _compare(self, spec: QuerySpec, pair: _Pair) -> Difference | None:
        if len(pair.sqlite.names) != len(pair.postgres.names):
            return Difference(
                f"SQLite returns {len(pair.sqlite.names)} columns "
                f"({', '.join(pair.sqlite.names)}), PostgreSQL {len(pair.postgres.names)} "
                f"({', '.join(pair.postgres.names)})"
            )
        key_idx = []
        lowered = [n.lower() for n in pair.sqlite.names]
        for key in spec.order_key:
            if key.lower() not in lowered:
                raise QueryError(
                    f"order_key column {key!r} is not in the result "
                    f"({', '.join(pair.sqlite.names)})"
                )
            key_idx.append(lowered.index(key.lower()))
        diff = compare_rows(
            normalise_sqlite(pair.columns, pair.sqlite.rows),
            normalise_postgres(pair.columns, pair.postgres.rows),
            ordered=spec.ordered,
            key_idx=key_idx,
            tolerance=self.tolerance(spec),
        )
        if diff is not None and ties_only(
            spec,
            pair.sqlite.names,
            pair.columns,
            pair.sqlite.rows,
            pair.postgres.rows,
            self.tolerance(spec),
        ):
            return None  # rows tied on the ORDER BY came in another order: judge_case says so
        return diff

    def tolerance(self, spec: QuerySpec) -> float:
        return (
            spec.float_tolerance
            if spec.float_tolerance is not None
            else self.settings.float_tolerance
        )

    def check_case(self, spec: QuerySpec, ps: ParamSet, notes: list[str]) -> CaseResult:
        case = CaseResult(index=ps.index, params=dict(ps.shown))
        try:
            pair = self.run_pair(spec, ps)
            diff = self._compare(spec, pair)
            differed = diff is not None
            moving = pair.source_position != pair.target_position
            if diff is not None and self.trigger_stream and moving:
                pair = self.run_pair(spec, ps, settle=True)
                diff = self._compare(spec, pair)
            if diff is not None and self.cursor_tables:
                # Cursor-captured tables have no position to wait for: give the
                # daemon a few polls, then look once more.
                time.sleep(self.cursor_wait())
                pair = self.run_pair(spec, ps, settle=self.trigger_stream)
                diff = self._compare(spec, pair)
            case.in_flight = differed and diff is None
        except QueryError as exc:
            case.error = str(exc)
            return case
        case.sqlite_rows = len(pair.sqlite.rows)
        case.postgres_rows = len(pair.postgres.rows)
        case.difference = diff
        case.equal = diff is None
        case.source_position = pair.source_position
        case.target_position = pair.target_position
        renamed = [
            f"{a} -> {b}"
            for a, b in zip(pair.sqlite.names, pair.postgres.names, strict=False)
            if a != b
        ]
        if renamed and not any(n.startswith("result columns are named") for n in notes):
            notes.append(
                "result columns are named differently (" + ", ".join(renamed) + "): "
                "code that reads columns by name needs an alias"
            )
        judge_case(
            self, spec, pair.sqlite.names, pair.sqlite.rows, pair.postgres.rows, pair.columns, case
        )
        return case

    # -- latency -------------------------------------------------------------------

    def _time_sqlite(self, spec: QuerySpec, ps: ParamSet) -> float:
        params = dict(ps.sqlite)
        started = time.perf_counter()
        self.run_sqlite(spec.sqlite_sql, params)
        return (time.perf_counter() - started) * 1000

    def _time_postgres(self, spec: QuerySpec, ps: ParamSet) -> float:
        started = time.perf_counter()
        self.run_postgres(spec.postgres_sql, ps.postgres)
        return (time.perf_counter() - started) * 1000

    def measure_latency(
        self, spec: QuerySpec, sets: Sequence[ParamSet], target_ms: float
    ) -> tuple[Latency, Latency, LatencyProfile]:
        """Both sides, round by round, per parameter set (:mod:`replicator.queries.latency`)."""
        return measure_sets(
            sets,
            self.settings,
            target_ms,
            lambda ps: self._time_sqlite(spec, ps),
            lambda ps: self._time_postgres(spec, ps),
        )

    def measure_load(
        self, spec: QuerySpec, sets: Sequence[ParamSet], target_ms: float
    ) -> LoadResult:
        """``clients`` connections per side at once (:mod:`replicator.queries.load`)."""
        s = self.settings
        return run_load(
            self.config,
            session_settings(self.conn),
            spec,
            sets,
            clients=s.clients,
            runs=s.load_runs,
            budget=s.max_seconds,
            target_ms=target_ms,
            statement_timeout_ms=s.statement_timeout_ms,
        )

    def port(self, spec: QuerySpec) -> PortResult:
        """sqlglot's PostgreSQL form of a query given only for SQLite, run on every set."""
        return run_port(
            spec,
            source_columns(self.source, spec.sqlite_sql),
            lambda ported, ps: self.check_case(ported, ps, []),
        )

    # -- plans ---------------------------------------------------------------------

    def explain(
        self,
        spec: QuerySpec,
        ps: ParamSet,
        found: tuple[PlanSummary, list[PlanNode]] | None = None,
    ) -> PlanSummary:
        """PostgreSQL's plan and the hints; SQLite's plan only feeds the index hints."""
        summary, nodes = found or explain_postgres(self.conn, spec, ps)
        if not nodes:
            return summary
        try:
            summary.sqlite_plan = self._sqlite_plan(spec, ps)
        except QueryError:
            summary.sqlite_plan = []
        advisor = PlanAdvisor(self.conn, self.source, self.config, self.settings)
        summary.hints.extend(advisor.hints(spec, nodes, summary.sqlite_plan))
        return summary

    def _sqlite_plan(self, spec: QuerySpec, ps: ParamSet) -> list[str]:
        side = self.run_sqlite("EXPLAIN QUERY PLAN " + spec.sqlite_sql, dict(ps.sqlite))
        return [str(r[-1]) for r in side.rows]

    # -- one query ---------------------------------------------------------------------

    def check(self, spec: QuerySpec) -> QueryResult:
        target = spec.target_p95_ms or self.settings.target_p95_ms
        result = QueryResult(
            name=spec.name,
            description=spec.description,
            ordered=spec.ordered,
            target_p95_ms=target,
            notes=list(spec.notes),
            accept=sorted(spec.accept),
        )
        sets = spec.param_sets()
        for ps in sets:
            result.cases.append(self.check_case(spec, ps, result.notes))
        if not spec.postgres_form:
            result.port = self.port(spec)
        if not self.measure or any(c.error for c in result.cases):
            return result
        try:
            result.sqlite, result.postgres, result.latency = self.measure_latency(
                spec, sets, target
            )
            if self.settings.clients > 0:
                result.load = self.measure_load(spec, sets, target)
        except QueryError as exc:
            result.error = f"while timing: {exc}"
            return result
        slowest = sets[result.latency.worst.index]
        found = explain_postgres(self.conn, spec, slowest)
        result.advice = PlanAdvice(self.conn, self.schema, self.settings.large_table_rows).advise(
            spec, slowest, found[1]
        )
        if result.slow or result.near_target:
            result.plan = self.explain(spec, slowest, found)
        if result.sqlite is not None and result.sqlite.p95 > target and result.slow:
            result.notes.append("already over the target on SQLite")
        return result


# --------------------------------------------------------------------------- entry point


def check_queries(
    config: Config,
    path: Path,
    *,
    runs: int | None = None,
    warmup: int | None = None,
    target_p95_ms: float | None = None,
    only: Sequence[str] | None = None,
    measure: bool = True,
    settle_timeout: float | None = None,
    max_seconds: float | None = None,
    clients: int | None = None,
    rounds: int | None = None,
    load_runs: int | None = None,
) -> QueryReport:
    """Run every query of the file at ``path`` on both sides; the cutover calls this.

    Keyword arguments override the file's ``[settings]`` (``target_p95_ms``
    replaces the default target, not the targets set on single queries).
    """
    started = time.monotonic()
    qfile: QueryFile = load_query_file(path)
    settings = qfile.settings.with_overrides(
        runs=runs,
        warmup=warmup,
        target_p95_ms=target_p95_ms,
        settle_timeout=settle_timeout,
        max_seconds=max_seconds,
        clients=clients,
        rounds=rounds,
        load_runs=load_runs,
    )
    specs = qfile.select(only)
    report = QueryReport(path=str(path), settings=asdict(settings))
    with QueryChecker(config, settings, measure=measure, session=qfile.session) as checker:
        report.session = dict(checker.session)
        report.streaming = checker.streaming
        report.source_position, report.target_position = checker.positions()
        for spec in specs:
            report.queries.append(checker.check(spec))
    report.seconds = time.monotonic() - started
    return report
