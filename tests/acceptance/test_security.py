"""Security properties of what ships.

- The metrics and health listener binds the loopback interface unless told
  otherwise: by default, in the example configuration, and in a running
  daemon (its listening socket, read from /proc, is 127.0.0.1:9479 and
  nothing answers on another loopback address such as 127.0.0.2).
- The Docker image, the compose stack and the systemd unit run unprivileged,
  read from the files themselves.
- No secret shows: not in any command's ``--help`` (even with passwords in
  DATABASE_URL, REPLICATOR_TARGET_URL and PGPASSWORD), not in a running
  daemon's log, /metrics, /healthz, /readyz, nor in ``replicator status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import pytest
import yaml
from click.testing import CliRunner
from pgutil import password_role
from shiputil import (
    REPO,
    clean_env,
    dockerfile_stages,
    parse_dockerfile,
    parse_unit,
    replicator_exe,
    run,
    unit_value,
    unit_values,
)

from replicator import metrics
from replicator.cli import main as cli_main
from replicator.config import load_config, parse_address

SECRET = "S3cr3t-" + secrets.token_hex(6)
DEFAULT_METRICS = ("127.0.0.1", 9479)
PORT_LOCK = Path(tempfile.gettempdir()) / "replicator-metrics-9479.lock"


def connects(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(3)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return False
    return True


# --------------------------------------------------------------------------- metrics listener


def test_metrics_listen_on_loopback_by_default() -> None:
    assert parse_address(load_config(None, env={}).metrics.address) == DEFAULT_METRICS
    example = load_config(REPO / "config/replicator.example.toml", env={})
    assert parse_address(example.metrics.address)[0] == "127.0.0.1"
    help_text = CliRunner().invoke(cli_main, ["run", "--help"], prog_name="replicator").output
    assert "127.0.0.1:9479" in help_text


def test_metrics_server_answers_only_on_the_address_it_was_given() -> None:
    # 127.0.0.2 is reachable on this machine's loopback (a socket of our own there) ...
    with socket.socket() as other:
        other.bind(("127.0.0.2", 0))
        other.listen()
        assert connects("127.0.0.2", other.getsockname()[1])
    # ... but the metrics server bound to 127.0.0.1 does not answer there.
    server = metrics.MetricsServer("127.0.0.1", 0, metrics.Health(60.0, 5.0)).start()
    try:
        assert server.server.server_address[0] == "127.0.0.1"
        assert connects("127.0.0.1", server.port)
        assert not connects("127.0.0.2", server.port)
    finally:
        server.stop()


# --------------------------------------------------------------------------- unprivileged


def test_docker_image_and_stack_run_unprivileged() -> None:
    stages = dockerfile_stages(parse_dockerfile((REPO / "Dockerfile").read_text()))
    final = stages[-1]
    users = final.all("USER")
    assert users and users[-1].args[0].split(":")[0] not in ("root", "0")
    last_user_at = final.instructions.index(users[-1])
    # Nothing after the switch runs as root again, nor installs anything.
    assert all(i.keyword != "RUN" for i in final.instructions[last_user_at:])
    # Only named paths go into the image: never the whole context (.env, var/, ...).
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            assert "." not in copy.args[:-1] and "./" not in copy.args[:-1], copy.raw
    # No credentials baked into the image.
    for key, value in final.env().items():
        assert "PASSWORD" not in key.upper() and "@" not in value, (key, value)

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        assert not svc.get("privileged"), name
        assert not svc.get("cap_add"), name
        assert svc.get("user") not in ("root", "0", 0), name
        assert svc.get("network_mode") != "host" and svc.get("pid") != "host", name
        for volume in svc.get("volumes") or []:
            assert "docker.sock" not in str(volume), name
    assert "ports" not in compose["services"]["replicator"], "metrics stay inside the stack"


def test_systemd_unit_runs_unprivileged() -> None:
    unit = parse_unit((REPO / "config/systemd/replicator.service").read_text())
    assert unit_value(unit, "Service", "User") not in (None, "", "root", "0")
    assert unit_value(unit, "Service", "NoNewPrivileges") == "yes"
    assert unit_value(unit, "Service", "CapabilityBoundingSet") == ""
    assert unit_value(unit, "Service", "AmbientCapabilities") == ""
    for command in unit_values(unit, "Service", "ExecStart"):
        assert not command.startswith(("+", "!", "@+")), command
    # The password lives in the EnvironmentFile, not in the unit (world-readable).
    for entry in unit_values(unit, "Service", "Environment"):
        assert "PASSWORD" not in entry.upper() and "://" not in entry, entry


# --------------------------------------------------------------------------- no secrets in help


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def secret_env() -> dict[str, str]:
    url = f"postgresql://app:{SECRET}@db.example:5432/app"
    return {
        "DATABASE_URL": url,
        "REPLICATOR_TARGET_URL": url,
        "PGPASSWORD": SECRET,
        "DATABASE_PATH": "/srv/app/var/app.db",
    }


def test_no_secret_in_any_help_output() -> None:
    assert isinstance(cli_main, click.Group)
    paths = list(command_paths(cli_main))
    assert len(paths) > 10
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(
            cli_main, [*path, "--help"], env=secret_env(), prog_name="replicator"
        )
        assert result.exit_code == 0, (path, result.output)
        assert SECRET not in result.output, path
        assert quote(SECRET) not in result.output, path
    # And as a user sees it: the installed command, top-level help and version.
    env = clean_env(**secret_env())
    for args in (["--help"], ["--version"], ["run", "--help"]):
        done = run([str(replicator_exe()), *args], env=env)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr, args


# --------------------------------------------------------------------------- a running daemon


@pytest.fixture
def password_role_url(pg_admin_dsn: str, pg_dsn: str) -> Iterator[str]:
    """A URL with a password, for a login role of this test that may create the
    state schema and tables in this test's database."""
    with password_role(pg_admin_dsn, pg_dsn, SECRET) as (url, _keywords):
        yield url


