#!/usr/bin/env python3
"""Soak: replicate under a live writer while faults keep coming, then prove nothing was lost.

    python bench/soak.py --minutes 30 [--dsn URL] [--artifacts 2000] [--rate 100]
                         [--seed N] [--workdir DIR] [--quiet-seconds 5:15]

Not part of CI. The fault mix of tests/integration/test_faults.py, for as long as
asked: the application simulator (``python -m replicator.demo.sample write``) writes
the whole time; ``replicator run`` reaches PostgreSQL through a TCP proxy that
can cut it; between quiet spells of ``--quiet-seconds`` one fault is injected,
dealt from a shuffled deck (seeded; every kind once before any twice) of:

* ``terminate``: the daemon's PostgreSQL sessions killed with
  ``pg_terminate_backend`` while a batch is in flight, every 0.5 s for 5 s;
* ``proxy_cut``: every connection cut and new ones refused for 2-10 s;
* ``pg_restart``: PostgreSQL stopped for 5-20 s and started again (only on the
  throwaway server this script starts when ``--dsn`` is not given);
* ``sqlite_lock``: another process holding SQLite's write lock for 2-10 s;
* ``daemon_kill``: SIGKILL, then a new ``replicator run``;
* ``daemon_term``: SIGTERM (must exit 0), then a new ``replicator run``.

At the end the writer stops, the daemon catches up and stops, and the run is
checked: every change-log position after the snapshot applied in exactly one
batch, ``sum(like_count)`` risen by exactly the writer's increments on both
sides, only the planted bad cells in the dead-letter table, and the target equal
to the source row for row (typed comparison). Prints the counts (changes written,
applied, dead-lettered, faults injected by kind, mismatches) as text and one JSON
line; exits 1 on any mismatch or on a daemon that exited by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The test suite's fault, comparison and database helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import benchlib as bl

bl.ensure_venv()

import psycopg  # noqa: E402 - after ensure_venv
from faultproxy import FaultProxy  # noqa: E402
from faultutil import BackendKiller, LockHolder, health, launch_daemon  # noqa: E402
from harness import (  # noqa: E402
    DaemonProcess,
    free_port,
    source_head,
    start_writer,
    stream_position,
    wait_until,
)
from oracle import compare, like_sum, open_dead_letters  # noqa: E402
from pgutil import apply_refapp_schema, make_dsn  # noqa: E402

from replicator.demo.devdb import ThrowawayPostgres  # noqa: E402
from replicator.demo.sample import generate_reference_db  # noqa: E402

KINDS = ("terminate", "proxy_cut", "pg_restart", "sqlite_lock", "daemon_kill", "daemon_term")


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, admin_dsn: str) -> None:
        self.args = args
        self.work = work
        self.rng = random.Random(args.seed)
        self.server: ThrowawayPostgres | None = None
        self.faults: Counter[str] = Counter()
        self.unexpected_exits: list[str] = []
        self.runs = 0
        self.path = work / "app.db"
        self.dbname = f"soak_{args.seed}"
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.dbname}"')
        self.admin_dsn = admin_dsn
        self.dsn = make_dsn(admin_dsn, self.dbname)
        with psycopg.connect(self.dsn) as conn:
            apply_refapp_schema(conn)
        port = urlsplit(self.dsn).port or 5432
        self.proxy = FaultProxy(port, lifetime=args.minutes * 60 + 3600).start()
        self.daemon: DaemonProcess | None = None
        self.metrics_port = free_port()

    # -- the daemon -------------------------------------------------------------

    def start_daemon(self) -> DaemonProcess:
        self.runs += 1
        self.daemon = launch_daemon(
            self.path,
            self.proxy.dsn(self.dsn),
            self.work / f"daemon-{self.runs}.log",
            metrics_port=self.metrics_port,
        )
        return self.daemon

    def check_alive(self) -> None:
        """A daemon that exited on its own is a finding: note it and start another."""
        assert self.daemon is not None
        gone = self.daemon.gone()
        if gone:
            self.unexpected_exits.append(f"run {self.runs}: {gone}")
            bl.log(f"daemon exited by itself: {gone}")
            self.start_daemon()

    def wait_streaming(self, timeout: float = 180.0) -> None:
        def streaming() -> bool:
            self.check_alive()
            with contextlib.suppress(OSError, ValueError):
                return bool(health(self.metrics_port)["state"] == "streaming")
            return False

        wait_until(streaming, timeout, "the daemon to stream", every=0.2)

    # -- faults -------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        assert self.daemon is not None
        if kind == "terminate":
            killer = BackendKiller(self.admin_dsn, self.dbname)
            until = time.monotonic() + 5.0
            while time.monotonic() < until:
                killer.kill_round(wait_busy=0.5, only_busy=True)
                time.sleep(0.5)
        elif kind == "proxy_cut":
            self.proxy.cut()
            time.sleep(self.rng.uniform(2, 10))
            self.proxy.restore()
        elif kind == "pg_restart":
            assert self.server is not None
            self.server.stop("fast")
            time.sleep(self.rng.uniform(5, 20))
            self.server.start()
        elif kind == "sqlite_lock":
            LockHolder(self.path, self.rng.uniform(2, 10)).wait()
        elif kind == "daemon_kill":
            self.daemon.kill()
            self.start_daemon()
        elif kind == "daemon_term":
            code = self.daemon.stop(120)
            if code != 0:
                self.unexpected_exits.append(f"run {self.runs}: SIGTERM exit {code}")
            self.start_daemon()
        self.faults[kind] += 1

    # -- the run ------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        report = generate_reference_db(self.path, artifacts=args.artifacts, seed=1)
        bad_tweets = [str(key[0]) for key in report.bad_keys("tweets")]
        likes_before = like_sum(source=self.path, without=bad_tweets)
        kinds = [k for k in KINDS if k != "pg_restart" or self.server is not None]
        low, high = (float(x) for x in args.quiet_seconds.split(":"))
        writer = start_writer(
            self.path, self.work / "writer.log", rate=args.rate, seed=args.seed + 1
        )
        try:
            self.start_daemon()
            self.wait_streaming()
            deadline = time.monotonic() + args.minutes * 60
            deck: list[str] = []
            while time.monotonic() < deadline:
                time.sleep(self.rng.uniform(low, high))
                self.check_alive()
                if not deck:
                    deck = self.rng.sample(kinds, len(kinds))
                kind = deck.pop()
                bl.log(f"fault {sum(self.faults.values()) + 1}: {kind}")
                self.inject(kind)
                self.wait_streaming()
            written = writer.stop(120)
            bl.log("writer stopped; catching up")
            self.wait_streaming()
            assert self.daemon is not None
            position = self.daemon.wait_caught_up(timeout=600)
            code = self.daemon.stop(120)
            if code != 0:
                self.unexpected_exits.append(f"run {self.runs}: final SIGTERM exit {code}")
        finally:
            writer.kill()
            if self.daemon is not None:
                self.daemon.kill()
        return self.verify(report, bad_tweets, likes_before, written, position)

    def verify(
        self,
        report: Any,
        bad_tweets: list[str],
        likes_before: int,
        written: dict[str, Any],
        position: Any,
    ) -> dict[str, Any]:
        mismatches: list[str] = []
        head = source_head(self.path) or 0
        committed = stream_position(self.dsn)
        if committed is None or committed.seq != head:
            mismatches.append(f"applied position {committed} != source head {head}")
        applied = position.changes_applied
        if applied != head - position.snapshot_seq:
            mismatches.append(
                f"{applied} changes applied for {head - position.snapshot_seq} log positions "
                "(a batch applied twice, or lost)"
            )
        expected = likes_before + int(written["increments"])
        for side, got in (
            ("source", like_sum(source=self.path, without=bad_tweets)),
            ("target", like_sum(dsn=self.dsn)),
        ):
            if got != expected:
                mismatches.append(f"sum(like_count) in the {side} is {got}, expected {expected}")
        letters = open_dead_letters(self.dsn)
        got_letters = sorted((d["table_name"], tuple(d["key"])) for d in letters)
        planted = sorted((cell.table, cell.key) for cell in report.bad_cells)
        if got_letters != planted:
            mismatches.append(f"{len(got_letters)} open dead letters, {len(planted)} planted")
        comparison = compare(self.path, self.dsn)
        mismatches += comparison.differences
        return {
            "minutes": self.args.minutes,
            "seed": self.args.seed,
            "changes_written": {
                "transactions": written["transactions"],
                "rows_inserted": written["inserts"],
                "rows_updated": written["updates"],
                "rows_deleted": written["deletes"],
                "log_positions": head - position.snapshot_seq,
            },
            "changes_applied": applied,
            "dead_lettered": len(letters),
            "rows_compared": sum(comparison.rows.values()),
            "faults": dict(sorted(self.faults.items())),
            "daemon_runs": self.runs,
            "unexpected_exits": self.unexpected_exits,
            "proxy": {
                "accepted": self.proxy.accepted,
                "refused": self.proxy.refused,
                "cut": self.proxy.cut_connections,
            },
            "mismatches": len(mismatches),
            "mismatch_samples": mismatches[:20],
        }

    def close(self) -> None:
        self.proxy.close()
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.admin_dsn, autocommit=True) as admin,
        ):
            admin.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long faults keep coming")
    parser.add_argument(
        "--dsn",
        help="an existing server to use (no pg_restart faults); default: a throwaway server",
    )
    parser.add_argument("--artifacts", type=int, default=2000, help="size of the sample database")
    parser.add_argument("--rate", type=float, default=100, help="writer transactions per second")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument("--quiet-seconds", default="5:15", help="pause between faults, low:high")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: temporary)")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    server: ThrowawayPostgres | None = None
    if args.dsn is None:
        server = ThrowawayPostgres().start()
    soak: Soak | None = None
    try:
        soak = Soak(args, work, args.dsn or (server.dsn if server else ""))
        soak.server = server
        bl.log(f"soak for {args.minutes} min, seed {args.seed}, files in {work}")
        result = soak.run()
    finally:
        if soak is not None:
            soak.close()
        if server is not None:
            server.close()
    print(f"changes written:  {result['changes_written']}")
    print(f"changes applied:  {result['changes_applied']}")
    print(f"dead-lettered:    {result['dead_lettered']}")
    print(f"faults injected:  {result['faults']}")
    print(f"daemon runs:      {result['daemon_runs']}")
    print(f"unexpected exits: {len(result['unexpected_exits'])}")
    print(f"mismatches:       {result['mismatches']}")
    for line in result["mismatch_samples"] + result["unexpected_exits"]:
        print(f"  {line}")
    print(json.dumps(result, default=str))
    if args.workdir is None and not result["mismatches"] and not result["unexpected_exits"]:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if result["mismatches"] or result["unexpected_exits"] else 0


if __name__ == "__main__":
    sys.exit(main())
