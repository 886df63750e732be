"""``replicator demo`` as a newcomer runs it (``make demo``): a subprocess, a
small sample, a few seconds of live writes, and the verdict.

With ``--server`` the demo works on that server in a database of its own,
with a unique name (demos may run side by side), which it drops at the end.
Without it, it starts a throwaway PostgreSQL of its own, which must be gone,
processes and files, when it ends; ``DATABASE_URL`` (the operator's real
target) is never touched.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from pgutil import database_exists
from shiputil import clean_env, replicator_exe

DEMO_ARGS = ("demo", "--artifacts", "2000", "--seconds", "5")


def check_verdict(stdout: str) -> None:
    """The demo's own account adds up: the refused rows it planted are exactly
    the ones the OK verdict names as dead letters, and nothing else differs."""
    planted = re.search(r"(\d+) of them with a value PostgreSQL must refuse", stdout)
    verdict = re.search(r"\nOK: PostgreSQL holds every row .* except the (\d+) row\(s\)", stdout)
    assert planted and verdict, stdout[-3000:]
    assert verdict[1] == planted[1], "dead letters are exactly the planted bad values"
    assert "FAILED" not in stdout
    assert re.search(r"\] streaming position +\d+ +lag +0 changes", stdout), "reached lag zero"
    workdir = re.search(r"-> (\S+)/app\.db\n", stdout)
    assert workdir and not Path(workdir[1]).exists(), "its temporary folder is removed"
    # The live status: snapshot lines, then streaming lines, never back; the rows
    # copied are counted against one fixed total, the source's at the start.
    phases = re.findall(r"\] (snapshot|streaming) ", stdout)
    assert phases and phases == sorted(phases, key=["snapshot", "streaming"].index), phases
    totals = set(re.findall(r"rows copied of the (\d+) there were at the start", stdout))
    assert len(totals) <= 1, totals
    # The per-table verdicts hold no "NO" when the rows missing are the held ones.
    table = stdout.split("verifying:", 1)[1].split("verdict:", 1)[0]
    assert not re.search(r"\sNO\n", table), table


@pytest.mark.timeout(300)
def test_demo_on_a_server_given_with_server(pg_admin_dsn: str, tmp_path: Path) -> None:
    env = clean_env(HOME=str(tmp_path))
    result = subprocess.run(
        [str(replicator_exe()), *DEMO_ARGS, "--server", pg_admin_dsn],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr == ""
    assert "using the PostgreSQL server given with --server" in result.stdout
    check_verdict(result.stdout)
    created = re.search(
        r"created database (replicator_demo_\w+) \(dropped at the end\)", result.stdout
    )
    assert created, result.stdout[:2000]
    assert not database_exists(pg_admin_dsn, created[1]), f"the demo left {created[1]} behind"


def databases_on(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()]


def postgres_children(parent: int) -> dict[int, str]:
    """pid -> data folder (-D) of each ``postgres`` process whose parent is ``parent``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name == "postgres" and b"-D" in argv:
                found[int(entry.name)] = argv[argv.index(b"-D") + 1].decode()
    return found


def processes_using(data_dir: str) -> list[int]:
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if data_dir.encode() in (entry / "cmdline").read_bytes().split(b"\0"):
                    hits.append(int(entry.name))
    return hits


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_without_server_leaves_database_url_alone_and_cleans_up(
    tmp_path: Path, pg_admin_dsn: str
) -> None:
    out = tmp_path / "demo.out"
    err = tmp_path / "demo.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(replicator_exe()), *DEMO_ARGS],
            # DATABASE_URL names the operator's real target: never used by the demo.
            env=clean_env(HOME=str(tmp_path), DATABASE_URL=pg_admin_dsn),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        servers: dict[int, str] = {}
        deadline = time.monotonic() + 240
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                servers.update(postgres_children(proc.pid))
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
    text = out.read_text()
    assert code == 0, text[-3000:] + err.read_text()[-3000:]
    assert "DATABASE_URL is set: the demo leaves that server alone" in text
    assert "starting a throwaway PostgreSQL (no --server given)" in text
    assert "replicator_demo" not in "".join(databases_on(pg_admin_dsn))
    assert "throwaway PostgreSQL stopped and removed" in text
    check_verdict(text)

    assert len(servers) == 1, f"one server of its own, saw {servers}"
    ((pid, data_dir),) = servers.items()
    assert (
        not Path(f"/proc/{pid}").exists()
        or data_dir.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ), "the postmaster still runs"
    assert processes_using(data_dir) == [], "no backend or helper process of it is left"
    assert not Path(data_dir).exists(), "its data folder is deleted"
    port = re.search(r"listening on \S+@127\.0\.0\.1:(\d+)/", text)
    assert port, text[:2000]
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.settimeout(5)
        sock.connect(("127.0.0.1", int(port[1])))


@pytest.mark.timeout(300)
def test_demo_round_trip_brings_postgresql_edits_back_in_the_apps_formats(
    pg_admin_dsn: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(replicator_exe()), *DEMO_ARGS, "--server", pg_admin_dsn, "--round-trip"],
        env=clean_env(HOME=str(tmp_path)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check_verdict(result.stdout)
    after = result.stdout.split("in SQLite after", 1)[1]
    assert "(edited in PostgreSQL)" in after
    # updated_at is back in the column's datetime('now') style, not ISO 'T' or an offset.
    assert re.search(r"updated_at='\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?'", after), after
    assert "verdict: in sync" in after
