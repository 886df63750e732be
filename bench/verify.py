"""Cost of `replicator verify` against the snapshot of the same database, in one run.

    python bench/verify.py --schema light       # 3.5M rows (bench/schemas.py light_db)
    python bench/verify.py --schema reference   # the reference app, --artifacts 1000000
    python bench/verify.py --schema light --artifacts 20000 --scores 40000 --tweets 10000 \\
        --no-write                              # a quick run

Each run copies the cached source (bench/out, generated when missing) so that the
cache is never written, creates a fresh database ``bench_verify`` with the
schema's own tables, installs change capture (`replicator init`), then measures,
one after the other:

snapshot
    `replicator snapshot` of every table: wall time, rows/s, CPU, peak RSS.
verify
    `replicator verify` (chunk digests computed by each database, rows compared
    exactly only where digests differ): wall, rows/s, the replicator's CPU seconds
    (user + sys, its threads included), peak RSS.
verify --exact
    (with ``--exact``) the same, every row read and compared in Python.
verify --changed
    after ``--changes`` rows were updated in the source and streamed by
    `replicator run`: the incremental verify, with the rows it read.

The replicator's CPU seconds and peak RSS come from GNU time (``/usr/bin/time``);
the machine's load (``uptime``) is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

bl.ensure_venv()

import schemas  # noqa: E402


@dataclass
class Step:
    name: str
    wall: float
    cpu: float
    peak_mb: int
    code: int
    output: str

    def rate(self, rows: int) -> float:
        return rows / self.wall if self.wall else 0.0


def replicator() -> list[str]:
    """This checkout's replicator (PYTHONPATH set by :func:`environment`)."""
    return [sys.executable, "-m", "replicator.cli"]


def timed(name: str, args: list[str], env: dict[str, str]) -> Step:
    """Run the replicator under GNU time: wall, user + sys seconds, peak RSS."""
    bl.log(f"{name} ...")
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "bench_time user=%U sys=%S maxrss_kb=%M", *replicator(), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    if proc.returncode not in (0, 1):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    stats = dict(kv.split("=") for kv in proc.stderr.rsplit("bench_time ", 1)[1].split()[:3])
    step = Step(
        name,
        wall,
        float(stats["user"]) + float(stats["sys"]),
        int(stats["maxrss_kb"]) // 1024,
        proc.returncode,
        proc.stdout,
    )
    bl.log(f"{name}: {wall:.1f} s wall, {step.cpu:.1f} s CPU, {step.peak_mb} MB")
    return step


