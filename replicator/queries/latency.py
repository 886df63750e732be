"""Latency per parameter set, in rounds, with a verdict that does not flip between runs.

Pooling every timed run of a query hides a slow parameter set: twenty fast
sets and one that takes 66 ms give a pooled p95 under a 20 ms target, since
the slow set is under 5 % of the samples. So each set keeps its own samples
and its own p95, and the query is judged by its worst set.

One measurement of a p95 near the target lands on either side of it from run
to run. The timed runs are therefore split into rounds, each round timing
every parameter set at least once, and each set's p95 is taken per round as
well. The spread of those per-round p95s (min, median, max) is the noise the
verdict must survive: a set is ``ok`` when every round met the target,
``slow`` when no round did, and ``near`` when the spread straddles the target.
The same machine and load then give the same verdict.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from replicator.queries.report import Latency, percentile
from replicator.queries.spec import ParamSet, QuerySettings

__all__ = [
    "MIN_SAMPLES",
    "Band",
    "LatencyProfile",
    "SetLatency",
    "band_of",
    "measure_sets",
    "schedule",
]

MIN_SAMPLES = 5  # timed runs per side even when the time budget is spent

Band = Literal["ok", "near", "slow"]
_RANK: dict[str, int] = {"ok": 0, "near": 1, "slow": 2}


def band_of(round_p95s: Sequence[float], target_ms: float) -> Band:
    """``ok`` when every round met the target, ``slow`` when none did, else ``near``."""
    if not round_p95s:
        raise ValueError("no rounds")
    if max(round_p95s) <= target_ms:
        return "ok"
    if min(round_p95s) > target_ms:
        return "slow"
    return "near"


def schedule(n_sets: int, runs: int, rounds: int) -> list[list[int]]:
    """Parameter-set indexes to time, round by round.

    ``runs`` timed runs (at least one per set) cycle through the sets; whole
    cycles are shared out over at most ``rounds`` rounds, so every round times
    every set, and the runs left over join the last round.
    """
    if n_sets < 1:
        raise ValueError("no parameter sets")
    total = max(runs, n_sets)
    cycles, extra = divmod(total, n_sets)
    count = max(1, min(rounds, cycles))
    out = []
    for r in range(count):
        first, last = r * cycles // count, (r + 1) * cycles // count
        out.append([i % n_sets for i in range(first * n_sets, last * n_sets)])
    out[-1].extend(range(extra))
    return out


@dataclass
class SetLatency:
    """One parameter set's timings: pooled per side, and PostgreSQL's p95 per round."""

    index: int
    params: dict[str, Any]
    sqlite: Latency
    postgres: Latency
    round_p95: list[float]  # PostgreSQL p95 of each round, in round order
    band: Band

    @property
    def spread(self) -> tuple[float, float, float]:
        """min, median and max of the per-round PostgreSQL p95."""
        r = self.round_p95
        return min(r), statistics.median(r), max(r)


@dataclass
class LatencyProfile:
    """Every parameter set of one query, the worst of them and the query's band."""

    target_ms: float
    rounds: int  # rounds timed (fewer than planned when the time budget ran out)
    planned_rounds: int
    runs: int = 0  # timed runs per side
    planned_runs: int = 0
    sets: list[SetLatency] = field(default_factory=list)

    @property
    def worst(self) -> SetLatency:
        """The set with the worst band; among equals, the highest median per-round p95."""
        return max(self.sets, key=lambda s: (_RANK[s.band], s.spread[1], s.postgres.p95))

    @property
    def band(self) -> Band:
        return self.worst.band

    @property
    def cut_short(self) -> bool:
        return self.runs < self.planned_runs

    def to_json(self) -> dict[str, Any]:
        worst = self.worst
        lo, mid, hi = worst.spread
        return {
            "band": self.band,
            "rounds": self.rounds,
            "planned_rounds": self.planned_rounds,
            "cut_short": self.cut_short,
            "worst_set": worst.index,
            "worst_params": worst.params,
            "worst_p95": worst.postgres.p95,
            "worst_round_p95": {"min": lo, "median": mid, "max": hi},
        }

    def lines(self, name: str) -> list[str]:
        """The details a person reads: the worst set, its spread, and the other sets' bands."""
        worst = self.worst
        lo, mid, hi = worst.spread
        params = ", ".join(f"{k}={v!r}" for k, v in worst.params.items()) or "no parameters"
        what = {
            "ok": "within",
            "near": "near (the rounds straddle it)",
            "slow": "over",
        }[worst.band]
        out = [
            f"{name}: worst parameter set [{params}]: PostgreSQL p95 {worst.postgres.p95:.1f} ms "
            f"(n={worst.postgres.n}), per-round p95 min {lo:.1f} / median {mid:.1f} / max "
            f"{hi:.1f} ms over {len(worst.round_p95)} round(s): {what} the target "
            f"{self.target_ms:g} ms; SQLite p95 {worst.sqlite.p95:.1f} ms"
        ]
        others = [s for s in self.sets if s is not worst and s.band != "ok"]
        if others:
            out.append(
                f"{name}: also {', '.join(f'set #{s.index} {s.band}' for s in others[:8])}"
                + (f" and {len(others) - 8} more" if len(others) > 8 else "")
            )
        if self.cut_short:
            out.append(
                f"{name}: the time budget (max_seconds) ended timing after {self.runs} of "
                f"{self.planned_runs} runs ({self.rounds} of {self.planned_rounds} rounds begun): "
                "the spread is less certain"
            )
        return out


