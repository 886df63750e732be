"""Shared helpers for the benchmark scripts in this folder (not part of the package).

What lives here: the machine description written at the top of each
benchmark section, per-process memory sampling (``VmRSS`` and the high-water mark ``VmHWM``
from ``/proc``; CPU time from ``wait4``), a sampler that tells how much
CPU *other* processes took while a measurement ran, throwaway PostgreSQL
databases, and the code that rewrites one section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The reference app's replicated tables, parents first: replicator.demo.sample's
# REFERENCE_TABLES without alembic_version (excluded, as in the config).
REPLICATED_TABLES = (
    "tweets",
    "artifacts",
    "artifact_classifications",
    "artifact_scores",
    "discovery_labels",
    "experiments",
    "experiment_runs",
    "snapshots",
    "beta_users",
    "cursors",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ensure_venv() -> None:
    """Re-run this script with the project's venv interpreter when `replicator` is missing,
    and with ``--code REF`` on the command line, on a ``git archive`` of that commit."""
    ref = None
    if "--code" in sys.argv[:-1]:
        ref = sys.argv[sys.argv.index("--code") + 1]
    venv_python = REPO / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    if ref and ref != "worktree" and not os.environ.get("BENCH_CODE_DIR"):
        sha = _run_text(["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"])
        if not sha:
            sys.exit(f"--code {ref}: not a commit of this repository")
        target = OUT / f"code-{sha[:12]}"
        if not (target / "replicator").is_dir() or not (target / "config").is_dir():
            tmp = OUT / f"tmp-code-{sha[:12]}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", sha, "replicator", "migrations", "config"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(target), env.get("PYTHONPATH", "")) if p
        )
        env["BENCH_CODE_DIR"] = str(target)
        env["BENCH_CODE_REF"] = f"{ref} = {sha[:12]}"
        os.execve(python, [python, *sys.argv], env)
    try:
        import replicator  # noqa: F401
    except ImportError:
        if Path(sys.executable) != venv_python and venv_python.exists():
            os.execv(python, [python, *sys.argv])
        raise


def code_root() -> Path:
    """Where the replicator code (and its config/) being benchmarked lives."""
    return Path(os.environ.get("BENCH_CODE_DIR") or REPO)


def replicator_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "replicator"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("replicator")
    if found:
        return [found]
    return [sys.executable, "-m", "replicator.cli"]


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def _run_text(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_info(dsn: str) -> dict[str, str]:
    import psycopg

    mem_kb = 0
    cpu_model = ""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with psycopg.connect(dsn, autocommit=True) as conn:
        pg_version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                (
                    [
                        "shared_buffers",
                        "maintenance_work_mem",
                        "synchronous_commit",
                        "fsync",
                        "max_wal_size",
                        "work_mem",
                    ],
                ),
            ).fetchall()
        )
    head = _run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _run_text(["git", "-C", str(REPO), "status", "--porcelain", "--", "replicator"])
    exported = os.environ.get("BENCH_CODE_REF")
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} ({cpu_model})" if cpu_model else str(os.cpu_count()),
        "nproc": _run_text(["nproc"]),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "pg_settings": ", ".join(f"{k}={v}" for k, v in sorted(settings.items())),
        "sqlite_python": sqlite3.sqlite_version,
        "sqlite_cli": _run_text(["sqlite3", "--version"]).split(" ")[0],
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "git": (
            f"{exported} (a `git archive` of it, run via PYTHONPATH; the working tree was not used)"
            if exported
            else f"{head}{' + uncommitted changes in replicator/' if dirty else ''} (working tree)"
        ),
        "code": code_fingerprint(),
    }


def code_fingerprint() -> str:
    """A short hash of every file under replicator/ as it is on disk now (others edit it)."""
    import hashlib

    import replicator

    root = Path(replicator.__file__).resolve().parent
    h = hashlib.sha1(usedforsecurity=False)
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root.parent)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def machine_lines(info: dict[str, str]) -> list[str]:
    return [
        f"- date: {info['date']}; code: {info['git']}; replicator/*.py as run: sha1 {info['code']}",
        f"- machine: nproc {info['nproc']}, CPU {info['cpus']}, memory {info['memory']}, "
        f"Linux {info['kernel']}",
        f"- PostgreSQL {info['postgresql']} on the same machine ({info['pg_settings']})",
        f"- SQLite {info['sqlite_python']} (Python module), sqlite3 CLI {info['sqlite_cli']}; "
        f"Python {info['python']}; psycopg {info['psycopg']}",
    ]


def code_change_note(info: dict[str, str]) -> list[str]:
    now = code_fingerprint()
    if now == info["code"]:
        return []
    return [
        f"- replicator/*.py changed on disk during the run (sha1 {now} at the end): each "
        "replicator process ran the code present when it started"
    ]


def uptime() -> str:
    return _run_text(["uptime"])


def top_snapshot(lines: int = 12) -> str:
    return "\n".join(_run_text(["top", "-bn1", "-w", "200"]).splitlines()[:lines])


# --------------------------------------------------------------------------- CPU of others


@dataclass
class LoadWindow:
    seconds: float = 0.0
    # CPU-seconds by class: ours (this script and its descendants), pg_ours
    # (PostgreSQL backends of bench_* databases), pg_bg (PostgreSQL background
    # processes), pg_other (backends of other databases), kernel (kernel threads),
    # other.
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    other_by_name: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    loadavg: list[float] = field(default_factory=list)

    def cores(self, cls: str) -> float:
        return self.cpu.get(cls, 0.0) / self.seconds if self.seconds else 0.0

    def others_cores(self) -> float:
        return self.cores("other") + self.cores("pg_other")

    def describe(self) -> str:
        if not self.seconds:
            return "not sampled"
        top = sorted(self.other_by_name.items(), key=lambda kv: -kv[1])[:4]
        names = ", ".join(f"{n} {c / self.seconds:.2f}" for n, c in top if c / self.seconds >= 0.05)
        la = (
            f"; 1-min load avg {min(self.loadavg):.2f}..{max(self.loadavg):.2f}"
            if self.loadavg
            else ""
        )
        return (
            f"other processes used {self.others_cores():.2f} of {os.cpu_count()} cores"
            f"{' (' + names + ')' if names else ''}{la}"
        )


class LoadSampler:
    """Samples /proc every ``interval`` s and charges CPU time to classes of processes."""

    def __init__(self, interval: float = 1.0, db_prefix: str = "bench_") -> None:
        self.interval = interval
        self.db_prefix = db_prefix
        self.me = os.getpid()
        self._prev: dict[int, tuple[str, int]] = {}
        self._cmd: dict[int, str] = {}
        self._lock = threading.Lock()
        self._windows: dict[str, LoadWindow] = {}
        self._active: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)
        self._last = time.monotonic()

    def start(self) -> LoadSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @contextlib.contextmanager
    def window(self, name: str) -> Iterator[LoadWindow]:
        self._sample()
        with self._lock:
            w = self._windows[name] = LoadWindow()
            self._active.add(name)
        try:
            yield w
        finally:
            self._sample()
            with self._lock:
                self._active.discard(name)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _classify(self, pid: int, ppid: int, comm: str, ours: set[int]) -> str:
        if pid in ours:
            return "ours"
        if pid == 2 or ppid == 2:
            return "kernel"  # kernel threads (writeback of everyone's I/O, ours included)
        if comm in ("postgres", "postmaster"):
            cmd = self._cmd.get(pid)
            if cmd is None:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    cmd = ""
                self._cmd[pid] = cmd
            if f" {self.db_prefix}" in cmd:
                return "pg_ours"
            if re.search(r"postgres: \S+ \S+ (\d|\[local\])", cmd):
                return "pg_other"
            return "pg_bg"
        return "other"

    def _sample(self) -> None:
        with self._lock:
            now = time.monotonic()
            elapsed = now - self._last
            self._last = now
            stats: dict[int, tuple[int, str, int]] = {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                try:
                    raw = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                lpar, rpar = raw.index("("), raw.rindex(")")
                comm = raw[lpar + 1 : rpar]
                rest = raw[rpar + 2 :].split()
                ppid = int(rest[1])
                ticks = int(rest[11]) + int(rest[12])
                stats[pid] = (ppid, comm, ticks)
            children: dict[int, list[int]] = defaultdict(list)
            for pid, (ppid, _, _) in stats.items():
                children[ppid].append(pid)
            ours = set()
            todo = [self.me]
            while todo:
                p = todo.pop()
                ours.add(p)
                todo.extend(children.get(p, ()))
            deltas: dict[str, float] = defaultdict(float)
            by_name: dict[str, float] = defaultdict(float)
            for pid, (ppid, comm, ticks) in stats.items():
                prev = self._prev.get(pid)
                if not self._prev:
                    base = ticks  # first sample: only a baseline
                elif prev is None or prev[1] > ticks:
                    base = 0  # appeared since the last sample: all its ticks are recent
                else:
                    base = prev[1]  # (kernel workers rename themselves: ignore comm)
                d = (ticks - base) / CLK_TCK
                if d <= 0:
                    continue
                cls = self._classify(pid, ppid, comm, ours)
                deltas[cls] += d
                if cls in ("other", "pg_other"):
                    by_name[comm] += d
            self._prev = {pid: (comm, ticks) for pid, (_, comm, ticks) in stats.items()}
            for gone in set(self._cmd) - set(stats):
                del self._cmd[gone]
            load1 = float(Path("/proc/loadavg").read_text().split()[0])
            for name in self._active:
                w = self._windows[name]
                w.seconds += elapsed
                w.loadavg.append(load1)
                for k, v in deltas.items():
                    w.cpu[k] += v
                for k, v in by_name.items():
                    w.other_by_name[k] += v


# --------------------------------------------------------------------------- memory


@dataclass
class MemoryTrace:
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss kB, hwm kB)
    # The process's own VmHWM (its high-water mark since exec), as last sampled.
    # Not wait4's ru_maxrss: Linux carries the parent's high-water mark over to a
    # child started by vfork + exec, so a benchmark process grown big (generating
    # a database) would show up as the replicator's peak.
    peak_kb: int = 0

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    def rss_at(self, fraction: float) -> float:
        """RSS (MB) at a fraction of the run's duration."""
        if not self.samples:
            return 0.0
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        target = t0 + (t1 - t0) * fraction
        best = min(self.samples, key=lambda s: abs(s[0] - target))
        return best[1] / 1024


