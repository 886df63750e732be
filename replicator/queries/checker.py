"""Query parity and latency: do the application's queries answer the same on PostgreSQL?

Equal tables are not enough. A query can mean something else in the other
dialect: LIKE is case-insensitive in SQLite and not in PostgreSQL, NULLs sort
first in SQLite and last in PostgreSQL, text compared with a number is
compared as text in SQLite, timestamps stored as text in two styles compare as
text. So each named query from a query file (:mod:`replicator.queries.spec`) runs
on both sides, for each of its parameter sets, and the answers are compared:

* values are normalised the way replication normalises them: every SQLite
  value goes through the converter of the PostgreSQL result column's type
  (:func:`replicator.coerce.converter_for`) and both sides through
  :func:`replicator.proof.verify.canonical`; floats and non-integral numerics are
  equal within a relative tolerance, everything else exactly;
* an ordered query (one whose SQLite form has a top-level ORDER BY) is
  compared row by row, or group by group of equal ``order_key`` values; any
  other query as a multiset;
* both sides are read-only: the source opened ``mode=ro`` with ``query_only``,
  the target in ``READ ONLY`` transactions (and the session default).

While replication streams, the two sides can differ only because changes are
in flight. The comparison reads the source's change-log head in the same
SQLite read transaction as the query, and the target's applied position in
the same PostgreSQL snapshot as the query; a query that differs is run again
once, after the target has caught up with the source's head, before it is
called a difference.

Latency is measured on both sides after a warm-up, over the parameter sets in
turn, as the client sees it (execute and fetch all rows). A PostgreSQL p95
above the target gets an ``EXPLAIN (ANALYZE, BUFFERS)`` summary with pointers
at sequential scans of large tables and indexes SQLite had and PostgreSQL
lacks.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, RawCursor, sql

from replicator.coerce import Converter, Kind, PgType, converter_for
from replicator.config import Config
from replicator.errors import CoercionError, SourceError, TargetError
from replicator.identifiers import pg_ident
from replicator.proof.verify import canonical
from replicator.queries.spec import ParamSet, QueryFile, QuerySettings, QuerySpec, load_query_file
from replicator.source import changelog
from replicator.source.sqlite import describe_table, open_source, read_transaction
from replicator.stream.apply import load_position
from replicator.target.connection import Cursor, connect, first_line

__all__ = [
    "CaseResult",
    "Difference",
    "Latency",
    "PlanSummary",
    "QueryReport",
    "QueryResult",
    "check_queries",
    "compare_rows",
]

SHOWN_ROWS = 3  # differing rows listed per side
PLAN_LINES = 16  # plan nodes listed in a slow query's summary
MIN_SAMPLES = 5  # timed runs per side even when the time budget is spent


# --------------------------------------------------------------------------- normalising


@dataclass(frozen=True, slots=True)
class Unconvertible:
    """A SQLite value that replication could not store in the result column's type."""

    raw: object
    reason: str


@dataclass(frozen=True, slots=True)
class ResultColumn:
    name: str
    kind: Kind
    convert: Converter


@dataclass(frozen=True, slots=True)
class Row:
    canon: tuple[Any, ...]  # compared
    raw: tuple[Any, ...]  # shown


def normalise_sqlite(
    columns: Sequence[ResultColumn], raw_rows: Sequence[Sequence[Any]]
) -> list[Row]:
    """SQLite values typed like the PostgreSQL result column, then made canonical."""
    out = []
    for raw in raw_rows:
        values = []
        for col, v in zip(columns, raw, strict=True):
            try:
                values.append(canonical(col.kind, col.convert(v)))
            except CoercionError as exc:
                values.append(Unconvertible(v, exc.reason))
        out.append(Row(tuple(values), tuple(raw)))
    return out


def normalise_postgres(
    columns: Sequence[ResultColumn], raw_rows: Sequence[Sequence[Any]]
) -> list[Row]:
    return [
        Row(tuple(canonical(c.kind, v) for c, v in zip(columns, raw, strict=True)), tuple(raw))
        for raw in raw_rows
    ]


def _exact_integer(v: Any) -> bool:
    if isinstance(v, int):
        return True
    return isinstance(v, Decimal) and v.is_finite() and v == v.to_integral_value()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | Decimal) and not isinstance(v, bool)