def change_rows(path: Path, tables: list[str], changes: int, seed: int = 7) -> None:
    """Update ``changes`` rows spread over ``tables`` (by rowid), as an application
    would: a REAL column moved by 0.5 where the table has one, else a no-op update
    (which the triggers log all the same)."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        tops = {t: conn.execute(f'SELECT max(rowid) FROM "{t}"').fetchone()[0] or 0 for t in tables}
        edits = {}
        for t in tables:
            cols = conn.execute(f'PRAGMA table_info("{t}")').fetchall()
            real = next((c[1] for c in cols if (c[2] or "").upper() in ("REAL", "DOUBLE")), None)
            edits[t] = (
                f'UPDATE "{t}" SET "{real}" = coalesce("{real}", 0) + 0.5 WHERE rowid = ?'
                if real
                else f'UPDATE "{t}" SET rowid = rowid WHERE rowid = ?'
            )
        conn.execute("BEGIN")
        for i in range(changes):
            t = tables[i % len(tables)]
            conn.execute(edits[t], (rng.randint(1, max(1, tops[t])),))
        conn.execute("COMMIT")
    finally:
        conn.close()


def stream_until_caught_up(env: dict[str, str], config: list[str], source: Path, dsn: str) -> None:
    """`replicator run` until it streams (after `replicator snapshot` alone it copies
    the tables again: that snapshot recorded no stream position) and has applied the
    source log's head, then SIGTERM."""
    import psycopg

    head = (
        sqlite3.connect(source)
        .execute("SELECT seq FROM sqlite_sequence WHERE name = '_replicator_changelog'")
        .fetchone()[0]
    )
    log_path = bl.OUT / "tmp-verify-run.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*replicator(), *config, "run"],
            env={**env, "REPLICATOR_LOG_LEVEL": "info"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                kept = log_path.with_name("verify-run-failed.log")
                log_path.replace(kept)
                raise SystemExit(f"replicator run stopped (exit {proc.returncode}), see {kept}")
            streaming = '"event": "streaming"' in log_path.read_text()
            if streaming:
                with psycopg.connect(dsn) as conn:
                    row = conn.execute("SELECT seq FROM replicator.stream_position").fetchone()
                if row and row[0] >= head:
                    return
            time.sleep(0.5)
        raise SystemExit("replicator run did not catch up in 1800 s")
    finally:
        proc.terminate()
        proc.wait(60)
        log_path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", choices=("light", "reference"), default="light")
    parser.add_argument("--artifacts", type=int, default=1_000_000)
    parser.add_argument("--scores", type=int, default=2_000_000, help="light: artifact_scores")
    parser.add_argument("--tweets", type=int, default=500_000, help="light: tweets")
    parser.add_argument("--changes", type=int, default=1000, help="Rows changed before --changed.")
    parser.add_argument("--exact", action="store_true", help="Also time verify --exact.")
    parser.add_argument("--dsn", default=os.environ.get("REPLICATOR_BENCH_DSN", bl.DEFAULT_DSN))
    parser.add_argument("--out", type=Path, default=bl.REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="Print, do not edit the docs.")
    args = parser.parse_args()

    if args.schema == "light":
        cached = schemas.light_db(args.artifacts, args.scores, args.tweets)
        tables = list(schemas.LIGHT_TABLES)
        sizes = f"--artifacts {args.artifacts} --scores {args.scores} --tweets {args.tweets}"
    else:
        cached = bl.reference_db(args.artifacts, 1, bad_values=False)
        tables = list(bl.REPLICATED_TABLES)
        sizes = f"--artifacts {args.artifacts}"
    source = bl.OUT / f"tmp-verify-{cached.name}"
    shutil.copyfile(cached, source)  # init and the changes write to it, never to the cache
    rows = sum(bl.sqlite_counts(source, tables).values())
    dsn = bl.recreate_database(args.dsn, "bench_verify")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(bl.code_root()), os.environ.get("PYTHONPATH", "")) if p
        ),
        "DATABASE_PATH": str(source),
        "DATABASE_URL": dsn,
        "REPLICATOR_LOG_LEVEL": "warning",
    }
    if args.schema == "light":
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(schemas.LIGHT_PG_SCHEMA)
        config_path = bl.OUT / "tmp-verify-light.toml"
        config_path.write_text(schemas.light_config_toml(source, create_tables=False))
    else:
        bl.apply_reference_schema(dsn)
        config_path = bl.code_root() / "config" / "reference-app.toml"
    config = ["--config", str(config_path)]
    load_before = bl.uptime()
    try:
        subprocess.run([*replicator(), *config, "init"], env=env, check=True, capture_output=True)
        snap = timed("snapshot", [*config, "snapshot"], env)
        bl.checkpoint(args.dsn)
        full = timed("verify", [*config, "verify", "--json"], env)
        exact = timed("verify --exact", [*config, "verify", "--exact"], env) if args.exact else None
        bl.log(f"changing {args.changes} rows and streaming them ...")
        change_rows(source, tables, args.changes)
        stream_until_caught_up(env, config, source, dsn)
        changed = timed("verify --changed", [*config, "verify", "--changed", "--json"], env)
    finally:
        bl.drop_database(args.dsn, "bench_verify")
        for leftover in (source, Path(f"{source}-wal"), Path(f"{source}-shm")):
            leftover.unlink(missing_ok=True)
    load_after = bl.uptime()
    full_report = json.loads(full.output)
    changed_report = json.loads(changed.output)
    if os.environ.get("BENCH_DUMP"):
        Path(os.environ["BENCH_DUMP"]).write_text(changed.output)
    read_full = sum(t["exact_rows"] for t in full_report["tables"])
    read_changed = sum(t["exact_rows"] for t in changed_report["tables"])
    scopes = "; ".join(f"{t['table']}: {t['scope_note']}" for t in changed_report["tables"])
    info = bl.machine_info(args.dsn)

    def line(step: Step, what: str) -> str:
        verdict = "identical" if step.code == 0 else "DIFFERENT"
        return (
            f"| {what} | {step.wall:.1f} s | {bl.fmt_int(step.rate(rows))} | {step.cpu:.1f} s "
            f"| {step.peak_mb} MB | {verdict if step is not snap else '-'} |"
        )

    body = [
        f"### Verify: {args.schema} schema",
        "",
        *bl.machine_lines(info),
        "",
        f"Command: `python bench/verify.py --schema {args.schema} {sizes} "
        f"--changes {args.changes}{' --exact' if args.exact else ''}`.",
        "",
        f"Source: `{cached.name}`, {bl.fmt_int(rows)} rows in {len(tables)} tables. "
        "Rows/s is over all of them for every line, the incremental one included.",
        "",
        "| step | wall | rows/s | replicator CPU (user+sys) | peak RSS | verdict |",
        "|---|---|---|---|---|---|",
        line(snap, "`replicator snapshot`"),
        line(full, "`replicator verify` (chunk digests)"),
        *([line(exact, "`replicator verify --exact` (every row in Python)")] if exact else []),
        line(changed, f"`replicator verify --changed` after {args.changes} updates"),
        "",
        f"Verify ran at {full.rate(rows) / snap.rate(rows):.2f}x the snapshot's rows/s and "
        f"compared {bl.fmt_int(read_full)} rows one by one (chunks whose digests differed). "
        f"The incremental verify read {bl.fmt_int(read_changed)} rows ({scopes}).",
        "",
        f"Machine load (`uptime`) before: `{load_before}`; after: `{load_after}`.",
    ]
    text = "\n".join(body)
    print(text)
    if not args.no_write:
        bl.write_section(args.out, f"verify-{args.schema}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