def read_status(pid: int) -> tuple[int, int] | None:
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        return None
    return rss, hwm


class MemoryWatch:
    """Samples VmRSS/VmHWM of one process; :meth:`wait` reaps it with wait4 (CPU time)."""

    def __init__(self, proc: subprocess.Popen[Any], interval: float = 0.25) -> None:
        self.proc = proc
        self.trace = MemoryTrace()
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            st = read_status(self.proc.pid)
            if st is None:
                break
            if st[0] == 0:  # not exec'd yet, or a zombie
                self._stop.wait(0.02)
                continue
            self.trace.samples.append((time.monotonic() - start, st[0], st[1]))
            self._stop.wait(self.interval)
        # A zombie's status no longer shows its memory: the last sample before exit
        # holds the high-water mark up to then (sampling every ``interval``).

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"process {self.proc.pid} still running")
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self.trace.peak_kb = max((s[2] for s in self.trace.samples), default=0)
        code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = code
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.user_seconds = usage.ru_utime
        self.sys_seconds = usage.ru_stime
        return code

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)


# --------------------------------------------------------------------------- PostgreSQL


def dsn_for(admin_dsn: str, dbname: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(admin_dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def recreate_database(admin_dsn: str, dbname: str) -> str:
    import psycopg
    from psycopg import sql

    assert dbname.startswith("bench_"), dbname
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return dsn_for(admin_dsn, dbname)


def drop_database(admin_dsn: str, dbname: str) -> None:
    import psycopg
    from psycopg import sql

    assert dbname.startswith("bench_"), dbname
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def checkpoint(admin_dsn: str) -> None:
    """Flush dirty buffers so one measurement does not pay for the previous one's writes."""
    import psycopg

    with contextlib.suppress(psycopg.Error), psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def apply_reference_schema(dsn: str) -> None:
    import psycopg

    from replicator.demo.sample import REFERENCE_PG_SCHEMA

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(REFERENCE_PG_SCHEMA)


def pg_counts(dsn: str, tables: Sequence[str]) -> dict[str, int]:
    import psycopg
    from psycopg import sql

    out = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            ).fetchone()
            out[t] = int(row[0]) if row else 0
    return out


# --------------------------------------------------------------------------- source DBs


def sqlite_counts(path: Path, tables: Sequence[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def reference_db(artifacts: int, seed: int, bad_values: bool) -> Path:
    """The cached reference-app database of this size and seed (generated when missing)."""
    from replicator.demo.sample import generate_reference_db

    OUT.mkdir(parents=True, exist_ok=True)
    kind = "bad" if bad_values else "clean"
    path = OUT / f"refapp_a{artifacts}_s{seed}_{kind}.db"
    if path.exists():
        return path
    tmp = OUT / f"tmp-{path.name}"
    log(f"generating {path.name} ({artifacts} artifacts, bad values: {bad_values}) ...")
    report = generate_reference_db(
        tmp, artifacts=artifacts, seed=seed, bad_values=bad_values, children=True, overwrite=True
    )
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    tmp.rename(path)
    log(f"generated {report.total_rows} rows in {report.seconds:.0f}s")
    return path


# --------------------------------------------------------------------------- report


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section between this benchmark's markers."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    if path.exists():
        text = path.read_text()
    else:
        text = (
            "# Benchmarks\n\n"
            "Measured figures only, each with the command that produced it. Every section\n"
            "is rewritten by its script (`bench/*.py`); the machine is described in each\n"
            "section because the runs may happen on different days.\n\n"
        )
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"
