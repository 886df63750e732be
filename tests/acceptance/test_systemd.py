"""The systemd deployment: the unit file, and the daemon speaking sd_notify.

The unit is read by a small parser of our own (systemd allows repeated keys,
which configparser does not) and, where ``systemd-analyze`` is installed,
verified by systemd itself. The daemon test runs the real ``replicator run``
with ``NOTIFY_SOCKET`` pointing at a unix datagram socket the test owns, the
way systemd starts a ``Type=notify`` service with ``WatchdogSec=``, and reads
what arrives together with the sender's credentials (``SO_PASSCRED``, as
systemd does for ``NotifyAccess=main``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from shiputil import REPO, clean_env, parse_unit, replicator_exe, unit_value, unit_values

from replicator.cli import main as cli_main
from replicator.config import load_config
from replicator.demo import sample
from replicator.errors import ConfigError, LockHeldError, SchemaError, SourceError, TargetError

UNIT_FILE = REPO / "config/systemd/replicator.service"
WATCHDOG_USEC = 2_000_000


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT_FILE.read_text())


# --------------------------------------------------------------------------- the unit file


def test_parser_keeps_repeated_keys() -> None:
    parsed = parse_unit(
        "[Service]\n# comment\nEnvironment=A=1\nEnvironment=B=2\n"
        "ExecStart=/bin/x \\\n  --flag\n; other comment\n"
    )
    assert unit_values(parsed, "Service", "Environment") == ["A=1", "B=2"]
    assert (unit_value(parsed, "Service", "ExecStart") or "").split() == ["/bin/x", "--flag"]


def test_unit_sections_and_service_type(unit: dict[str, list[tuple[str, str]]]) -> None:
    assert set(unit) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in (unit_value(unit, "Unit", "After") or "")


def test_unit_runs_unprivileged_and_hardened(unit: dict[str, list[tuple[str, str]]]) -> None:
    def value(key: str) -> str | None:
        return unit_value(unit, "Service", key)

    assert value("User") not in (None, "", "root", "0")
    assert value("Group") not in (None, "", "root", "0")
    assert (value("EnvironmentFile") or "").startswith("/etc/replicator/")
    assert value("NoNewPrivileges") == "yes"
    assert value("ProtectSystem") == "strict"
    assert value("ProtectHome") == "yes"
    assert value("PrivateTmp") == "yes"
    # No capabilities at all: an empty assignment clears the set.
    assert value("CapabilityBoundingSet") == ""
    assert value("AmbientCapabilities") == ""
    # Nothing runs with full privileges ("+"/"!" prefixes), no root-only start steps.
    for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecReload"):
        for command in unit_values(unit, "Service", key):
            assert not command.startswith(("+", "!")), f"{key}={command}"
    assert value("PermissionsStartOnly") is None
    # The only writable place is where the SQLite file lives (triggers, -wal, -shm).
    assert value("ReadWritePaths")


def test_exec_start_is_a_valid_command_line(unit: dict[str, list[tuple[str, str]]]) -> None:
    exec_start = unit_value(unit, "Service", "ExecStart")
    assert exec_start is not None
    program, *args = exec_start.split()
    # The venv the install notes (and the Docker image) put in /opt/replicator.
    assert program == "/opt/replicator/bin/replicator"
    assert args[-1] == "run"
    # The real CLI accepts these options and the command: `... run --help` exits 0.
    result = CliRunner().invoke(
        cli_main, [*args, "--help"], prog_name="replicator", env={"REPLICATOR_CONFIG": None}
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: replicator run ")


def test_restart_policy_matches_the_exit_codes(unit: dict[str, list[tuple[str, str]]]) -> None:
    """Restarting cannot fix a configuration, the source's schema or a held lock;
    it can fix a target that was unreachable (TargetError) or an internal error."""
    prevented = {
        int(code)
        for code in (unit_value(unit, "Service", "RestartPreventExitStatus") or "").split()
    }
    assert prevented == {
        ConfigError.exit_code,
        SourceError.exit_code,
        SchemaError.exit_code,
        LockHeldError.exit_code,
    }
    assert TargetError.exit_code not in prevented


def test_stop_and_watchdog_timeouts_fit_the_daemon(unit: dict[str, list[tuple[str, str]]]) -> None:
    def seconds(key: str) -> float:
        raw = unit_value(unit, "Service", key)
        assert raw is not None, key
        return float("inf") if raw == "infinity" else float(raw.rstrip("s"))

    defaults = load_config(None, env={})
    assert unit_value(unit, "Service", "KillSignal") == "SIGTERM"
    # SIGTERM finishes the batch in hand within stream.shutdown_timeout.
    assert seconds("TimeoutStopSec") > defaults.stream.shutdown_timeout
    # The initial snapshot can take long and READY=1 only comes after it.
    assert seconds("TimeoutStartSec") == float("inf")
    # The loop pings at half the watchdog period; a poll sleeps at most poll_interval.
    assert seconds("WatchdogSec") / 2 + defaults.stream.poll_interval < seconds("WatchdogSec")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_itself_accepts_the_unit(tmp_path: Path) -> None:
    """``systemd-analyze verify`` warns about unknown or misspelt settings; its
    only other complaint would be that /opt/replicator is not installed here,
    so ExecStart's program becomes one that exists, and nothing else changes."""
    text = UNIT_FILE.read_text()
    assert text.count("ExecStart=/opt/replicator/bin/replicator ") == 1
    copy = tmp_path / "replicator.service"
    copy.write_text(
        text.replace("ExecStart=/opt/replicator/bin/replicator ", "ExecStart=/bin/true ")
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout == verify.stderr == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = [line for line in security.stdout.splitlines() if "Overall exposure level" in line]
    assert match, security.stdout[-2000:] + security.stderr
    exposure = float(match[0].split(":", 1)[1].split()[0])
    assert exposure < 3.0, match[0]  # systemd's scale: 0 safest .. 10 unprotected


# --------------------------------------------------------------------------- sd_notify, live


@dataclass
class Datagram:
    at: float  # time.monotonic() on arrival
    pid: int  # the sender's, from SCM_CREDENTIALS
    fields: dict[str, str]


class NotifySocket:
    """What systemd listens on: a unix datagram socket receiving with credentials."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[Datagram] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._stop.is_set():
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(creds_size)
                )
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, _uid, _gid = struct.unpack("3i", payload[:creds_size])
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.received.append(Datagram(time.monotonic(), pid, fields))

    def snapshot(self) -> list[Datagram]:
        with self._lock:
            return list(self.received)

    def wait_for(
        self, key: str, value: str, timeout: float, proc: subprocess.Popen[bytes]
    ) -> Datagram:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for datagram in self.snapshot():
                if datagram.fields.get(key) == value:
                    return datagram
            if proc.poll() is not None and key != "STOPPING":
                raise AssertionError(f"the daemon exited ({proc.returncode}) before {key}={value}")
            time.sleep(0.05)
        raise AssertionError(f"no {key}={value} within {timeout:.0f}s; got {self.snapshot()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    # sun_path holds 107 bytes: pytest's tmp_path can be longer than that.
    folder = tmp_path if len(str(tmp_path)) < 80 else Path(tempfile.mkdtemp(prefix="sdn-"))
    listener = NotifySocket(folder / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)


def counts(db: Path, dsn: str) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per replicated table in the source and in the target."""
    conn = sqlite3.connect(db)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name NOT LIKE '\\_replicator%' ESCAPE '\\' AND name != 'alembic_version'"
        )
    ]
    source = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    conn.close()
    target = {}
    with psycopg.connect(dsn) as pg:
        for table in tables:
            row = pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            target[table] = row.fetchone()[0] if row else None
    return source, target


