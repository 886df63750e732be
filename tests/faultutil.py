"""Fault injection for the outage tests and the soak benchmark.

What a fault test needs beside :mod:`harness`: a daemon whose health
endpoint ``replicator status`` can find (a fixed metrics port), the daemon's
own PostgreSQL backends (to terminate them), an application process that
holds SQLite's write lock, and an app-like writer that times every one of its
transactions.

Import as ``from faultutil import ...`` (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from harness import REPLICATOR, DaemonProcess, daemon_env, spawn_daemon


def launch_daemon(
    source: Path,
    dsn: str,
    log_path: Path,
    *,
    metrics_port: int,
    settings: Mapping[str, str] | None = None,
) -> DaemonProcess:
    """``replicator run`` whose health endpoint is on a known port (given by
    environment, as an operator would configure it), so that ``replicator
    status`` run with the same environment can ask the daemon itself."""
    env = daemon_env(
        source,
        dsn,
        REPLICATOR_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}",
        **(settings or {}),
    )
    return spawn_daemon(["run"], env, source, dsn, log_path)


@dataclass(frozen=True, slots=True)
class StatusReport:
    exit_code: int
    data: dict[str, Any] | None  # the --json document, when one was printed
    stderr: str


def replicator_status(source: Path, dsn: str, metrics_port: int) -> StatusReport:
    """``replicator status --json`` with the daemon's environment."""
    env = daemon_env(source, dsn, REPLICATOR_METRICS_ADDRESS=f"127.0.0.1:{metrics_port}")
    done = subprocess.run(
        [str(REPLICATOR), "status", "--json"],
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = done.stdout.decode(errors="replace").strip()
    data: dict[str, Any] | None = None
    if out:
        with contextlib.suppress(ValueError):
            data = json.loads(out)
    return StatusReport(done.returncode, data, done.stderr.decode(errors="replace"))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    found: dict[str, Any] = json.loads(body)
    return found


def metric_total(text: str, name: str) -> float:
    """Sum of a metric over all its label sets (0 when it has none yet)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_by_label(text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = name + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line[len(prefix) :].rsplit("} ", 1)
            for part in labels.split(","):
                key, _, raw = part.partition("=")
                if key == label:
                    out[raw.strip('"')] = float(value)
    return out


# --------------------------------------------------------------------------
# PostgreSQL: the daemon's backends.

DAEMON_BACKENDS = (
    "SELECT pid, state, application_name, query FROM pg_stat_activity "
    "WHERE datname = %s AND pid <> pg_backend_pid() "
    "AND (application_name = 'replicator' OR application_name LIKE 'replicator %%')"
)
HEARTBEAT_QUERY = 'INSERT INTO "replicator"."daemon"'


def dbname_of(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def in_batch(state: object, app: object, query: object) -> bool:
    """A backend of the daemon inside a batch: its data connection ('replicator')
    between two statements of a transaction, or running one that is not the
    heartbeat (the advisory-lock session is named 'replicator <host> pid <n>')."""
    if app != "replicator":
        return False
    if state == "idle in transaction":
        return True
    return state == "active" and not str(query).startswith(HEARTBEAT_QUERY)


@dataclass
class BackendKiller:
    """Terminates the daemon's backends in one database, at a moment when one
    of them is in the middle of a batch if it can."""

    dsn: str
    dbname: str
    kills: int = 0  # backends terminated
    rounds: int = 0  # rounds that terminated something
    batch_rounds: int = 0  # rounds that caught the daemon inside a batch
    states: Counter[str] = field(default_factory=Counter)  # state of each killed backend
    queries: Counter[str] = field(default_factory=Counter)  # what the batches were doing

    def kill_round(self, *, wait_busy: float = 0.4, only_busy: bool = False) -> int:
        """Terminate every backend of the daemon as soon as it is inside a batch,
        waiting at most ``wait_busy`` seconds for that; then whatever is there (or
        nothing, with ``only_busy``)."""
        deadline = time.monotonic() + wait_busy
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute(DAEMON_BACKENDS, (self.dbname,)).fetchall()
                busy = [r for r in rows if in_batch(r[1], r[2], r[3])]
                if busy or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            if only_busy and not busy:
                return 0
            killed = 0
            for pid, state, _app, _query in rows:
                done = conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                if done and done[0]:
                    killed += 1
                    self.states[str(state)] += 1
        self.kills += killed
        if killed:
            self.rounds += 1
            if busy:
                self.batch_rounds += 1
                self.queries[" ".join(str(busy[0][3]).split()[:3])] += 1
        return killed


# --------------------------------------------------------------------------
# SQLite: the application holding the write lock, and a timed writer.

_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    conn.execute("BEGIN IMMEDIATE")
    print("held", time.monotonic(), flush=True)
    time.sleep(float(sys.argv[2]))
    released = time.monotonic()
    conn.execute("COMMIT")
    print("released", released, flush=True)
    """
)


class LockHolder:
    """Another process of the application: BEGIN IMMEDIATE, hold, COMMIT."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), str(seconds)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if not line or line[0] != "held":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"the lock holder did not get the lock: {err.decode()}")
        self.held_at = float(line[1])  # time.monotonic(): one clock for every process
        self.released_at: float | None = None

    def wait(self, timeout: float = 120.0) -> float:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"the lock holder failed: {err.decode()}")
        self.released_at = float(out.decode().split()[1])
        return self.released_at

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class TimedWriter(threading.Thread):
    """An app-like writer that times each transaction: BEGIN IMMEDIATE,
    ``like_count + 1`` on one tweet, COMMIT, ``rate`` times a second.

    Every committed transaction is counted in ``increments`` (so the like-sum
    invariant still holds) and timed in ``samples`` as (start, seconds), on
    ``time.monotonic()``.
    """

    def __init__(self, path: Path, tweet_id: str, rate: float = 50.0) -> None:
        super().__init__(name="timed-writer", daemon=True)
        self.path = path
        self.tweet_id = tweet_id
        self.period = 1.0 / rate
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.increments = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60)
            try:
                conn.execute("PRAGMA synchronous = NORMAL")
                while not self.stop_event.is_set():
                    started = time.monotonic()
                    conn.execute("BEGIN IMMEDIATE")
                    cur = conn.execute(
                        "UPDATE tweets SET like_count = like_count + 1 WHERE tweet_id = ?",
                        (self.tweet_id,),
                    )
                    assert cur.rowcount == 1, "the probe tweet is gone"
                    conn.execute("COMMIT")
                    took = time.monotonic() - started
                    self.samples.append((started, took))
                    self.increments += 1
                    self.stop_event.wait(max(0.0, self.period - took))
            finally:
                conn.close()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(90)
        assert not self.is_alive(), "the timed writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the timed writer failed: {self.error!r}") from self.error

    def latencies(self, *, outside: Sequence[tuple[float, float]] = ()) -> list[float]:
        """Transaction times, leaving out those overlapping any (start, end) in ``outside``."""
        out = []
        for started, took in self.samples:
            if any(started <= end and started + took >= begin for begin, end in outside):
                continue
            out.append(took)
        return out
