"""Helpers for the observability, status, verify and cutover tests.

Import as ``from obsutil import ...`` (``tests/`` is on ``sys.path``).

The daemon runs as ``replicator run`` (a process, with its own metrics port);
``/metrics`` is read over HTTP and parsed with prometheus_client's own text
parser; the CLI commands run as subprocesses, as an operator would run them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from harness import (
    REPLICATOR,
    DaemonProcess,
    daemon_env,
    source_head,
    spawn_daemon,
    stream_position,
)
from prometheus_client.parser import text_string_to_metric_families

# --------------------------------------------------------------------------
# A small source database the tests can reason about row by row.

ITEMS_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    qty INTEGER,
    updated_at TIMESTAMP
);
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at TIMESTAMP
);
"""


def make_items_db(path: Path, *, items: int = 300, notes: int = 20) -> Path:
    """``items`` (id, name, qty, updated_at) and ``notes`` (id, body, updated_at), WAL mode."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(ITEMS_SCHEMA)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO items (id, name, qty, updated_at) VALUES (?, ?, ?, ?)",
            [(i, f"item {i}", i * 10, "2024-01-01 00:00:00") for i in range(1, items + 1)],
        )
        conn.executemany(
            "INSERT INTO notes (id, body, updated_at) VALUES (?, ?, ?)",
            [(i, f"note {i}", "2024-01-01 00:00:00") for i in range(1, notes + 1)],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def app_conn(path: Path) -> sqlite3.Connection:
    """A connection like the application's (autocommit; explicit BEGIN for transactions)."""
    return sqlite3.connect(path, isolation_level=None, timeout=30)


def sqlite_exec(path: Path, *statements: tuple[str, Sequence[Any]] | str) -> None:
    """Run ``statements`` in one write transaction of the source."""
    conn = app_conn(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for item in statements:
            if isinstance(item, str):
                conn.execute(item)
            else:
                conn.execute(item[0], item[1])
        conn.execute("COMMIT")
    finally:
        conn.close()


def pg_rows(dsn: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def pg_exec(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# The daemon and the CLI as processes.


def start_replicator(
    source: Path,
    dsn: str,
    log_path: Path,
    *,
    metrics_address: str | None,
    settings: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> DaemonProcess:
    """``replicator run`` with the given ``--metrics-address`` (None: the flag left out)."""
    args = [*extra_args, "run"]
    if metrics_address is not None:
        args += ["--metrics-address", metrics_address]
    return spawn_daemon(args, daemon_env(source, dsn, **(settings or {})), source, dsn, log_path)


def applied_everything(source: Path, dsn: str) -> bool:
    """The committed position is the change log's head (0 before the first change)."""
    position = stream_position(dsn)
    return position is not None and position.seq == (source_head(source) or 0)


def wait_applied(daemon: DaemonProcess, timeout: float = 120.0) -> None:
    """Wait until ``daemon`` has applied every captured change, failing at once if it dies."""
    deadline = time.monotonic() + timeout
    while not applied_everything(daemon.source, daemon.dsn):
        gone = daemon.gone()
        if gone:
            raise AssertionError(f"the daemon stopped before catching up: {gone}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not caught up after {timeout:.0f}s: head {source_head(daemon.source)}, "
                f"applied {stream_position(daemon.dsn)}"
            )
        time.sleep(0.05)


def cli(
    *args: str,
    source: Path,
    dsn: str,
    timeout: float = 180,
    settings: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One ``replicator`` command, configured by DATABASE_PATH / DATABASE_URL alone."""
    return subprocess.run(
        [str(REPLICATOR), *args],
        env=daemon_env(source, dsn, **(settings or {})),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_json(*args: str, source: Path, dsn: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """A ``--json`` command: (exit code, the parsed document on stdout)."""
    done = cli(*args, "--json", source=source, dsn=dsn, **kwargs)
    try:
        document = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(
            f"replicator {' '.join(args)} --json printed no JSON (exit {done.returncode}):\n"
            f"stdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}"
        ) from None
    assert isinstance(document, dict), document
    return done.returncode, document


def status_json(source: Path, dsn: str) -> tuple[int, dict[str, Any]]:
    return cli_json("status", source=source, dsn=dsn, timeout=60)


# --------------------------------------------------------------------------
# HTTP: /metrics, /healthz, /readyz.


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        value = json.loads(self.body)
        assert isinstance(value, dict), value
        return value


def http_get(port: int, path: str, timeout: float = 10.0) -> Response:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return Response(reply.status, reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Response(exc.code, exc.read())


Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


@dataclass(frozen=True, slots=True)
class Scrape:
    """One ``/metrics`` read: the declared families and every sample by name and labels."""

    families: dict[str, str]  # family name -> type, as the TYPE lines declare them
    samples: Samples

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get(name, {}).get(frozenset(labels.items()))

    def get(self, name: str, **labels: str) -> float:
        """A sample that must be there; absent labelled counters count as 0 only via ``or0``."""
        found = self.value(name, **labels)
        assert found is not None, f"no sample {name}{labels} in the scrape"
        return found

    def or0(self, name: str, **labels: str) -> float:
        return self.value(name, **labels) or 0.0

    def by_label(self, name: str, label: str) -> dict[str, float]:
        return {
            dict(key)[label]: value
            for key, value in self.samples.get(name, {}).items()
            if label in dict(key)
        }


def parse_metrics(text: str) -> Scrape:
    families: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return Scrape(families, samples)


def scrape(port: int) -> Scrape:
    reply = http_get(port, "/metrics")
    assert reply.status == 200, f"/metrics answered {reply.status}: {reply.body[:300]!r}"
    return parse_metrics(reply.body.decode())


# --------------------------------------------------------------------------
# Which addresses a process listens on (from /proc: the socket, not the log line).


def _decode_address(hex_address: str, *, v6: bool) -> tuple[str, int]:
    host_hex, port_hex = hex_address.split(":")
    raw = bytes.fromhex(host_hex)
    if v6:
        # Four 32-bit words, each in host (little-endian) byte order.
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        host = socket.inet_ntop(socket.AF_INET6, raw)
    else:
        host = socket.inet_ntop(socket.AF_INET, raw[::-1])
    return host, int(port_hex, 16)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(host, port) of every TCP socket the process ``pid`` listens on."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(match.group(1))
    found = []
    for name, v6 in (("tcp", False), ("tcp6", True)):
        table = Path(f"/proc/{pid}/net/{name}")
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                found.append(_decode_address(local, v6=v6))
    return found


# --------------------------------------------------------------------------
# Secrets.


def text_of_state_schema(dsn: str, schema: str = "replicator") -> str:
    """Every row of every table of the state schema, as text (for leak checks)."""
    out: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
                (schema,),
            )
        ]
        assert tables, f"no tables in the state schema {schema!r}"
        for table in tables:
            rows = conn.execute(
                psycopg.sql.SQL("SELECT t::text FROM {} AS t").format(
                    psycopg.sql.Identifier(schema, table)
                )
            ).fetchall()
            out.extend(f"{table}: {r[0]}" for r in rows)
    return "\n".join(out)


def lines_containing(needle: str, texts: Iterable[tuple[str, str]]) -> list[str]:
    """``where: line`` for every line of the named texts that holds ``needle``."""
    return [
        f"{where}: {line}" for where, text in texts for line in text.splitlines() if needle in line
    ]
