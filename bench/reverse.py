#!/usr/bin/env python3
"""Reverse stream latency next to the forward stream's, at the same write rate.

    python bench/reverse.py [--rate 1000] [--seconds 15] [--dsn ...] [--out docs/benchmarks.md]

One fresh database ``bench_reverse`` and a small SQLite file (one ``events``
table: integer key, a number, a JSON text, a timestamp text):

1. Forward: ``replicator run`` snapshots the file and streams. A writer process
   inserts rows into SQLite at ``--rate`` per second, one transaction each, and
   records when each COMMIT returned. A trigger on ``events`` in PostgreSQL
   (added for the benchmark) calls ``pg_notify`` with the row's id; the
   listener's receive time is when the row became visible there.
2. Reverse: the forward daemon is stopped, ``replicator reverse init`` and
   ``replicator reverse run`` start. A writer process inserts rows into
   PostgreSQL at the same rate, one transaction each, recording COMMIT times.
   This process polls the SQLite file every millisecond for new ids (a SQLite
   trigger cannot notify another process): the first poll that sees a row is
   when it became visible there, so reverse figures carry up to ~1-2 ms of
   polling delay the forward ones do not.

Latency = visible time - commit time, per row; p50 / p95 / p99 / max reported.
The machine is shared: record ``uptime`` with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

DBNAME = "bench_reverse"
SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    payload JSON,
    at DATETIME NOT NULL
);
"""
REVERSE_BASE = 10_000_000  # ids the PostgreSQL writer uses, far from SQLite's


