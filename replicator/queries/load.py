"""The query under concurrent load: N clients at once on each side, as the app's workers.

One client timing a query alone says little about how it behaves while the
application's several workers run it together: SQLite serialises nothing for
readers in WAL mode but shares one machine's cores, PostgreSQL gives each
client a backend that competes for CPU, buffers and locks. So each side in
turn gets ``clients`` threads, each with its own connection (SQLite opened
read-only, PostgreSQL with the checker's own session settings copied), all
released together; each runs the query ``load_runs`` times cycling through
the parameter sets from a different starting set. The result is the
throughput (queries per second of wall time) and the latency under that load.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import RawCursor

from replicator.config import Config
from replicator.queries.latency import Band, band_of
from replicator.queries.report import Latency
from replicator.queries.spec import ParamSet, QuerySpec
from replicator.source.reader import fetch_described
from replicator.source.sqlite import open_source
from replicator.target.connection import Connection, connect, first_line

__all__ = ["LOAD_APPLICATION_NAME", "LoadResult", "SideLoad", "run_load", "session_settings"]

# How the load clients show in pg_stat_activity, apart from the checker's own session.
LOAD_APPLICATION_NAME = "replicator queries load"


@dataclass
class SideLoad:
    """One side under load: how many ran, in how long, and how long each took."""

    clients: int
    n: int
    seconds: float
    qps: float
    latency: Latency | None
    errors: int = 0
    first_error: str | None = None
    worst_params: dict[str, Any] | None = None  # the set with the highest p95 under load
    worst: Latency | None = None
    # Per parameter set, each client's p95 of it: the clients are the rounds under load,
    # so one p95 from a few samples does not flip the verdict between runs.
    client_p95: dict[int, list[float]] = field(default_factory=dict)

    def band(self, target_ms: float) -> Band:
        """The worst set's band over the clients (ok / near / slow), as latency judges rounds."""
        bands = [band_of(p95s, target_ms) for p95s in self.client_p95.values() if p95s]
        if not bands:
            return "slow" if self.latency is None or self.latency.p95 > target_ms else "ok"
        return max(bands, key=("ok", "near", "slow").index)


@dataclass
class LoadResult:
    clients: int
    runs_per_client: int
    target_ms: float
    sqlite: SideLoad | None = None
    postgres: SideLoad | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def band(self) -> Band:
        """PostgreSQL under load: every client's p95 of every set within the target (ok),
        some clients over (near), all over, or the load run failed (slow)."""
        pg = self.postgres
        if pg is None or pg.errors > 0 or pg.latency is None:
            return "slow"
        return pg.band(self.target_ms)

    @property
    def over_target(self) -> bool:
        return self.band == "slow"

    def lines(self, name: str) -> list[str]:
        out = []
        for label, side in (("SQLite", self.sqlite), ("PostgreSQL", self.postgres)):
            if side is None:
                continue
            lat = side.latency
            text = (
                f"{name}: under {side.clients} clients, {label}: {side.qps:,.1f} queries/s "
                f"({side.n} in {side.seconds:.2f} s)"
            )
            if lat is not None:
                text += f", p50 {lat.p50:.1f} / p95 {lat.p95:.1f} / p99 {lat.p99:.1f} ms"
            if side.worst is not None and side.worst_params is not None:
                params = ", ".join(f"{k}={v!r}" for k, v in side.worst_params.items())
                text += f"; worst set [{params or 'no parameters'}] p95 {side.worst.p95:.1f} ms"
            if side.errors:
                text += f"; {side.errors} failed: {side.first_error}"
            out.append(text)
        if self.postgres is not None and self.band != "ok":
            how = "misses" if self.over_target else "is near (some clients over)"
            out.append(
                f"{name}: under {self.clients} clients PostgreSQL {how} the target "
                f"{self.target_ms:g} ms"
            )
        out.extend(f"{name}: note: {n}" for n in self.notes)
        return out