@pytest.mark.timeout(180)
def test_daemon_notifies_ready_watchdog_and_stopping(tmp_path: Path, refapp_pg_dsn: str) -> None:
    db = tmp_path / "app.db"
    sample.generate_reference_db(db, artifacts=1500, seed=5, bad_values=False)
    log_path = tmp_path / "daemon.log"
    with notify_socket(tmp_path) as listener, log_path.open("wb") as log:
        env = clean_env(
            DATABASE_PATH=str(db),
            DATABASE_URL=refapp_pg_dsn,
            NOTIFY_SOCKET=str(listener.path),
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            REPLICATOR_LOG_FORMAT="json",
            # Small chunks: the snapshot reports progress (and pings) many times.
            REPLICATOR_SNAPSHOT_CHUNK_ROWS="200",
            REPLICATOR_STREAM_POLL_INTERVAL="0.25",
        )
        proc = subprocess.Popen(
            [
                str(replicator_exe()),
                *("--config", str(REPO / "config/reference-app.toml")),
                *("run", "--metrics-address", "127.0.0.1:0"),
            ],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            ready = listener.wait_for("READY", "1", 90, proc)
            # Once READY=1 has arrived the snapshot is complete: every row is there.
            source, target = counts(db, refapp_pg_dsn)
            assert source == target and sum(source.values()) > 5000
            time.sleep(4.5)  # idle streaming: only the watchdog speaks
            assert proc.poll() is None, log_path.read_text()[-3000:]
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            stopping = listener.wait_for("STOPPING", "1", 5, proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = log_path.read_text()
    assert code == 0, log_text[-3000:]
    received = listener.snapshot()

    # Every datagram comes from the main process (NotifyAccess=main drops others).
    assert {d.pid for d in received} == {proc.pid}
    assert ready.fields["MAINPID"] == str(proc.pid)
    assert ready.fields["STATUS"].startswith("streaming from position")
    assert [d for d in received if d.fields.get("READY") == "1"] == [ready]

    before_ready = [d for d in received if d.at < ready.at]
    statuses = [d.fields.get("STATUS", "") for d in before_ready]
    assert statuses[0] == "snapshot", statuses[:3]
    assert any(s.startswith("snapshot ") and "rows" in s for s in statuses), statuses
    assert any(d.fields.get("WATCHDOG") == "1" for d in before_ready), "a ping during the snapshot"

    # While streaming: pings keep coming, always within the watchdog period.
    pings = [
        d.at for d in received if d.fields.get("WATCHDOG") == "1" and ready.at <= d.at < stopping.at
    ]
    assert len(pings) >= 3, f"{len(pings)} pings in {stopping.at - ready.at:.1f}s"
    gaps = [b - a for a, b in zip([ready.at, *pings], [*pings, stopping.at], strict=True)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps

    assert stopping.fields.get("STATUS") == "stopping"
    assert received[-1].fields.get("STOPPING") == "1", "nothing after STOPPING=1"
    events = []
    for line in log_text.splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line).get("event"))
    assert events.index("streaming") < events.index("stopped"), events
