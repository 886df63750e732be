"""What a query check found, per query and per parameter set, and how it is shown.

The same report is rendered as a table with details for people and as JSON
for scripts (its fields are documented in ``docs/queries.md``); a query's
verdict is one of :data:`replicator.queries.verdicts.VERDICTS` (``same``,
``different``, ``type_drift``, ``order_not_guaranteed``, ``vacuous``,
``slow``, ``error``), and the report passes only when every query is
``same``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from replicator.queries.compare import Difference
from replicator.queries.drift import TypeDrift, merge_drift
from replicator.queries.verdicts import VERDICTS

if TYPE_CHECKING:  # these modules build on this one; their results are held here
    from replicator.queries.advice import Advice
    from replicator.queries.latency import LatencyProfile
    from replicator.queries.load import LoadResult
    from replicator.queries.port import PortResult

__all__ = [
    "CaseResult",
    "Latency",
    "PlanSummary",
    "QueryReport",
    "QueryResult",
    "percentile",
]

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
    type_drift: list[TypeDrift] = field(default_factory=list)
    vacuous: bool = False  # no rows, or only NULLs, on either side
    order_differs: bool = False  # same rows, in an order nothing in the query fixes
    order_hint: str | None = None  # the ORDER BY that would fix it
    order_detail: str | None = None  # how the order differs


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
    latency: LatencyProfile | None = None  # per parameter set, in rounds
    load: LoadResult | None = None  # under concurrent clients
    advice: list[Advice] = field(default_factory=list)
    port: PortResult | None = None  # sqlglot's form, when the file gives no PostgreSQL form
    accept: list[str] = field(default_factory=list)  # verdicts shown but not failed

    @property
    def type_drift(self) -> list[TypeDrift]:
        """Per column over all parameter sets, each marked accepted or not."""
        return merge_drift([c.type_drift for c in self.cases], self.accept)

    @property
    def order_differs(self) -> bool:
        return any(c.order_differs for c in self.cases)

    @property
    def vacuous(self) -> bool:
        return bool(self.cases) and all(c.vacuous for c in self.cases)

    @property
    def equal(self) -> bool:
        return self.error is None and bool(self.cases) and all(c.equal for c in self.cases)

    @property
    def slow(self) -> bool:
        """Its worst parameter set missed the target in every round, or it did under load."""
        if self.load is not None and self.load.over_target:
            return True
        if self.latency is not None:
            return self.latency.band == "slow"
        return self.postgres is not None and self.postgres.p95 > self.target_p95_ms

    @property
    def near_target(self) -> bool:
        """Its worst set's per-round p95 (or, under load, its per-client p95) straddles the
        target: neither a pass nor a miss."""
        if self.slow:
            return False
        alone = self.latency is not None and self.latency.band == "near"
        return alone or (self.load is not None and self.load.band == "near")

    @property
    def verdict(self) -> str:
        if self.error is not None or any(c.error for c in self.cases):
            return "error"
        if not self.equal:
            return "different"
        if any(not d.accepted for d in self.type_drift):
            return "type_drift"
        if self.order_differs and "order" not in self.accept:
            return "order_not_guaranteed"
        if self.vacuous and "vacuous" not in self.accept:
            return "vacuous"
        if self.slow:
            return "slow"
        if self.near_target:
            return "near_target"
        return "same"

    @property
    def ok(self) -> bool:
        return self.verdict == "same"

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
    session: dict[str, str] = field(default_factory=dict)  # PostgreSQL settings in force

    @property
    def ok(self) -> bool:
        return bool(self.queries) and all(q.ok for q in self.queries)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for q in self.queries:
            out[q.verdict] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        shown = [f"{c['same']} same", f"{c['different']} different"]
        shown += [f"{c[v]} {_verdict_text(v)}" for v in _RARE_VERDICTS if c[v]]
        shown += [
            f"{c['slow']} slow",
            f"{c['near_target']} near the target",
            f"{c['error']} failed",
        ]
        return f"{len(self.queries)} queries: " + ", ".join(shown)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["summary"] = self.summary()
        for q, result in zip(out["queries"], self.queries, strict=True):
            q["verdict"] = result.verdict
            q["equal"] = result.equal
            q["slow"] = result.slow
            q["type_drift"] = [asdict(d) for d in result.type_drift]
            q["order_not_guaranteed"] = result.order_differs
            q["vacuous"] = result.vacuous
            q["rows"] = {"sqlite": result.rows[0], "postgres": result.rows[1]}
            q["near_target"] = result.near_target
            if result.latency is not None:
                q["latency"] = {**q["latency"], **result.latency.to_json()}
            if result.port is not None:
                q["port"]["verdict"] = result.port.verdict
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
                f"{_worst_ms(q):>10} {q.target_p95_ms:>6g}ms  "
                f"{_verdict_shown(q)}"
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
        if self.session:
            lines.append(
                "PostgreSQL session: " + ", ".join(f"{k}={v}" for k, v in self.session.items())
            )
        lines.append(f"verdict: {verdict}: {self.summary()}{where} ({self.seconds:.1f} s)")
        return "\n".join(lines)


_RARE_VERDICTS = ("type_drift", "order_not_guaranteed", "vacuous")


def _verdict_text(verdict: str) -> str:
    return verdict.replace("_", " ")


def _verdict_shown(q: QueryResult) -> str:
    if not q.ok:
        shown = _verdict_text(q.verdict).upper()
        # One verdict per query, the most serious; a latency miss behind it
        # is said here too, or the summary's "0 slow" would read as none.
        if q.verdict not in ("error", "slow", "near_target"):
            if q.slow:
                shown += " (also slow)"
            elif q.near_target:
                shown += " (also near target)"
        return shown
    accepted = []
    if q.type_drift:
        accepted.append("type drift")
    if q.order_differs:
        accepted.append("order")
    if q.vacuous:
        accepted.append("vacuous")
    return "same" + (f" (accepted: {', '.join(accepted)})" if accepted else "")


def _worst_ms(q: QueryResult) -> str:
    """The worst parameter set's PostgreSQL p95: a pooled p95 hides a slow set."""
    if q.latency is None:
        return _ms(q.postgres)
    return _ms(q.latency.worst.postgres)


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
            out.extend(_side_lines("SQLite:    ", d.sqlite_rows, d.sqlite_notes))
            out.extend(_side_lines("PostgreSQL:", d.postgres_rows, d.postgres_notes))
        elif c.in_flight:
            out.append(f"{where}: equal once in-flight changes were applied")
        if c.order_differs:
            fix = f"; {c.order_hint} would make it deterministic" if c.order_hint else ""
            accepted = " (accepted)" if "order" in q.accept else ""
            out.append(f"{where}: order not guaranteed{accepted}: {c.order_detail}{fix}")
        if c.vacuous and len(q.cases) > 1 and not q.vacuous:
            out.append(f"{where}: {_nothing(c)} on either side (this set exercises nothing)")
    if q.vacuous:
        accepted = " (accepted)" if "vacuous" in q.accept else ""
        out.append(
            f"{q.name}: vacuous{accepted}: {_nothing(*q.cases)} on either side for any "
            "parameter set; "
            "the sample data does not exercise this query"
        )
    for drift in q.type_drift:
        out.append(
            f"{q.name}: type drift{' (accepted)' if drift.accepted else ''} in column "
            f"{drift.column}: SQLite returns {drift.sqlite_type} ({drift.sqlite_example}), "
            f"PostgreSQL {drift.postgres_type} ({drift.postgres_example})"
        )
    if q.latency is not None and (
        q.slow or q.near_target or q.latency.cut_short or len(q.latency.sets) > 1
    ):
        out.extend(q.latency.lines(q.name))
    elif q.slow and q.postgres is not None:
        out.append(
            f"{q.name}: PostgreSQL p95 {q.postgres.p95:.1f} ms is over the target "
            f"{q.target_p95_ms:g} ms (p50 {q.postgres.p50:.1f}, p99 {q.postgres.p99:.1f}, "
            f"n={q.postgres.n}); SQLite p95 {_ms(q.sqlite)}"
        )
    if q.load is not None:
        out.extend(q.load.lines(q.name))
    if q.plan is not None:
        p = q.plan
        out.append(
            f"    plan for [{_params_text(p.params)}]: execution "
            f"{p.execution_ms or 0:.1f} ms, planning {p.planning_ms or 0:.1f} ms"
        )
        out.extend(f"      {line}" for line in p.lines)
        out.extend(f"    hint: {h}" for h in p.hints)
    for advice in q.advice:
        out.extend(advice.lines(q.name))
    if q.port is not None:
        out.extend(q.port.lines(q.name))
    for note in q.notes:
        out.append(f"{q.name}: note: {note}")
    return out


def _nothing(*cases: CaseResult) -> str:
    """How a vacuous answer looks: no rows, or rows of NULLs only (an aggregate
    such as max() over no rows)."""
    return "no rows" if all(c.sqlite_rows == 0 for c in cases) else "no rows or only NULLs"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _side_lines(label: str, rows: list[list[Any]], notes: list[str | None]) -> list[str]:
    if not any(notes):
        return [f"    {label} {_rows_text(rows)}"]
    out = []
    for i, (row, note) in enumerate(zip(rows, notes, strict=True)):
        head = label if i == 0 else " " * len(label)
        out.append(f"    {head} {_json(row)}" + (f"  <- {note}" if note else ""))
    return out


def _rows_text(rows: list[list[Any]]) -> str:
    if not rows:
        return "(none)"
    return " | ".join(json.dumps(r, ensure_ascii=False, default=str) for r in rows)