def replicator(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "replicator.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def writer_child(argv: list[str]) -> int:
    """``--writer sqlite|pg TARGET RATE SECONDS START OUT``: insert at a fixed rate."""
    kind, target, rate, seconds, start, out = argv
    interval, count, first = 1.0 / float(rate), int(float(rate) * float(seconds)), int(start)
    commits: list[tuple[int, float]] = []
    if kind == "sqlite":
        conn: Any = sqlite3.connect(target, isolation_level=None, timeout=30)
        statement = "INSERT INTO events (id, n, payload, at) VALUES (?, ?, ?, ?)"
    else:
        import psycopg

        conn = psycopg.connect(target, autocommit=True)
        statement = "INSERT INTO events (id, n, payload, at) VALUES (%s, %s, %s, now())"
    began = time.monotonic()
    for i in range(count):
        due = began + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key = first + i
        payload = json.dumps({"i": i, "tag": "bench"})
        if kind == "sqlite":
            conn.execute(statement, (key, i, payload, "2026-01-01 00:00:00"))
        else:
            conn.execute(statement, (key, i, payload))
        commits.append((key, time.time()))
    conn.close()
    Path(out).write_text(json.dumps(commits))
    return 0


def stats(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": ordered[-1] * 1000}


def forward_run(
    dsn: str, db: Path, env: dict[str, str], rate: float, seconds: float
) -> dict[str, float]:
    import psycopg

    daemon = replicator("run", env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with psycopg.connect(dsn, autocommit=True) as conn:
                found = conn.execute("SELECT to_regclass('public.events')").fetchone()
            if found and found[0]:
                break
            time.sleep(0.5)
        time.sleep(2.0)  # snapshot of an empty table done, streaming
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS "
                "$$BEGIN PERFORM pg_notify('bench_reverse', NEW.id::text); RETURN NULL; END$$"
            )
            conn.execute(
                "CREATE TRIGGER bench_notify AFTER INSERT ON events "
                "FOR EACH ROW EXECUTE FUNCTION bench_notify()"
            )
        seen: dict[int, float] = {}
        stop = threading.Event()

        def listen() -> None:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("LISTEN bench_reverse")
                while not stop.is_set():
                    for note in conn.notifies(timeout=0.5):
                        seen.setdefault(int(note.payload), time.time())

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.5)
        commits = run_writer("sqlite", str(db), rate, seconds, 1)
        wait_for(lambda: len(seen) >= len(commits), 60)
        stop.set()
        listener.join(5)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    return stats([seen[k] - t for k, t in commits if k in seen]) | {"rows": len(commits)}


def reverse_run(
    dsn: str, db: Path, env: dict[str, str], rate: float, seconds: float
) -> dict[str, float]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS bench_notify ON events")
    subprocess.run(
        [sys.executable, "-m", "replicator.cli", "reverse", "init"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    daemon = replicator("reverse", "run", "--poll-interval", "1.0", env=env)
    seen: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        conn = sqlite3.connect(db, timeout=30)
        last = REVERSE_BASE - 1
        while not stop.is_set():
            rows = conn.execute(
                "SELECT id FROM events WHERE id > ? ORDER BY id", (last,)
            ).fetchall()
            now = time.time()
            for (key,) in rows:
                seen.setdefault(key, now)
                last = max(last, key)
            time.sleep(0.001)
        conn.close()

    poller = threading.Thread(target=poll, daemon=True)
    try:
        time.sleep(2.0)
        poller.start()
        commits = run_writer("pg", dsn, rate, seconds, REVERSE_BASE)
        wait_for(lambda: len(seen) >= len(commits), 60)
    finally:
        stop.set()
        poller.join(5)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    return stats([seen[k] - t for k, t in commits if k in seen]) | {"rows": len(commits)}


def run_writer(
    kind: str, target: str, rate: float, seconds: float, start: int
) -> list[tuple[int, float]]:
    out = benchlib.OUT / f"reverse-writer-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--writer",
            kind,
            target,
            str(rate),
            str(seconds),
            str(start),
            str(out),
        ],
        check=True,
    )
    return [(int(k), float(t)) for k, t in json.loads(out.read_text())]


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("rows did not all arrive")
        time.sleep(0.05)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--writer":
        return writer_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "REPLICATOR_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dsn = benchlib.recreate_database(args.dsn, DBNAME)
    db = benchlib.OUT / "reverse.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATOR_")}
    env.update(
        DATABASE_PATH=str(db),
        DATABASE_URL=dsn,
        REPLICATOR_METRICS_ADDRESS="",
        REPLICATOR_LOG_FORMAT="json",
    )
    load_before = benchlib.uptime()
    benchlib.log(f"forward at {args.rate:.0f}/s for {args.seconds:.0f}s")
    fwd = forward_run(dsn, db, env, args.rate, args.seconds)
    benchlib.log(f"forward: {fwd}")
    benchlib.log(f"reverse at {args.rate:.0f}/s for {args.seconds:.0f}s")
    rev = reverse_run(dsn, db, env, args.rate, args.seconds)
    benchlib.log(f"reverse: {rev}")
    load_after = benchlib.uptime()
    benchlib.drop_database(args.dsn, DBNAME)
    ratio = rev["p50"] / fwd["p50"] if fwd["p50"] else float("inf")
    rows = [
        [name, benchlib.fmt_int(r["rows"]), *(f"{r[k]:.1f}" for k in ("p50", "p95", "p99", "max"))]
        for name, r in (
            ("forward (SQLite → PostgreSQL)", fwd),
            ("reverse (PostgreSQL → SQLite)", rev),
        )
    ]
    body = "\n".join(
        [
            "## Reverse stream latency, next to the forward stream's",
            "",
            f"`python bench/reverse.py --rate {args.rate:.0f} --seconds {args.seconds:.0f}`: "
            f"{args.rate:.0f} single-row insert transactions per second for "
            f"{args.seconds:.0f} s into each side in turn, latency from COMMIT to visible on the "
            "other side (ms). Reverse figures include up to ~1-2 ms of SQLite polling.",
            "",
            *benchlib.table(["direction", "rows", "p50", "p95", "p99", "max"], rows),
            "",
            f"Reverse p50 / forward p50: {ratio:.2f} (goal: within 2x: "
            f"{benchlib.verdict(ratio <= 2.0)}). Load before: `{load_before}`; after: "
            f"`{load_after}` (a 2-core machine shared with other work: noisy).",
        ]
    )
    print(body)
    if args.out is not None:
        benchlib.write_section(args.out, "reverse", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