def session_settings(conn: Connection) -> list[tuple[str, str]]:
    """The settings this session changed from the server's defaults, to copy to clients."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT name, current_setting(name) FROM pg_settings"
            " WHERE source = 'session' AND name NOT LIKE 'transaction\\_%' ORDER BY name"
        )
        return [(str(n), str(v)) for n, v in cur.fetchall()]


class _Collector:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: list[tuple[int, float]] = []
        self.client_p95: dict[int, list[float]] = {}
        self.errors = 0
        self.first_error: str | None = None
        self.ended = 0.0

    def add(self, ms: list[tuple[int, float]], errors: int, first: str | None) -> None:
        by_set: dict[int, list[float]] = {}
        for k, v in ms:
            by_set.setdefault(k, []).append(v)
        with self.lock:
            self.samples.extend(ms)
            for k, values in by_set.items():
                self.client_p95.setdefault(k, []).append(Latency.of(values).p95)
            self.errors += errors
            if first and self.first_error is None:
                self.first_error = first
            self.ended = max(self.ended, time.monotonic())


Runner = Callable[[ParamSet], None]


def _drive(
    clients: int,
    runs: int,
    sets: Sequence[ParamSet],
    budget: float,
    open_client: Callable[[], tuple[Runner, Callable[[], None]]],
) -> SideLoad:
    """``clients`` threads, each with its own connection, released together."""
    barrier = threading.Barrier(clients + 1)
    collector = _Collector()
    opened: list[str] = []

    def client(number: int) -> None:
        try:
            run, close = open_client()
        except Exception as exc:  # reported with the side's figures
            opened.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            barrier.abort()
            return
        ms: list[tuple[int, float]] = []
        errors = 0
        first: str | None = None
        try:
            barrier.wait()
            deadline = time.monotonic() + budget
            for i in range(runs):
                k = (number + i) % len(sets)
                ps = sets[k]
                started = time.perf_counter()
                try:
                    run(ps)
                except (sqlite3.Error, psycopg.Error, NotImplementedError) as exc:
                    errors += 1
                    first = first or first_line(exc)
                    continue
                ms.append((k, (time.perf_counter() - started) * 1000))
                if time.monotonic() > deadline:
                    break
        except threading.BrokenBarrierError:
            pass
        finally:
            collector.add(ms, errors, first)
            close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    started = time.monotonic()
    for t in threads:
        t.join()
    if opened:
        return SideLoad(clients, 0, 0.0, 0.0, None, clients, f"cannot connect: {opened[0]}")
    seconds = max(collector.ended - started, 1e-9)
    n = len(collector.samples)
    by_set: dict[int, list[float]] = {}
    for k, ms in collector.samples:
        by_set.setdefault(k, []).append(ms)
    per_set = {k: Latency.of(v) for k, v in by_set.items()}
    worst = max(per_set, key=lambda k: per_set[k].p95) if per_set else None
    return SideLoad(
        clients=clients,
        n=n,
        seconds=seconds,
        qps=n / seconds,
        latency=Latency.of([ms for _, ms in collector.samples]) if n else None,
        errors=collector.errors,
        first_error=collector.first_error,
        worst_params=dict(sets[worst].shown) if worst is not None and len(sets) > 1 else None,
        worst=per_set[worst] if worst is not None and len(sets) > 1 else None,
        client_p95=collector.client_p95,
    )


def run_load(
    config: Config,
    session: Sequence[tuple[str, str]],
    spec: QuerySpec,
    sets: Sequence[ParamSet],
    *,
    clients: int,
    runs: int,
    budget: float,
    target_ms: float,
    statement_timeout_ms: int,
) -> LoadResult:
    """SQLite's clients, then PostgreSQL's: each side has the machine to itself."""
    source = config.require_source()
    dsn = config.require_target()

    def sqlite_client() -> tuple[Runner, Callable[[], None]]:
        conn = open_source(source, readonly=True, busy_timeout_ms=config.source.busy_timeout_ms)
        conn.execute("PRAGMA query_only = ON")

        def run(ps: ParamSet) -> None:
            deadline = time.monotonic() + statement_timeout_ms / 1000
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 20_000)
            try:
                params: Any = dict(ps.sqlite)  # sqlite3 takes a mapping for :name
                fetch_described(conn, spec.sqlite_sql, params)
            finally:
                conn.set_progress_handler(None, 0)

        return run, conn.close

    def postgres_client() -> tuple[Runner, Callable[[], None]]:
        conn = connect(dsn, autocommit=True, connect_timeout=config.target.connect_timeout)
        try:
            with conn.cursor() as cur:
                for name, value in session:
                    cur.execute("SELECT set_config(%s, %s, false)", (name, value))
                cur.execute(
                    "SELECT set_config('application_name', %s, false)", (LOAD_APPLICATION_NAME,)
                )
            conn.read_only = True
        except BaseException:
            conn.close()
            raise

        def run(ps: ParamSet) -> None:
            with RawCursor(conn) as cur:
                cur.execute(spec.postgres_sql, ps.postgres)
                if cur.description is not None:
                    cur.fetchall()

        return run, conn.close

    result = LoadResult(clients=clients, runs_per_client=runs, target_ms=target_ms)
    result.sqlite = _drive(clients, runs, sets, budget, sqlite_client)
    result.postgres = _drive(clients, runs, sets, budget, postgres_client)
    if clients > 1 and len(sets) < clients:
        result.notes.append(
            f"{len(sets)} parameter set(s) for {clients} clients: several clients run the "
            "same values at once, as they would for a popular page"
        )
    return result
