#!/usr/bin/env python3
"""Where end-to-end latency goes: the daemon's loop, timed phase by phase.

    python bench/stream_trace.py [--rate 5000] [--seconds 20] [--base-artifacts 100000]

A diagnostic, not a benchmark figure. It snapshots a copy of the cached base
database like ``bench/stream.py``, then runs ``replicator run``'s
:class:`~replicator.stream.daemon.Daemon` in a child process whose methods are
wrapped with timers (the replicator's code is not changed on disk: the
wrappers are set on the imported classes and modules of that child only). A
writer commits rows at ``--rate`` as in ``bench/stream.py``'s latency runs and
each row's commit-to-visible latency is measured the same way (LISTEN/NOTIFY).

Printed: per phase of the loop (read, apply, prune, lag sampling, heartbeat,
lock check, wait ...) how often it ran and how long it took, and for the slowest
1% of rows which phases were running while they waited. The trace is kept in
``bench/out/trace-*.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

bl.ensure_venv()

import stream as sb  # noqa: E402 - after ensure_venv

PHASES = (
    # (owner path, attribute, label)
    ("replicator.source.changelog", "read_changes", "read"),
    ("replicator.source.changelog", "prune", "prune"),
    ("replicator.stream.apply:Applier", "apply", "apply"),
    ("replicator.stream.daemon:Daemon", "_step", "step"),
    ("replicator.stream.daemon:Daemon", "_sample_lag", "sample_lag"),
    ("replicator.stream.daemon:Daemon", "beat", "heartbeat"),
    ("replicator.stream.heartbeat:Heartbeat", "record", "record"),
    ("replicator.stream.daemon", "follow_drift", "drift"),
    ("replicator.stream.daemon:Daemon", "_check_source", "check_source"),
    ("replicator.state.lock:PairLock", "alive", "lock_alive"),
    ("replicator.stream.waker:Waker", "wait", "wait"),
)


def daemon_child(argv: list[str]) -> int:
    """python bench/stream_trace.py _daemon DB DSN TRACE_OUT"""
    import importlib

    db, dsn, out = argv
    events: list[tuple[str, float, float]] = []

    def wrap(owner: object, attr: str, label: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return

        def timed(*a: object, **k: object) -> object:
            t = time.time()
            try:
                return fn(*a, **k)
            finally:
                events.append((label, t, time.time()))

        setattr(owner, attr, timed)

    for path, attr, label in PHASES:
        mod_name, _, cls = path.partition(":")
        owner: object = importlib.import_module(mod_name)
        if cls:
            owner = getattr(owner, cls, None)
        if owner is not None:
            wrap(owner, attr, label)
    from replicator.config import load_config
    from replicator.logs import configure
    from replicator.stream import daemon as pipeline

    config = load_config(
        sb.CONFIG,
        env={},
        overrides={
            "source.path": db,
            "target.url": dsn,
            "metrics.address": "",
            "log.level": "warning",
            "log.format": "json",
        },
    )
    configure(config.log.level, config.log.format)
    code = pipeline.Daemon(config).run()
    Path(out).write_text(json.dumps(events))
    return code


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_daemon":
        return daemon_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rows-per-tx", type=int, default=0)
    parser.add_argument("--base-artifacts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--code",
        default="worktree",
        help="replicator code to run: 'worktree' (the files on disk) or a git commit/ref, "
        "exported with git archive under bench/out/code-<sha>/ and put first on PYTHONPATH",
    )
    parser.add_argument("--dsn", default=bl.DEFAULT_DSN)
    args = parser.parse_args()
    per_tx = args.rows_per_tx or max(1, round(args.rate / 1000))

    base = bl.reference_db(args.base_artifacts, args.seed, bad_values=False)
    db = bl.OUT / "trace-work.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(base, db)
    dbname = "bench_trace"
    dsn = bl.recreate_database(args.dsn, dbname)
    bl.apply_reference_schema(dsn)
    bl.log("initial snapshot ...")
    d = sb.Daemon(db, dsn, "trace-initial")
    d.wait_for("streaming", timeout=1800)
    time.sleep(1)
    d.stop()
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sb.NOTIFY_SQL)
    trace_out = bl.OUT / f"trace-{int(args.rate)}.json"
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "_daemon", str(db), dsn, str(trace_out)],
        stderr=open(bl.OUT / "trace-daemon.log", "w"),  # noqa: SIM115
    )
    # Wait for it to stream: the position row exists and the triggers are in.
    time.sleep(4)
    listener = sb.Listener(dsn)
    writer_out = bl.OUT / f"trace-writer-{int(args.rate)}.json"
    first = 2_000_000_000
    bl.log(f"writer at {args.rate:,.0f} changes/s ({per_tx}/tx) for {args.seconds:.0f}s ...")
    subprocess.run(
        [
            sys.executable,
            str(Path(sb.__file__).resolve()),
            "_writer",
            str(db),
            str(args.rate),
            str(args.seconds),
            str(per_tx),
            str(first),
            str(writer_out),
        ],
        check=True,
    )
    res = json.loads(writer_out.read_text())
    last = first + len(res["commits"]) * per_tx - 1
    deadline = time.time() + 15
    while time.time() < deadline and last not in listener.seen:
        time.sleep(0.05)
    time.sleep(0.5)
    listener.close()
    child.send_signal(signal.SIGTERM)
    child.wait(60)
    events = [tuple(e) for e in json.loads(trace_out.read_text())]
    bl.drop_database(args.dsn, dbname)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)

    # Rows: (commit time, seen time).
    rows = []
    t0 = res["t0"]
    for i, tc in enumerate(res["commits"]):
        if tc - t0 < sb.WARMUP_SECONDS:
            continue
        for j in range(per_tx):
            seen = listener.seen.get(first + i * per_tx + j)
            if seen is not None:
                rows.append((tc, seen))
    (bl.OUT / f"trace-rows-{int(args.rate)}.json").write_text(json.dumps(rows))
    lat = sorted((s - c) * 1000 for c, s in rows)
    start, end = rows[0][0], rows[-1][1]
    print(
        f"rows {len(rows):,}; latency p50 {sb.percentile(lat, 0.5):.1f} p95 "
        f"{sb.percentile(lat, 0.95):.1f} p99 {sb.percentile(lat, 0.99):.1f} "
        f"max {lat[-1]:.1f} ms; writer achieved {res['achieved_rate']:,.0f}/s"
    )
    window = [e for e in events if e[2] >= start and e[1] <= end]
    span = end - start
    by: dict[str, list[float]] = defaultdict(list)
    for label, a, b in window:
        by[label].append((b - a) * 1000)
    print(f"\nphases over {span:.1f} s (times in ms):")
    print(f"{'phase':<13}{'count':>8}{'share':>8}{'p50':>8}{'p99':>8}{'max':>8}")
    for label, ds in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        ds.sort()
        print(
            f"{label:<13}{len(ds):>8}{sum(ds) / 1000 / span * 100:>7.1f}%"
            f"{sb.percentile(ds, 0.5):>8.2f}{sb.percentile(ds, 0.99):>8.2f}{ds[-1]:>8.1f}"
        )
    # For the slowest 1% of rows: which phases overlapped their wait.
    cutoff = sb.percentile(lat, 0.99) / 1000
    slow = [(c, s) for c, s in rows if s - c >= cutoff]
    overlap: dict[str, float] = defaultdict(float)
    waited = sum(s - c for c, s in slow)
    for c, s in slow:
        for label, a, b in window:
            if label in ("step",):
                continue
            o = min(b, s) - max(a, c)
            if o > 0:
                overlap[label] += o
    print(
        f"\nslowest 1% ({len(slow)} rows, >= {cutoff * 1000:.0f} ms): share of their wait spent in"
    )
    for label, o in sorted(overlap.items(), key=lambda kv: -kv[1]):
        print(f"  {label:<13}{o / waited * 100:6.1f}%")
    longest = sorted((e for e in window if e[0] not in ("step", "wait")), key=lambda e: e[1] - e[2])
    print("\nlongest non-wait phases:")
    for label, a, b in longest[:12]:
        print(f"  {label:<13}{(b - a) * 1000:8.1f} ms at +{a - start:6.2f} s")
    print(f"\nother processes: see `uptime`: {bl.uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
