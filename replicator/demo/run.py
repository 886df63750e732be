"""``replicator demo``: the whole migration, end to end, on a sample database.

Builds a reference-app SQLite database (with a sprinkling of values the
PostgreSQL schema must refuse), creates the application's PostgreSQL schema,
starts a background writer that behaves like the app, replicates (snapshot,
then stream) while printing live status, stops the writer, waits for lag zero,
runs ``verify`` and prints the verdict. Runs on the server given with
``--server`` (in a database of its own, dropped afterwards), otherwise on a
throwaway PostgreSQL it starts and removes itself. It never uses
``DATABASE_URL``: that names the operator's real target, which a demo must
leave alone unless asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import psycopg
from psycopg import conninfo, sql

from replicator.config import (
    Config,
    LogConfig,
    MetricsConfig,
    SnapshotConfig,
    SourceConfig,
    TargetConfig,
)
from replicator.demo import sample
from replicator.dsn import Secret, redact_dsn
from replicator.errors import TargetError
from replicator.identifiers import pg_ident, sqlite_ident
from replicator.logs import configure
from replicator.plan.tables import select_tables
from replicator.proof.verify import Verifier
from replicator.source import changelog
from replicator.source.sqlite import list_tables, open_source, read_transaction
from replicator.state import deadletter
from replicator.state.checkpoint import load_progress
from replicator.state.deadletter import count_open
from replicator.state.position import changes_applied, load_position
from replicator.stream.daemon import Daemon
from replicator.stream.systemd import Notifier

DEMO_DATABASE_PREFIX = "replicator_demo"


@contextlib.contextmanager
def demo_target(server_dsn: str | None, out: TextIO) -> Iterator[str]:
    """A fresh database for the demo: on the given server, or a throwaway one."""
    if server_dsn is None:
        from replicator.demo.devdb import ThrowawayPostgres

        if os.environ.get("DATABASE_URL"):
            out.write(
                "DATABASE_URL is set: the demo leaves that server alone "
                "(--server runs it on a server of your choice)\n"
            )
        out.write("starting a throwaway PostgreSQL (no --server given) ...\n")
        with ThrowawayPostgres() as pg:
            out.write(f"  listening on {redact_dsn(pg.dsn)}\n")
            with _fresh_database(pg.dsn) as dsn:
                yield dsn
        out.write("throwaway PostgreSQL stopped and removed\n")
    else:
        out.write(f"using the PostgreSQL server given with --server: {redact_dsn(server_dsn)}\n")
        with _fresh_database(server_dsn) as dsn:
            yield dsn


@contextlib.contextmanager
def _fresh_database(server_dsn: str) -> Iterator[str]:
    """A database of the demo's own (a unique name: demos may run side by side),
    dropped afterwards."""
    name = f"{DEMO_DATABASE_PREFIX}_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg.connect(server_dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise TargetError(f"cannot connect to {redact_dsn(server_dsn)}: {exc}") from None
    with admin:
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(pg_ident(name)))
        except psycopg.Error as exc:
            raise TargetError(
                f"cannot create database {name!r} on {redact_dsn(server_dsn)} "
                f"(the demo needs CREATEDB): {exc}"
            ) from None
    dsn = conninfo.make_conninfo(server_dsn, dbname=name)
    try:
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pg_ident(name)))


class StatusLine:
    """Live status from the state the daemon keeps (as `replicator status` reads it)."""

    def __init__(
        self, dsn: str, db: Path, schema: str, total: int, phase: Callable[[], str]
    ) -> None:
        self.dsn = dsn
        self.db = db
        self.schema = schema
        self.total = total  # rows in the replicated tables when replication started
        self.phase = phase  # the daemon's own state: snapshot, streaming, ...
        self.streaming = False  # once streaming, the line never goes back to "snapshot"
        self._last: tuple[float, int] | None = None

    def read(self) -> dict[str, Any]:
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            progress = load_progress(cur, self.schema).values()
            position = load_position(cur, self.schema)
            applied = changes_applied(cur, self.schema)
            dead = sum(count_open(cur, self.schema, "forward").values())
        source = open_source(self.db, readonly=True)
        try:
            head = changelog.head_position(source) if changelog.changelog_exists(source) else 0
            oldest = None
            if position is not None:
                _n, oldest = changelog.depth(source, position.seq)
        finally:
            source.close()
        now = time.monotonic()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (applied - self._last[1]) / (now - self._last[0])
        self._last = (now, applied)
        self.streaming = self.streaming or self.phase() == "streaming"
        return {
            "copied": sum(p.rows_written for p in progress),
            "total": self.total,
            "snapshot_done": self.streaming,
            "position": position.seq if position else None,
            "head": head,
            "lag_changes": head - position.seq if position else None,
            "lag_seconds": max(0.0, time.time() - oldest) if oldest else 0.0,
            "applied": applied,
            "per_second": rate,
            "dead_letters": dead,
        }

    def render(self, s: dict[str, Any], elapsed: float) -> str:
        if not s["snapshot_done"]:
            return (
                f"[{elapsed:5.1f}s] snapshot  {s['copied']:>8} rows copied of the "
                f"{s['total']} there were at the start, {s['dead_letters']} dead letters"
            )
        return (
            f"[{elapsed:5.1f}s] streaming position {s['position']:>7}  lag {s['lag_changes']:>5} "
            f"changes / {s['lag_seconds']:5.2f}s  {s['per_second']:7.0f} changes/s  "
            f"{s['applied']:>7} applied  {s['dead_letters']} dead letters"
        )


def run_demo(
    server_dsn: str | None,
    *,
    artifacts: int = 20_000,
    seconds: float = 15.0,
    rate: float = 300.0,
    workdir: Path | None = None,
    round_trip: bool = False,
    out: TextIO,
) -> int:
    configure("error", "json")  # the status lines tell the story; dead letters are listed
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="replicator-demo-"))
            )
        workdir.mkdir(parents=True, exist_ok=True)
        db = workdir / "app.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        # The server first: a demo that cannot connect says so before building anything.
        dsn = stack.enter_context(demo_target(server_dsn, out))
        out.write(f"building a sample reference-app database: {artifacts} artifacts -> {db}\n")
        report = sample.generate_reference_db(db, artifacts=artifacts, seed=7, bad_values=True)
        out.write(
            f"  {report.total_rows} rows in 11 tables, {len(report.bad_cells)} of them with a "
            "value PostgreSQL must refuse\n"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sample.REFERENCE_PG_SCHEMA.encode())
        dbname = conninfo.conninfo_to_dict(dsn).get("dbname")
        out.write(
            f"created database {dbname} (dropped at the end) with the application's "
            "PostgreSQL schema (alembic head 20251112_0010)\n"
        )
        config = Config(
            source=SourceConfig(path=db),
            target=TargetConfig(url=Secret(dsn)),
            snapshot=SnapshotConfig(create_tables=False),
            metrics=MetricsConfig(address="127.0.0.1:0"),
            log=LogConfig(level="warning", format="json"),
        )
        code = _replicate(config, db, dsn, seconds=seconds, rate=rate, out=out)
        if code == 0 and round_trip:
            from replicator.demo.roundtrip import show_round_trip

            code = show_round_trip(config, db, dsn, out)
        return code
    return 0  # pragma: no cover - the with block always returns


def _replicated_rows(config: Config, db: Path) -> int:
    """Rows in the tables the demo replicates, now (before the app writes more)."""
    source = open_source(db, readonly=True)
    try:
        with read_transaction(source):
            names = select_tables(list_tables(source), config.tables.include, config.tables.exclude)
            return sum(
                int(source.execute(f"SELECT count(*) FROM {sqlite_ident(n)}").fetchone()[0])
                for n in names
            )
    finally:
        source.close()


def _replicate(
    config: Config, db: Path, dsn: str, *, seconds: float, rate: float, out: TextIO
) -> int:
    daemon = Daemon(config, install_signals=False, notifier=Notifier(""))
    failure: list[BaseException] = []

    def run_daemon() -> None:
        try:
            daemon.run()
        except BaseException as exc:  # reported below
            failure.append(exc)

    thread = threading.Thread(target=run_daemon, name="daemon", daemon=True)
    thread.start()
    status = StatusLine(
        dsn, db, config.target.state_schema, _replicated_rows(config, db), lambda: daemon.state
    )
    stop_writer = threading.Event()
    writer_stats: list[Any] = []
    started = time.monotonic()
    # The app keeps writing from the first second: during the snapshot too.
    writer = threading.Thread(
        target=lambda: writer_stats.append(
            sample.run_writer(db, duration=seconds, rate=rate, seed=11, stop=stop_writer)
        ),
        name="app-writer",
        daemon=True,
    )
    out.write(
        f"replicating while the app writes ~{rate:.0f} transactions/s for {seconds:.0f}s ...\n"
    )
    writer.start()
    try:
        while writer.is_alive() and not failure:
            time.sleep(1.0)
            with contextlib.suppress(psycopg.Error):
                out.write(status.render(status.read(), time.monotonic() - started) + "\n")
        writer.join()
        out.write("the app stopped writing; waiting for lag zero ...\n")
        deadline = time.monotonic() + 60
        while not failure and time.monotonic() < deadline:
            s = status.read()
            if s["snapshot_done"] and s["lag_changes"] == 0:
                out.write(status.render(s, time.monotonic() - started) + "\n")
                break
            time.sleep(0.25)
    finally:
        stop_writer.set()
        daemon.request_stop()
        thread.join(timeout=60)
    if failure:
        raise failure[0]
    if writer_stats:
        w = writer_stats[0]
        out.write(
            f"app writer: {w.inserts} inserts, {w.updates} updates, {w.deletes} deletes "
            f"in {w.transactions} transactions\n"
        )
    out.write("\nverifying: row counts and checksums of every table ...\n")
    result = Verifier(replace(config, metrics=MetricsConfig(address=""))).run()
    out.write(result.render() + "\n")
    differences = sum(t.differences for t in result.tables)
    explained = sum(t.dead_lettered for t in result.tables)
    other = result.orphans or result.sequences_behind or result.json_invalid
    if differences == explained and not other:
        out.write(
            f"\nOK: PostgreSQL holds every row of the SQLite database except the {explained} "
            "row(s) whose values it refuses; each is in replicator.dead_letters with its "
            "reason, waiting for a fix at the source.\n"
        )
        with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
            letters = deadletter.fetch(cur, config.target.state_schema, limit=5)
        for letter in letters:
            key = json.dumps(letter.key, ensure_ascii=False)
            out.write(f"  dead letter: {letter.table} {key} {letter.column}: {letter.error}\n")
        return 0
    out.write("\nFAILED: the target differs from the source beyond the dead letters.\n")
    return 1
