#!/usr/bin/env python3
"""Snapshot throughput and memory: the replicator against a raw sqlite3 | psql COPY.

    python bench/snapshot.py [--schema reference|light|wide|all]
                             [--artifacts 1000000] [--small-artifacts 100000]
                             [--light-rows 1000000,2000000,500000] [--wide-rows 200000]
                             [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                             [--out docs/benchmarks.md] [--steps a,b,...] [--py-spy]
                             [--code worktree|COMMIT]

A quick version: ``--artifacts 20000 --small-artifacts 5000 --light-rows 2000,3000,1000
--wide-rows 500 --no-write``. Full size (``--schema all``, the default) takes 10-20
minutes on a 2-core machine (generating the databases once: a few minutes more).

Each schema is measured in every run (``--schema all``): the reference app's, whose
GIN index makes PostgreSQL the bottleneck of both paths, and the two of
``bench/schemas.py``, where the client is. For the light and the wide one,
``<schema>_raw_indexed`` (the raw path below into the existing tables of
``LIGHT_PG_SCHEMA`` / ``WIDE_PG_SCHEMA``), ``<schema>_repl_indexed`` (the replicator
into the same, ``create_tables = false``), ``<schema>_repl_indexed_python`` (the same
with ``snapshot.sql_conversion = false``: every value converted in Python, for
comparison), ``<schema>_repl_create`` (the replicator
creating the tables) and ``<schema>_raw_created`` (the raw path into the complete schema
the replicator ends with), as for the reference schema:

One run of the reference schema measures, each into a freshly created database
``bench_snap_<step>``:

raw_indexed
    ``sqlite3 -csv DB "SELECT cols" | psql -c "\\copy t (cols) FROM STDIN CSV"`` per
    table in foreign-key order, into the app's own typed, indexed schema
    (``replicator/data/reference_app/postgres_schema.sql``: PKs, UNIQUEs, FKs,
    b-tree indexes and a GIN index on ``artifacts.raw_json``).
repl_indexed
    ``replicator snapshot`` (a subprocess, ``config/reference-app.toml``:
    ``create_tables = false``, coercion and dead-lettering on) into the same schema.
repl_indexed_python
    (information) the same with ``snapshot.sql_conversion = false``: every value
    converted in Python (the path before SQLite wrote COPY text), for comparison.
repl_indexed_defer
    (information) the same with ``snapshot.defer_indexes = true``: each empty
    table is loaded without its plain secondary indexes, which are built again
    once it is copied (keys, UNIQUEs and FKs stay).
repl_create
    ``replicator snapshot`` with ``REPLICATOR_SNAPSHOT_CREATE_TABLES=true`` into an
    empty database: it creates each table with its primary key, loads it, then
    builds secondary indexes and foreign keys. Compared with ``raw_created``.
raw_created
    the raw path into the complete schema ``repl_create`` ends with, created before
    the load (what someone running sqlite3 | psql would have): the replicator's own
    ``create_table_sql`` (column types, primary key) followed by every statement of
    its ``post_load_sql`` (UNIQUE and secondary indexes, foreign keys).
raw_noindex
    (information) the raw path into the tables the replicator would create (same
    column types) with the primary key removed: no index at all, the bound of a bare
    COPY that no path building indexes can reach.
raw_pk
    (information) the same with the primary key kept: what the replicator's
    tables hold while it loads them. Compared with ``raw_noindex``.
repl_small
    ``replicator snapshot`` into the indexed schema from a ``--small-artifacts``
    database: peak RSS at a second size.
repl_small_bad
    the same from a database with ~0.2% bad cells: the cost of dead-lettering.

Source databases are generated once with :func:`replicator.demo.sample.generate_reference_db`
(no bad values unless said) and cached under ``bench/out/``. Peak RSS is the
replicator process's ``VmHWM`` (its own high-water mark) from ``/proc/PID/status``,
sampled every 0.25 s together with ``VmRSS`` to show RSS over the run. Other
processes' CPU use is sampled from ``/proc`` during every step and reported with the
figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

bl.ensure_venv()

import schemas as bs  # noqa: E402

TABLES = bl.REPLICATED_TABLES
CONFIG = bl.code_root() / "config" / "reference-app.toml"  # of the commit run (--code)
REFERENCE_STEPS = (
    "raw_indexed",
    "repl_indexed",
    "repl_indexed_python",
    "repl_indexed_defer",
    "repl_create",
    "raw_created",
    "raw_noindex",
    "raw_pk",
    "repl_small",
    "repl_small_bad",
)
# The light and wide schemas (bench/schemas.py): the raw path and the replicator into
# the existing tables, and into the tables the replicator creates.
SCHEMA_STEPS = ("raw_indexed", "repl_indexed", "repl_indexed_python", "repl_create", "raw_created")
LIGHT_STEPS = tuple(f"light_{s}" for s in SCHEMA_STEPS)
WIDE_STEPS = tuple(f"wide_{s}" for s in SCHEMA_STEPS)
ALL_STEPS = REFERENCE_STEPS + LIGHT_STEPS + WIDE_STEPS
RSS_TARGET_MB = 150.0


@dataclass
class Source:
    """One source database and how it is copied: the reference app's, or a bench schema's."""

    kind: str  # "reference", "light" or "wide"
    db: Path
    tables: tuple[str, ...]
    config: Path  # the replicator's configuration for it
    counts: dict[str, int]
    pg_schema: str | None = None  # the existing tables' DDL (None: the reference schema)


def bench_source(kind: str, db: Path, tables: tuple[str, ...], pg_schema: str) -> Source:
    config = bl.OUT / f"snapshot-{kind}.toml"
    config.write_text(bs.light_config_toml(db, create_tables=False))
    return Source(kind, db, tables, config, bl.sqlite_counts(db, tables), pg_schema)


@dataclass
class StepResult:
    step: str
    rows: int
    wall: float
    what: str
    peak_mb: float | None = None
    copy_seconds: float | None = None  # replicator: first table copy start -> last end
    tail_seconds: float | None = None  # replicator: last table copied -> exit
    dead_letters: int = 0
    cpu_seconds: float | None = None
    load: str = ""
    others_cores: float = 0.0
    rss_profile: list[float] = field(default_factory=list)
    counts_ok: bool = True
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.wall if self.wall else 0.0


def chunk_rows() -> int:
    import tomllib

    with CONFIG.open("rb") as fh:
        return int(tomllib.load(fh).get("snapshot", {}).get("chunk_rows", 20000))


def column_names(db: Path, table: str) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]
    finally:
        conn.close()


def raw_copy(db: Path, dsn: str, log_path: Path, tables: tuple[str, ...] = TABLES) -> float:
    """sqlite3 -csv | psql \\copy for every table, one after the other; returns seconds."""
    parts = ["set -eo pipefail"]
    for t in tables:
        cols = ", ".join(f'"{c}"' for c in column_names(db, t))
        select = f'SELECT {cols} FROM "{t}"'
        copy = f'\\copy "{t}" ({cols}) FROM STDIN CSV'
        parts.append(
            f"sqlite3 -csv {shlex.quote(str(db))} {shlex.quote(select)} | "
            f"psql -q -X -v ON_ERROR_STOP=1 {shlex.quote(dsn)} -c {shlex.quote(copy)}"
        )
    script = "\n".join(parts)
    (log_path.with_suffix(".sh")).write_text(script + "\n")
    started = time.perf_counter()
    with log_path.open("w") as err:
        proc = subprocess.run(["bash", "-c", script], stderr=err, stdout=err, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"raw copy failed (exit {proc.returncode}), see {log_path}")
    return wall


def replicator_ddl(
    db: Path, dsn: str, *, keep_pk: bool, post_load: bool = False, config_path: Path = CONFIG
) -> list[str]:
    """The CREATE TABLE statements the replicator itself issues for this source.

    With ``post_load``, followed by every statement it runs after its load
    (``post_load_sql``: UNIQUE and secondary indexes, foreign keys added NOT VALID
    then validated), so the tables get the complete schema before any row.
    """
    from replicator.config import load_config
    from replicator.plan.ddl import create_table_sql, post_load_sql
    from replicator.plan.tables import build_plans
    from replicator.source.sqlite import open_source
    from replicator.target.connection import connect

    config = load_config(
        config_path,
        env={},
        overrides={
            "source.path": str(db),
            "target.url": dsn,
            "snapshot.create_tables": True,
        },
    )
    source = open_source(db, readonly=True)
    conn = connect(dsn, autocommit=True)
    try:
        plans = build_plans(source, conn, config)
        out = []
        for plan in plans:
            ddl = create_table_sql(plan).as_string(conn)
            if not keep_pk:
                ddl, n = re.subn(r", PRIMARY KEY \([^)]*\)\)$", ")", ddl)
                assert n == 1, ddl
            out.append(ddl)
        if post_load:
            assert keep_pk
            for plan in plans:
                out += [stmt.as_string(conn) for _, stmt in post_load_sql(plan, plans)]
        return out
    finally:
        conn.close()
        source.close()


def exec_sql(dsn: str, statements: list[str]) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def replicator_env(
    create_tables: bool, defer_indexes: bool | None = None, sql_conversion: bool = True
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REPLICATOR_") and k not in ("DATABASE_URL", "DATABASE_PATH")
    }
    env["REPLICATOR_SNAPSHOT_CREATE_TABLES"] = "true" if create_tables else "false"
    env["REPLICATOR_METRICS_ADDRESS"] = ""
    if defer_indexes is not None:
        env["REPLICATOR_SNAPSHOT_DEFER_INDEXES"] = "true" if defer_indexes else "false"
    if not sql_conversion:
        env["REPLICATOR_SNAPSHOT_SQL_CONVERSION"] = "false"
    return env


def run_replicator(
    db: Path,
    dsn: str,
    step: str,
    *,
    create_tables: bool,
    py_spy: bool,
    defer_indexes: bool | None = None,
    config: Path = CONFIG,
    sql_conversion: bool = True,
) -> tuple[float, bl.MemoryWatch, str, float | None, float | None]:
    cmd = [
        *bl.replicator_command(),
        "-c",
        str(config),
        "--source",
        str(db),
        "--target",
        dsn,
        "--log-format",
        "json",
        "snapshot",
    ]
    out_path = bl.OUT / f"snapshot-{step}.out"
    err_path = bl.OUT / f"snapshot-{step}.log"
    started = time.perf_counter()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=err,
            env=replicator_env(create_tables, defer_indexes, sql_conversion),
        )
        watch = bl.MemoryWatch(proc)
        spy = None
        if py_spy:
            spy = attach_py_spy(proc.pid, bl.OUT / f"snapshot-{step}.pyspy.txt")
        code = watch.wait()
        wall = time.perf_counter() - started
        ended = time.time()
        if spy is not None:
            spy.wait(timeout=60)
    if code != 0:
        raise RuntimeError(f"replicator snapshot exited {code}; see {err_path}")
    events = []
    for line in err_path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    # Each table copy ends at its snapshot_table_done event and started "seconds"
    # before. Copy phase: wall time from the first table's start to the last one's end
    # (tables are copied several at a time, so the sum of their seconds would
    # double-count). Tail: seconds from the last table's end to process exit: secondary
    # indexes, foreign keys, sequences, ANALYZE (whatever the replicator does after).
    spans = []
    for e in events:
        if e.get("event") == "snapshot_table_done":
            end = dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
            spans.append((end - float(e.get("seconds", 0.0)), end))
    copy = tail = None
    if spans:
        last = max(end for _, end in spans)
        copy = last - min(start for start, _ in spans)
        tail = max(0.0, ended - last)
    return wall, watch, out_path.read_text(), copy, tail


def attach_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(bl.REPO / ".venv" / "bin" / "py-spy")
    if not Path(exe).exists():
        bl.log("py-spy not found: pip install py-spy into the venv; not profiling")
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(output),
            "--nonblocking",
            "--idle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def parse_summary(text: str) -> int:
    """Dead letters from `replicator snapshot`'s summary."""
    for line in text.splitlines():
        if line.startswith("total "):
            return int(line.split()[3])
    raise RuntimeError(f"no total line in the summary:\n{text}")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.admin = args.dsn
        self.sampler = bl.LoadSampler().start()
        self.results: dict[str, StepResult] = {}

    def fresh(
        self, step: str, *, reference_schema: bool, source: Source | None = None
    ) -> tuple[str, str]:
        name = f"bench_snap_{step}"
        dsn = bl.recreate_database(self.admin, name)
        if reference_schema:
            if source is not None and source.pg_schema is not None:
                exec_sql(dsn, [source.pg_schema])
            else:
                bl.apply_reference_schema(dsn)
        bl.checkpoint(self.admin)
        return name, dsn

    def finish(self, name: str) -> None:
        if not self.args.keep:
            bl.drop_database(self.admin, name)

    def check_counts(self, dsn: str, expected: dict[str, int], dead: int = 0) -> tuple[bool, str]:
        tables = tuple(expected)
        got = bl.pg_counts(dsn, tables)
        missing = sum(expected.values()) - sum(got.values())
        ok = missing == dead and all(got[t] <= expected[t] for t in tables)
        note = "" if ok else f"row counts differ: expected {expected}, got {got}"
        if not ok:
            bl.log(note)
        return ok, note

    def raw(
        self,
        step: str,
        db: Path,
        expected: dict[str, int],
        ddl: str,
        source: Source | None = None,
    ) -> StepResult:
        name, dsn = self.fresh(step, reference_schema=(ddl == "reference"), source=source)
        config = source.config if source is not None else CONFIG
        what = {
            "reference": "reference schema: PKs, 4 UNIQUE, 5 FKs, 7 b-tree + 1 GIN index"
            if source is None or source.pg_schema is None
            else f"{source.kind} schema (bench/schemas.py): PKs, one UNIQUE each, no FK, no GIN",
            "nopk": "replicator's CREATE TABLE (its column types) without the PRIMARY KEY: "
            "no index, no FK",
            "pk": "replicator's CREATE TABLE (its column types) with the PRIMARY KEY only",
            "created": "the complete schema repl_create ends with, created before the load: "
            "replicator's CREATE TABLE (its column types, PRIMARY KEY) + its post-load "
            "statements",
        }[ddl]
        if ddl != "reference":
            statements = replicator_ddl(
                db,
                dsn,
                keep_pk=(ddl in ("pk", "created")),
                post_load=(ddl == "created"),
                config_path=config,
            )
            exec_sql(dsn, statements)
            bl.checkpoint(self.admin)
            if ddl == "created":
                n_pk = sum(s.startswith("CREATE TABLE") for s in statements)
                n_unique = sum(s.startswith("CREATE UNIQUE INDEX") for s in statements)
                n_index = sum(s.startswith("CREATE INDEX") for s in statements)
                n_fk = sum(s.startswith("DO ") for s in statements)
                what += f" ({n_pk} PKs, {n_unique} UNIQUE, {n_index} b-tree indexes, {n_fk} FKs)"
        bl.log(f"{step}: raw sqlite3 | psql COPY into {name} ...")
        with self.sampler.window(step) as w:
            wall = raw_copy(db, dsn, bl.OUT / f"snapshot-{step}.log", tuple(expected))
        ok, note = self.check_counts(dsn, expected)
        self.finish(name)
        r = StepResult(
            step=step,
            rows=sum(expected.values()),
            wall=wall,
            what=what,
            load=w.describe(),
            others_cores=w.others_cores(),
            counts_ok=ok,
            note=note,
        )
        bl.log(f"{step}: {r.rows} rows in {wall:.1f}s = {r.rate:,.0f} rows/s; {r.load}")
        return r

    def repl(
        self,
        step: str,
        db: Path,
        expected: dict[str, int],
        *,
        create: bool,
        defer_indexes: bool | None = None,
        source: Source | None = None,
        sql_conversion: bool = True,
    ) -> StepResult:
        name, dsn = self.fresh(step, reference_schema=not create, source=source)
        config = source.config if source is not None else CONFIG
        bl.log(f"{step}: replicator snapshot into {name} (create_tables={create}) ...")
        with self.sampler.window(step) as w:
            wall, watch, summary, copy_seconds, tail = run_replicator(
                db,
                dsn,
                step,
                create_tables=create,
                py_spy=self.args.py_spy,
                defer_indexes=defer_indexes,
                config=config,
                sql_conversion=sql_conversion,
            )
        dead = parse_summary(summary)
        ok, note = self.check_counts(dsn, expected, dead)
        self.finish(name)
        what = (
            "empty database: the replicator creates tables + PKs, loads, then builds "
            "secondary indexes and FKs (NOT VALID + VALIDATE)"
            if create
            else "reference schema (as raw_indexed), config/reference-app.toml "
            f"(chunk_rows {chunk_rows()}"
            + (", defer_indexes = true" if defer_indexes else "")
            + ("" if sql_conversion else ", sql_conversion = false: every value in Python")
            + ")"
        )
        if source is not None and source.pg_schema is not None and not create:
            what = (
                f"{source.kind} schema (as {source.kind}_raw_indexed), bench/schemas.py's "
                "light_config_toml (snapshot defaults: chunk_rows 5000, parallel_tables 2)"
                + ("" if sql_conversion else "; sql_conversion = false: every value in Python")
            )
        r = StepResult(
            step=step,
            rows=sum(expected.values()),
            wall=wall,
            what=what,
            peak_mb=watch.trace.peak_mb,
            copy_seconds=copy_seconds,
            tail_seconds=tail,
            dead_letters=dead,
            cpu_seconds=watch.cpu_seconds,
            load=w.describe(),
            others_cores=w.others_cores(),
            rss_profile=[watch.trace.rss_at(f) for f in (0.1, 0.5, 0.9)],
            counts_ok=ok,
            note=note,
        )
        copy_text = f"{copy_seconds:.1f}s" if copy_seconds is not None else "n/a"
        bl.log(
            f"{step}: {r.rows} rows in {wall:.1f}s = {r.rate:,.0f} rows/s (copy phase "
            f"{copy_text}), peak RSS {r.peak_mb:.0f} MB, client CPU "
            f"{watch.cpu_seconds:.0f}s, dead letters {dead}; {r.load}"
        )
        return r

    def run(self) -> None:
        a = self.args
        steps = a.steps
        reference = any(st in REFERENCE_STEPS for st in steps)
        big = bl.reference_db(a.artifacts, a.seed, bad_values=False) if reference else None
        big_counts = bl.sqlite_counts(big, TABLES) if big is not None else None
        self.schemas: dict[str, Source] = {}
        if any(st in LIGHT_STEPS for st in steps):
            db = bs.light_db(*a.light_rows, seed=a.seed)
            self.schemas["light"] = bench_source("light", db, bs.LIGHT_TABLES, bs.LIGHT_PG_SCHEMA)
        if any(st in WIDE_STEPS for st in steps):
            db = bs.wide_db(a.wide_rows, seed=a.seed)
            self.schemas["wide"] = bench_source("wide", db, bs.WIDE_TABLES, bs.WIDE_PG_SCHEMA)
        small = small_counts = bad = bad_counts = None
        if "repl_small" in steps:
            small = bl.reference_db(a.small_artifacts, a.seed, bad_values=False)
            small_counts = bl.sqlite_counts(small, TABLES)
        if "repl_small_bad" in steps:
            bad = bl.reference_db(a.small_artifacts, a.seed, bad_values=True)
            bad_counts = bl.sqlite_counts(bad, TABLES)
        self.sources = {
            "big": (big, big_counts),
            "small": (small, small_counts),
            "bad": (bad, bad_counts),
        }
        self.uptime_before = bl.uptime()
        self.top_before = bl.top_snapshot()
        started = time.perf_counter()
        for step in steps:
            kind, _, base = step.partition("_")
            if kind in self.schemas:
                src = self.schemas[kind]
                if base in ("raw_indexed", "raw_created"):
                    ddl = "reference" if base == "raw_indexed" else "created"
                    self.results[step] = self.raw(step, src.db, src.counts, ddl, src)
                else:
                    self.results[step] = self.repl(
                        step,
                        src.db,
                        src.counts,
                        create=base == "repl_create",
                        source=src,
                        sql_conversion=base != "repl_indexed_python",
                    )
                continue
            assert big is not None and big_counts is not None
            if step == "raw_indexed":
                self.results[step] = self.raw(step, big, big_counts, "reference")
            elif step == "repl_indexed":
                self.results[step] = self.repl(step, big, big_counts, create=False)
            elif step == "repl_indexed_defer":
                self.results[step] = self.repl(
                    step, big, big_counts, create=False, defer_indexes=True
                )
            elif step == "repl_indexed_python":
                self.results[step] = self.repl(
                    step, big, big_counts, create=False, sql_conversion=False
                )
            elif step == "repl_create":
                self.results[step] = self.repl(step, big, big_counts, create=True)
            elif step == "raw_created":
                self.results[step] = self.raw(step, big, big_counts, "created")
            elif step == "raw_noindex":
                self.results[step] = self.raw(step, big, big_counts, "nopk")
            elif step == "raw_pk":
                self.results[step] = self.raw(step, big, big_counts, "pk")
            elif step == "repl_small":
                assert small and small_counts
                self.results[step] = self.repl(step, small, small_counts, create=False)
            elif step == "repl_small_bad":
                assert bad and bad_counts
                self.results[step] = self.repl(step, bad, bad_counts, create=False)
        self.total_seconds = time.perf_counter() - started
        self.uptime_after = bl.uptime()
        self.top_after = bl.top_snapshot()
        self.sampler.stop()

    # -- report ----------------------------------------------------------------

    def report(self, info: dict[str, str]) -> str:
        lines = ["## Snapshot", ""]
        lines += bl.machine_lines(info)
        lines += bl.code_change_note(info)
        cmd = " ".join(shlex.quote(x) for x in ["python", "bench/snapshot.py", *sys.argv[1:]])
        lines += [
            "",
            f"Command: `{cmd}` (whole run {self.total_seconds / 60:.1f} min, "
            "database generation excluded).",
            "",
        ]
        if any(st in REFERENCE_STEPS for st in self.args.steps):
            lines += self.reference_report()
        for kind in self.schemas:
            lines += self.schema_report(kind)
        lines += [
            "Machine load (`uptime`) before: `"
            + self.uptime_before.strip()
            + "`; after: `"
            + self.uptime_after.strip()
            + "`.",
            "",
        ]
        return "\n".join(lines)

    def schema_report(self, kind: str) -> list[str]:
        """The light or wide schema's four steps: the replicator against the raw path
        into the existing tables and into the complete schema it creates."""
        src = self.schemas[kind]
        R = self.results
        steps = [st for st in self.args.steps if st.startswith(f"{kind}_")]
        total = sum(src.counts.values())
        lines = [
            f"### {kind.capitalize()} schema",
            "",
            f"Source: `{src.db.name}` (bench/schemas.py), {total:,} rows "
            f"({', '.join(f'{t} {n:,}' for t, n in src.counts.items())}); "
            f"{src.db.stat().st_size / 2**20:,.0f} MiB. No bad values.",
            "",
        ]
        rows = []
        for step in steps:
            r = R[step]
            target, rel, ok = "-", "1.00x" if "_raw_" in step else "n/a", None
            base_name = {
                f"{kind}_repl_indexed": (f"{kind}_raw_indexed", 0.9),
                f"{kind}_repl_create": (f"{kind}_raw_created", 1.0),
            }.get(step)
            if step == f"{kind}_repl_indexed_python" and f"{kind}_raw_indexed" in R:
                rel = f"{r.rate / R[f'{kind}_raw_indexed'].rate:.2f}x"
            if base_name is not None:
                base, need = R.get(base_name[0]), base_name[1]
                ok = (r.peak_mb or 0) < RSS_TARGET_MB
                if base is not None:
                    rel = f"{r.rate / base.rate:.2f}x"
                    target = f"≥ {need:.2f}x {base_name[0]}; RSS < 150 MB"
                    ok = ok and r.rate >= need * base.rate
                else:
                    target = f"RSS < 150 MB ({base_name[0]} not run)"
            rows.append(
                [
                    f"`{step}`",
                    bl.fmt_int(r.rows),
                    f"{r.wall:.1f}",
                    bl.fmt_int(r.rate),
                    rel,
                    f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-",
                    f"{r.cpu_seconds:.0f}" if r.cpu_seconds is not None else "-",
                    f"{r.others_cores:.2f}",
                    target,
                    bl.verdict(ok) if ok is not None else "-",
                ]
            )
        lines += bl.table(
            [
                "step",
                "rows",
                "wall s",
                "rows/s",
                "vs baseline",
                "peak RSS MB",
                "replicator CPU s",
                "other procs (cores)",
                "target",
                "result",
            ],
            rows,
        )
        lines += ["", "What each side had:", ""]
        for step in steps:
            r = R[step]
            extra = f" Peak RSS {r.peak_mb:.0f} MB." if r.peak_mb is not None else ""
            if r.dead_letters:
                extra += f" {r.dead_letters} rows dead-lettered."
            if not r.counts_ok:
                extra += f" **Row-count check failed**: {r.note}"
            lines.append(f"- `{step}`: {r.what}.{extra} Load: {r.load}.")
        lines.append("")
        return lines

    def reference_report(self) -> list[str]:
        a = self.args
        R = self.results
        big, big_counts = self.sources["big"]
        assert big is not None and big_counts is not None
        lines = [
            "### Reference schema",
            "",
            f"Source: `{big.name}`, {a.artifacts:,} artifacts, no bad values, "
            f"{sum(big_counts.values()):,} rows in the 10 replicated tables "
            f"({', '.join(f'{t} {n:,}' for t, n in big_counts.items())}); "
            f"{big.stat().st_size / 2**20:,.0f} MiB.",
            "",
        ]
        rows = []
        raw_i = R.get("raw_indexed")
        raw_n = R.get("raw_noindex")
        raw_c = R.get("raw_created")

        def ratio(r: StepResult, base: StepResult | None) -> str:
            return f"{r.rate / base.rate:.2f}x" if base else "n/a"

        ref_steps = [st for st in a.steps if st in REFERENCE_STEPS]
        for step in ref_steps:
            r = R[step]
            target = ""
            ok: bool | None = None
            if step in ("repl_indexed", "repl_create"):
                base, need, name = (
                    (raw_i, 0.9, "raw_indexed")
                    if step == "repl_indexed"
                    else (raw_c, 1.0, "raw_created")
                )
                ok = (r.peak_mb or 0) < RSS_TARGET_MB
                if base is not None:
                    target = f"≥ {need:.2f}x {name}; RSS < 150 MB"
                    ok = ok and r.rate >= need * base.rate
                else:
                    target = f"RSS < 150 MB ({name} not run)"
                rel = ratio(r, base)
            elif step in ("repl_small", "repl_small_bad"):
                target = "RSS < 150 MB"
                ok = (r.peak_mb or 0) < RSS_TARGET_MB
                rel = ratio(r, R.get("repl_small")) if step == "repl_small_bad" else "n/a"
            elif step == "raw_pk":
                rel = ratio(r, raw_n)
            elif step in ("repl_indexed_defer", "repl_indexed_python"):
                rel = ratio(r, raw_i)
            else:
                rel = "1.00x" if step in ("raw_indexed", "raw_created", "raw_noindex") else "n/a"
            rows.append(
                [
                    f"`{step}`",
                    bl.fmt_int(r.rows),
                    f"{r.wall:.1f}",
                    bl.fmt_int(r.rate),
                    rel,
                    f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-",
                    f"{r.copy_seconds:.1f}" if r.copy_seconds is not None else "-",
                    f"{r.tail_seconds:.1f}" if r.tail_seconds is not None else "-",
                    f"{r.cpu_seconds:.0f}" if r.cpu_seconds is not None else "-",
                    f"{r.others_cores:.2f}",
                    target or "-",
                    bl.verdict(ok) if ok is not None else "-",
                ]
            )
        lines += bl.table(
            [
                "step",
                "rows",
                "wall s",
                "rows/s",
                "vs baseline",
                "peak RSS MB",
                "copy phase s",
                "after copy s",
                "replicator CPU s",
                "other procs (cores)",
                "target",
                "result",
            ],
            rows,
        )
        lines += [
            "",
            "Baselines: `repl_indexed` (and, for information, `repl_indexed_defer`) is "
            "compared with `raw_indexed`, `repl_create` with "
            "`raw_created` (the raw path into the same complete schema the replicator ends "
            "with: its column types, primary keys, UNIQUE and secondary indexes and foreign "
            "keys, created before the load as someone running sqlite3 | psql would have "
            "them), `raw_pk` with `raw_noindex` (a bare COPY into the same column types "
            "with no index at all: shown as the bound no path that builds indexes can "
            "reach), `repl_small_bad` with `repl_small` (same size, "
            "clean). Rows/s is source rows divided by the wall time of the whole command "
            "(for the replicator: process start to exit, including its start-up, state-schema "
            "migration, planning, index builds and sequence setting). *copy phase* is the wall "
            "time from the start of the first table copy to the end of the last one (the "
            "replicator copies several tables at a time, from its `snapshot_table_done` "
            "log events); *after copy* is from the last table "
            "copied to the process exit (index and foreign-key builds, sequences, ANALYZE); "
            "the rest of the wall time is start-up (imports, state-schema check, planning). "
            "*replicator CPU* is user+sys of the "
            "replicator process (wait4). *other procs* is the CPU other processes on the "
            "machine (not this benchmark, not PostgreSQL serving it) used during the step, "
            "in cores out of "
            f"{os.cpu_count()}.",
            "",
            "What each side had:",
            "",
        ]
        for step in ref_steps:
            r = R[step]
            extra = ""
            if r.peak_mb is not None and r.rss_profile:
                extra = (
                    f" RSS at 10/50/90% of the run: "
                    f"{' / '.join(f'{x:.0f}' for x in r.rss_profile)} MB."
                )
            if r.dead_letters:
                extra += f" {r.dead_letters} rows dead-lettered."
            if not r.counts_ok:
                extra += f" **Row-count check failed**: {r.note}"
            lines.append(f"- `{step}`: {r.what}.{extra} Load: {r.load}.")
        if "repl_small" in R:
            small, small_counts = self.sources["small"]
            assert small and small_counts
            lines += [
                "",
                f"`repl_small` source: `{small.name}`, {sum(small_counts.values()):,} rows "
                f"({a.small_artifacts:,} artifacts).",
            ]
        if "repl_small_bad" in R:
            bad, bad_counts = self.sources["bad"]
            assert bad and bad_counts
            rb, rs = R["repl_small_bad"], R.get("repl_small")
            cost = f"{(rs.rate / rb.rate - 1) * 100:+.0f}% time" if rs else "n/a"
            lines += [
                f"`repl_small_bad` source: `{bad.name}`, {sum(bad_counts.values()):,} rows, "
                f"{rb.dead_letters} dead letters ({rb.dead_letters / rb.rows * 100:.2f}%); "
                f"dead-lettering cost vs the clean database of the same size: {cost}.",
            ]
        lines += [
            "",
            "Notes on the raw path: `sqlite3 -csv` prints REAL values with 15 significant "
            "digits and PostgreSQL ignores the UTC offset of ISO text going into "
            "`timestamp` columns, so the raw copy is not a correct migration (the "
            "replicator's is); it is the speed of light for a one-shot copy. It runs "
            "`sqlite3` and `psql` as two processes in a pipe next to the PostgreSQL "
            "backend, so it uses both cores.",
            "",
        ]
        return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=1_000_000)
    parser.add_argument(
        "--small-artifacts",
        type=int,
        default=100_000,
        help="size of the second RSS point and of the bad-values run",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--schema",
        default="all",
        choices=("reference", "light", "wide", "all"),
        help="which sources to measure (their default steps): the reference app's, the "
        "light schema, the wide-text one (bench/schemas.py), or all three",
    )
    parser.add_argument(
        "--light-rows",
        default="1000000,2000000,500000",
        help="rows of the light schema's artifacts, artifact_scores and tweets",
    )
    parser.add_argument("--wide-rows", type=int, default=200_000, help="rows of the wide schema")
    parser.add_argument(
        "--code",
        default="worktree",
        help="replicator code to run: 'worktree' (the files on disk) or a git commit/ref, "
        "exported with git archive under bench/out/code-<sha>/ and put first on PYTHONPATH",
    )
    parser.add_argument("--dsn", default=bl.DEFAULT_DSN, help="an admin DSN (may CREATE DATABASE)")
    parser.add_argument("--out", type=Path, default=bl.REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--steps", default="", help=f"comma-separated subset of {ALL_STEPS} (overrides --schema)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench_snap_* databases")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="attach py-spy (non-blocking, 100 Hz, --idle) to each replicator run, into "
        "bench/out/snapshot-*.pyspy.txt; figures are then not representative",
    )
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    args = parser.parse_args()
    by_schema = {
        "reference": REFERENCE_STEPS,
        "light": LIGHT_STEPS,
        "wide": WIDE_STEPS,
        "all": ALL_STEPS,
    }
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()] or list(
        by_schema[args.schema]
    )
    args.light_rows = tuple(int(n) for n in args.light_rows.split(","))
    if len(args.light_rows) != 3:
        parser.error("--light-rows takes three numbers")
    unknown = set(args.steps) - set(ALL_STEPS)
    if unknown:
        parser.error(f"unknown steps: {sorted(unknown)}")
    bl.OUT.mkdir(parents=True, exist_ok=True)
    info = bl.machine_info(args.dsn)
    bench = Bench(args)
    bench.run()
    section = bench.report(info)
    print(section)
    (bl.OUT / "snapshot-top.txt").write_text(
        "before:\n" + bench.top_before + "\n\nafter:\n" + bench.top_after + "\n"
    )
    if not args.no_write:
        # A run of one schema keeps the other schemas' sections as they were.
        name = "snapshot" if args.schema == "all" else f"snapshot-{args.schema}"
        bl.write_section(args.out, name, section)
        bl.log(f"wrote the {name} section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
