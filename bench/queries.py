#!/usr/bin/env python3
"""Query parity and latency: the reference app's queries on SQLite and on PostgreSQL.

    python bench/queries.py [--artifacts 50000] [--runs 200] [--warmup 10]
                            [--rounds 5] [--clients 4] [--load-runs 10]
                            [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                            [--out docs/benchmarks.md] [--no-write] [--keep]

One run:

1. takes the cached reference-app database of ``--artifacts`` artifacts (no bad
   values; generated under ``bench/out/`` when missing);
2. creates ``bench_queries`` with the app's PostgreSQL schema and replicates the
   database into it with the replicator's own snapshot (in this process);
3. runs ``config/reference-app-queries.toml`` through
   :func:`replicator.queries.checker.check_queries` twice: first as the snapshot left
   the target (autovacuum switched off on the app's tables so that it cannot
   analyze them half-way), then after ``ANALYZE``;
4. runs the variants below (other forms of the same questions) after ANALYZE;
5. rewrites the "Query parity" section of ``docs/benchmarks.md``.

Latency is per execution as the client sees it (execute and fetch every row),
both sides interleaved, cycling through each query's parameter sets in rounds;
each query is judged by its worst parameter set and the spread of that set's
per-round p95. A load run per query (``--clients`` connections per side at
once) gives throughput and p95 under load. The CPU other processes used during
each phase is sampled from ``/proc`` and reported.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

bl.ensure_venv()

from replicator.config import load_config  # noqa: E402
from replicator.queries import QueryReport, QueryResult, check_queries  # noqa: E402
from replicator.snapshot import ProgressDisplay, Snapshotter  # noqa: E402

DBNAME = "bench_queries"
QUERIES = bl.REPO / "config" / "reference-app-queries.toml"
CONFIG = bl.REPO / "config" / "reference-app.toml"
APP_TABLES = bl.REPLICATED_TABLES

VARIANTS = """
# Other forms of reference queries, to measure what the comments in
# config/reference-app-queries.toml claim.

[[query]]
name = "top_by_score_nulls_last"
description = "The discovery feed keeping unscored artifacts, last (DESC NULLS LAST)."
sqlite = '''
SELECT a.id, a.source, a.title, a.published_at, s.discovery_score
FROM artifacts AS a JOIN artifact_scores AS s ON s.artifact_id = a.id
WHERE julianday(a.published_at) >= julianday(:since)
  AND julianday(a.published_at) < julianday(:until)
ORDER BY s.discovery_score DESC, a.id
LIMIT :limit
'''
postgres = '''
SELECT a.id, a.source, a.title, a.published_at, s.discovery_score
FROM artifacts AS a JOIN artifact_scores AS s ON s.artifact_id = a.id
WHERE a.published_at >= :since AND a.published_at < :until
ORDER BY s.discovery_score DESC NULLS LAST, a.id
LIMIT :limit
'''
accept = ["type_drift:published_at"]  # as in the reference file
[query.params]
since.type = "timestamp"
since.values = ["2025-10-01T00:00:00Z", "2025-06-01 00:00:00", "2024-01-01T00:00:00Z"]
until.type = "timestamp"
until.values = ["2025-11-01T00:00:00Z", "2025-09-01 00:00:00", "2026-01-01T00:00:00Z"]
limit = 50

[[query]]
name = "window_as_text"
description = "A time window compared as text, as a SQLite-era query might."
sqlite = "SELECT count(*) FROM artifacts WHERE published_at >= :since AND published_at < :until"
postgres = "SELECT count(*) FROM artifacts WHERE published_at >= :since AND published_at < :until"
[query.params]
since = { type = "timestamp", values = ["2025-10-01T00:00:00Z", "2025-06-01 00:00:00"] }
until = { type = "timestamp", values = ["2025-11-01T00:00:00Z", "2025-09-01 00:00:00"] }
"""


def set_autovacuum(dsn: str, enabled: bool) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in APP_TABLES:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = {})").format(
                    sql.Identifier(table), sql.SQL("on" if enabled else "off")
                )
            )


def analyze(dsn: str) -> float:
    import psycopg

    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return time.monotonic() - started


def never_analyzed(dsn: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname::text FROM pg_stat_user_tables WHERE schemaname = 'public'"
            " AND relname = ANY(%s) AND last_analyze IS NULL AND last_autoanalyze IS NULL"
            " ORDER BY 1",
            (list(APP_TABLES),),
        ).fetchall()
    return [r[0] for r in rows]


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def run_check(path: Path, config: object, args: argparse.Namespace) -> QueryReport:
    return check_queries(
        config,  # type: ignore[arg-type]
        path,
        runs=args.runs,
        warmup=args.warmup,
        max_seconds=args.max_seconds,
        rounds=args.rounds,
        clients=args.clients,
        load_runs=args.load_runs,
    )


def worst_text(q: QueryResult) -> str:
    """The worst set's p95 and the min / median / max of its per-round p95."""
    if q.latency is None:
        return "-"
    worst = q.latency.worst
    lo, mid, hi = worst.spread
    return f"{ms(worst.postgres.p95)} ({ms(lo)} / {ms(mid)} / {ms(hi)}, {q.latency.band})"