def same_value(a: Any, b: Any, tolerance: float) -> bool:
    """Equal after normalisation; floats and fractional numerics within ``tolerance``.

    Integers (and integral numerics) must be exactly equal: a count that is
    off by one is a wrong answer however large the count.
    """
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        if _exact_integer(a) and _exact_integer(b):
            return int(a) == int(b)
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        if math.isinf(fa) or math.isinf(fb):
            return fa == fb
        return math.isclose(fa, fb, rel_tol=tolerance, abs_tol=tolerance * 1e-3)
    return bool(type(a) is type(b) and a == b)


def same_row(a: Row, b: Row, tolerance: float) -> bool:
    return len(a.canon) == len(b.canon) and all(
        same_value(x, y, tolerance) for x, y in zip(a.canon, b.canon, strict=True)
    )


def _value_key(v: Any) -> tuple[Any, ...]:
    """A total order over mixed canonical values (for sorting rows into multisets)."""
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (1, int(v))
    if _is_number(v):
        f = float(v)
        return (2, 0.0 if math.isnan(f) else f, 1 if math.isnan(f) else 0)
    if isinstance(v, str):
        return (3, v)
    if isinstance(v, bytes):
        return (4, v)
    if isinstance(v, datetime):
        return (5, v.isoformat())
    if isinstance(v, date):
        return (6, v.isoformat())
    if isinstance(v, dtime):
        return (7, v.isoformat())
    return (9, repr(v))


def _row_key(row: Row) -> tuple[tuple[Any, ...], ...]:
    return tuple(_value_key(v) for v in row.canon)


# --------------------------------------------------------------------------- comparing


@dataclass
class Difference:
    summary: str
    position: int | None = None  # first differing row (0-based) of an ordered result
    sqlite_rows: list[list[Any]] = field(default_factory=list)
    postgres_rows: list[list[Any]] = field(default_factory=list)