@contextlib.contextmanager
def default_metrics_port() -> Iterator[None]:
    """Port 9479 for this test alone (among test sessions on this machine)."""
    with PORT_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if connects(*DEFAULT_METRICS):
                pytest.skip("something else listens on 127.0.0.1:9479 (the default metrics port)")
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets the process ``pid`` listens on (IPv4/IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            hex_address, hex_port = local.split(":")
            raw = bytes.fromhex(hex_address)
            if len(raw) == 4:
                address = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                address = socket.inet_ntop(socket.AF_INET6, words)
            found.append((address, int(hex_port, 16)))
    return found


def fetch(path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{DEFAULT_METRICS[1]}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def wait_event(
    log: Path, name: str, proc: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    return event
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {name!r} within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(180)
def test_running_daemon_listens_on_loopback_and_shows_no_secret(
    tmp_path: Path, password_role_url: str
) -> None:
    source = tmp_path / "app.db"
    conn = sqlite3.connect(source)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);"
        "INSERT INTO items VALUES (1, 'one'), (2, 'two');"
    )
    conn.close()
    log = tmp_path / "daemon.log"
    env = clean_env(
        DATABASE_PATH=str(source),
        DATABASE_URL=password_role_url,
        REPLICATOR_LOG_FORMAT="json",
        REPLICATOR_LOG_LEVEL="debug",
        HOME=str(tmp_path),
    )
    with default_metrics_port(), log.open("wb") as out:
        proc = subprocess.Popen(
            [str(replicator_exe()), "run"],  # no --metrics-address: the default
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            listening = wait_event(log, "metrics_listening", proc, 60)
            assert listening["address"] == "127.0.0.1:9479"
            wait_event(log, "streaming", proc, 60)
            assert listening_addresses(proc.pid) == [DEFAULT_METRICS]
            assert not connects("127.0.0.2", DEFAULT_METRICS[1])
            pages = [fetch(p) for p in ("/metrics", "/healthz", "/readyz")]
            assert pages[0][0] == 200 and "replicator_up 1.0" in pages[0][1]
            assert pages[1][0] == 200
            status = run([str(replicator_exe()), "status"], env=env, cwd=tmp_path)
            status_json = run([str(replicator_exe()), "status", "--json"], env=env, cwd=tmp_path)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert status.returncode == 0, status.stdout + status.stderr
    shown = [text, status.stdout, status.stderr, status_json.stdout, *(body for _c, body in pages)]
    for output in shown:
        assert SECRET not in output
        assert quote(SECRET) not in output