def load_text(q: QueryResult) -> str:
    load = q.load
    if load is None or load.sqlite is None or load.postgres is None:
        return "-"
    parts = []
    for side in (load.sqlite, load.postgres):
        p95 = side.latency.p95 if side.latency else None
        parts.append(f"{side.qps:,.0f} q/s, {ms(p95)}")
    return " / ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per query and side")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="rounds the timed runs are split in")
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent clients per side in the load run"
    )
    parser.add_argument("--load-runs", type=int, default=10, help="executions per load client")
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="time budget per query (both sides)"
    )
    parser.add_argument("--dsn", default=bl.DEFAULT_DSN, help="an admin DSN (may CREATE DATABASE)")
    parser.add_argument("--out", type=Path, default=bl.REPO / "docs" / "benchmarks.md")
    parser.add_argument("--keep", action="store_true", help=f"keep the {DBNAME} database")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()

    bl.OUT.mkdir(parents=True, exist_ok=True)
    info = bl.machine_info(args.dsn)
    source = bl.reference_db(args.artifacts, args.seed, bad_values=False)
    dsn = bl.recreate_database(args.dsn, DBNAME)
    bl.apply_reference_schema(dsn)
    set_autovacuum(dsn, enabled=False)
    config = load_config(
        CONFIG,
        env={"DATABASE_PATH": str(source), "DATABASE_URL": dsn},
        overrides={"metrics.address": ""},
    )
    bl.log(f"replicating {source.name} into {DBNAME} ...")
    started = time.monotonic()
    summary = Snapshotter(config, display=ProgressDisplay(io.StringIO())).run()
    snapshot_s = time.monotonic() - started
    rows = sum(t.rows_written for t in summary.tables)
    bl.log(f"replicated {rows:,} rows in {snapshot_s:.0f} s")
    unanalyzed = never_analyzed(dsn)

    sampler = bl.LoadSampler().start()
    try:
        bl.log("phase 1: as the snapshot left the target (no ANALYZE)")
        with sampler.window("fresh") as fresh_load:
            fresh = run_check(QUERIES, config, args)
        analyze_s = analyze(dsn)
        set_autovacuum(dsn, enabled=True)
        bl.log(f"ANALYZE took {analyze_s:.1f} s; phase 2: after ANALYZE")
        with sampler.window("analyzed") as analyzed_load:
            analyzed = run_check(QUERIES, config, args)
        variants_path = bl.OUT / "queries-variants.toml"
        variants_path.write_text(VARIANTS)
        bl.log("phase 3: variants")
        with sampler.window("variants") as variants_load:
            variants = run_check(variants_path, config, args)
    finally:
        sampler.stop()
        if not args.keep:
            bl.drop_database(args.dsn, DBNAME)

    for name, report in (("fresh", fresh), ("analyzed", analyzed), ("variants", variants)):
        (bl.OUT / f"queries-{name}.txt").write_text(report.render() + "\n")

    fresh_by_name = {q.name: q for q in fresh.queries}
    lines = ["## Query parity", ""]
    lines += bl.machine_lines(info)
    lines += [
        "",
        f"Command: `python bench/queries.py --artifacts {args.artifacts} --runs {args.runs} "
        f"--warmup {args.warmup} --rounds {args.rounds} --clients {args.clients} "
        f"--load-runs {args.load_runs}` "
        "(`replicator queries check` on "
        "`config/reference-app-queries.toml`, in process).",
        "",
        f"Source: `{source.name}`, {args.artifacts:,} artifacts, no bad values, {rows:,} rows "
        f"replicated by the replicator's snapshot in {snapshot_s:.0f} s. Latency is per "
        "execution as the client sees it (execute and fetch every row), in ms; both sides "
        "interleaved, cycling through each query's parameter sets; n timed runs per side after "
        f"{args.warmup} warm-up runs, in up to {args.rounds} rounds. *Worst set* is the "
        "PostgreSQL p95 of the query's slowest parameter set, with the min / median / max of "
        "its per-round p95 and its band (ok, near, slow). *Under load*: "
        f"{args.clients} clients per side at once, {args.load_runs} runs each; throughput and "
        "p95, SQLite / PostgreSQL. Target: PostgreSQL p95 under "
        f"{analyzed.settings['target_p95_ms']:g} ms.",
        "",
    ]
    headers = [
        "query",
        "param sets",
        "rows (all sets)",
        "equal",
        "n",
        "SQLite p50 / p95 / p99",
        "PostgreSQL p50 / p95 / p99",
        "worst set (rounds)",
        "under load",
        "PG p95 before ANALYZE",
        "verdict",
    ]
    body = []
    for q in analyzed.queries:
        before = fresh_by_name.get(q.name)
        lite, pg = q.sqlite, q.postgres
        body.append(
            [
                f"`{q.name}`",
                str(len(q.cases)),
                f"{q.rows[0]:,}" if q.rows[0] == q.rows[1] else f"{q.rows[0]:,} / {q.rows[1]:,}",
                "yes" if q.equal else "**no**",
                str(pg.n if pg else 0),
                f"{ms(lite.p50)} / {ms(lite.p95)} / {ms(lite.p99)}" if lite else "-",
                f"{ms(pg.p50)} / {ms(pg.p95)} / {ms(pg.p99)}" if pg else "-",
                worst_text(q),
                load_text(q),
                (
                    f"{ms(before.postgres.p95)}{' (slow)' if before.slow else ''}"
                    if before and before.postgres
                    else "-"
                ),
                q.verdict if q.ok else f"**{q.verdict}**",
            ]
        )
    lines += bl.table(headers, body)
    lines += [
        "",
        f"Verdict after ANALYZE: {'PASS' if analyzed.ok else '**FAIL**'} ({analyzed.summary()}); "
        f"straight after the snapshot: {'PASS' if fresh.ok else '**FAIL**'} ({fresh.summary()}). "
        f"Tables the snapshot left without planner statistics: "
        f"{', '.join(unanalyzed) if unanalyzed else 'none'}; ANALYZE took {analyze_s:.1f} s.",
        "*PG p95 before ANALYZE* is the same check straight after the snapshot, with "
        "autovacuum held off so that the planner has no statistics; the snapshot does not "
        "ANALYZE, so the cutover runbook should (or wait for autovacuum).",
        "",
        "Variants (after ANALYZE), other forms of the same questions:",
        "",
    ]
    vbody = []
    for q in variants.queries:
        lite, pg = q.sqlite, q.postgres
        first = next((c.difference.summary for c in q.cases if c.difference), "")
        vbody.append(
            [
                f"`{q.name}`",
                q.description,
                "yes" if q.equal else f"**no**: {first}",
                f"{ms(lite.p95)}" if lite else "-",
                f"{ms(pg.p95)}" if pg else "-",
                q.verdict if q.ok else f"**{q.verdict}**",
            ]
        )
    lines += bl.table(["query", "what", "equal", "SQLite p95", "PostgreSQL p95", "verdict"], vbody)
    slow_hints = [
        f"- `{q.name}`: {hint}"
        for q in [*fresh.queries, *variants.queries]
        if q.plan is not None
        for hint in q.plan.hints[:3]
    ]
    if slow_hints:
        lines += ["", "Hints the check printed for the slow ones:", "", *slow_hints]
    advice = [
        f"- `{q.name}`: {a.reason}: `{' '.join(a.statements)}`"
        for q in analyzed.queries
        for a in q.advice
    ]
    if advice:
        lines += ["", "Plan advice after ANALYZE (printed, not applied):", "", *advice]
    ports = [
        f"- `{q.name}`: {q.port.verdict}: `{q.port.suggested}`"
        for q in analyzed.queries
        if q.port is not None
    ]
    if ports:
        lines += ["", "Suggested PostgreSQL forms (sqlglot) of queries given only for SQLite:", ""]
        lines += ports
    lines += [
        "",
        f"Load: before ANALYZE {fresh_load.describe()}; after ANALYZE "
        f"{analyzed_load.describe()}; variants {variants_load.describe()}. Full reports: "
        "`bench/out/queries-{fresh,analyzed,variants}.txt`.",
    ]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        bl.write_section(args.out, "queries", section)
        bl.log(f"wrote the query parity section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