def display(v: Any) -> Any:
    """A short JSON-safe picture of a value as the application would see it."""
    if v is None or isinstance(v, bool | int):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    if isinstance(v, str):
        return v if len(v) <= 120 else v[:117] + "..."
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime | date | dtime):
        return v.isoformat(sep=" ") if isinstance(v, datetime) else v.isoformat()
    if isinstance(v, bytes | memoryview):
        raw = bytes(v)
        return f"x'{raw[:32].hex()}{'...' if len(raw) > 32 else ''}'"
    if isinstance(v, dict | list):
        text = json.dumps(v, ensure_ascii=False, separators=(",", ":"), default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    return repr(v)


def _shown(rows: Sequence[Row]) -> list[list[Any]]:
    return [[display(v) for v in r.raw] for r in rows[:SHOWN_ROWS]]


def _multiset_diff(a: Sequence[Row], b: Sequence[Row], tol: float) -> tuple[list[Row], list[Row]]:
    """Rows only in ``a`` and only in ``b``, each counted with its multiplicity."""
    sa = sorted(a, key=_row_key)
    sb = sorted(b, key=_row_key)
    only_a: list[Row] = []
    only_b: list[Row] = []
    i = j = 0
    while i < len(sa) and j < len(sb):
        if same_row(sa[i], sb[j], tol):
            i += 1
            j += 1
        elif _row_key(sa[i]) < _row_key(sb[j]):
            only_a.append(sa[i])
            i += 1
        else:
            only_b.append(sb[j])
            j += 1
    only_a.extend(sa[i:])
    only_b.extend(sb[j:])
    return only_a, only_b


def _groups(rows: Sequence[Row], key_idx: Sequence[int], tol: float) -> list[list[Row]]:
    out: list[list[Row]] = []
    for row in rows:
        if out and all(same_value(out[-1][0].canon[k], row.canon[k], tol) for k in key_idx):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def compare_rows(
    sqlite_rows: Sequence[Row],
    postgres_rows: Sequence[Row],
    *,
    ordered: bool,
    key_idx: Sequence[int] = (),
    tolerance: float = 1e-9,
) -> Difference | None:
    """None when the results are the same answer, else what differs first."""
    if ordered and not key_idx:
        for i, (a, b) in enumerate(zip(sqlite_rows, postgres_rows, strict=False)):
            if not same_row(a, b, tolerance):
                only_a, only_b = _multiset_diff(sqlite_rows, postgres_rows, tolerance)
                what = (
                    "the same rows in a different order"
                    if not only_a and not only_b
                    else "different rows"
                )
                return Difference(
                    f"{what}, from row {i + 1} (ORDER BY is honoured)",
                    position=i,
                    sqlite_rows=_shown(sqlite_rows[i:]),
                    postgres_rows=_shown(postgres_rows[i:]),
                )
        if len(sqlite_rows) == len(postgres_rows):
            return None
        i = min(len(sqlite_rows), len(postgres_rows))
        return Difference(
            f"SQLite returned {len(sqlite_rows)} rows, PostgreSQL {len(postgres_rows)}; "
            f"the first {i} agree",
            position=i,
            sqlite_rows=_shown(sqlite_rows[i:]),
            postgres_rows=_shown(postgres_rows[i:]),
        )
    if ordered:
        ga = _groups(sqlite_rows, key_idx, tolerance)
        gb = _groups(postgres_rows, key_idx, tolerance)
        position = 0
        for group_a, group_b in zip(ga, gb, strict=False):
            only_a, only_b = _multiset_diff(group_a, group_b, tolerance)
            keys_equal = all(
                same_value(group_a[0].canon[k], group_b[0].canon[k], tolerance) for k in key_idx
            )
            if only_a or only_b or not keys_equal:
                return Difference(
                    f"different rows in the group of equal order keys from row {position + 1} "
                    "(rows with equal keys may come in any order)",
                    position=position,
                    sqlite_rows=_shown(only_a or group_a),
                    postgres_rows=_shown(only_b or group_b),
                )
            position += len(group_a)
        if len(ga) == len(gb):
            return None
        return Difference(
            f"SQLite returned {len(sqlite_rows)} rows, PostgreSQL {len(postgres_rows)}; "
            f"the first {position} agree",
            position=position,
            sqlite_rows=_shown(sqlite_rows[position:]),
            postgres_rows=_shown(postgres_rows[position:]),
        )
    only_a, only_b = _multiset_diff(sqlite_rows, postgres_rows, tolerance)
    if not only_a and not only_b:
        return None
    return Difference(
        f"{len(only_a)} row(s) only in SQLite, {len(only_b)} only in PostgreSQL "
        "(compared as multisets: no ORDER BY)",
        sqlite_rows=_shown(only_a),
        postgres_rows=_shown(only_b),
    )


# --------------------------------------------------------------------------- latency


@dataclass
class Latency:
    """Milliseconds per execution, as the client sees it (execute + fetch all)."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Latency:
        s = sorted(samples_ms)
        return cls(
            n=len(s),
            p50=percentile(s, 0.50),
            p95=percentile(s, 0.95),
            p99=percentile(s, 0.99),
            mean=sum(s) / len(s),
            max=s[-1],
        )


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_samples:
        raise ValueError("no samples")
    pos = q * (len(sorted_samples) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


# --------------------------------------------------------------------------- results


@dataclass
class CaseResult:
    """One parameter set of one query."""

    index: int
    params: dict[str, Any]
    sqlite_rows: int = 0
    postgres_rows: int = 0
    equal: bool = False
    difference: Difference | None = None
    in_flight: bool = False  # differed, then matched once the target caught up
    source_position: int | None = None  # change-log head the SQLite side was read at
    target_position: int | None = None  # applied position the PostgreSQL side was read at
    error: str | None = None


@dataclass
class PlanSummary:
    params: dict[str, Any]
    execution_ms: float | None
    planning_ms: float | None
    lines: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    sqlite_plan: list[str] = field(default_factory=list)


@dataclass
class QueryResult:
    name: str
    description: str
    ordered: bool
    target_p95_ms: float
    cases: list[CaseResult] = field(default_factory=list)
    sqlite: Latency | None = None
    postgres: Latency | None = None
    plan: PlanSummary | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def equal(self) -> bool:
        return self.error is None and bool(self.cases) and all(c.equal for c in self.cases)

    @property
    def slow(self) -> bool:
        return self.postgres is not None and self.postgres.p95 > self.target_p95_ms

    @property
    def verdict(self) -> str:
        if self.error is not None or any(c.error for c in self.cases):
            return "error"
        if not self.equal:
            return "different"
        if self.slow:
            return "slow"
        return "ok"

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    @property
    def rows(self) -> tuple[int, int]:
        return sum(c.sqlite_rows for c in self.cases), sum(c.postgres_rows for c in self.cases)


@dataclass
class QueryReport:
    path: str
    queries: list[QueryResult] = field(default_factory=list)
    source_position: int | None = None
    target_position: int | None = None
    streaming: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.queries) and all(q.ok for q in self.queries)

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "different": 0, "slow": 0, "error": 0}
        for q in self.queries:
            out[q.verdict] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return (
            f"{len(self.queries)} queries: {c['ok']} ok, {c['different']} different, "
            f"{c['slow']} slow, {c['error']} failed"
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["summary"] = self.summary()
        for q, result in zip(out["queries"], self.queries, strict=True):
            q["verdict"] = result.verdict
            q["equal"] = result.equal
            q["slow"] = result.slow
            q["rows"] = {"sqlite": result.rows[0], "postgres": result.rows[1]}
        return out

    def render(self) -> str:
        head = (
            f"{'query':<34} {'rows':>13} {'equal':>5} {'SQLite p95':>11} "
            f"{'PG p95':>10} {'target':>8}  verdict"
        )
        lines = [head, "-" * len(head)]
        for q in self.queries:
            lite_rows, pg_rows = q.rows
            rows = str(lite_rows) if lite_rows == pg_rows else f"{lite_rows}/{pg_rows}"
            equal = "yes" if q.equal else ("-" if q.verdict == "error" else "NO")
            lines.append(
                f"{q.name[:34]:<34} {rows:>13} {equal:>5} {_ms(q.sqlite):>11} "
                f"{_ms(q.postgres):>10} {q.target_p95_ms:>6.0f}ms  "
                f"{q.verdict if q.ok else q.verdict.upper()}"
            )
        for q in self.queries:
            lines.extend(_details(q))
        verdict = "PASS" if self.ok else "FAIL"
        where = ""
        if self.streaming and self.source_position is not None:
            where = (
                f"; compared while streaming (source change-log head {self.source_position}, "
                f"target applied {self.target_position} at start)"
            )
        elif self.streaming:
            where = "; compared while streaming (cursor capture: no single position)"
        lines.append(f"verdict: {verdict}: {self.summary()}{where} ({self.seconds:.1f} s)")
        return "\n".join(lines)


def _ms(lat: Latency | None) -> str:
    if lat is None:
        return "-"
    return f"{lat.p95:.1f} ms" if lat.p95 < 1000 else f"{lat.p95 / 1000:.2f} s"


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no parameters"


def _details(q: QueryResult) -> list[str]:
    out: list[str] = []
    if q.error:
        out.append(f"{q.name}: error: {q.error}")
    for c in q.cases:
        where = f"{q.name} [{_params_text(c.params)}]"
        if c.error:
            out.append(f"{where}: error: {c.error}")
        elif c.difference is not None:
            d = c.difference
            at = ""
            if c.source_position is not None or c.target_position is not None:
                at = (
                    f" (source change-log head {c.source_position}, "
                    f"target applied {c.target_position})"
                )
            out.append(f"{where}: {d.summary}{at}")
            out.append(f"    SQLite:     {_rows_text(d.sqlite_rows)}")
            out.append(f"    PostgreSQL: {_rows_text(d.postgres_rows)}")
        elif c.in_flight:
            out.append(f"{where}: equal once in-flight changes were applied")
    if q.slow and q.postgres is not None:
        out.append(
            f"{q.name}: PostgreSQL p95 {q.postgres.p95:.1f} ms is over the target "
            f"{q.target_p95_ms:g} ms (p50 {q.postgres.p50:.1f}, p99 {q.postgres.p99:.1f}, "
            f"n={q.postgres.n}); SQLite p95 {_ms(q.sqlite)}"
        )
        if q.plan is not None:
            p = q.plan
            out.append(
                f"    plan for [{_params_text(p.params)}]: execution "
                f"{p.execution_ms or 0:.1f} ms, planning {p.planning_ms or 0:.1f} ms"
            )
            out.extend(f"      {line}" for line in p.lines)
            out.extend(f"    hint: {h}" for h in p.hints)
    for note in q.notes:
        out.append(f"{q.name}: note: {note}")
    return out


def _rows_text(rows: list[list[Any]]) -> str:
    if not rows:
        return "(none)"
    return " | ".join(json.dumps(r, ensure_ascii=False, default=str) for r in rows)


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

    def __init__(self, config: Config, settings: QuerySettings, *, measure: bool = True) -> None:
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
            self.conn.execute("SET TIME ZONE 'UTC'")
            self.conn.execute(
                sql.SQL("SET statement_timeout = {}").format(
                    sql.Literal(int(settings.statement_timeout_ms))
                )
            )
            self.conn.execute(sql.SQL("SET search_path TO {}").format(pg_ident(self.schema)))
            self.conn.read_only = True
            self.conn.isolation_level = IsolationLevel.REPEATABLE_READ
            self.has_changelog = changelog.changelog_exists(self.source)
            row = self.conn.execute(
                "SELECT to_regclass(format('%%I.stream_position', %s::text)) IS NOT NULL",
                (self.state_schema,),
            ).fetchone()
            self.has_position = bool(row and row[0])
            self.cursor_tables = self._cursor_tables()
        except psycopg.Error as exc:
            self.close()
            raise TargetError(f"cannot prepare the target session: {first_line(exc)}") from exc
        except BaseException:
            self.close()
            raise

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
            cur.execute(
                "SELECT to_regclass(format('%%I.cursor_position', %s::text)) IS NOT NULL",
                (self.state_schema,),
            )
            row = cur.fetchone()
            if not row or not row[0]:
                return 0
            cur.execute(
                sql.SQL("SELECT count(*) FROM {}").format(
                    pg_ident(self.state_schema, "cursor_position")
                )
            )
            found = cur.fetchone()
        return int(found[0]) if found else 0

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
        found = load_position(cur, self.state_schema)
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
            cur = self.source.execute(text, params)
            rows = cur.fetchall()
            names = [d[0] for d in cur.description or ()]
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
        return compare_rows(
            normalise_sqlite(pair.columns, pair.sqlite.rows),
            normalise_postgres(pair.columns, pair.postgres.rows),
            ordered=spec.ordered,
            key_idx=key_idx,
            tolerance=self.settings.float_tolerance,
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
        self, spec: QuerySpec, sets: Sequence[ParamSet]
    ) -> tuple[Latency, Latency, ParamSet]:
        """Interleaved timed runs, cycling through the parameter sets.

        The sides alternate which goes first so that neither always pays for
        the other's cache misses; the warm-up covers every parameter set (and
        psycopg's automatic prepare after five executions).
        """
        s = self.settings
        warmup = max(s.warmup, len(sets)) if s.warmup else 0
        for i in range(warmup):
            ps = sets[i % len(sets)]
            self._time_sqlite(spec, ps)
            self._time_postgres(spec, ps)
        lite: list[float] = []
        pg: list[float] = []
        pg_by_set: dict[int, list[float]] = {}
        started = time.monotonic()
        for i in range(s.runs):
            ps = sets[i % len(sets)]
            if i % 2:
                pg_ms = self._time_postgres(spec, ps)
                lite.append(self._time_sqlite(spec, ps))
            else:
                lite.append(self._time_sqlite(spec, ps))
                pg_ms = self._time_postgres(spec, ps)
            pg.append(pg_ms)
            pg_by_set.setdefault(ps.index, []).append(pg_ms)
            if time.monotonic() - started > s.max_seconds and i + 1 >= min(s.runs, MIN_SAMPLES):
                break
        slowest = max(pg_by_set, key=lambda k: percentile(sorted(pg_by_set[k]), 0.5))
        return Latency.of(lite), Latency.of(pg), sets[slowest]

    # -- plans ---------------------------------------------------------------------

    def explain(self, spec: QuerySpec, ps: ParamSet) -> PlanSummary:
        summary = PlanSummary(params=dict(ps.shown), execution_ms=None, planning_ms=None)
        try:
            with self.conn.transaction(), RawCursor(self.conn) as cur:
                cur.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + spec.postgres_sql, ps.postgres
                )
                row = cur.fetchone()
        except psycopg.Error as exc:
            if self.conn.broken:
                raise TargetError(f"lost the target connection: {first_line(exc)}") from exc
            summary.hints.append(f"EXPLAIN failed: {first_line(exc)}")
            return summary
        doc = row[0] if row else None
        if isinstance(doc, str):
            doc = json.loads(doc)
        if not isinstance(doc, list) or not doc:
            summary.hints.append("EXPLAIN returned no plan")
            return summary
        top = doc[0]
        summary.execution_ms = top.get("Execution Time")
        summary.planning_ms = top.get("Planning Time")
        nodes = list(_walk(top["Plan"], 0))
        for depth, node in nodes[:PLAN_LINES]:
            summary.lines.append("  " * depth + _node_text(node))
        if len(nodes) > PLAN_LINES:
            summary.lines.append(f"... {len(nodes) - PLAN_LINES} more node(s)")
        try:
            summary.sqlite_plan = self._sqlite_plan(spec, ps)
        except QueryError:
            summary.sqlite_plan = []
        summary.hints.extend(self._hints(spec, nodes, summary.sqlite_plan))
        return summary

    def _sqlite_plan(self, spec: QuerySpec, ps: ParamSet) -> list[str]:
        side = self.run_sqlite("EXPLAIN QUERY PLAN " + spec.sqlite_sql, dict(ps.sqlite))
        return [str(r[-1]) for r in side.rows]

    def _source_table(self, relation: str) -> str:
        for name, tc in self.config.table.items():
            if tc.target == relation:
                return name
        return relation

    def _pg_indexes(self, relation: str) -> list[tuple[str, tuple[str, ...]]]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT i.relname::text, ARRAY(SELECT a.attname::text"
                "   FROM unnest(x.indkey) WITH ORDINALITY k(n, o)"
                "   JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n"
                "   ORDER BY k.o)"
                " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_namespace ns ON ns.oid = t.relnamespace"
                " WHERE ns.nspname = %s AND t.relname = %s",
                (self.schema, relation),
            )
            return [(str(name), tuple(cols)) for name, cols in cur.fetchall()]

    def _table_stats(self, relation: str) -> tuple[float, bool] | None:
        """(estimated rows, ever analyzed) of a target table."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT c.reltuples::float8,"
                " (s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL)"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
                " WHERE n.nspname = %s AND c.relname = %s",
                (self.schema, relation),
            )
            row = cur.fetchone()
        return (float(row[0]), bool(row[1])) if row else None

    def _hints(
        self,
        spec: QuerySpec,
        nodes: Sequence[tuple[int, dict[str, Any]]],
        sqlite_plan: Sequence[str],
    ) -> list[str]:
        hints: list[str] = []
        sqlite_plan_text = "\n".join(sqlite_plan)
        seen: set[str] = set()
        limited = any(node.get("Node Type") == "Limit" for _, node in nodes)
        relations = dict.fromkeys(
            str(n["Relation Name"]) for _, n in nodes if n.get("Relation Name")
        )
        unanalyzed = [r for r in relations if (st := self._table_stats(r)) and not st[1]]
        if unanalyzed:
            names = ", ".join(unanalyzed)
            hints.append(
                f"never analyzed: {names}; the planner is guessing (right after a snapshot, "
                f"until autovacuum gets to it): run ANALYZE {names}"
            )
        for _depth, node in nodes:
            relation = node.get("Relation Name")
            if node.get("Sort Space Type") == "Disk":
                hints.append(
                    f"a sort spilled to disk ({node.get('Sort Space Used', '?')} kB): raise "
                    "work_mem or give PostgreSQL an index that matches the ORDER BY"
                )
            if limited and node.get("Node Type") == "Sort":
                hints.extend(self._sort_hint(node))
            if node.get("Node Type") != "Seq Scan" or not relation or relation in seen:
                continue
            seen.add(relation)
            loops = max(1, int(node.get("Actual Loops", 1)))
            scanned = (
                float(node.get("Actual Rows", 0)) + float(node.get("Rows Removed by Filter", 0))
            ) * loops
            stats = self._table_stats(relation)
            estimated = stats[0] if stats else 0.0
            if max(scanned, estimated) < self.settings.large_table_rows:
                continue
            filt = str(node.get("Filter", ""))
            times = f" over {loops} loops" if loops > 1 else ""
            hints.append(
                f"sequential scan on {relation} ({max(scanned, estimated):,.0f} rows read"
                f"{times}{'; filter ' + filt if filt else ''})"
            )
            hints.extend(self._missing_indexes(spec, relation, filt, sqlite_plan_text))
        return hints

    def _sort_hint(self, node: dict[str, Any]) -> list[str]:
        """A LIMIT over a sort of many rows: SQLite may be walking an index instead."""
        sorted_rows = sum(
            float(child.get("Actual Rows", 0)) * max(1, int(child.get("Actual Loops", 1)))
            for child in node.get("Plans", []) or []
        )
        if sorted_rows < self.settings.large_table_rows:
            return []
        keys = [str(k) for k in node.get("Sort Key", [])]
        hint = (
            f"PostgreSQL sorts {sorted_rows:,.0f} rows to return the first few (LIMIT, sort "
            f"key {', '.join(keys)}); an index whose order matches the ORDER BY lets it "
            "stop early, as SQLite may be doing"
        )
        odd = [k for k in keys if re.search(r"DESC NULLS LAST|(?<!DESC) NULLS FIRST", k)]
        if odd:
            hint += (
                f". {odd[0]} cannot use a plain index read backwards (that gives DESC NULLS "
                "FIRST): declare the index with the same NULLS order, or exclude NULLs "
                "in the query and drop the NULLS clause"
            )
        return [hint]

    def _missing_indexes(
        self, spec: QuerySpec, relation: str, filt: str, sqlite_plan: str
    ) -> list[str]:
        try:
            table = describe_table(self.source, self._source_table(relation))
        except SourceError:
            return []
        pg_indexes = self._pg_indexes(relation)
        out = []
        for idx in table.indexes:
            if idx.origin == "pk" or not idx.columns:
                continue
            lead = idx.columns[0]
            if any(cols and cols[0] == lead for _, cols in pg_indexes):
                continue
            used_by_sqlite = re.search(rf"\b{re.escape(idx.name)}\b", sqlite_plan) is not None
            pattern = rf"\b{re.escape(lead)}\b"
            in_filter = re.search(pattern, filt, re.IGNORECASE) is not None
            in_query = re.search(pattern, spec.postgres_text, re.IGNORECASE) is not None
            if not (used_by_sqlite or in_filter or in_query):
                continue
            why = (
                "SQLite's plan uses it"
                if used_by_sqlite
                else f"the {'filter' if in_filter else 'query'} uses {lead}"
            )
            out.append(
                f"SQLite has index {idx.name} on {table.name}({', '.join(idx.columns)}) and "
                f"PostgreSQL has no index on {relation} starting with {lead} ({why}); "
                f"consider CREATE INDEX ON {relation} ({', '.join(idx.columns)})"
            )
        return out

    # -- one query ---------------------------------------------------------------------

    def check(self, spec: QuerySpec) -> QueryResult:
        target = spec.target_p95_ms or self.settings.target_p95_ms
        result = QueryResult(
            name=spec.name,
            description=spec.description,
            ordered=spec.ordered,
            target_p95_ms=target,
            notes=list(spec.notes),
        )
        sets = spec.param_sets()
        for ps in sets:
            result.cases.append(self.check_case(spec, ps, result.notes))
        if not self.measure or any(c.error for c in result.cases):
            return result
        try:
            result.sqlite, result.postgres, slowest = self.measure_latency(spec, sets)
        except QueryError as exc:
            result.error = f"while timing: {exc}"
            return result
        if result.slow:
            result.plan = self.explain(spec, slowest)
        if result.sqlite is not None and result.sqlite.p95 > target and result.slow:
            result.notes.append("already over the target on SQLite")
        return result