def measure_sets(
    sets: Sequence[ParamSet],
    settings: QuerySettings,
    target_ms: float,
    time_sqlite: Callable[[ParamSet], float],
    time_postgres: Callable[[ParamSet], float],
) -> tuple[Latency, Latency, LatencyProfile]:
    """Warm up, then time both sides round by round; pooled latencies and the profile.

    The sides alternate which goes first so that neither always pays for the
    other's cache misses; the warm-up covers every parameter set (and
    psycopg's automatic prepare after five executions). The time budget may
    end timing early, but never before every set was timed once (the first
    ``len(sets)`` runs are one whole cycle).
    """
    warmup = max(settings.warmup, len(sets)) if settings.warmup else 0
    for i in range(warmup):
        ps = sets[i % len(sets)]
        time_sqlite(ps)
        time_postgres(ps)
    plan = schedule(len(sets), settings.runs, settings.rounds)
    lite: dict[int, list[list[float]]] = {i: [] for i in range(len(sets))}
    pg: dict[int, list[list[float]]] = {i: [] for i in range(len(sets))}
    started = time.monotonic()
    done = 0
    rounds = 0
    enough = max(MIN_SAMPLES, len(sets))
    over = False
    for r, order in enumerate(plan):
        if over:
            break
        for i in range(len(sets)):
            lite[i].append([])
            pg[i].append([])
        rounds += 1
        for k in order:
            ps = sets[k]
            if done % 2:
                pg_ms = time_postgres(ps)
                lite_ms = time_sqlite(ps)
            else:
                lite_ms = time_sqlite(ps)
                pg_ms = time_postgres(ps)
            lite[k][r].append(lite_ms)
            pg[k][r].append(pg_ms)
            done += 1
            if done >= enough and time.monotonic() - started > settings.max_seconds:
                over = True
                break
    profile = LatencyProfile(
        target_ms=target_ms,
        rounds=rounds,
        planned_rounds=len(plan),
        runs=done,
        planned_runs=sum(len(order) for order in plan),
    )
    for i, ps in enumerate(sets):
        per_round = [sorted(r) for r in pg[i] if r]
        round_p95 = [percentile(r, 0.95) for r in per_round]
        profile.sets.append(
            SetLatency(
                index=ps.index,
                params=dict(ps.shown),
                sqlite=Latency.of([ms for r in lite[i] for ms in r]),
                postgres=Latency.of([ms for r in per_round for ms in r]),
                round_p95=round_p95,
                band=band_of(round_p95, target_ms),
            )
        )
    pooled_lite = [ms for rs in lite.values() for r in rs for ms in r]
    pooled_pg = [ms for rs in pg.values() for r in rs for ms in r]
    return Latency.of(pooled_lite), Latency.of(pooled_pg), profile