def _walk(node: dict[str, Any], depth: int) -> Iterator[tuple[int, dict[str, Any]]]:
    yield depth, node
    for child in node.get("Plans", []) or []:
        yield from _walk(child, depth + 1)


def _node_text(node: dict[str, Any]) -> str:
    text = str(node.get("Node Type", "?"))
    if node.get("Relation Name"):
        text += f" on {node['Relation Name']}"
    if node.get("Index Name"):
        text += f" using {node['Index Name']}"
    rows = node.get("Actual Rows")
    loops = node.get("Actual Loops")
    ms = node.get("Actual Total Time")
    parts = []
    if rows is not None:
        parts.append(f"rows={rows}" + (f" x{loops} loops" if loops and loops != 1 else ""))
    if ms is not None:
        parts.append(f"{ms:.1f} ms")
    hit, read = node.get("Shared Hit Blocks"), node.get("Shared Read Blocks")
    if hit is not None or read is not None:
        parts.append(f"buffers hit={hit or 0} read={read or 0}")
    if node.get("Rows Removed by Filter"):
        parts.append(f"removed by filter={node['Rows Removed by Filter']}")
    return f"{text} ({', '.join(parts)})" if parts else text


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
    )
    specs = qfile.select(only)
    report = QueryReport(path=str(path), settings=asdict(settings))
    with QueryChecker(config, settings, measure=measure) as checker:
        report.streaming = checker.streaming
        report.source_position, report.target_position = checker.positions()
        for spec in specs:
            report.queries.append(checker.check(spec))
    report.seconds = time.monotonic() - started
    return report
